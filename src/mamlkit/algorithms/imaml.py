"""iMAML (Rajeswaran, Finn, Kakade & Levine 2019): the implicit meta-gradient of a proximal inner loop.

Each task minimises L_support(φ) + λ/2 ‖φ − θ‖² from φ = θ; at a minimum φ*, dφ*/dθ = (I + H/λ)⁻¹
(H = ∇²L_support(φ*)), solved by conjugate gradient, in memory that does not grow with the steps. k steps
that do not reach φ* pass on P = Π_s (I − α_s (H + λI)) of θ unsolved (exact on a quadratic loss), so
the task's meta-gradient is P g + (I + H/λ)⁻¹ (g − P g), g = ∇L_query(φ_k) (docs/algorithms.md)."""

import math
from typing import Iterator

import torch
from torch import Tensor

from mamlkit import functional as fn
from mamlkit.checks import check_count, check_learning_rate, check_steps
from mamlkit.errors import MamlkitError
from mamlkit.linalg import conjugate_gradient, dot, hessian_vector_product
from mamlkit.maml import MAML
from mamlkit.strategies import NOT_A_GRADIENT, NotALoss

SUFFICIENT_DECREASE = 1e-4  # Armijo's constant (Nocedal & Wright 3.1): a constant of 1/2 refused Omniglot's α = 0.1


class Implicit(NotALoss):
    """Proximal inner loop; meta-gradient mean_i P_i g_i + (I + H_i/λ)⁻¹ (g_i − P_i g_i), by conjugate gradient."""

    def __init__(self, lam: float, cg_steps: int, cg_tol: float):
        super().__init__()
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam <= 0:
            raise MamlkitError(f"lam (iMAML's proximal strength λ, by default 1 / (inner_lr · inner_steps)) must be a "
                               f"finite number > 0, got {lam!r}")
        self.lam, self.cg_steps = float(lam), check_count(cg_steps, "cg_steps")
        self.cg_tol = check_learning_rate(cg_tol, "cg_tol")

    def path(self, loop: fn.InnerLoop, theta: fn.Params, x: Tensor, y: Tensor, steps: int, gradient: fn.Gradient,
             first_order: bool) -> Iterator[fn.Params]:
        return (phi for phi, _ in self.descent(loop, theta, x, y, steps, gradient))

    def descent(self, loop: fn.InnerLoop, theta: fn.Params, x: Tensor, y: Tensor, steps: int,
                gradient: fn.Gradient) -> Iterator[tuple[fn.Params, Tensor]]:
        """Gradient steps on F(φ) = L(φ) + λ/2 ‖φ − θ‖² from φ = θ, without a graph; yields each φ_s with the
        step size that led to it (0 where refused, and at s = 0). A step that does not decrease F by 1e-4 α ‖∇F‖²
        (Armijo) is refused and the task's α halves: meta-training sharpens the support loss beyond 2/α − λ,
        which the implicit gradient cannot see. Masks, not branches, so tasks keep their own α under vmap."""
        theta = phi = {n: p.detach() for n, p in theta.items()}

        def objective(params, s):
            distance = {n: params[n] - theta[n] for n in params}
            return loop.loss_fn(loop.at(s)(params, x), y) + self.lam / 2 * dot(distance, distance)

        def objective_gradient(params, s):
            grads = gradient(lambda p: loop.loss_fn(loop.at(s)(p, x), y), params, False)
            return {n: grads[n] + self.lam * (params[n] - theta[n]) for n in params}

        value, grad, scale = objective(phi, 0), objective_gradient(phi, 0), 1.0
        yield phi, torch.zeros_like(value)
        for s in range(steps):
            rate = scale * fn.rate_at(loop.lr, s)
            candidate = fn.sgd_step(phi, grad, rate)
            candidate_value, candidate_grad = objective(candidate, s + 1), objective_gradient(candidate, s + 1)
            rounding = 4 * torch.finfo(value.dtype).eps * value.abs()  # near the minimum decreases vanish in it
            accept = candidate_value <= value - SUFFICIENT_DECREASE * rate * dot(grad, grad) + rounding
            phi = {n: torch.where(accept, candidate[n], phi[n]) for n in phi}
            grad = {n: torch.where(accept, candidate_grad[n], grad[n]) for n in grad}
            value = torch.where(accept, candidate_value, value)
            yield phi, torch.where(accept, rate, torch.zeros_like(value))
            scale = torch.where(accept, scale, scale / 2)

    def task_update(self, maml, loop: fn.InnerLoop, theta: fn.Params, gradient: fn.Gradient, sx, sy, qx, qy):
        """P g + (I + H/λ)⁻¹ (g − P g) at the adapted φ (the solve by conjugate gradient), and L_query(φ)."""
        steps = list(self.descent(loop, theta, sx, sy, maml.inner_steps, gradient))
        phi, forward = steps[-1][0], loop.at(maml.inner_steps)
        query_grad = gradient(lambda p: maml.loss_fn(forward(p, qx), qy), phi, False)
        hvp = hessian_vector_product(lambda p: maml.loss_fn(forward(p, sx), sy), phi, gradient)
        direct = query_grad  # P g: what the steps pass on from θ unsolved, P = Π_s (I − α_s (H + λI))
        for _, rate in steps[1:]:
            hv = hvp(direct)
            direct = {n: direct[n] - rate * (hv[n] + self.lam * direct[n]) for n in direct}

        def matvec(v):  # (I + H/λ) v
            hv = hvp(v)
            return {n: v[n] + hv[n] / self.lam for n in v}

        solved = conjugate_gradient(matvec, {n: query_grad[n] - direct[n] for n in direct}, self.cg_steps, self.cg_tol)
        return {n: direct[n] + solved[n] for n in direct}, maml.loss_fn(forward(phi, qx), qy)


class IMAML(MAML):
    """iMAML around an unmodified ``nn.Module``; ``adapt``/``evaluate`` use the same proximal inner loop.

    Args (beyond ``MAML``'s, less ``NOT_A_GRADIENT``'s; first order by construction): ``inner_lr``, ``inner_steps``
    (α, k) on the proximal problem; ``lam``, λ > 0, by default 1 / (α k), so that the k steps leave at most 1/e of
    it unsolved along any direction (the implicit gradient assumes it solved); ``cg_steps`` ≥ 1 conjugate-gradient
    iterations per task, stopped once the residual is below ``cg_tol`` ‖g − P g‖."""

    does_not_take = NOT_A_GRADIENT

    def __init__(self, model, loss_fn, inner_lr: float, inner_steps: int = 10, *, lam: float | None = None,
                 cg_steps: int = 5, cg_tol: float = 1e-10, **options):
        if lam is None and check_learning_rate(inner_lr, "inner_lr") * check_steps(inner_steps, "inner_steps") > 0:
            lam = 1 / (inner_lr * inner_steps)
        super().__init__(model, loss_fn, inner_lr, inner_steps, strategy=Implicit(lam, cg_steps, cg_tol),
                         **{"first_order": True, **options})
