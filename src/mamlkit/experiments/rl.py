"""MAML for reinforcement learning (paper §5.3): 2D navigation, half-cheetah and ant goal velocity
and direction, and Meta-World's ML1 and ML10, with the paper's pretrained, random-initialisation
and oracle baselines.

MAML, the pretrained policy (plain TRPO on all tasks, no inner step in the objective) and, with
``--oracle``, the oracle (the same, but it observes the task) train side by side on the same task
batches. Every ``validate_every`` iterations each is scored on validation tasks and its best
checkpoint kept (``SELECTIONS``): adapting more than once degrades as training shrinks the policy's
σ, so the last iteration is not the best one. Evaluation (Fig. 5): returns after 0..3
policy-gradient steps on 40 held-out test tasks, 20 trajectories per step, α then α/2 as in the paper.
Meta-World runs also report success rates, on its held-out test tasks and on its training tasks.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch

from mamlkit.checks import check_config
from mamlkit.engine import distributed
from mamlkit.engine.checkpoint import BestCheckpoint, export_weights, load_latest_checkpoint
from mamlkit.engine.metrics import read_metrics
from mamlkit.engine.run import write_json
from mamlkit.engine.trainer import TrainLoop
from mamlkit.errors import MamlkitError
from mamlkit.rl.advantages import advantages
from mamlkit.rl.algorithms import TRPOSettings, adapt_tasks
from mamlkit.rl.envs import Navigation2D, TaskEnv, TaskInObservation
from mamlkit.rl.learner import MetaRLLearner
from mamlkit.rl.metaworld_tasks import BENCHMARKS
from mamlkit.rl.policy import GaussianPolicy
from mamlkit.rl.sampler import per_task, sample
from mamlkit.stats import mean_and_ci95
from mamlkit.tasks.stream import task_stream

EVAL_SEED = 20170309  # the same held-out tasks for every run and method
VALIDATION_SEED = 1703  # validation tasks, for checkpoint selection only
Env = Literal["2dnav", "cheetah-vel", "cheetah-dir", "ant-vel", "ant-dir", "ml1", "ml10"]
METHODS = ("maml", "pretrained", "random")
# The policies each learner contributes to the evaluation: row -> the validation score its checkpoint
# maximises. "adapted": mean return after 1..eval_steps steps (what MAML is for); "unadapted": the
# return with no step, a baseline's own objective. The pretrained baseline is reported both ways
# and at its last checkpoint ("pretrained-last"); docs/rl.md says which one the paper's matches.
SELECTIONS = {"maml": {"maml": "adapted"},
              "pretrained": {"pretrained": "adapted", "pretrained-own": "unadapted"},
              "oracle": {"oracle": "unadapted"}}


@dataclass
class RLConfig:
    env: Env = "2dnav"
    """task family: 2D navigation, half-cheetah / ant goal velocity or direction, or Meta-World ML1 / ML10"""
    metaworld_task: str = "reach-v3"
    """ML1's Meta-World task family (reach-v3, push-v3, pick-place-v3, ...; the env ml1 only)"""
    iterations: int = 500
    """meta-training iterations (TRPO meta-updates)"""
    meta_batch: int = 20
    """tasks per meta-batch"""
    trajectories: int = 20
    """trajectories sampled per task for each step (inner and meta)"""
    horizon: int = 100
    """time steps per trajectory"""
    inner_lr: float = 0.1
    """α: step size of the inner policy-gradient step"""
    eval_inner_lr: float = 0.05
    """α for the test-time steps after the first (the paper halves it)"""
    first_order: bool = False
    """first-order approximation: drop the second derivatives through the inner step"""
    max_kl: float = 0.01
    """TRPO's trust region: largest mean KL divergence of a meta-update"""
    cg_iterations: int = 10
    """conjugate-gradient iterations solving for TRPO's step direction"""
    cg_damping: float = 1e-5
    """damping added to the Fisher-vector products"""
    backtrack_ratio: float = 0.8
    """TRPO's line search shrinks the step by this factor per backtrack"""
    max_backtracks: int = 15
    """line-search steps before a meta-update is rejected"""
    gamma: float = 0.99
    """discount factor"""
    gae_lambda: float = 1.0
    """λ of generalised advantage estimation (1: discounted returns minus the baseline)"""
    hidden: tuple[int, ...] = (100, 100)
    """widths of the policy's hidden layers"""
    maml: bool = True
    """train MAML (--no-maml: only the baselines, e.g. an oracle for an existing run's test tasks)"""
    pretrained: bool = True
    """train the pretrained baseline beside MAML (doubles sampling)"""
    oracle: bool = False
    """train the oracle baseline beside MAML: TRPO on all tasks for a policy that also observes the task"""
    seed: int = 0
    """seeds the initialisation, the training tasks and the sampling"""
    eval_tasks: int = 40
    """held-out test tasks in the final evaluation"""
    eval_steps: int = 3
    """evaluation adapts for 0..eval_steps policy-gradient steps"""
    validation_tasks: int = 20
    """fixed validation tasks that select each learner's checkpoint"""
    validate_every: int = 10
    """iterations between validation runs"""
    checkpoint_every: int = 10
    """iterations between checkpoints (a killed run resumes from the last one)"""
    log_every: int = 1
    """iterations between metrics records"""
    time_limit: float = 0.0
    """minutes of training before a clean, resumable stop; 0: none"""
    threads: int = 1
    """torch CPU threads per process"""
    backend: Literal["auto", "gym", "rollout"] = "auto"
    """MuJoCo stepping: auto (mujoco.rollout unless --env-workers is set), gym or rollout"""
    env_threads: int = 1
    """mujoco.rollout threads stepping the MuJoCo copies (rollout backend)"""
    env_workers: int = 0
    """processes stepping the gymnasium envs (gym backend, Meta-World); 0: in this process"""
    device: Literal["cpu"] = "cpu"
    """the environments and the small policy run on the CPU"""
    render: bool = True
    """a GIF of MAML's adapted policy (MuJoCo) or a trajectory plot (2D navigation)"""
    # options a resumed run may change besides engine.run.RESUMABLE (they keep the training valid)
    RESUMABLE: ClassVar[tuple[str, ...]] = ("env_threads", "env_workers", "render")

    @property
    def metaworld(self) -> bool:
        """A Meta-World benchmark (the optional metaworld extra): success rates, no task parameters."""
        return self.env in BENCHMARKS

    def __post_init__(self):
        check_config(self, whole=("eval_steps", "seed", "env_workers"), widths=("hidden",),
                     positive=("iterations", "meta_batch", "trajectories", "horizon", "eval_tasks", "checkpoint_every",
                               "validation_tasks", "validate_every",
                               "log_every", "threads", "env_threads", "cg_iterations", "max_backtracks"),
                     rates=("inner_lr", "eval_inner_lr", "max_kl", "cg_damping", "time_limit"))
        if not (0 < self.gamma <= 1 and 0 <= self.gae_lambda <= 1 and 0 < self.backtrack_ratio < 1):
            raise MamlkitError("gamma must be in (0, 1], gae_lambda in [0, 1] and backtrack_ratio in (0, 1)")
        if not (self.maml or self.pretrained or self.oracle):
            raise MamlkitError("nothing to train: --no-maml needs --pretrained or --oracle")
        if self.oracle and self.metaworld:
            raise MamlkitError("--oracle observes a task's parameters; Meta-World's tasks have none to show "
                               "(a task is an index into its benchmark): drop --oracle")


