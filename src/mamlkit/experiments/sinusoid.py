"""The paper's sinusoid regression experiment (§5.1), with its two baselines.

MAML, a "pretrained" network (the same MLP regressed on all tasks jointly, then fine-tuned at test
time with the same α) and an oracle (given A and φ as extra inputs) train side by side on the same
task batches (under torchrun each rank trains every learner on its shard of the batch and the
gradients are averaged, so all three match a single-process run). Evaluation fine-tunes on
K ∈ {5, 10, 20} points of 600 held-out tasks for 0..10 steps and reports the MSE on fresh points of each task's curve, with 95% confidence intervals.
"""

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from mamlkit.algorithms import AlgorithmName, accepts
from mamlkit.checks import check_config
from mamlkit.engine import distributed
from mamlkit.engine.checkpoint import export_weights, load_latest_checkpoint
from mamlkit.engine.distributed import Device
from mamlkit.engine.run import write_json
from mamlkit.compiled_iteration import meta_learner
from mamlkit.engine.trainer import TrainLoop
from mamlkit.errors import MamlkitError
from mamlkit.experiments.algorithm_settings import from_settings
from mamlkit.maml import MAML
from mamlkit.models.mlp import mlp
from mamlkit.stats import mean_and_ci95
from mamlkit.tasks.sinusoid import SinusoidBatch, SinusoidTasks
from mamlkit.tasks.stream import task_stream

DISTRIBUTED = True  # shards batches and evaluation under torchrun (see mamlkit.engine.distributed)
EVAL_SEED = 20170309  # held-out tasks are the same for every run and method


@dataclass
class SinusoidConfig:
    iterations: int = 70_000
    """meta-training iterations (meta-batches)"""
    meta_batch: int = 25
    """tasks per meta-batch"""
    support: int = 10
    """K: training points per task, the inner step's data"""
    query: int = 10
    """points per task that score the adapted network (the meta-objective)"""
    inner_lr: float = 0.01
    """α: step size of the inner (adaptation) steps"""
    inner_steps: int = 1
    """inner gradient steps during meta-training"""
    meta_lr: float = 1e-3
    """β: Adam's learning rate for the meta-update (all three learners)"""
    first_order: bool = False
    """first-order approximation: drop the second derivatives through the inner steps"""
    hidden: tuple[int, ...] = (40, 40)
    """widths of the MLP's hidden layers"""
    seed: int = 0
    """seeds the initialisation and the stream of training tasks"""
    eval_tasks: int = 600
    """held-out tasks in the final evaluation"""
    eval_shots: tuple[int, ...] = (5, 10, 20)
    """K values the evaluation fine-tunes on"""
    eval_steps: int = 10
    """evaluation fine-tunes for 0..eval_steps steps"""
    eval_points: int = 100
    """points per held-out task that score the fine-tuned networks"""
    checkpoint_every: int = 2000
    """iterations between checkpoints (a killed run resumes from the last one)"""
    log_every: int = 100
    """iterations between metrics records"""
    compile: Literal["auto", "on", "off"] = "auto"
    """torch.compile the inner step; auto: when the run is long enough to repay ~40 s of compilation"""
    # vmap by default: tasks of 10 points are dispatch-bound, so one vmapped call is the fastest path on any
    # device (the loop is ~5x slower), and a fixed path (not auto's timed choice) keeps reruns bit-identical
    batching: Literal["auto", "vmap", "loop"] = "vmap"
    """how the meta-batch runs: vmap (one vectorised call), loop (one task at a time) or auto (timed choice)"""
    threads: int = 1
    """torch CPU threads per process"""
    device: Device = "auto"
    """where to train; auto: CUDA when present"""
    algo: AlgorithmName = "maml"
    """meta-learning algorithm (see docs/algorithms.md)"""
    algo_options: tuple[str, ...] = ()
    """KEY=VALUE options of the algorithm, e.g. lam=10.0 for imaml"""
    # options a resumed run may change besides engine.run.RESUMABLE (they keep the training valid)
    RESUMABLE: ClassVar[tuple[str, ...]] = ("eval_shots", "eval_points")

    def __post_init__(self):
        check_config(self, whole=("inner_steps", "eval_steps"), widths=("hidden",),
                     positive=("iterations", "meta_batch", "support", "query", "eval_tasks", "eval_points", "threads",
                               "checkpoint_every", "log_every"),
                     rates=("inner_lr", "meta_lr"))
        if not self.eval_shots or min(self.eval_shots) < 1:
            raise MamlkitError(f"eval_shots must be positive numbers of points, got {self.eval_shots}")


