"""Regression or classification on your own task family: a table of many small tasks
(``mamlkit train table --data FILE``) or your own sampler (``mamlkit train tasks --tasks pkg.mod:fn``).

As in the sinusoid experiment, MAML and a "pretrained" network (the same MLP trained on every
example of the task batches jointly, fine-tuned at test time with the same α) train side by side on
the same batches; the checkpoint with the best validation score (MAML after its training inner
steps) is kept, and the held-out test tasks give MSE (in the target's units) or accuracy after
0..eval_steps steps for both, with 95% confidence intervals, as a table, results.json and a figure.

A sampler (docs/own-data.md) is ``fn(split) -> sampler`` for split "train", "val" and "test", where
``sampler.sample(num_tasks, generator)`` returns (support_x, support_y, query_x, query_y): inputs
float [T, n, features]; targets float [T, n, d] (regression: MSE) or int64 [T, n] (classification:
cross-entropy over ``sampler.classes`` outputs). Draw everything from ``generator``: that is what
makes runs reproducible and resumable.
"""

import importlib
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

from mamlkit.algorithms import AlgorithmName
from mamlkit.checks import check_config
from mamlkit.engine import distributed
from mamlkit.engine.checkpoint import BestCheckpoint, load_latest_checkpoint
from mamlkit.engine.distributed import Device
from mamlkit.engine.run import write_json
from mamlkit.engine.trainer import MetaLearner, TrainLoop
from mamlkit.errors import MamlkitError
from mamlkit.experiments.algorithm_settings import from_settings
from mamlkit.experiments.fewshot import accuracy
from mamlkit.experiments.sinusoid import JointRegression, format_table
from mamlkit.maml import MAML
from mamlkit.models.mlp import mlp
from mamlkit.stats import mean_and_ci95
from mamlkit.tasks.stream import batch_generator, task_stream
from mamlkit.tasks.table import TaskBatch

DISTRIBUTED = True  # shards batches and evaluation under torchrun (see mamlkit.engine.distributed)
VALIDATION_SEED, TEST_SEED = 1, 2  # fixed task sets, the same for every run
TABLE_FILE = "table.json"  # a table run's columns, classes and scaling, for adapting and predicting


@dataclass
class TasksConfig:
    data: str = ""
    """table: a .csv or .parquet file, one row per example"""
    task_column: str = "task"
    """table: the column naming each row's task"""
    target_column: str = "target"
    """table: the column to predict"""
    features: tuple[str, ...] = ()
    """table: the feature columns (default: all but the task and target columns)"""
    problem: Literal["regression", "classification"] = "regression"
    """table: regression (MSE) or classification (cross-entropy over the target's classes)"""
    tasks: str = ""
    """your own sampler instead of a table: package.module:function (docs/own-data.md)"""
    split_fractions: tuple[float, ...] = (0.7, 0.1, 0.2)
    """table: train, val, test shares of the tasks"""
    split_seed: int = 1
    """table: seed of the task shuffle that split_fractions cut"""
    split_files: str = ""
    """table: folder with train.txt, val.txt, test.txt naming each split's tasks"""
    support: int = 10
    """table: support rows per task (K)"""
    query: int = 10
    """table: query rows per task"""
    hidden: tuple[int, ...] = (40, 40)
    """widths of the MLP's hidden layers"""
    iterations: int = 10_000
    """meta-training iterations (meta-batches)"""
    meta_batch: int = 25
    """tasks per meta-batch"""
    inner_lr: float = 0.01
    """α: step size of the inner (adaptation) steps"""
    inner_steps: int = 1
    """inner gradient steps during meta-training"""
    meta_lr: float = 1e-3
    """β: Adam's learning rate for the meta-update (MAML and the pretrained network)"""
    first_order: bool = False
    """first-order approximation: drop the second derivatives through the inner steps"""
    validate_every: int = 500
    """iterations between validation runs (the best one's checkpoint is evaluated)"""
    validation_tasks: int = 200
    """fixed validation tasks that select the checkpoint"""
    eval_tasks: int = 600
    """held-out test tasks in the final evaluation"""
    eval_steps: int = 10
    """evaluation fine-tunes for 0..eval_steps steps"""
    checkpoint_every: int = 1000
    """iterations between checkpoints (a killed run resumes from the last one)"""
    log_every: int = 100
    """iterations between metrics records"""
    seed: int = 0
    """seeds the initialisation and the stream of training tasks"""
    threads: int = 1
    """torch CPU threads per process"""
    device: Device = "auto"
    """where to train; auto: CUDA when present"""
    algo: AlgorithmName = "maml"
    """meta-learning algorithm (see docs/algorithms.md)"""
    algo_options: tuple[str, ...] = ()
    """KEY=VALUE options of the algorithm, e.g. lam=10.0 for imaml"""

    def __post_init__(self):
        check_config(self, whole=("iterations", "inner_steps", "eval_steps"),
                     positive=("meta_batch", "support", "query", "validate_every", "validation_tasks", "eval_tasks",
                               "checkpoint_every", "log_every", "threads"),
                     rates=("inner_lr", "meta_lr"))