def make_env(config: RLConfig) -> TaskEnv:
    if config.env == "2dnav":
        return Navigation2D(config.horizon)
    if config.metaworld:
        from mamlkit.rl.metaworld_tasks import make_metaworld_tasks  # the optional metaworld extra
        return make_metaworld_tasks(config.env, config.metaworld_task, config.horizon, config.env_workers)
    from mamlkit.rl.mujoco_tasks import make_mujoco_tasks  # gymnasium only for MuJoCo runs
    return make_mujoco_tasks(config.env, config.horizon, config.backend, config.env_threads, config.env_workers)


def method_env(name: str, env: TaskEnv) -> TaskEnv:
    """What a method's policy acts in: the oracle's observations carry the task."""
    return TaskInObservation(env) if name.startswith("oracle") else env


def build_policies(config: RLConfig, env: TaskEnv) -> dict[str, GaussianPolicy]:
    torch.manual_seed(config.seed)
    policies = {name: new_policy(config, env) for name in METHODS}
    if config.oracle:  # drawn after the others, which stay as they were without it
        policies["oracle"] = new_policy(config, method_env("oracle", env))
    return policies


def new_policy(config: RLConfig, env: TaskEnv) -> GaussianPolicy:
    return GaussianPolicy(env.obs_dim, env.act_dim, config.hidden)


