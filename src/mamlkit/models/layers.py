"""Small layers the paper's networks need and torch.nn lacks."""

import torch
import torch.nn.functional as F
from torch import nn


class TransductiveBatchNorm(nn.Module):
    """BatchNorm as in the official MAML code: batch statistics always (also at test), a learned
    shift (β), no learned scale (γ) and no running statistics."""

    def __init__(self, channels: int, eps: float = 1e-3):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps  # tf.contrib.layers.batch_norm's default epsilon

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The shift is added outside F.batch_norm: torch 2.13's double backward of batch_norm
        # fails when it is given a bias without a weight.
        shift = self.bias.reshape(1, -1, *([1] * (x.dim() - 2)))
        return F.batch_norm(x, None, None, training=True, eps=self.eps) + shift


class GlobalMean(nn.Module):
    """Mean over the spatial dimensions of an NCHW tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))
