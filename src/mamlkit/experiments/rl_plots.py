"""Figures of an RL run: the training curve, returns (or Meta-World's success rates) vs.
policy-gradient steps (the paper's Fig. 5) and a picture of the adapted policy (2D navigation
paths, or a MuJoCo GIF)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mamlkit.engine.files import save_figure, writing  # noqa: E402
from mamlkit.engine.metrics import read_metrics  # noqa: E402

COLORS = {"maml": "tab:blue", "pretrained": "tab:orange", "random": "tab:gray", "oracle": "tab:green"}
STYLES = {"own": ("s", ":"), "last": ("x", "--")}  # the pretrained baseline's other selections: same colour


def plot_learning_curve(run_dir: Path, path: Path) -> None:
    """Returns during training; beside them the success rates where the env reports them."""
    records = read_metrics(run_dir)
    successes = any("maml/success_post" in r for r in records)
    figure, axes = plt.subplots(1, 1 + successes, figsize=(6 * (1 + successes), 3.6), squeeze=False)
    plot_curves(axes[0, 0], records, "mean return (training tasks)", (
        ("maml/return_pre", "maml", "MAML before adaptation", "--"),
        ("maml/return_post", "maml", "MAML after one step", "-"),
        ("pretrained/return_post", "pretrained", "pretrained", ":"),
        ("oracle/return_post", "oracle", "oracle", "-."),
        ("val/maml", "maml", "MAML, validation tasks (mean after 1.. steps)", "o-"),
        ("val/pretrained", "pretrained", "pretrained, validation tasks", "s:"),
        ("val/oracle", "oracle", "oracle, validation tasks (no step)", "^-.")))
    if successes:
        plot_curves(axes[0, 1], records, "success rate (training tasks)", (
            ("maml/success_pre", "maml", "MAML before adaptation", "--"),
            ("maml/success_post", "maml", "MAML after one step", "-"),
            ("pretrained/success_post", "pretrained", "pretrained", ":")))
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)


def plot_curves(axis, records: list[dict], ylabel: str, curves) -> None:
    """One line per ``(metric key, learner, label, style)`` that the records hold, against the iteration."""
    for key, learner, label, style in curves:
        points = [(r["iteration"], r[key]) for r in records if key in r]
        if points:
            axis.plot(*zip(*points), style, color=COLORS[learner], lw=1, ms=3, label=label)
    axis.set_xlabel("meta-iteration")
    axis.set_ylabel(ylabel)
    axis.legend(loc="best", fontsize=8)


def plot_returns_vs_steps(results: dict, env: str, path: Path, key: str = "return") -> None:
    """``key`` "return" (± its 95% interval "ci95") or "success" (± "success_ci95")."""
    figure, axis = plt.subplots(figsize=(4.5, 3.6))
    for name, row in results.items():
        steps = range(len(row[key]))
        learner, _, selection = name.partition("-")
        marker, line = STYLES.get(selection, ("o", "-"))
        axis.errorbar(steps, row[key], yerr=row["ci95" if key == "return" else f"{key}_ci95"], marker=marker,
                      ls=line, ms=4, capsize=3, color=COLORS[learner], label=name)
    axis.set_xticks(list(steps))
    axis.set_xlabel("number of gradient steps")
    axis.set_ylabel("average return" if key == "return" else "success rate")
    axis.set_title(env)
    axis.legend(loc="best", fontsize=8)
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)


def render(config, env, policy, tasks, episodes, run_dir: Path) -> None:
    """2D navigation: paths of the first trajectories before and after each step for a few tasks.
    MuJoCo: a GIF of the policy after one step on test tasks (``render_gif`` of ``mujoco_tasks``
    or ``metaworld_tasks``)."""
    path = Path(run_dir) / "adapted_policy.gif"
    if config.metaworld:
        from mamlkit.rl.metaworld_tasks import render_gif
        with writing(path):
            render_gif(config, env, policy, tasks, path)
        return
    if config.env != "2dnav":
        from mamlkit.rl.mujoco_tasks import render_gif
        with writing(path):
            render_gif(config, policy, tasks, path)
        return
    shown = min(4, len(tasks))
    figure, axes = plt.subplots(1, shown, figsize=(3 * shown, 3.2), sharex=True, sharey=True, squeeze=False)
    for index, axis in enumerate(axes[0]):
        for step, batch in enumerate(episodes):
            valid = int(batch.mask[index, 0].sum())
            path = batch.obs[index, 0, :valid].numpy()
            axis.plot(path[:, 0], path[:, 1], ".-", ms=2, lw=1, label=f"{step} steps",
                      color=plt.cm.viridis(step / max(1, len(episodes) - 1)))
        axis.plot(*tasks[index].numpy(), "r*", ms=12, label="goal")
        axis.plot(0, 0, "ks", ms=5)
        axis.set_title(f"task {index}")
    axes[0, 0].legend(fontsize=7, loc="best")
    figure.tight_layout()
    save_figure(figure, Path(run_dir) / "adapted_paths.png")
    plt.close(figure)