def oracle_inputs(batch: SinusoidBatch, x: torch.Tensor) -> torch.Tensor:
    """[x, A, φ]: the oracle sees the task's parameters beside each input."""
    amplitude = batch.amplitude[:, None, None].expand_as(x)
    phase = batch.phase[:, None, None].expand_as(x)
    return torch.cat([x, amplitude, phase], dim=-1)


class JointRegression:
    """A baseline trained by plain regression (or ``loss_fn``) on every point of every task in the batch."""

    def __init__(self, model, optimizer, inputs=lambda batch, x: x, loss_fn=F.mse_loss):
        self.model, self.optimizer, self.inputs, self.loss_fn = model, optimizer, inputs, loss_fn

    def step(self, batch: SinusoidBatch) -> dict[str, float]:
        x = torch.cat([batch.support_x, batch.query_x], dim=1)
        y = torch.cat([batch.support_y, batch.query_y], dim=1)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(self.inputs(batch, x)), y)
        loss.backward()
        loss = distributed.average_gradients(list(self.model.parameters()), loss, tasks=x.shape[0])
        self.optimizer.step()
        return {"mse" if self.loss_fn is F.mse_loss else "loss": loss}

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


def should_compile(config: SinusoidConfig) -> bool:
    long_run = config.iterations >= 10_000 and accepts(config.algo, "compile") and config.batching != "loop"
    return config.compile == "on" or (config.compile == "auto" and long_run)


def build_models(config: SinusoidConfig) -> dict[str, torch.nn.Module]:
    """The three networks, initialised on the CPU from the seed (the same on every device and rank)."""
    torch.manual_seed(config.seed)
    device = distributed.resolve_device(config.device)
    return {"maml": mlp((1, *config.hidden, 1)).to(device), "pretrained": mlp((1, *config.hidden, 1)).to(device),
            "oracle": mlp((3, *config.hidden, 1)).to(device)}


def make_maml(config: SinusoidConfig, model, compile_step: bool = False) -> MAML:
    """The configured meta-learner (``--algo``) around the MAML network."""
    return from_settings(config.algo, model, F.mse_loss, config.algo_options, inner_lr=config.inner_lr,
                         inner_steps=config.inner_steps, eval_inner_steps=config.eval_steps,
                         first_order=config.first_order, batching=config.batching, compile=compile_step)


def fine_tuner(config: SinusoidConfig, model) -> MAML:
    """Plain gradient descent with the same α: how the baselines adapt at test time."""
    return MAML(model, F.mse_loss, inner_lr=config.inner_lr, eval_inner_steps=config.eval_steps)


def make_loop(config: SinusoidConfig, run_dir: Path) -> TrainLoop:
    models = build_models(config)
    maml = make_maml(config, models["maml"], should_compile(config))
    adam = lambda module: torch.optim.Adam(module.parameters(), lr=config.meta_lr)  # noqa: E731
    learners = {
        "maml": meta_learner(maml, adam(maml), compile_iteration=should_compile(config)),
        "pretrained": JointRegression(models["pretrained"], adam(models["pretrained"])),
        "oracle": JointRegression(models["oracle"], adam(models["oracle"]), oracle_inputs),
    }
    tasks = SinusoidTasks()
    device = distributed.resolve_device(config.device)

    def batches(start: int):
        stream = task_stream(partial(tasks.sample, config.meta_batch, config.support, config.query),
                             config.seed, start=start)
        return (distributed.to_device(distributed.shard(batch, config.meta_batch), device) for batch in stream)

    return TrainLoop(
        run_dir=run_dir, learners=learners, batches=batches,
        iterations=config.iterations,
        checkpoint_every=config.checkpoint_every, log_every=config.log_every,
        nan_hint="lower --inner-lr or --meta-lr")


def train(config: SinusoidConfig, run_dir: Path, resume: bool = False) -> dict:
    """Meta-train (or continue a killed run), then evaluate and write results and figures."""
    torch.set_num_threads(config.threads)
    loop = make_loop(config, run_dir)
    loop.run(start=loop.restore() if resume else 0)
    return evaluate(config, run_dir)