def trpo_settings(config: RLConfig) -> TRPOSettings:
    return TRPOSettings(config.max_kl, config.cg_iterations, config.cg_damping, config.backtrack_ratio,
                        config.max_backtracks)


def make_loop(config: RLConfig, run_dir: Path) -> TrainLoop:
    env = make_env(config)
    policies = build_policies(config, env)
    common = dict(env=env, trajectories=config.trajectories, first_order=config.first_order,
                  trpo=trpo_settings(config), gamma=config.gamma, gae_lambda=config.gae_lambda)
    learners = {}
    if config.maml:
        learners["maml"] = MetaRLLearner(policy=policies["maml"], inner_lr=config.inner_lr, stream=0, **common)
    if config.pretrained:
        learners["pretrained"] = MetaRLLearner(policy=policies["pretrained"], inner_lr=None, stream=1, **common)
    if config.oracle:
        learners["oracle"] = MetaRLLearner(policy=policies["oracle"], inner_lr=None, stream=2,
                                           **{**common, "env": method_env("oracle", env)})

    def batch(generator: torch.Generator):
        return env.sample_tasks(config.meta_batch, generator), int(torch.randint(2**62, (), generator=generator))

    validation = env.sample_tasks(config.validation_tasks, torch.Generator().manual_seed(VALIDATION_SEED))
    # A selection the run's earlier validations did not log (a run resumed by newer code) would cover
    # only part of its training: it is not kept, and load_policies names it as missing.
    logged = {key for record in read_metrics(run_dir) for key in record if key.startswith("val/")} \
        if (Path(run_dir) / "metrics.jsonl").exists() else set()
    bests = {row: BestCheckpoint(Path(run_dir) / "best" / row, "val_return") for name in learners
             for row in SELECTIONS[name] if not logged or f"val/{row}" in logged}

    def validate(iteration: int) -> dict[str, float]:
        scores = {}
        for name, learner in learners.items():
            returns, _ = adaptation_returns(learner.env, learner.policy, validation, config,
                                            torch.Generator().manual_seed(VALIDATION_SEED + 1))
            score = {"adapted": returns[:, min(1, config.eval_steps):].mean().item(), "unadapted": returns[:, 0].mean().item()}
            for row, selected_by in SELECTIONS[name].items():
                scores[f"val/{row}"] = score[selected_by]
                if row in bests:
                    bests[row].offer(iteration, score[selected_by], {"model": learner.policy.state_dict()})
        return scores
    return TrainLoop(run_dir=run_dir, learners=learners,
                     batches=lambda start: task_stream(batch, config.seed, start=start),
                     iterations=config.iterations, checkpoint_every=config.checkpoint_every,
                     log_every=config.log_every, nan_hint="lower --max-kl or --inner-lr",
                     validate=validate, validate_every=config.validate_every,
                     time_limit=config.time_limit * 60 or None)


def train(config: RLConfig, run_dir: Path, resume: bool = False) -> dict:
    """Meta-train (or continue a stopped run), then evaluate and write results and figures."""
    if distributed.world_size() > 1:
        raise MamlkitError("RL presets run in one process; launch them without torchrun")
    torch.set_num_threads(config.threads)
    loop = make_loop(config, run_dir)
    loop.run(start=loop.restore() if resume else 0)
    return evaluate(config, run_dir)


