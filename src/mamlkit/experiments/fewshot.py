"""Few-shot image classification (paper §5.2, Table 1): Omniglot, MiniImagenet and any folder of
class folders (``mamlkit train images --data DIR``).

The protocol is code, not a convention: the checkpoint is chosen on validation accuracy, the test
set is 600 tasks of classes never seen in training, and accuracy is reported after every inner step
with a 95% confidence interval. ``--ensemble N`` tests the mean prediction of the N checkpoints best
on validation instead (MAML++'s published protocol), beside the best one alone. Under torchrun the
meta-batch, the validation tasks and the test tasks are sharded over the ranks; rank 0 writes every
output.
"""

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from mamlkit.algorithms import AlgorithmName
from mamlkit.checks import check_config
from mamlkit.compiled_iteration import one_call
from mamlkit.cuda_graph import GraphedMetaLearner
from mamlkit.engine import distributed
from mamlkit.engine.checkpoint import BestCheckpoint, export_weights, load_best
from mamlkit.engine.distributed import Device
from mamlkit.engine.run import write_json
from mamlkit.engine.trainer import MetaLearner, TrainLoop
from mamlkit.errors import MamlkitError
from mamlkit.experiments.algorithm_settings import from_settings
from mamlkit.maml import MAML
from mamlkit.models.conv import miniimagenet_conv, omniglot_conv, omniglot_mlp
from mamlkit.stats import mean_and_ci95
from mamlkit.tasks.episodes import EpisodeSampler
from mamlkit.tasks.stream import batch_generator, task_stream

DISTRIBUTED = True  # shards batches and evaluation under torchrun (see mamlkit.engine.distributed)
VALIDATION_SEED, TEST_SEED = 1, 2  # fixed task sets, the same for every run


