"""Summary statistics for evaluation protocols."""

import math

from torch import Tensor


def mean_and_ci95(values: Tensor) -> tuple[Tensor, Tensor]:
    """Mean over the first (task) dimension and the 95% half-width 1.96·std/√n, as in the paper."""
    n = values.shape[0]
    std = values.std(dim=0, unbiased=True) if n > 1 else values.new_zeros(values.shape[1:])
    return values.mean(dim=0), 1.96 * std / math.sqrt(n)
