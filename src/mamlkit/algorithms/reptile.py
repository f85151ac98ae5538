"""Reptile (Nichol, Achiam & Schulman 2018): move θ toward the weights φ_i each task adapts to.
``meta_backward`` writes ``.grad = mean_i (θ − φ_i)``, so ``torch.optim.SGD(lr=ε)`` is Reptile's update."""

import torch

from mamlkit import functional as fn
from mamlkit.errors import MamlkitError
from mamlkit.maml import MAML
from mamlkit.strategies import NOT_A_GRADIENT, NotALoss

INNER_DATA = ("support", "all")


class TowardAdapted(NotALoss):
    """The meta-gradient mean_i (θ − φ_i), φ_i after first-order SGD on the task's ``inner_data``."""

    def __init__(self, inner_data: str):
        super().__init__()
        if inner_data not in INNER_DATA:
            raise MamlkitError(f"inner_data must be one of {INNER_DATA}, got {inner_data!r}")
        self.inner_data = inner_data

    def task_update(self, maml, loop: fn.InnerLoop, theta: fn.Params, gradient: fn.Gradient, sx, sy, qx, qy):
        x, y = (sx, sy) if self.inner_data == "support" else (torch.cat([sx, qx]), torch.cat([sy, qy]))
        phi = fn.last(self.path(loop, theta, x, y, maml.inner_steps, gradient, True))
        return {n: theta[n] - phi[n] for n in theta}, maml.loss_fn(loop.at(maml.inner_steps)(phi, qx), qy)


class Reptile(MAML):
    """Reptile around an unmodified ``nn.Module``; ``inner_steps`` SGD steps per task (k > 1, else it is joint
    training) on ``inner_data``: ``"support"`` (the query set gives the reported loss) or ``"all"``, support and
    query together, as Reptile's update needs no held-out loss. MAML's options less ``NOT_A_GRADIENT``'s."""

    does_not_take = NOT_A_GRADIENT

    def __init__(self, model, loss_fn, inner_lr: float, inner_steps: int = 5, *, inner_data: str = "support",
                 **options):
        super().__init__(model, loss_fn, inner_lr, inner_steps, strategy=TowardAdapted(inner_data),
                         **{"first_order": True, **options})
        if self.inner_steps < 1:
            raise MamlkitError("Reptile needs inner_steps >= 1 (with 0 the update is zero)")
