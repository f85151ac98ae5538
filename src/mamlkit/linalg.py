"""The one conjugate-gradient solver, shared by iMAML's implicit gradient and TRPO's natural gradient, and the
Hessian-vector products of iMAML's system."""

from typing import Callable

import torch
from torch import Tensor

from mamlkit import functional as fn

Vector = dict[str, Tensor]


def dot(a: Vector, b: Vector) -> Tensor:
    return sum((a[n] * b[n]).sum() for n in a)


def conjugate_gradient(matvec: Callable[[Vector], Vector], b: Vector, steps: int, tol: float) -> Vector:
    """Solve ``matvec(x) = b`` for symmetric positive definite ``matvec`` by CG from x = 0, with
    vectors given as dicts of tensors (parameter dicts, or ``{"x": flat}``).

    Stops improving once ‖r‖ ≤ tol ‖b‖. On a direction of non-positive curvature (the matrix is
    not positive definite there) it stops too, returning the iterate so far, or b itself if that
    happens at once: truncated CG as in Newton-CG (Nocedal & Wright, Alg. 7.1). The stops are
    masks, not Python branches, so the same code runs under vmap (every call does ``steps``
    matrix-vector products; stopped ones stay put).
    """
    x = {n: torch.zeros_like(v) for n, v in b.items()}
    r, p = dict(b), dict(b)
    rr, threshold = dot(r, r), tol ** 2 * dot(b, b)
    stopped = torch.zeros((), dtype=torch.bool, device=rr.device)
    for step in range(steps):
        ap = matvec(p)
        curvature = dot(p, ap)
        if step == 0:  # negative curvature at once: fall back to b, the right-hand side
            x = {n: torch.where(curvature <= 0, b[n], x[n]) for n in x}
        stopped = stopped | (curvature <= 0)
        active = ~stopped & (rr > threshold)
        alpha = torch.where(active, rr / torch.where(active, curvature, 1.0), 0.0)
        x = {n: x[n] + alpha * p[n] for n in x}
        r = {n: r[n] - alpha * ap[n] for n in r}
        rr_next = dot(r, r)
        beta = torch.where(active, rr_next / torch.where(active, rr, 1.0), 0.0)
        p = {n: r[n] + beta * p[n] for n in p}
        rr = rr_next
    return x


def hessian_vector_product(loss_of: Callable[[fn.Params], Tensor], params: fn.Params,
                           gradient: fn.Gradient) -> Callable[[fn.Params], fn.Params]:
    """v ↦ ∇²loss(params) v: the gradient's graph built once, each product one pass back through it (H = Hᵀ)."""
    if gradient is fn.func_gradient:
        _, vjp = torch.func.vjp(torch.func.grad(loss_of), params)
        return lambda v: vjp(v)[0]
    with torch.enable_grad():
        leaves = {n: p.detach().requires_grad_() for n, p in params.items()}
        grads = torch.autograd.grad(loss_of(leaves), tuple(leaves.values()), create_graph=True, allow_unused=True)
    used = [(n, g) for n, g in zip(leaves, grads) if g is not None and g.requires_grad]

    def product(v):
        if not used:
            return {n: torch.zeros_like(p) for n, p in leaves.items()}
        hv = torch.autograd.grad([g for _, g in used], tuple(leaves.values()), [v[n] for n, _ in used],
                                 retain_graph=True, allow_unused=True)
        return {n: torch.zeros_like(p) if h is None else h for (n, p), h in zip(leaves.items(), hv)}
    return product