def adaptation_returns(env: TaskEnv, policy: GaussianPolicy, tasks: torch.Tensor, config: RLConfig,
                       generator: torch.Generator) -> tuple[torch.Tensor, list]:
    """Mean return per task after 0..eval_steps policy-gradient steps ``[tasks, steps + 1]``, each
    step on fresh trajectories of the current policy; also the episodes seen at each step."""
    params = per_task({n: p.detach() for n, p in policy.params().items()}, len(tasks))
    rows, seen = [], []
    for step in range(config.eval_steps + 1):
        episodes = sample(env, policy, params, tasks, config.trajectories, generator)
        rows.append(episodes.returns().mean(1))
        seen.append(episodes)
        if step < config.eval_steps:
            lr = config.inner_lr if step == 0 else config.eval_inner_lr
            adv = advantages(episodes, config.gamma, config.gae_lambda)
            adapted = adapt_tasks(policy, params, episodes, adv, lr, first_order=True, stacked=True)
            params = {n: p.detach() for n, p in adapted.items()}
    return torch.stack(rows, dim=1), seen


def load_policies(config: RLConfig, run_dir: Path, env: TaskEnv) -> tuple[dict[str, GaussianPolicy], dict[str, int]]:
    """Each learner's best-on-validation policies (``SELECTIONS``; the last one if the run has no
    validation yet), the pretrained policy's last one, the iteration each comes from, and the random
    initialisation as built. A selection the run kept no checkpoint for (a run from before it
    existed) is left out and named on stdout."""
    last, _ = load_latest_checkpoint(Path(run_dir) / "checkpoints")
    built, iterations = build_policies(config, env), {}
    policies = {}
    validated = any(Path(run_dir).glob("best/*/ckpt-*.pt"))
    for name, learner_state in last["learners"].items():
        rows = {row: Path(run_dir) / "best" / row for row in SELECTIONS[name]}
        if name == "pretrained":
            rows["pretrained-last"] = None  # None: the last checkpoint
        if not validated:
            rows = {name: None}
        for row, best in rows.items():
            if best is None:
                state = {**learner_state, **last}
            elif any(best.glob("ckpt-*.pt")):
                state = load_latest_checkpoint(best)[0]
            else:
                print(f"{row}: this run kept no checkpoint selected that way (it predates the option); not evaluated")
                continue
            policies[row] = built[row] if row in built else new_policy(config, method_env(row, env))
            policies[row].load_state_dict(state["model"])
            iterations[row] = state["iteration"]
    return {**policies, "random": built["random"]}, iterations


def held_out_tasks(env: TaskEnv, count: int, generator: torch.Generator) -> torch.Tensor:
    """A benchmark's own test tasks where it has a split (Meta-World), else fresh draws."""
    return getattr(env, "sample_test_tasks", env.sample_tasks)(count, generator)


def success_rates(seen: list) -> torch.Tensor | None:
    """Fraction of each task's trajectories that succeeded at some step, after each policy-gradient
    step ``[tasks, steps + 1]``; None for envs that report no success (all but Meta-World)."""
    if seen[0].success is None:
        return None
    return torch.stack([episodes.success.double().mean(1) for episodes in seen], dim=1)


def score(env: TaskEnv, policies: dict[str, GaussianPolicy], tasks: torch.Tensor, config: RLConfig) -> tuple[dict, dict]:
    """Each method's return (and success rate) after 0..eval_steps steps on ``tasks``, with 95%
    intervals over tasks; also the episodes seen."""
    results, episodes = {}, {}
    for name, policy in policies.items():
        returns, episodes[name] = adaptation_returns(method_env(name, env), policy, tasks, config,
                                                     torch.Generator().manual_seed(EVAL_SEED + 1))
        mean, ci = mean_and_ci95(returns)
        results[name] = {"return": mean.tolist(), "ci95": ci.tolist(), "per_task": returns.tolist()}
        if config.env.endswith("-dir"):  # the two directions separately: adaptation must serve both
            for label, sign in (("forward", 1.0), ("backward", -1.0)):
                results[name][label] = returns[tasks[:, 0] == sign].mean(0).tolist()
        successes = success_rates(episodes[name])
        if successes is not None:
            mean, ci = mean_and_ci95(successes)
            results[name].update(success=mean.tolist(), success_ci95=ci.tolist(), success_per_task=successes.tolist())
    return results, episodes


