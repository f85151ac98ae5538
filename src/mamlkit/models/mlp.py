"""Fully connected networks used by the paper."""

from torch import nn


def mlp(sizes: tuple[int, ...], activation=nn.ReLU, batch_norm: bool = False) -> nn.Sequential:
    """Linear layers of the given widths with an activation (and optional transductive BatchNorm)
    between them; the last layer is linear."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            if batch_norm:
                layers.append(nn.BatchNorm1d(fan_out, affine=True, track_running_stats=False))
            layers.append(activation())
    return nn.Sequential(*layers)
