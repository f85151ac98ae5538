"""The training loop shared by every experiment: sample, step each learner, log, checkpoint.

A *learner* is anything with ``step(batch) -> {name: float}`` plus ``state_dict``/
``load_state_dict``: MAML with its meta-optimizer, or a baseline trained on the same batches.
The loop state (learners, iteration) lives in one checkpoint and batch i depends only on
(seed, i), so a killed run resumes and ends with the same numbers as an uninterrupted one.
Under torchrun every rank runs this loop on its shard of each batch (see ``distributed``); only
rank 0 logs and writes checkpoints, and a restore hands rank 0's checkpoint to every rank.
"""

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

import torch
from tqdm import tqdm

from mamlkit.checks import check_finite
from mamlkit.engine import distributed
from mamlkit.engine.checkpoint import load_latest_checkpoint, remove_checkpoints_after, save_checkpoint
from mamlkit.engine.metrics import MetricsLog
from mamlkit.engine.run import write_json
from mamlkit.maml import MAML


class Learner(Protocol):
    def step(self, batch) -> dict[str, float]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


def optimizer_parameters(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


class MetaLearner:
    """MAML plus its meta-optimizer: one ``step`` is one meta-update (averaged over ranks)."""

    def __init__(self, maml: MAML, optimizer: torch.optim.Optimizer, clip_value: float | None = None):
        self.maml, self.optimizer, self.clip_value = maml, optimizer, clip_value
        self.scheduler = maml.lr_scheduler(optimizer)  # the variant's meta-LR schedule (MAML++: cosine) or None

    def step(self, batch) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.maml.meta_backward(*batch[:4])
        parameters = optimizer_parameters(self.optimizer)
        loss = distributed.average_gradients(parameters, loss, tasks=batch[0].shape[0])
        if self.clip_value is not None:
            torch.nn.utils.clip_grad_value_(parameters, self.clip_value)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return {"query_loss": loss}

    def batching(self) -> dict:
        """How the meta-batch's tasks run (under batching='auto': the timings and the choice)."""
        return self.maml.mapping.report()

    def state_dict(self) -> dict:
        state = {"model": self.maml.state_dict(), "optimizer": self.optimizer.state_dict(), "batching": self.batching()}
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.maml.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.maml.mapping.restore(state.get("batching", {}))  # older checkpoints have none: time again


@dataclass
class TrainLoop:
    run_dir: Path
    learners: dict[str, Learner]
    batches: Callable[[int], Iterator]  # start iteration -> the task batches from there on
    iterations: int
    checkpoint_every: int = 1000
    log_every: int = 100
    nan_hint: str = "lower the learning rates (--inner-lr, --meta-lr)"
    validate: Callable[[int], dict[str, float]] | None = None  # called every validate_every iterations
    validate_every: int = 1000
    time_limit: float | None = None  # seconds; stop early (checkpointed, resumable) when exceeded

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.run_dir) / "checkpoints"

    def _state(self, iteration: int) -> dict:
        return {"iteration": iteration, "torch_rng": torch.get_rng_state(),
                "learners": {name: learner.state_dict() for name, learner in self.learners.items()}}

    def _record_batching(self) -> None:
        """batching.json: how each MAML learner runs its tasks (what batching='auto' timed and kept)."""
        reports = {name: learner.batching() for name, learner in self.learners.items() if hasattr(learner, "batching")}
        if reports:
            write_json(Path(self.run_dir) / "batching.json", reports)

    def restore(self) -> int:
        """Load the newest intact checkpoint (rank 0's, on every rank); return its iteration."""
        state = distributed.from_main(lambda: load_latest_checkpoint(self.checkpoint_dir)[0])
        torch.set_rng_state(state["torch_rng"])
        for name, learner in self.learners.items():
            learner.load_state_dict(state["learners"][name])
        if distributed.is_main():
            print(f"mamlkit: resuming from the checkpoint of iteration {state['iteration']}", file=sys.stderr)
        return state["iteration"]

    def run(self, start: int = 0) -> None:
        """Train from iteration ``start`` to ``iterations``; stops cleanly on a non-finite loss."""
        main = distributed.is_main()
        if main:
            remove_checkpoints_after(Path(self.run_dir) / "best", start)
        metrics = MetricsLog(self.run_dir, start) if main else None
        bar = tqdm(total=self.iterations, initial=start, unit="it", dynamic_ncols=True, disable=None if main else True)
        window_start, window_iterations = time.perf_counter(), 0
        deadline = time.perf_counter() + self.time_limit if self.time_limit else float("inf")
        try:
            for iteration, batch in zip(range(start + 1, self.iterations + 1), self.batches(start)):
                scalars = {}
                for name, learner in self.learners.items():
                    for key, value in learner.step(batch).items():
                        check_finite(value, iteration, f"{name} diverged: {self.nan_hint}; the last good checkpoint "
                                                       f"is kept in {self.checkpoint_dir}")
                        scalars[f"{name}/{key}"] = value
                bar.update()
                window_iterations += 1
                last = iteration == self.iterations or (
                    self.time_limit and distributed.any_rank(time.perf_counter() > deadline))
                validated = self.validate is not None and (iteration % self.validate_every == 0 or last)
                if validated:
                    scalars.update(self.validate(iteration))
                if main and (validated or iteration % self.log_every == 0 or last):
                    elapsed = time.perf_counter() - window_start
                    scalars["iterations_per_s"] = window_iterations / elapsed
                    metrics.log(iteration, scalars)
                    bar.set_postfix({k.split("/")[0]: f"{v:.3f}" for k, v in scalars.items() if "/" in k})
                    window_start, window_iterations = time.perf_counter(), 0
                    self._record_batching()
                if main and (iteration % self.checkpoint_every == 0 or last):
                    save_checkpoint(self.checkpoint_dir, iteration, self._state(iteration))
                if last:
                    break
        finally:
            bar.close()
            if metrics is not None:
                metrics.close()