def evaluate(config: RLConfig, run_dir: Path) -> dict:
    """Returns (and Meta-World's success rates) after 0..eval_steps steps on ``eval_tasks`` held-out
    tasks for each method: table, results.json, the learning curve, the Fig. 5 plot and a rendering
    of the adapted policy. A benchmark with its own split is also scored on its training tasks."""
    torch.set_num_threads(config.threads)
    env = make_env(config)
    policies, iterations = load_policies(config, run_dir, env)
    tasks = held_out_tasks(env, config.eval_tasks, torch.Generator().manual_seed(EVAL_SEED))
    results, episodes = score(env, policies, tasks, config)
    summary = {"metric": "mean return (and success rate, Meta-World) after each policy-gradient step (index = steps)",
               "env": config.env, "checkpoint_iteration": iterations, "eval_tasks": config.eval_tasks,
               "trajectories": config.trajectories, "tasks": tasks.tolist(), "results": results, **timing(run_dir)}
    if hasattr(env, "sample_test_tasks"):
        training = env.sample_tasks(config.eval_tasks, torch.Generator().manual_seed(EVAL_SEED))
        summary["training_tasks"] = {"tasks": training.tolist(), "results": score(env, policies, training, config)[0]}
    write_json(Path(run_dir) / "results.json", summary)
    export_weights(run_dir, {name: policy.state_dict() for name, policy in policies.items()},
                   iterations=json.dumps(iterations))
    print(format_table(results))
    if "training_tasks" in summary:
        print("training tasks:\n" + format_table(summary["training_tasks"]["results"]))
    from mamlkit.experiments import rl_plots  # matplotlib only when plotting
    rl_plots.plot_learning_curve(run_dir, Path(run_dir) / "learning_curve.png")
    rl_plots.plot_returns_vs_steps(results, config.env, Path(run_dir) / "fig5_returns_vs_steps.png")
    if "success" in results["random"]:
        rl_plots.plot_returns_vs_steps(results, config.env, Path(run_dir) / "success_vs_steps.png", key="success")
    if config.render and "maml" in policies:
        rl_plots.render(config, env, policies["maml"], tasks, episodes["maml"], run_dir)
    return summary


def timing(run_dir: Path) -> dict:
    """Mean seconds per meta-iteration of each learner, split into sampling and optimisation
    (wall clock, and CPU seconds of the training process where recorded)."""
    records = read_metrics(run_dir)
    out = {}
    for learner in SELECTIONS:
        for kind in ("sample_s", "optimize_s", "sample_cpu_s", "optimize_cpu_s"):
            values = [r[f"{learner}/{kind}"] for r in records if f"{learner}/{kind}" in r]
            if values:
                out.setdefault(learner, {})[kind] = float(np.mean(values))
    return {"seconds_per_iteration": out} if out else {}


def format_table(results: dict) -> str:
    steps = len(next(iter(results.values()))["return"])
    lines = ["| method | " + " | ".join(f"{s} steps" for s in range(steps)) + " |",
             "|---|" + "---|" * steps]
    for name, row in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{m:.1f} ± {c:.1f}" for m, c in zip(row["return"], row["ci95"])) + " |")
        for direction in ("forward", "backward"):  # direction tasks: each direction's mean
            if direction in row:
                lines.append(f"| {name} {direction} | " + " | ".join(f"{m:.1f}" for m in row[direction]) + " |")
        if "success" in row:
            lines.append(f"| {name} success | " + " | ".join(
                f"{100 * m:.1f} ± {100 * c:.1f}%" for m, c in zip(row["success"], row["success_ci95"])) + " |")
    return "\n".join(lines)
