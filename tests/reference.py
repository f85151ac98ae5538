"""An independent MAML reference: a Python loop over tasks with plain torch.autograd.grad.

It shares no code with mamlkit. Only ``torch.func.functional_call`` is used, to run the unmodified
module with adapted weights.
"""

import torch
from torch.func import functional_call


def trainable(model):
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def reference_meta_loss(model, loss_fn, lr, steps, batch, first_order=False, params=None):
    """mean_i L_query_i(θ − α∇L_support_i(...)) with every inner step unrolled in autograd."""
    params = trainable(model) if params is None else params
    names = list(params)
    support_x, support_y, query_x, query_y = batch
    total = 0.0
    for i in range(support_x.shape[0]):
        fast = list(params.values())
        for _ in range(steps):
            loss = loss_fn(functional_call(model, dict(zip(names, fast)), (support_x[i],)), support_y[i])
            grads = torch.autograd.grad(loss, fast, create_graph=True, allow_unused=True)
            grads = [torch.zeros_like(w) if g is None else g for w, g in zip(fast, grads)]
            if first_order:
                grads = [g.detach() for g in grads]
            fast = [w - lr * g for w, g in zip(fast, grads)]
        total = total + loss_fn(functional_call(model, dict(zip(names, fast)), (query_x[i],)), query_y[i])
    return total / support_x.shape[0]


def reference_meta_grad(model, loss_fn, lr, steps, batch, first_order=False):
    params = trainable(model)
    loss = reference_meta_loss(model, loss_fn, lr, steps, batch, first_order)
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(params.items(), grads)}


def finite_difference_directional(model, loss_fn, lr, steps, batch, direction, eps=1e-6):
    """Central difference of the meta-objective along ``direction`` (a dict like the parameters)."""
    params = trainable(model)
    with torch.no_grad():
        values = []
        for sign in (1.0, -1.0):
            shifted = {n: (p + sign * eps * direction[n]).requires_grad_() for n, p in params.items()}
            with torch.enable_grad():
                values.append(reference_meta_loss(model, loss_fn, lr, steps, batch, params=shifted).item())
    return (values[0] - values[1]) / (2 * eps)


def relative_error(actual: dict, expected: dict) -> float:
    diff = torch.cat([(actual[n] - expected[n]).flatten() for n in expected])
    ref = torch.cat([expected[n].flatten() for n in expected])
    return (diff.norm() / ref.norm()).item()