def load_learners(config: SinusoidConfig, run_dir: Path) -> dict[str, MAML]:
    """The trained meta-learner and the two baselines' fine-tuners, from the last checkpoint."""
    state = distributed.from_main(lambda: load_latest_checkpoint(Path(run_dir) / "checkpoints")[0])
    models = build_models(config)
    learners = {"maml": make_maml(config, models["maml"]), "pretrained": fine_tuner(config, models["pretrained"]),
                "oracle": fine_tuner(config, models["oracle"])}
    for name, learner in learners.items():
        learner.load_state_dict(state["learners"][name]["model"])
    return learners


@torch.no_grad()
def evaluate(config: SinusoidConfig, run_dir: Path) -> dict:
    """MSE after 0..eval_steps steps at each K for MAML, pretrained and oracle; table, JSON, figures.

    Under torchrun each rank evaluates its part of the held-out tasks; rank 0 writes the outputs.
    """
    torch.set_num_threads(config.threads)
    learners = load_learners(config, run_dir)
    device = distributed.resolve_device(config.device)
    tasks = SinusoidTasks()
    mine = distributed.span(config.eval_tasks)
    results = {}
    for shots in config.eval_shots:
        batch = tasks.sample(config.eval_tasks, shots, config.eval_points, torch.Generator().manual_seed(EVAL_SEED + shots))
        batch = distributed.to_device(distributed.select(batch, mine), device)
        curves = {name: learners[name].evaluate(*batch[:4], chunk_size=200)["loss"] for name in ("maml", "pretrained")}
        oracle = learners["oracle"].model(oracle_inputs(batch, batch.query_x))
        oracle_mse = ((oracle - batch.query_y) ** 2).mean(dim=(1, 2))
        curves["oracle"] = oracle_mse[:, None].expand(-1, config.eval_steps + 1)
        curves = {name: distributed.gather_tasks(curve).cpu() for name, curve in curves.items()}
        results[f"K={shots}"] = {}
        for name, curve in curves.items():
            mean, ci = mean_and_ci95(curve)
            results[f"K={shots}"][name] = {"mse": mean.tolist(), "ci95": ci.tolist()}
    if distributed.is_main():
        write_outputs(config, run_dir, learners, results)
    return results


def write_outputs(config: SinusoidConfig, run_dir: Path, learners: dict[str, MAML], results: dict) -> None:
    write_json(Path(run_dir) / "results.json", {"metric": "mse after each inner step (index = steps)",
                                                "algo": config.algo, "eval_tasks": config.eval_tasks,
                                                "results": results})
    export_weights(run_dir, {name: learner.state_dict() for name, learner in learners.items()}, algo=config.algo)
    print(format_table(results))
    from mamlkit.experiments import sinusoid_plots  # matplotlib only when plotting
    sinusoid_plots.plot_adaptation(learners, adapted_predictions, Path(run_dir) / "fig2_adaptation.png")
    sinusoid_plots.plot_mse_vs_steps(results, Path(run_dir) / "fig3_mse_vs_steps.png")


def format_table(results: dict, steps=(0, 1, 2, 5, 10), metric: str = "mse") -> str:
    """A markdown table: one row per K and method, the metric ± 95% CI after the given step counts."""
    shown = [s for s in steps if s < len(next(iter(next(iter(results.values())).values()))[metric])]
    lines = ["| K | method | " + " | ".join(f"{s} steps" for s in shown) + " |",
             "|---|---|" + "---|" * len(shown)]
    for k, methods in results.items():
        for name, row in methods.items():
            cells = " | ".join(f"{row[metric][s]:.3f} ± {row['ci95'][s]:.3f}" for s in shown)
            lines.append(f"| {k.split('=')[1]} | {name} | {cells} |")
    return "\n".join(lines)


def adapted_predictions(learner: MAML, x, y, grid, steps=(0, 1, 10)) -> dict[int, torch.Tensor]:
    """Predictions on ``grid`` (CPU tensors) after each number of inner steps on the points (x, y)."""
    device = next(learner.model.parameters()).device
    x, y, grid = x.to(device), y.to(device), grid.to(device)
    return {s: learner.predict(grid, learner.adapt(x, y, steps=s)).cpu() for s in steps}