def classification_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every example, whatever leading dimensions they come in."""
    return F.cross_entropy(prediction.flatten(0, -2), target.flatten())


def load_callable(spec: str):
    """The object named ``package.module:name``."""
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise MamlkitError(f"--tasks {spec!r} is not package.module:function; e.g. --tasks mytasks:make_sampler")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise MamlkitError(f"cannot import {module_name!r} for --tasks ({e}): install it or add its folder to "
                           "PYTHONPATH") from None
    if not hasattr(module, name):
        raise MamlkitError(f"module {module_name!r} has no {name!r} for --tasks: check the name after the colon")
    return getattr(module, name)


def load_samplers(config: TasksConfig):
    """Train / val / test samplers and, for a table, the table (its columns, classes and scaling)."""
    if bool(config.tasks) == bool(config.data):
        raise MamlkitError("give a table (--data FILE --task-column C --target-column Y) or your own sampler "
                           "(--tasks package.module:function), one of the two")
    if config.tasks:
        make = load_callable(config.tasks)
        return {split: make(split) for split in ("train", "val", "test")}, None
    from mamlkit.tasks.splits import split_names
    from mamlkit.tasks.table import TableTasks, load_table
    split = partial(split_names, fractions=config.split_fractions, seed=config.split_seed, files=config.split_files)
    table = load_table(config.data, config.task_column, config.target_column, config.features, config.problem,
                       train_tasks=lambda names: split(names)[0])
    samplers = {name: TableTasks(table, tasks, config.support, config.query, name)
                for name, tasks in zip(("train", "val", "test"), split(table.task_names))}
    return samplers, table


def draw(sampler, count: int, seed: int) -> TaskBatch:
    """``count`` tasks from a sampler, checked against the protocol (one line naming what is wrong)."""
    try:
        batch = TaskBatch(*sampler.sample(count, batch_generator(seed, 0)))
    except (AttributeError, TypeError) as e:
        raise MamlkitError(f"the task sampler does not follow the protocol ({e}): sample(num_tasks, generator) "
                           "must return support_x, support_y, query_x, query_y (docs/own-data.md)") from None
    for name, x in (("support_x", batch.support_x), ("query_x", batch.query_x)):
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or not x.is_floating_point() or x.shape[0] != count:
            raise MamlkitError(f"the task sampler's {name} must be a float tensor [{count}, n, features], got "
                               f"{getattr(x, 'shape', type(x).__name__)}")
    if not batch.support_y.is_floating_point() and getattr(sampler, "classes", None) is None:
        raise MamlkitError("the task sampler returns class labels but has no `classes` attribute: set "
                           "sampler.classes to the number of classes")
    return batch


class Problem(NamedTuple):
    """What the MLP maps: ``features`` inputs to ``outputs`` values (regression) or class scores."""

    features: int
    outputs: int
    classification: bool

    @property
    def loss(self):
        return classification_loss if self.classification else F.mse_loss

    @property
    def metrics(self) -> dict:
        return {"accuracy": accuracy} if self.classification else {"mse": F.mse_loss}


def problem_of(batch: TaskBatch, sampler) -> Problem:
    """The problem a sampler's batch poses: float targets are regressed, int64 ones classified."""
    if batch.support_y.is_floating_point():
        return Problem(batch.support_x.shape[-1], batch.support_y.shape[-1], False)
    return Problem(batch.support_x.shape[-1], sampler.classes, True)


def build_models(config: TasksConfig, features: int, outputs: int) -> dict[str, torch.nn.Module]:
    """MAML's and the pretrained baseline's MLPs, initialised on the CPU from the seed."""
    torch.manual_seed(config.seed)
    device = distributed.resolve_device(config.device)
    return {name: mlp((features, *config.hidden, outputs)).to(device) for name in ("maml", "pretrained")}


def make_learners(config: TasksConfig, problem: Problem) -> dict[str, MAML]:
    """The meta-learner and the baseline's fine-tuner (plain gradient descent with the same α)."""
    models = build_models(config, problem.features, problem.outputs)
    maml = from_settings(config.algo, models["maml"], problem.loss, config.algo_options, inner_lr=config.inner_lr,
                         inner_steps=config.inner_steps, eval_inner_steps=config.eval_steps,
                         first_order=config.first_order)
    return {"maml": maml, "pretrained": MAML(models["pretrained"], problem.loss, inner_lr=config.inner_lr,
                                            eval_inner_steps=config.eval_steps)}


