"""MAML's inner loop as pure functions over parameter dicts, so the same code runs for one task, under ``vmap``
and under ``torch.compile``; first order differs only in a detached inner gradient."""

from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import torch
import torch.utils.checkpoint
from torch import Tensor

Params = dict[str, Tensor]
Forward = Callable[[Params, Tensor], Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]
Gradient = Callable[[Callable[[Params], Tensor], Params, bool], Params]


@dataclass(frozen=True)
class InnerLoop:
    """What one task's inner loop needs, fixed for one call."""
    at: Callable[[int], Forward]  # the forward for the parameters after s inner steps
    loss_fn: LossFn
    lr: object  # a number, a per-parameter mapping or a function of the step (``rate_at``)
    checkpoint: bool = False


def func_gradient(loss_of: Callable[[Params], Tensor], params: Params, create_graph: bool) -> Params:
    """Gradient with ``torch.func.grad``: composes with vmap, compile and outer autograd."""
    grads = torch.func.grad(loss_of)(params)
    return grads if create_graph else {name: g.detach() for name, g in grads.items()}


def autograd_gradient(loss_of: Callable[[Params], Tensor], params: Params, create_graph: bool) -> Params:
    """Gradient with ``torch.autograd.grad``, for models no functorch transform can take (in-place
    buffer updates such as BatchNorm running statistics, data-dependent Python)."""
    with torch.enable_grad():
        # Parameters outside any outer graph (evaluation) become fresh leaves to differentiate.
        params = {n: p if p.requires_grad else p.detach().requires_grad_() for n, p in params.items()}
        grads = torch.autograd.grad(loss_of(params), tuple(params.values()), create_graph=create_graph,
                                    allow_unused=True)
    return {name: torch.zeros_like(p) if g is None else g for (name, p), g in zip(params.items(), grads)}


def rate_at(lr, step: int):
    """The learning rate of inner step ``step``: ``lr`` itself, or ``lr(step)`` when it is a function."""
    return lr(step) if callable(lr) else lr


def sgd_step(params: Params, grads: Params, lr: float | Mapping[str, Tensor]) -> Params:
    """θ' = θ − α∇θ, with α a number or a per-parameter mapping (Meta-SGD style)."""
    return {name: p - (lr[name] if isinstance(lr, Mapping) else lr) * grads[name] for name, p in params.items()}


def inner_step(forward: Forward, loss_fn: LossFn, params: Params, x: Tensor, y: Tensor, lr,
               first_order: bool, gradient: Gradient) -> Params:
    """One gradient-descent step on the support loss."""
    grads = gradient(lambda p: loss_fn(forward(p, x), y), params, not first_order)
    return sgd_step(params, grads, lr)


def checkpointed_inner_step(forward: Forward, loss_fn: LossFn, params: Params, x: Tensor, y: Tensor, lr,
                            first_order: bool, gradient: Gradient) -> Params:
    """``inner_step`` keeping only its input parameters, its graph rebuilt during backward (with
    ``autograd_gradient`` only: ``torch.func.grad`` refuses checkpoint's saved-tensor hooks in torch 2.13)."""
    names = list(params)

    def step(*values):
        return tuple(inner_step(forward, loss_fn, dict(zip(names, values)), x, y, lr, first_order, gradient).values())

    return dict(zip(names, torch.utils.checkpoint.checkpoint(step, *params.values(), use_reentrant=False)))


def trajectory(loop: InnerLoop, params: Params, x: Tensor, y: Tensor, steps: int, first_order: bool,
               gradient: Gradient = func_gradient) -> Iterator[Params]:
    """θ_0, θ_1, ..., θ_steps: the parameters before and after each inner step on (x, y); step s
    runs the forward ``loop.at(s)`` with rate ``rate_at(loop.lr, s)``."""
    step_fn = checkpointed_inner_step if loop.checkpoint and torch.is_grad_enabled() else inner_step
    yield params
    for s in range(steps):
        params = step_fn(loop.at(s), loop.loss_fn, params, x, y, rate_at(loop.lr, s), first_order, gradient)
        yield params


def last(items: Iterator):
    """The final element of an iterator (the adapted parameters at the end of a trajectory)."""
    return deque(items, maxlen=1).pop()


def query_loss(loop: InnerLoop, path: Iterator[Params], query_x: Tensor, query_y: Tensor,
               step_weights: Tensor | None = None) -> Tensor:
    """One task's meta-objective: the query loss at the end of ``path`` (θ_0, θ_1, ...), or with ``step_weights``
    MAML++'s multi-step loss Σ_s w[s-1] L_query(θ_s), s = 1..steps."""
    if step_weights is None:
        s, params = last(enumerate(path))
        return loop.loss_fn(loop.at(s)(params, query_x), query_y)
    losses = [loop.loss_fn(loop.at(s)(p, query_x), query_y) for s, p in enumerate(path) if s > 0]
    return (torch.stack(losses) * step_weights).sum()


def adaptation_curve(loop: InnerLoop, metrics: Mapping[str, LossFn], path: Iterator[Params], query_x: Tensor,
                     query_y: Tensor) -> Tensor:
    """Query metrics at every point of ``path`` (θ_0 .. θ_steps): ``[steps + 1, len(metrics)]``."""
    rows = []
    for s, params in enumerate(path):
        prediction = loop.at(s)(params, query_x)
        rows.append(torch.stack([metric(prediction, query_y) for metric in metrics.values()]))
    return torch.stack(rows)
