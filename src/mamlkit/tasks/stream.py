"""A reproducible stream of task batches, optionally built by worker processes.

Batch i is drawn from its own generator seeded by (seed, i), so a resumed run continues the exact
stream of an uninterrupted one, and worker processes reproduce the single-process stream.
"""

import itertools
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mamlkit.errors import MamlkitError

Sample = Callable[[torch.Generator], tuple]


def batch_generator(seed: int, iteration: int) -> torch.Generator:
    """The generator for one meta-iteration: batch i depends only on (seed, i)."""
    state = np.random.SeedSequence([seed, iteration]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class _Batches(Dataset):
    """Batch i of the stream, so a DataLoader's workers can build batches out of order."""

    def __init__(self, sample: Sample, seed: int):
        self.sample, self.seed = sample, seed

    def __getitem__(self, iteration: int):
        return self.sample(batch_generator(self.seed, iteration))


def task_stream(sample: Sample, seed: int, workers: int = 0, start: int = 0,
                stop: int | None = None) -> Iterator:
    """Yields ``sample(generator_i)`` for i = start, start+1, ... (forever when ``stop`` is None),
    built by ``workers`` background processes (0: in this process), always in order."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise MamlkitError(f"workers must be 0 or more, got {workers!r}: pass --workers 0 to "
                           "sample in the main process")
    iterations = range(start, stop) if stop is not None else itertools.count(start)
    batches = _Batches(sample, seed)
    if workers == 0:
        return (batches[i] for i in iterations)
    # Its own generator keeps the DataLoader from drawing worker seeds from the global RNG.
    return iter(DataLoader(batches, batch_size=None, sampler=iterations, num_workers=workers,
                           generator=torch.Generator()))
