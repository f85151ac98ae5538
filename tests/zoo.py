"""Small models of every kind the gradient tests cover, each with a matching task batch."""

import torch
import torch.nn.functional as F
from torch import nn


class Scaled(nn.Module):
    """A model whose forward reads buffers."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
        self.register_buffer("input_scale", torch.tensor([0.5, 2.0]))
        self.register_buffer("offset", torch.tensor(0.3))

    def forward(self, x):
        return self.net(x * self.input_scale) + self.offset


class SharedLinear(nn.Module):
    """Two submodules holding one Parameter: tied weights as nn.Module users write them."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(3, 3)
        self.second = nn.Linear(3, 3)
        self.second.weight = self.first.weight
        self.head = nn.Linear(3, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.second(torch.tanh(self.first(x)))))


def mlp():
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1))


def frozen_mlp():
    model = mlp()
    model[0].weight.requires_grad_(False)
    return model


def conv_batchnorm():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2), nn.BatchNorm2d(4, affine=False, track_running_stats=False), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 2 * 2, 3))


def regression_batch(tasks=3, n=6, features=2, generator=None):
    g = generator or torch.Generator().manual_seed(1)
    return (torch.randn(tasks, n, features, generator=g), torch.randn(tasks, n, 1, generator=g),
            torch.randn(tasks, n, features, generator=g), torch.randn(tasks, n, 1, generator=g))


def image_batch(tasks=3, n=6, classes=3, generator=None):
    g = generator or torch.Generator().manual_seed(2)
    return (torch.randn(tasks, n, 1, 6, 6, generator=g), torch.randint(0, classes, (tasks, n), generator=g),
            torch.randn(tasks, n, 1, 6, 6, generator=g), torch.randint(0, classes, (tasks, n), generator=g))


# name -> (model factory, batch factory, loss)
CASES = {
    "mlp": (mlp, regression_batch, F.mse_loss),
    "conv_batchnorm": (conv_batchnorm, image_batch, F.cross_entropy),
    "buffers": (Scaled, regression_batch, F.mse_loss),
    "frozen": (frozen_mlp, regression_batch, F.mse_loss),
    "tied": (SharedLinear, lambda: regression_batch(features=3), F.mse_loss),
}


def smooth(model):
    """Replace ReLUs by tanh. ReLU's derivative jumps, so the adapted weights θ − α∇L(θ), and with
    them the meta-objective, jump too: finite differences are only meaningful on smooth models."""
    for name, child in model.named_children():
        if isinstance(child, nn.ReLU):
            setattr(model, name, nn.Tanh())
        else:
            smooth(child)
    return model