def train(config: TasksConfig, run_dir: Path, resume: bool = False) -> dict:
    """Meta-train MAML and the baseline, keep the best on validation, then evaluate on the test tasks."""
    torch.set_num_threads(config.threads)
    device = distributed.resolve_device(config.device)
    samplers, table = load_samplers(config)
    if table is not None and distributed.is_main():
        write_json(Path(run_dir) / TABLE_FILE, {"features": table.features, "classes": table.classes,
                                                **table.scaling.to_dict()})
    validation = draw(samplers["val"], config.validation_tasks, VALIDATION_SEED)
    problem = problem_of(validation, samplers["train"])
    learners, metrics = make_learners(config, problem), problem.metrics
    adam = lambda learner: torch.optim.Adam(learner.parameters(), lr=config.meta_lr)  # noqa: E731
    trainers = {"maml": MetaLearner(learners["maml"], adam(learners["maml"])),
                "pretrained": JointRegression(learners["pretrained"].model, adam(learners["pretrained"].model),
                                              loss_fn=problem.loss)}
    validation = distributed.to_device(distributed.select(validation, distributed.span(config.validation_tasks)),
                                       device)
    best = BestCheckpoint(Path(run_dir) / "best", "val_score") if distributed.is_main() else None
    name, metric = next(iter(metrics.items()))
    sign = -1 if name == "mse" else 1  # the best checkpoint has the highest score

    def validate(iteration: int) -> dict[str, float]:
        curve = learners["maml"].evaluate(*validation, steps=config.inner_steps, metrics=metrics)[name]
        value = distributed.gather_tasks(curve)[:, -1].mean().item()
        if best is not None:
            best.offer(iteration, sign * value, {"learners": {k: t.state_dict() for k, t in trainers.items()}})
        return {f"val/{name}": value}

    def batches(start: int):
        stream = task_stream(partial(sampler_batch, samplers["train"], config.meta_batch), config.seed, start=start)
        return (distributed.to_device(distributed.shard(batch, config.meta_batch), device) for batch in stream)

    loop = TrainLoop(run_dir=run_dir, learners=trainers, batches=batches, iterations=config.iterations,
                     checkpoint_every=config.checkpoint_every, log_every=config.log_every,
                     nan_hint="lower --inner-lr or --meta-lr", validate=validate, validate_every=config.validate_every)
    loop.run(start=loop.restore() if resume else 0)
    return evaluate(config, run_dir, samplers)


def sampler_batch(sampler, count: int, generator: torch.Generator) -> TaskBatch:
    return TaskBatch(*sampler.sample(count, generator))


def load_trained(config: TasksConfig, run_dir: Path, problem: Problem) -> tuple[dict[str, MAML], dict]:
    """The best-on-validation meta-learner and fine-tuner, and that checkpoint."""
    state = distributed.from_main(lambda: load_latest_checkpoint(Path(run_dir) / "best")[0])
    learners = make_learners(config, problem)
    for name, learner in learners.items():
        learner.load_state_dict(state["learners"][name]["model"])
    return learners, state


def table_problem(run_dir: Path) -> tuple[Problem, dict]:
    """A table run's problem and its saved columns, classes and scaling (no need for the training table)."""
    saved = json.loads((Path(run_dir) / TABLE_FILE).read_text())
    classes = saved["classes"]
    return Problem(len(saved["features"]), len(classes) if classes else 1, classes is not None), saved


def evaluate(config: TasksConfig, run_dir: Path, samplers: dict | None = None) -> dict:
    """MSE (target units) or accuracy after 0..eval_steps steps on the test tasks: table, JSON, figure."""
    torch.set_num_threads(config.threads)
    samplers = samplers or load_samplers(config)[0]
    test = draw(samplers["test"], config.eval_tasks, TEST_SEED)
    problem = problem_of(test, samplers["train"])
    learners, state = load_trained(config, run_dir, problem)
    metrics = problem.metrics
    name = next(iter(metrics))
    scale = _target_variance(run_dir) if name == "mse" else 100.0  # MSE in the target's units, accuracy in %
    test = distributed.to_device(distributed.select(test, distributed.span(config.eval_tasks)),
                                 distributed.resolve_device(config.device))
    rows = {}
    for learner_name, learner in learners.items():
        curve = distributed.gather_tasks(learner.evaluate(*test, metrics=metrics, chunk_size=200)[name]).cpu()
        mean, ci = mean_and_ci95(curve * scale)
        rows[learner_name] = {name: mean.tolist(), "ci95": ci.tolist()}
    results = {f"K={test.support_x.shape[1]}": rows}
    summary = {"metric": f"{name} after each inner step (index = steps)", "algo": config.algo,
               "checkpoint_iteration": state["iteration"], "eval_tasks": config.eval_tasks, "results": results}
    if distributed.is_main():
        write_json(Path(run_dir) / "results.json", summary)
        print(format_table(results, metric=name))
        from mamlkit.experiments import sinusoid_plots  # matplotlib only when plotting
        sinusoid_plots.plot_mse_vs_steps(results, Path(run_dir) / f"{name}_vs_steps.png", metric=name)
    return summary


def _target_variance(run_dir: Path) -> float:
    """A table run's MSE is computed on standardised targets: this turns it into the target's units."""
    path = Path(run_dir) / TABLE_FILE
    return json.loads(path.read_text())["target_std"] ** 2 if path.exists() else 1.0
