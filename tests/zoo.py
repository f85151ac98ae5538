"""Small models of every kind the gradient tests cover, each with a matching task batch."""

import torch
import torch.nn.functional as F
from torch import nn

from mamlkit.models.conv import miniimagenet_conv, omniglot_conv, omniglot_mlp


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


def image_batch(tasks=3, n=6, classes=3, generator=None, size=6):
    g = generator or torch.Generator().manual_seed(2)
    return (torch.randn(tasks, n, 1, size, size, generator=g), torch.randint(0, classes, (tasks, n), generator=g),
            torch.randn(tasks, n, 1, size, size, generator=g), torch.randint(0, classes, (tasks, n), generator=g))


# name -> (model factory, batch factory, loss)
CASES = {
    "mlp": (mlp, regression_batch, F.mse_loss),
    "conv_batchnorm": (conv_batchnorm, image_batch, F.cross_entropy),
    "buffers": (Scaled, regression_batch, F.mse_loss),
    "frozen": (frozen_mlp, regression_batch, F.mse_loss),
    "tied": (SharedLinear, lambda: regression_batch(features=3), F.mse_loss),
    # the paper's networks (fewer filters, smaller images), with the official transductive BatchNorm
    "paper_omniglot_conv": (lambda: omniglot_conv(3, filters=4), image_batch, F.cross_entropy),
    "paper_miniimagenet_conv": (lambda: miniimagenet_conv(3, filters=4, channels=1, size=16),
                                lambda: image_batch(size=16), F.cross_entropy),
    "paper_mlp": (lambda: omniglot_mlp(3, pixels=36), image_batch, F.cross_entropy),
}


def smooth(model):
    """Replace ReLU by tanh and max-pooling by average pooling. Their derivatives jump, so the
    adapted weights θ − α∇L(θ), and with them the meta-objective, jump too: finite differences
    are only meaningful on smooth models."""
    for name, child in model.named_children():
        if isinstance(child, nn.ReLU):
            setattr(model, name, nn.Tanh())
        elif isinstance(child, nn.MaxPool2d):
            setattr(model, name, nn.AvgPool2d(child.kernel_size))
        else:
            smooth(child)
    return model
