"""Choose the fastest of several equivalent computations by timing them on the real calls.

Which way of running a meta-batch is fastest (tasks vmapped, vmapped in chunks, or looped) depends
on the model, the shapes, the device and the machine: on a CPU the task loop beat vmap for Omniglot
20-way and MiniImagenet while vmap wins on a GPU. No rule of thumb gets that right everywhere, so
the first calls rotate over the candidates, time them, and the fastest is kept for the rest of the
run. Every call computes the full result with one of the candidates, so nothing is wasted and the
results do not depend on the choice.
"""

import os
import platform
import statistics
import time
from typing import Callable

import torch

from mamlkit.errors import MamlkitError


class TimedChoice:
    """Call ``candidates[name](*args)``, rotating over the names until one is chosen.

    Round 0 calls every candidate once untimed (warm-up: lazy initialisation, allocator growth), the
    next ``rounds`` rounds time each once. Then the fastest median is chosen; a candidate listed
    earlier wins when it is within ``tolerance`` of the fastest (list candidates in order of
    preference, e.g. least memory first). ``clock`` returns seconds and must include the work (pass a
    synchronising clock for asynchronous devices).
    """

    def __init__(self, candidates: dict[str, Callable], rounds: int = 2, tolerance: float = 0.05,
                 clock: Callable[[], float] = time.perf_counter):
        if not candidates or rounds < 1:
            raise MamlkitError(f"TimedChoice needs at least one candidate and rounds >= 1, got "
                               f"{list(candidates)} and rounds={rounds}")
        self.candidates, self.rounds, self.tolerance, self.clock = dict(candidates), rounds, tolerance, clock
        self.seconds: dict[str, list[float]] = {name: [] for name in self.candidates}
        self.chosen: str | None = next(iter(self.candidates)) if len(self.candidates) == 1 else None
        self._calls = 0

    def __call__(self, *args, **kwargs):
        if self.chosen is not None:
            return self.candidates[self.chosen](*args, **kwargs)
        names = list(self.candidates)
        name, round_ = names[self._calls % len(names)], self._calls // len(names)
        self._calls += 1
        start = self.clock()
        result = self.candidates[name](*args, **kwargs)
        if round_ > 0:
            self.seconds[name].append(self.clock() - start)
        if round_ == self.rounds and name == names[-1]:
            self.chosen = self._fastest()
        return result

    def _fastest(self) -> str:
        medians = {name: statistics.median(times) for name, times in self.seconds.items()}
        best = min(medians.values())
        return next(name for name, median in medians.items() if median <= best * (1 + self.tolerance))

    def restore(self, report: dict) -> None:
        """Keep the choice and timings of an earlier ``report()``: nothing is timed again, and the run
        folder's record of why this path was chosen survives a resume."""
        self.chosen = report["chosen"]
        self.seconds = {name: [ms / 1e3 for ms in times] for name, times in report.get("ms", {}).items()}

    def report(self) -> dict:
        """What was timed and chosen, for the run folder: ``{"chosen", "ms": {name: [ms, ...]}}``."""
        return {"chosen": self.chosen, "ms": {name: [round(s * 1e3, 3) for s in times]
                                              for name, times in self.seconds.items()}}


def synchronized_clock(device: torch.device):
    """``time.perf_counter`` after the device's queued work is done (a CUDA call returns before)."""
    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()
    return now


def cpu_name(cpuinfo_path: str = "/proc/cpuinfo") -> str:
    """The CPU's model, e.g. "AMD EPYC": Linux's /proc/cpuinfo names it where ``platform.processor()`` often
    says only "x86_64"; elsewhere the platform's answer."""
    try:
        with open(cpuinfo_path) as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description(device: torch.device) -> str:
    """What runs the work, as far as speed goes: the GPU and CUDA version, or the CPU, its cores and torch's
    threads. A timed choice holds only where this is the same; benchmarks print it beside their timings."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU: {cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
