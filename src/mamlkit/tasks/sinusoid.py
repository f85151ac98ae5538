"""The paper's sinusoid regression tasks: y = A sin(x − φ) (§5.1)."""

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor


class SinusoidBatch(NamedTuple):
    support_x: Tensor  # [T, K, 1]
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    amplitude: Tensor  # [T]
    phase: Tensor  # [T]


@dataclass(frozen=True)
class SinusoidTasks:
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)

    @staticmethod
    def _uniform(low_high, shape, generator) -> Tensor:
        low, high = low_high
        return low + (high - low) * torch.rand(shape, generator=generator)

    @staticmethod
    def curve(amplitude: Tensor, phase: Tensor, x: Tensor) -> Tensor:
        """y = A sin(x − φ) with A, φ of shape [T] broadcast over x of shape [T, n, 1]."""
        return amplitude[:, None, None] * torch.sin(x - phase[:, None, None])

    def sample(self, tasks: int, support: int, query: int, generator: torch.Generator) -> SinusoidBatch:
        """``tasks`` sinusoids, each with ``support`` and ``query`` points drawn uniformly in x."""
        amplitude = self._uniform(self.amplitude, (tasks,), generator)
        phase = self._uniform(self.phase, (tasks,), generator)
        x = self._uniform(self.x_range, (tasks, support + query, 1), generator)
        y = self.curve(amplitude, phase, x)
        return SinusoidBatch(x[:, :support], y[:, :support], x[:, support:], y[:, support:], amplitude, phase)
