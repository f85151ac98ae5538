"""How a family forms the meta-gradient over functional.py's inner loop: the path a task's inner loop takes
(from θ, from θ plus a prototype head, on a proximal problem) and how ``meta_backward`` makes ``.grad``."""

from functools import partial
from typing import Iterator, Mapping

import torch
from torch import Tensor

from mamlkit import functional as fn
from mamlkit.chunked import backward_in_chunks
from mamlkit.errors import MamlkitError
from mamlkit.mapping import vmap_tasks

NOT_A_GRADIENT = {  # MAML's options that mean nothing to a family whose update is not autograd through the loop
    "learn_lr": "its update is not a gradient through the inner loop, so learned rates would get none",
    "compile": "compile=True compiles the gradient of the meta-loss, and its update is not one",
    "checkpoint_inner": "it keeps no graph of the inner loop, so there is nothing to checkpoint",
}


def accumulate_grad(tensors: Mapping[str, Tensor], grads: Mapping[str, Tensor]) -> None:
    """Add ``grads`` into ``.grad`` as ``backward()`` would (cloned: a gradient may view a shared buffer)."""
    for name, p in tensors.items():
        g = grads[name].detach()
        p.grad = g.clone() if p.grad is None else p.grad + g


class Strategy:
    """The unrolled inner loop, differentiated by autograd (first order: the inner gradient detached).
    Other families override what differs: ``start`` (where a task's inner loop starts: θ), ``path``
    (θ_0 .. θ_steps), ``check_labels`` (refuse targets the family cannot use), ``meta_backward``."""

    excluded: tuple[str, ...] = ()  # parameters rebuilt per task (ProtoMAML's head): predicting needs a support set

    def __init__(self):
        self._compiled = {}

    def check_labels(self, *labels: Tensor) -> None:
        pass

    def start(self, loop: fn.InnerLoop, params: fn.Params, x: Tensor, y: Tensor) -> fn.Params:
        return params

    def path(self, loop: fn.InnerLoop, theta: fn.Params, x: Tensor, y: Tensor, steps: int, gradient: fn.Gradient,
             first_order: bool) -> Iterator[fn.Params]:
        return fn.trajectory(loop, self.start(loop, theta, x, y), x, y, steps, first_order, gradient)

    def objective(self, maml, params: fn.Params, constants: fn.Params, batch: tuple[Tensor, ...], *, map_tasks,
                  rates, first_order: bool, step_weights: Tensor | None) -> Tensor:
        """The mean post-adaptation query loss as a function of θ, the constants and the rates."""
        loop = maml.inner_loop(constants, rates)

        def per_task(gradient, sx, sy, qx, qy):
            path = self.path(loop, params, sx, sy, maml.inner_steps, gradient, first_order)
            return fn.query_loss(loop, path, qx, qy, step_weights)

        return map_tasks(per_task, batch).mean()

    def meta_loss(self, maml, batch: tuple[Tensor, ...]) -> Tensor:
        first_order, step_weights = maml.training_options()
        return self.objective(maml, maml.parameters_to_adapt(), maml.selection.constants(), batch,
                              map_tasks=maml.mapping, rates=None, first_order=first_order, step_weights=step_weights)

    def meta_backward(self, maml, batch: tuple[Tensor, ...]) -> Tensor:
        """``meta_loss(...).backward()``: task by task with ``checkpoint_inner``, through a compiled
        ``grad_and_value`` with ``compile``, else as the task mapping chooses."""
        def mean_loss(*tasks):
            return self.meta_loss(maml, tasks)

        if maml.checkpoint_inner:
            return backward_in_chunks(mean_loss, batch, 1)
        if maml.compile and maml.mapping.uses_vmap():
            return self._compiled_meta_backward(maml, batch)
        return maml.mapping.backward(mean_loss, batch)

    def _compiled_meta_backward(self, maml, batch: tuple[Tensor, ...]) -> Tensor:
        """One compilation per derivative order; the step weights are an input, not a constant."""
        first_order, step_weights = maml.training_options()
        if first_order not in self._compiled:
            self._compiled[first_order] = torch.compile(torch.func.grad_and_value(
                partial(self.meta_objective, maml, first_order=first_order)))
        meta, constants = self.meta_inputs(maml)
        grads, loss = self._compiled[first_order](meta, constants, batch, step_weights)
        for group, tensors in meta.items():
            accumulate_grad(tensors, grads[group])
        return loss.detach()

    def meta_inputs(self, maml) -> tuple[dict[str, fn.Params], fn.Params]:
        """``meta_objective``'s meta-parameters by group (adapted, fixed in the inner loop, rates) and constants."""
        meta = {"params": maml.parameters_to_adapt(), "fixed": maml.selection.fixed_trainable(),
                "rates": maml.inner_lrs}
        return meta, {n: t for n, t in maml.selection.constants().items() if n not in meta["fixed"]}

    def meta_objective(self, maml, meta: dict[str, fn.Params], constants: fn.Params, batch, step_weights, *,
                       first_order: bool) -> Tensor:
        """The meta-objective as a pure function of every meta-parameter (tasks vmapped), for torch.func/compile."""
        return self.objective(maml, meta["params"], {**constants, **meta["fixed"]}, batch, map_tasks=vmap_tasks,
                              rates=meta["rates"], first_order=first_order, step_weights=step_weights)


class NotALoss(Strategy):
    """A family whose update is not the gradient of a loss (Reptile, iMAML): ``meta_backward`` adds the mean of
    ``task_update(maml, loop, θ, gradient, *task)``'s directions into ``.grad``."""

    def meta_loss(self, maml, batch):
        raise MamlkitError(f"{type(maml).__name__}'s update is not the gradient of a loss; call meta_backward(...) "
                           f"and then optimizer.step()")

    @torch.no_grad()
    def meta_backward(self, maml, batch: tuple[Tensor, ...]) -> Tensor:
        """A task's direction and loss travel as one flat vector (the task mapping maps one tensor)."""
        theta = {name: p.detach() for name, p in maml.parameters_to_adapt().items()}
        loop = maml.inner_loop(maml.selection.constants())

        def flat_task(gradient, *task):
            direction, loss = self.task_update(maml, loop, theta, gradient, *task)
            return torch.cat([direction[n].reshape(-1) for n in theta] + [loss.reshape(1)])

        flat = maml.mapping(flat_task, batch, maml.mapping.meta_batch_chunk).mean(dim=0)
        pieces = flat[:-1].split([p.numel() for p in theta.values()])
        accumulate_grad(maml.parameters_to_adapt(), {n: g.view_as(theta[n]) for n, g in zip(theta, pieces)})
        return flat[-1]
