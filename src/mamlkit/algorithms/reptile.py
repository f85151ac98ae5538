"""Reptile (Nichol, Achiam & Schulman 2018): move θ toward the weights each task adapts to.

No second derivatives and no query loss in the update: each task runs ``inner_steps`` plain SGD
steps from θ to φ_i, and the meta-update interpolates θ ← θ + ε (mean_i φ_i − θ). ``meta_backward``
writes ``.grad = mean_i (θ − φ_i)``, so ``torch.optim.SGD(lr=ε)`` performs exactly that update
(ε = 1 jumps to the mean adapted weights); Adam and friends treat it as any other gradient.
"""

from functools import partial

import torch
from torch import Tensor

from mamlkit import functional as fn
from mamlkit.algorithms._task_mean import mean_over_tasks
from mamlkit.checks import check_task_batch
from mamlkit.errors import MamlkitError
from mamlkit.maml import MAML, accumulate_grad

INNER_DATA = ("support", "all")


class Reptile(MAML):
    """Reptile around an unmodified ``nn.Module``, with MAML's ``adapt``/``predict``/``evaluate``.

    Args:
        model, loss_fn, inner_lr, eval_inner_steps, batching: as for :class:`mamlkit.MAML`.
        inner_steps: SGD steps per task during meta-training (k; Reptile needs k > 1 to differ
            from joint training on all tasks).
        inner_data: ``"support"`` adapts on the support set only (the query set just gives the
            reported loss); ``"all"`` adapts on support and query together, as Reptile may since its
            update never evaluates a held-out loss.
    """

    def __init__(self, model, loss_fn, inner_lr: float, inner_steps: int = 5, *,
                 eval_inner_steps: int | None = None, inner_data: str = "support", batching: str = "auto"):
        if inner_data not in INNER_DATA:
            raise MamlkitError(f"inner_data must be one of {INNER_DATA}, got {inner_data!r}")
        super().__init__(model, loss_fn, inner_lr, inner_steps, eval_inner_steps=eval_inner_steps,
                         first_order=True, batching=batching)
        if self.inner_steps < 1:
            raise MamlkitError("Reptile needs inner_steps >= 1 (with 0 the update is zero)")
        self.inner_data = inner_data

    def meta_loss(self, *batch):
        raise MamlkitError("Reptile's update is not the gradient of a loss; call meta_backward(...) "
                           "and then optimizer.step()")

    @torch.no_grad()
    def meta_backward(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor) -> Tensor:
        """Add mean_i (θ − φ_i) to ``.grad``; return the mean query loss after adaptation."""
        tensors = (support_x, support_y, query_x, query_y)
        check_task_batch(tensors, self._reference_tensor())
        theta = {name: p.detach() for name, p in self.parameters_to_adapt().items()}
        forward = partial(self._forward, self._constants())

        def per_task(gradient, sx, sy, qx, qy):
            x, y = (sx, sy) if self.inner_data == "support" else (torch.cat([sx, qx]), torch.cat([sy, qy]))
            phi = fn.adapt(forward, self.loss_fn, theta, x, y, self.inner_lr, self.inner_steps, True, gradient)
            return {n: theta[n] - phi[n] for n in theta}, self.loss_fn(forward(phi, qx), qy)

        direction, loss = mean_over_tasks(self, per_task, tensors, theta)
        accumulate_grad(self.parameters_to_adapt(), direction)
        return loss
