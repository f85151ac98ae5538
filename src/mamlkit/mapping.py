"""How a per-task function ``per_task(gradient, *task_tensors) -> Tensor`` runs over a meta-batch: ``vmap``
(one vectorised call), a Python loop of plain autograd, or either in chunks of tasks (``TaskMapping``)."""

import math
import warnings
from functools import partial

import torch
from torch import Tensor, nn

from mamlkit import functional as fn
from mamlkit.checks import check_count
from mamlkit.chunked import backward_in_chunks
from mamlkit.errors import MamlkitError
from mamlkit.exact_norm import ExactNormalization
from mamlkit.models.per_step_bn import PerStepBatchNorm
from mamlkit.timed_choice import TimedChoice, device_description, synchronized_clock

BATCHING = ("auto", "vmap", "loop")


def vmap_tasks(per_task, tensors: tuple[Tensor, ...]) -> Tensor:
    """``per_task(gradient, *task_tensors)`` for every task as one vectorised call."""
    with ExactNormalization():
        return torch.vmap(partial(per_task, fn.func_gradient), randomness="different")(*tensors)


def channels_last_images(tensors: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """The same batch with each task's images [n, C, H, W] in channels-last memory order. On a CPU the task
    loop runs faster on it where the net max-pools (MiniImagenet 5w1s 15%: the NCHW max-pool kernel takes
    ~13 ns per element at 84×84); vmap makes its inputs contiguous again, so only the loop is offered it."""
    return tuple(t.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3) if t.dim() == 5 else t
                 for t in tensors)


def running_stats_module(model: nn.Module) -> str | None:
    """Name of a batch/instance norm that would update running statistics in this forward, if any."""
    for name, module in model.named_modules():
        if (isinstance(module, (nn.modules.batchnorm._NormBase, PerStepBatchNorm)) and module.training
                and module.track_running_stats):
            return name or type(module).__name__
    return None


