"""The sinusoid figures: adaptation on example tasks (paper Fig. 2) and MSE vs steps (Fig. 3)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from mamlkit.engine.files import save_figure  # noqa: E402
from mamlkit.tasks.sinusoid import SinusoidTasks  # noqa: E402

STEP_STYLES = {0: ("pre-update", ":"), 1: ("1 grad step", "--"), 10: ("10 grad steps", "-")}


def plot_adaptation(learners: dict, adapted_predictions, path: Path, shots=(5, 10), seed: int = 7) -> None:
    """For one task per K: the true curve, the K points and MAML's / pretrained's fit after 0, 1, 10 steps.

    ``adapted_predictions(learner, x, y, grid)`` returns ``{steps: prediction on grid}``.
    """
    tasks = SinusoidTasks()
    grid = torch.linspace(-5, 5, 200)[:, None]
    figure, axes = plt.subplots(len(shots), 2, figsize=(10, 3.6 * len(shots)), squeeze=False)
    for row, k in enumerate(shots):
        batch = tasks.sample(1, k, 0, torch.Generator().manual_seed(seed + k))
        truth = tasks.curve(batch.amplitude, batch.phase, grid[None])[0]
        for col, name in enumerate(("maml", "pretrained")):
            ax = axes[row, col]
            ax.plot(grid, truth, color="tab:red", lw=2, label="ground truth")
            ax.scatter(batch.support_x[0], batch.support_y[0], color="tab:purple", marker="^", s=60, zorder=5,
                       label=f"{k} points used for gradient")
            predictions = adapted_predictions(learners[name], batch.support_x[0], batch.support_y[0], grid)
            for steps, prediction in predictions.items():
                label, style = STEP_STYLES[steps]
                ax.plot(grid, prediction, style, color="tab:green", label=label)
            ax.set_title(f"{'MAML' if name == 'maml' else 'pretrained'}, K={k}")
            ax.set_ylim(-5.5, 5.5)
            ax.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)


def plot_mse_vs_steps(results: dict, path: Path, metric: str = "mse") -> None:
    """Mean query MSE (or ``metric``, ± 95% CI) against the number of fine-tuning steps, one panel per K."""
    figure, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 3.6), squeeze=False)
    colors = {"maml": "tab:green", "pretrained": "tab:blue", "oracle": "tab:gray"}
    for ax, (k, methods) in zip(axes[0], results.items()):
        for name, row in methods.items():
            mean, ci = torch.tensor(row[metric]), torch.tensor(row["ci95"])
            steps = torch.arange(len(mean))
            ax.plot(steps, mean, "o-" if name != "oracle" else "--", color=colors.get(name), label=name, ms=3)
            ax.fill_between(steps, mean - ci, mean + ci, color=colors.get(name), alpha=0.2)
        ax.set_title(f"k-shot {'regression' if metric == 'mse' else 'classification'}, {k}")
        ax.set_xlabel("number of gradient steps")
        ax.set_ylabel("mean squared error" if metric == "mse" else f"{metric} (%)")
        ax.legend()
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)
