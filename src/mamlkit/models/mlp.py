"""Fully connected networks used by the paper."""

from typing import Callable

from torch import nn


def mlp(sizes: tuple[int, ...], activation=nn.ReLU,
        norm: Callable[[int], nn.Module] | None = None) -> nn.Sequential:
    """Linear layers of the given widths with ``norm`` (optional) and an activation between them;
    the last layer is linear."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.extend([norm(fan_out)] if norm else [])
            layers.append(activation())
    return nn.Sequential(*layers)