class TaskMapping:
    """vmap or loop for ``model``; ``auto`` falls back to the loop (warning once) when vmap fails. In training
    (``backward``) ``meta_batch_chunk`` tasks are back-propagated at a time; ``auto`` without a chunk size
    times vmap over all tasks, halves, quarters and eighths of them, and the loop (for image batches also on
    channels-last images), and keeps the fastest."""

    def __init__(self, model: nn.Module, batching: str = "auto", checkpoint_inner: bool = False,
                 meta_batch_chunk: int | None = None):
        if batching not in BATCHING:
            raise MamlkitError(f"batching must be one of {BATCHING}, got {batching!r}")
        if checkpoint_inner and batching == "vmap":
            raise MamlkitError("checkpoint_inner=True runs tasks in a Python loop (torch.utils.checkpoint does "
                               "not compose with vmap in torch 2.13); use batching='auto' or 'loop' and compile=False")
        if checkpoint_inner and batching == "auto":
            warnings.warn("mamlkit: checkpoint_inner=True: torch.utils.checkpoint does not compose with vmap in "
                          "torch 2.13, so tasks run in a Python loop", stacklevel=3)
        self.meta_batch_chunk = None if meta_batch_chunk is None else check_count(meta_batch_chunk, "meta_batch_chunk")
        self.model, self.batching, self.checkpoint_inner, self.vmap_failed = model, batching, checkpoint_inner, False
        self.choice: TimedChoice | None = None  # auto, in training: made on the first backward
        self.tasks: int | None = None  # the meta-batch the choice was made for
        self.timed_on: str | None = None  # and where (device_description)
        self._loop_forced = False  # while a timed loop candidate runs

    def uses_vmap(self) -> bool:
        """Whether tasks run under vmap for the model as it is now (train/eval mode matters)."""
        blocker = running_stats_module(self.model)
        if self.batching == "vmap" and blocker:
            raise MamlkitError(f"BatchNorm '{blocker}' updates running statistics, which vmap cannot do per "
                               f"task; build it with track_running_stats=False (the paper's transductive mode) "
                               f"or use batching='loop'")
        if self.checkpoint_inner and blocker:
            raise MamlkitError(f"checkpoint_inner=True recomputes forwards, which would update BatchNorm "
                               f"'{blocker}' running statistics twice; use track_running_stats=False or "
                               f"checkpoint_inner=False")
        if self.batching == "loop" or self.vmap_failed or self.checkpoint_inner or self._loop_forced:
            return False
        if self.batching == "auto" and blocker:
            warnings.warn(f"mamlkit: BatchNorm '{blocker}' tracks running statistics, so tasks run in a "
                          f"Python loop; use track_running_stats=False to batch them with vmap", stacklevel=4)
            return False
        return True

    def __call__(self, per_task, tensors: tuple[Tensor, ...], chunk_size: int | None = None) -> Tensor:
        """``per_task`` over the tasks of ``tensors``, ``chunk_size`` tasks at a time (all by default)."""
        size, tasks = chunk_size or len(tensors[0]), len(tensors[0])
        return torch.cat([self._map(per_task, tuple(t[i:i + size] for t in tensors)) for i in range(0, tasks, size)])

    def _map(self, per_task, tensors: tuple[Tensor, ...]) -> Tensor:
        if self.uses_vmap():
            try:
                return vmap_tasks(per_task, tensors)
            except (RuntimeError, NotImplementedError) as error:
                if self.batching == "vmap":
                    raise
                self.vmap_failed = True
                reason = str(error).strip().splitlines()[0][:160]
                warnings.warn(f"mamlkit: vmap cannot take this model ({reason}); tasks now run in a Python loop",
                              stacklevel=4)
        return torch.stack([per_task(fn.autograd_gradient, *(t[i] for t in tensors)) for i in range(len(tensors[0]))])

    def backward(self, mean_loss, batch: tuple[Tensor, ...]) -> Tensor:
        """``mean_loss(*batch).backward()`` (a mean over tasks) chunk by chunk, on the fastest path under ``auto``;
        returns the detached loss."""
        if self.batching != "auto" or not self.uses_vmap():
            return backward_in_chunks(mean_loss, batch, self.meta_batch_chunk or batch[0].shape[0])
        if self.choice is None:
            self.tasks = batch[0].shape[0]
            images = any(t.dim() == 5 for t in batch)
            self.timed_on = device_description(batch[0].device)
            self.choice = TimedChoice(self._candidates(self.tasks, images), clock=synchronized_clock(batch[0].device))
        return self.choice(mean_loss, batch)

    def _candidates(self, tasks: int, images: bool) -> dict:
        """Name -> path, least memory first: vmap in chunks, the loop (and on channels-last ``images``), vmap over
        all (or ``meta_batch_chunk``) tasks; a tie within TimedChoice's tolerance goes to the earlier."""
        whole = self.meta_batch_chunk or tasks
        chunks = [] if self.meta_batch_chunk else sorted({math.ceil(tasks / parts) for parts in (8, 4, 2)} - {tasks})
        candidates = {f"vmap, {chunk} tasks per backward": partial(self._run, False, chunk) for chunk in chunks}
        candidates["loop"] = partial(self._run, True, whole)
        if images:
            candidates["loop, channels-last images"] = partial(self._run, True, whole, layout=channels_last_images)
        candidates["vmap" if whole == tasks else f"vmap, {whole} tasks per backward"] = partial(self._run, False, whole)
        return candidates

    def _run(self, loop: bool, chunk: int, mean_loss, batch: tuple[Tensor, ...], layout=None) -> Tensor:
        self._loop_forced = loop
        try:
            return backward_in_chunks(mean_loss, layout(batch) if layout else batch, chunk)
        finally:
            self._loop_forced = False

    def report(self) -> dict:
        """How training batches its tasks: the setting and, under ``auto``, the timings and the choice."""
        return {"batching": self.batching, "meta_batch_chunk": self.meta_batch_chunk,
                **({"tasks": self.tasks, "timed_on": self.timed_on, **self.choice.report()} if self.choice else {})}

    def restore(self, report: dict) -> None:
        """Keep the path a previous ``report()`` chose, without timing again (a resumed run goes on as before),
        unless the options changed or it was timed elsewhere: another device, CPU or thread count (the fastest path
        depends on them), or by an older mamlkit that did not record where."""
        candidates = self._candidates(report["tasks"], images=True) if report.get("chosen") is not None else {}
        if (self.batching == "auto" and report.get("chosen") in candidates
                and report.get("timed_on") == device_description(next(self.model.parameters()).device)):
            self.tasks, self.timed_on, self.choice = report["tasks"], report["timed_on"], TimedChoice(candidates)
            self.choice.restore(report)
