"""MAML's inner loop as pure functions over parameter dicts.

Everything here takes parameters explicitly, so the same code runs for one task, under ``vmap``
over a meta-batch, and under ``torch.compile``. Second order and first order differ only in
whether the inner gradient stays in the graph.
"""

from typing import Callable, Mapping

import torch
from torch import Tensor

Params = dict[str, Tensor]
Forward = Callable[[Params, Tensor], Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]
Gradient = Callable[[Callable[[Params], Tensor], Params, bool], Params]


def func_gradient(loss_of: Callable[[Params], Tensor], params: Params, create_graph: bool) -> Params:
    """Gradient with ``torch.func.grad``: composes with vmap, compile and outer autograd."""
    grads = torch.func.grad(loss_of)(params)
    return grads if create_graph else {name: g.detach() for name, g in grads.items()}


def autograd_gradient(loss_of: Callable[[Params], Tensor], params: Params, create_graph: bool) -> Params:
    """Gradient with ``torch.autograd.grad``: works for models no functorch transform can take
    (in-place buffer updates such as BatchNorm running statistics, data-dependent Python)."""
    with torch.enable_grad():
        # Parameters outside any outer graph (evaluation) become fresh leaves to differentiate.
        params = {n: p if p.requires_grad else p.detach().requires_grad_() for n, p in params.items()}
        loss = loss_of(params)
        grads = torch.autograd.grad(loss, tuple(params.values()), create_graph=create_graph,
                                    allow_unused=True)
    return {name: torch.zeros_like(p) if g is None else g
            for (name, p), g in zip(params.items(), grads)}


def sgd_step(params: Params, grads: Params, lr: float | Mapping[str, Tensor]) -> Params:
    """θ' = θ − α∇θ, with α a number or a per-parameter mapping (Meta-SGD style)."""
    if isinstance(lr, Mapping):
        return {name: p - lr[name] * grads[name] for name, p in params.items()}
    return {name: p - lr * grads[name] for name, p in params.items()}


def adapt(forward: Forward, loss_fn: LossFn, params: Params, x: Tensor, y: Tensor, lr,
          steps: int, first_order: bool, gradient: Gradient = func_gradient) -> Params:
    """Run ``steps`` gradient-descent steps on one task's support set; return adapted parameters."""
    for _ in range(steps):
        grads = gradient(lambda p: loss_fn(forward(p, x), y), params, not first_order)
        params = sgd_step(params, grads, lr)
    return params


def query_loss(forward: Forward, loss_fn: LossFn, params: Params, support_x: Tensor,
               support_y: Tensor, query_x: Tensor, query_y: Tensor, lr, steps: int,
               first_order: bool, gradient: Gradient = func_gradient) -> Tensor:
    """One task's contribution to the meta-objective: the query loss after adaptation."""
    adapted = adapt(forward, loss_fn, params, support_x, support_y, lr, steps, first_order, gradient)
    return loss_fn(forward(adapted, query_x), query_y)


def adaptation_curve(forward: Forward, loss_fn: LossFn, metrics: Mapping[str, LossFn],
                     params: Params, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                     query_y: Tensor, lr, steps: int, gradient: Gradient = func_gradient) -> Tensor:
    """Query metrics before and after each of ``steps`` inner steps: ``[steps + 1, len(metrics)]``."""
    rows = []
    for step in range(steps + 1):
        prediction = forward(params, query_x)
        rows.append(torch.stack([metric(prediction, query_y) for metric in metrics.values()]))
        if step < steps:
            params = adapt(forward, loss_fn, params, support_x, support_y, lr, 1, True, gradient)
    return torch.stack(rows)