@dataclass
class FewShotConfig:
    dataset: Literal["omniglot", "miniimagenet", "images"] = "omniglot"
    """which images the episodes come from; images: any DIR/<class>/*.png tree (docs/own-data.md)"""
    data: str = "data/omniglot"
    """folder holding the data set (see docs/fewshot.md for the expected files)"""
    download: bool = False
    """download Omniglot into --data first if it is not there"""
    split: Literal["paper", "vinyals"] = "paper"
    """Omniglot's class split: paper (1200 training characters, 100 of them validate) or vinyals (by alphabet)"""
    model: Literal["conv", "conv-pool", "mlp"] = "conv"
    """conv: the paper's 4-layer CNN; conv-pool: stride 1 and 2×2 max-pools (MAML++'s); mlp: Omniglot's baseline"""
    image_size: int = 28
    """images: side in pixels every image is resized to"""
    channels: int = 1
    """images: 1 (grayscale) or 3 (RGB)"""
    rotations: bool = False
    """images: turn each class of a task by a random multiple of 90° (Omniglot always does)"""
    split_fractions: tuple[float, ...] = (0.7, 0.1, 0.2)
    """images: train, val, test shares of the classes"""
    split_seed: int = 1
    """images: seed of the class shuffle that split_fractions cut"""
    split_files: str = ""
    """images: folder with train.txt, val.txt, test.txt naming each split's classes"""
    ways: int = 5
    """N: classes per episode"""
    shots: int = 1
    """K: labelled support images per class"""
    queries: int = 1
    """query images per class that score the adapted network"""
    meta_batch: int = 32
    """tasks (episodes) per meta-batch"""
    inner_lr: float = 0.4
    """α: step size of the inner (adaptation) steps"""
    inner_steps: int = 1
    """inner gradient steps during meta-training"""
    eval_inner_steps: int = 3
    """inner steps at validation and test time (accuracy is reported after each)"""
    meta_lr: float = 1e-3
    """β: Adam's learning rate for the meta-update"""
    first_order: bool = False
    """first-order approximation: drop the second derivatives through the inner steps"""
    loss_scale: Literal["official", "mean"] = "official"
    """official: sum / K = N × mean, so the paper's α apply; mean: plain mean cross-entropy"""
    clip_value: float = 0.0
    """clip meta-gradients to [−c, c]; 0 = off (MiniImagenet: 10)"""
    iterations: int = 60_000
    """meta-training iterations (meta-batches)"""
    max_minutes: float = 0.0
    """stop training after this wall-clock budget (0 = none); resumable"""
    validate_every: int = 500
    """iterations between validation runs (the best one's checkpoint is evaluated)"""
    validation_tasks: int = 200
    """fixed validation episodes that select the checkpoint"""
    eval_tasks: int = 600
    """test episodes in the final evaluation"""
    ensemble: int = 1
    """keep the N checkpoints best on validation and test their mean adapted logits (MAML++'s protocol: 5)"""
    eval_chunk: int = 100
    """episodes adapted at once during validation and testing (bounds memory)"""
    checkpoint_every: int = 500
    """iterations between checkpoints (a killed run resumes from the last one)"""
    log_every: int = 50
    """iterations between metrics records"""
    seed: int = 0
    """seeds the initialisation and the stream of training episodes"""
    workers: int = 0
    """DataLoader processes sampling training episodes; 0: in this process"""
    threads: int = 2
    """torch CPU threads per process"""
    batching: Literal["auto", "vmap", "loop"] = "auto"
    """how the meta-batch runs: vmap, loop, or auto: the fastest of vmap, vmap in chunks and loop (timed first)"""
    meta_batch_chunk: int = 0
    """tasks back-propagated at a time in training (same gradient, less memory); 0: all, or auto's choice"""
    compile: Literal["auto", "on", "off", "cuda-graph"] = "auto"
    """auto: cuda-graph (one recorded iteration, replayed) on a GPU where it applies, else off; on: torch.compile"""
    device: Device = "auto"
    """where to train; auto: CUDA when present"""
    algo: AlgorithmName = "maml"
    """meta-learning algorithm (see docs/algorithms.md)"""
    algo_options: tuple[str, ...] = ()
    """KEY=VALUE options of the algorithm, e.g. lam=2.0 cg_steps=5 for imaml"""
    # options a resumed run may change besides engine.run.RESUMABLE (they keep the training valid)
    RESUMABLE: ClassVar[tuple[str, ...]] = ("data",)

    def __post_init__(self):
        check_config(self, whole=("inner_steps", "eval_inner_steps", "workers", "meta_batch_chunk"),
                     positive=("iterations", "ways", "shots", "queries", "meta_batch", "validate_every",
                               "validation_tasks", "eval_tasks", "ensemble", "eval_chunk", "checkpoint_every",
                               "log_every", "threads", "image_size"),
                     rates=("inner_lr", "meta_lr"))
        if self.channels not in (1, 3):
            raise MamlkitError(f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels}")
        if self.model == "mlp" and self.dataset == "miniimagenet":
            raise MamlkitError("the no-convolution MLP is Omniglot's baseline; use --model conv for MiniImagenet")
        if self.model == "conv-pool" and self.dataset == "miniimagenet":
            raise MamlkitError("MiniImagenet's conv net max-pools already; use --model conv")
        if self.model == "conv-pool" and self.dataset == "images" and self.image_size < 16:
            raise MamlkitError(f"--model conv-pool halves the image four times and needs --image-size 16 or more, "
                               f"got {self.image_size}")


def scaled_cross_entropy(prediction: torch.Tensor, target: torch.Tensor, scale: float) -> torch.Tensor:
    """Mean cross-entropy times ``scale``. The official code sums per-example losses and divides
    by K, which on N·K support examples is N × mean: scale = N lets the paper's α be used as is."""
    return F.cross_entropy(prediction, target) * scale


def accuracy(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (prediction.argmax(dim=-1) == target).float().mean()


def loss_function(config: FewShotConfig):
    return partial(scaled_cross_entropy, scale=config.ways if config.loss_scale == "official" else 1.0)


def build_model(config: FewShotConfig) -> torch.nn.Module:
    """The classifier, initialised on the CPU from the seed (the same on every device and rank)."""
    torch.manual_seed(config.seed)
    if config.dataset == "miniimagenet":
        model = miniimagenet_conv(config.ways)
    else:  # Omniglot's networks, also for own images (global mean pooling fits any image size)
        channels, size = (config.channels, config.image_size) if config.dataset == "images" else (1, 28)
        model = (omniglot_mlp(config.ways, pixels=channels * size ** 2) if config.model == "mlp" else
                 omniglot_conv(config.ways, channels=channels, max_pool=config.model == "conv-pool"))
    return model.to(distributed.resolve_device(config.device))


def make_maml(config: FewShotConfig, model) -> MAML:
    """The configured meta-learner (``--algo``) around ``model``."""
    return from_settings(config.algo, model, loss_function(config), config.algo_options, inner_lr=config.inner_lr,
                         inner_steps=config.inner_steps, eval_inner_steps=config.eval_inner_steps,
                         first_order=config.first_order, batching=config.batching, compile=config.compile == "on",
                         **({"meta_batch_chunk": config.meta_batch_chunk} if config.meta_batch_chunk else {}))


def load_samplers(config: FewShotConfig) -> dict[str, EpisodeSampler]:
    """Episode samplers over the train / validation / test classes of the configured data set."""
    def sampler(images, classes, rotations, counts=None, names=None):
        return EpisodeSampler(images, classes, config.ways, config.shots, config.queries, rotations=rotations,
                              counts=counts, names=names)

    if config.dataset == "images":
        from mamlkit.tasks.image_folder import load_image_folder
        from mamlkit.tasks.splits import split_names
        data = load_image_folder(config.data, config.image_size, config.channels)
        splits = split_names(data.names, config.split_fractions, config.split_seed, config.split_files)
        return {name: sampler(data.images, classes, config.rotations, data.counts, data.names)
                for name, classes in zip(("train", "val", "test"), splits)}
    if config.dataset == "omniglot":
        from mamlkit.tasks.omniglot import download_omniglot, load_omniglot, omniglot_split
        if config.download:
            download_omniglot(config.data)
        data = load_omniglot(config.data)
        splits = omniglot_split(data.names if config.split == "vinyals" else len(data.names), kind=config.split)
        return {name: sampler(data.images, classes, rotations=True)
                for name, classes in zip(("train", "val", "test"), splits)}
    from mamlkit.tasks.miniimagenet import load_miniimagenet
    samplers = {}
    for name in ("train", "val", "test"):
        data = load_miniimagenet(config.data, name)
        samplers[name] = sampler(data.images, range(len(data.names)), rotations=False)
    return samplers


def image_decoder(config: FewShotConfig):
    """How the run's data set reads one image file (uint8 [C, H, W]): new tasks are read the same way."""
    if config.dataset == "omniglot":
        from mamlkit.tasks.omniglot import decode_file
        return decode_file
    from mamlkit.tasks.image_folder import image_decoder as folder_decoder
    from mamlkit.tasks.miniimagenet import SIZE
    return folder_decoder(SIZE, 3) if config.dataset == "miniimagenet" else folder_decoder(config.image_size,
                                                                                              config.channels)


def fixed_tasks(sampler: EpisodeSampler, count: int, seed: int, device: torch.device | str = "cpu") -> tuple:
    """This rank's part of a fixed task set (all of it in one process), on ``device``."""
    tasks = sampler.sample(count, batch_generator(seed, 0))
    return distributed.to_device(distributed.select(tasks, distributed.span(count)), device)


def accuracy_curves(maml: MAML, tasks: tuple, chunk: int) -> torch.Tensor:
    """Query accuracy after 0..eval_inner_steps steps, per task of every rank: ``[T, steps + 1]``."""
    curves = maml.evaluate(*tasks, metrics={"accuracy": accuracy}, chunk_size=chunk)["accuracy"]
    return distributed.gather_tasks(curves)


def train(config: FewShotConfig, run_dir: Path, resume: bool = False) -> dict:
    """Meta-train with validation-based checkpoint selection, then evaluate on the test classes."""
    torch.set_num_threads(config.threads)
    device = distributed.resolve_device(config.device)
    samplers = load_samplers(config)
    maml = make_maml(config, build_model(config))
    optimizer = torch.optim.Adam(maml.parameters(), lr=config.meta_lr)
    validation = fixed_tasks(samplers["val"], config.validation_tasks, VALIDATION_SEED, device)
    best = BestCheckpoint(Path(run_dir) / "best", "val_accuracy", config.ensemble) if distributed.is_main() else None

    def validate(iteration: int) -> dict[str, float]:
        value = accuracy_curves(maml, validation, config.eval_chunk)[:, -1].mean().item()
        if best is not None:
            best.offer(iteration, value, {"model": maml.state_dict()})
        return {"val/accuracy": value}

    def batches(start: int):
        stream = task_stream(partial(samplers["train"].sample, config.meta_batch), config.seed,
                             workers=config.workers, start=start)
        return (distributed.to_device(distributed.shard(batch, config.meta_batch), device) for batch in stream)

    loop = TrainLoop(
        run_dir=run_dir,
        learners={"maml": choose_learner(config, maml, optimizer, device)},
        batches=batches,
        iterations=config.iterations, checkpoint_every=config.checkpoint_every, log_every=config.log_every,
        nan_hint="lower --inner-lr or --meta-lr", validate=validate, validate_every=config.validate_every,
        time_limit=config.max_minutes * 60 or None)
    loop.run(start=loop.restore() if resume else 0)
    return evaluate(config, run_dir, samplers)


def choose_learner(config: FewShotConfig, maml: MAML, optimizer: torch.optim.Optimizer,
                   device: torch.device) -> MetaLearner:
    """The eager learner, or the CUDA-graph one when asked for or, with auto, where it applies: on an H200
    it is 3.7-7x eager (docs/distributed.md)."""
    eager = MetaLearner(maml, optimizer, config.clip_value or None)
    graphed = config.compile == "cuda-graph" or (config.compile == "auto" and device.type == "cuda"
                                                 and one_call(eager))
    return GraphedMetaLearner(maml, optimizer, config.clip_value or None) if graphed else eager


def load_trained(config: FewShotConfig, run_dir: Path, count: int = 1) -> tuple[MAML, list[dict]]:
    """The meta-learner of the run's best-on-validation checkpoint, and the ``count`` best checkpoints."""
    states = distributed.from_main(lambda: load_best(Path(run_dir) / "best", "val_accuracy", count))
    maml = make_maml(config, build_model(config))
    maml.load_state_dict(states[0]["model"])
    return maml, states


def query_logits(maml: MAML, tasks: tuple, chunk: int) -> torch.Tensor:
    """The query logits after 0..eval_inner_steps steps, per task of every rank: ``[T, steps + 1, Q, N]``."""
    logits = maml.evaluate(*tasks, metrics={"logits": lambda prediction, target: prediction}, chunk_size=chunk)
    return distributed.gather_tasks(logits["logits"])


def member_logits(maml: MAML, states: list[dict], tasks: tuple, chunk: int) -> torch.Tensor:
    """Each state's query logits, adapted on its own, stacked: ``[M, T, steps + 1, Q, N]``. ``maml`` is
    left holding ``states[0]``."""
    logits = []
    for state in reversed(states):
        maml.load_state_dict(state["model"])
        logits.append(query_logits(maml, tasks, chunk).cpu())
    return torch.stack(logits[::-1])


def query_labels(tasks: tuple) -> torch.Tensor:
    """The query labels of every rank's tasks, shaped to meet ``query_logits``: ``[T, 1, Q]``."""
    return distributed.gather_tasks(tasks[3]).cpu()[:, None]


def task_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-task accuracy of query ``logits`` ``[T, steps + 1, Q, N]`` against ``query_labels``: ``[T, steps + 1]``."""
    return (logits.argmax(dim=-1) == labels).float().mean(dim=-1)


def alone_and_ensemble(maml: MAML, states: list[dict], tasks: tuple, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task test accuracy after each step, ``[T, steps + 1]``, of the first state alone and of the mean
    logits of all ``states`` (the official MAML++ ensemble: each checkpoint adapts on its own)."""
    logits, labels = member_logits(maml, states, tasks, chunk), query_labels(tasks)
    return task_accuracy(logits[0], labels), task_accuracy(logits.mean(dim=0), labels)


def summary(curves: torch.Tensor) -> dict:
    """Mean and 95% CI after each step, and each task's accuracy after the last (for benchmarks/paired.py)."""
    mean, ci = mean_and_ci95(curves * 100)
    return {"accuracy": mean.tolist(), "ci95": ci.tolist(),
            "task_accuracy": [round(a, 4) for a in (curves[:, -1] * 100).tolist()]}


def evaluate(config: FewShotConfig, run_dir: Path, samplers: dict | None = None) -> dict:
    """Test accuracy of the best-on-validation checkpoint (or ensemble): table, results.json, learning curve."""
    torch.set_num_threads(config.threads)
    samplers = samplers or load_samplers(config)
    maml, states = load_trained(config, run_dir, config.ensemble)
    test = fixed_tasks(samplers["test"], config.eval_tasks, TEST_SEED, distributed.resolve_device(config.device))
    alone, ensemble = alone_and_ensemble(maml, states, test, config.eval_chunk)
    results = {"metric": "test accuracy % after each inner step (index = steps)", "algo": config.algo,
               "checkpoint_iteration": states[0]["iteration"], "val_accuracy": states[0]["val_accuracy"],
               "eval_tasks": config.eval_tasks, **summary(ensemble)}
    if config.ensemble > 1:
        results.update(ensemble=[{"iteration": s["iteration"], "val_accuracy": s["val_accuracy"]} for s in states],
                       best_alone=summary(alone))
    if not distributed.is_main():
        return results
    write_json(Path(run_dir) / "results.json", results)
    export_weights(run_dir, {"maml": maml.state_dict()}, iteration=states[0]["iteration"], algo=config.algo)
    print(format_table(results))
    from mamlkit.experiments.fewshot_plots import plot_learning_curve  # matplotlib only when plotting
    plot_learning_curve(run_dir, results, Path(run_dir) / "learning_curve.png")
    return results


def format_table(results: dict) -> str:
    steps = range(len(results["accuracy"]))

    def row(name, summary):
        cells = (f"{a:.2f} ± {c:.2f}" for a, c in zip(summary["accuracy"], summary["ci95"]))
        return f"| {name} | " + " | ".join(cells) + " |"

    members = results.get("ensemble", [])
    rows = [row("test accuracy %", results)] if not members else [
        row(f"mean of the {len(members)} best, test accuracy %", results),
        row("best alone, test accuracy %", results["best_alone"])]
    chosen = (f"checkpoints from iterations {', '.join(str(m['iteration']) for m in members)}" if members else
              f"checkpoint from iteration {results['checkpoint_iteration']}")
    return "\n".join([
        "| inner steps | " + " | ".join(str(s) for s in steps) + " |",
        "|---|" + "---|" * len(steps), *rows,
        f"({chosen}, validation accuracy {100 * results['val_accuracy']:.2f}%"
        f"{' for the best' if members else ''}, {results['eval_tasks']} test tasks)"])
