"""iMAML (Rajeswaran, Finn, Kakade & Levine 2019): the implicit meta-gradient of a proximal inner loop.

Each task adapts by minimising L_support(φ) + λ/2 ‖φ − θ‖² from φ = θ. At a minimum φ*,
dφ*/dθ = (I + H/λ)⁻¹ with H = ∇²L_support(φ*), so the task's meta-gradient is
(I + H/λ)⁻¹ ∇L_query(φ*), whatever path the inner optimiser took: memory does not grow with the
number of inner steps. The linear system is solved by conjugate gradient on Hessian-vector
products, never forming H. The result is exact when the inner problem is solved and CG converges.
"""

import math
from functools import partial
from typing import Callable

import torch
from torch import Tensor

from mamlkit import functional as fn
from mamlkit.algorithms._task_mean import mean_over_tasks
from mamlkit.checks import check_learning_rate, check_steps, check_task, check_task_batch
from mamlkit.errors import MamlkitError
from mamlkit.maml import MAML, accumulate_grad


def _dot(a: fn.Params, b: fn.Params) -> Tensor:
    return sum((a[n] * b[n]).sum() for n in a)


def conjugate_gradient(matvec: Callable[[fn.Params], fn.Params], b: fn.Params, steps: int, tol: float) -> fn.Params:
    """Solve ``matvec(x) = b`` for symmetric positive definite ``matvec`` by CG from x = 0.

    Stops improving once ‖r‖ ≤ tol ‖b‖. On a direction of non-positive curvature (the matrix is
    not positive definite there) it stops too, returning the iterate so far, or b itself if that
    happens at once: truncated CG as in Newton-CG (Nocedal & Wright, Alg. 7.1). The stops are
    masks, not Python branches, so the same code runs under vmap (every task does ``steps``
    matrix-vector products; stopped ones stay put).
    """
    x = {n: torch.zeros_like(v) for n, v in b.items()}
    r, p = dict(b), dict(b)
    rr, threshold = _dot(r, r), tol ** 2 * _dot(b, b)
    stopped = torch.zeros((), dtype=torch.bool, device=rr.device)
    for step in range(steps):
        ap = matvec(p)
        curvature = _dot(p, ap)
        if step == 0:  # negative curvature at once: fall back to b, the right-hand side
            x = {n: torch.where(curvature <= 0, b[n], x[n]) for n in x}
        stopped = stopped | (curvature <= 0)
        active = ~stopped & (rr > threshold)
        alpha = torch.where(active, rr / torch.where(active, curvature, 1.0), 0.0)
        x = {n: x[n] + alpha * p[n] for n in x}
        r = {n: r[n] - alpha * ap[n] for n in r}
        rr_next = _dot(r, r)
        beta = torch.where(active, rr_next / torch.where(active, rr, 1.0), 0.0)
        p = {n: r[n] + beta * p[n] for n in p}
        rr = rr_next
    return x


def hessian_vector_product(loss_of: Callable[[fn.Params], Tensor], params: fn.Params,
                           gradient: fn.Gradient) -> Callable[[fn.Params], fn.Params]:
    """v ↦ ∇²loss(params) v. The gradient's graph is built once and each product is one pass back
    through it (H is symmetric, so the vector-Jacobian product of the gradient is Hv)."""
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


def proximal_adapt(forward: fn.Forward, loss_fn: fn.LossFn, theta: fn.Params, x: Tensor, y: Tensor,
                   lr: float, steps: int, lam: float, gradient: fn.Gradient,
                   start: fn.Params | None = None) -> fn.Params:
    """``steps`` gradient-descent steps on L(φ) + λ/2 ‖φ − θ‖² from φ = ``start`` (default θ); no graph."""
    phi = theta if start is None else start
    for _ in range(steps):
        grads = gradient(lambda p: loss_fn(forward(p, x), y), phi, False)
        phi = fn.sgd_step(phi, {n: grads[n] + lam * (phi[n] - theta[n]) for n in phi}, lr)
    return phi


class IMAML(MAML):
    """iMAML around an unmodified ``nn.Module``; ``adapt``/``evaluate`` use the same proximal inner loop.

    Args:
        model, loss_fn, eval_inner_steps, batching: as for :class:`mamlkit.MAML`.
        inner_lr, inner_steps: gradient-descent step size and steps on the proximal inner problem;
            enough of them to (nearly) solve it, since the implicit gradient assumes a minimum.
        lam: λ > 0, the proximal strength: larger keeps φ closer to θ.
        cg_steps: conjugate-gradient iterations (Hessian-vector products) per task, ≥ 1.
        cg_tol: stop CG once the residual is below ``cg_tol`` times the query gradient's norm.
    """

    def __init__(self, model, loss_fn, inner_lr: float, inner_steps: int = 10, *, lam: float = 1.0,
                 cg_steps: int = 5, cg_tol: float = 1e-10, eval_inner_steps: int | None = None,
                 batching: str = "auto"):
        super().__init__(model, loss_fn, inner_lr, inner_steps, eval_inner_steps=eval_inner_steps,
                         first_order=True, batching=batching)
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam <= 0:
            raise MamlkitError(f"lam (iMAML's proximal strength λ) must be a finite number > 0, got {lam!r}")
        if isinstance(cg_steps, bool) or not isinstance(cg_steps, int) or cg_steps < 1:
            raise MamlkitError(f"cg_steps must be a whole number >= 1 (conjugate-gradient iterations), "
                               f"got {cg_steps!r}")
        self.lam = float(lam)
        self.cg_steps = cg_steps
        self.cg_tol = check_learning_rate(cg_tol, "cg_tol")

    def meta_loss(self, *batch):
        raise MamlkitError("iMAML's meta-gradient is implicit, not the gradient of a loss graph; call "
                           "meta_backward(...) and then optimizer.step()")

    def _adapt_task(self, forward, theta, x, y, steps, gradient, start=None) -> fn.Params:
        return proximal_adapt(forward, self.loss_fn, theta, x, y, self.inner_lr, steps, self.lam, gradient, start)

    def _theta(self) -> fn.Params:
        return {name: p.detach() for name, p in self.parameters_to_adapt().items()}

    @torch.no_grad()
    def meta_backward(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor) -> Tensor:
        """Add mean_i (I + H_i/λ)⁻¹ ∇L_query_i(φ_i) to ``.grad``; return the mean query loss at φ_i."""
        tensors = (support_x, support_y, query_x, query_y)
        check_task_batch(tensors, self._reference_tensor())
        theta = self._theta()
        forward = partial(self._forward, self._constants())

        def per_task(gradient, sx, sy, qx, qy):
            phi = self._adapt_task(forward, theta, sx, sy, self.inner_steps, gradient)
            support_loss = lambda p: self.loss_fn(forward(p, sx), sy)  # noqa: E731
            query_grad = gradient(lambda p: self.loss_fn(forward(p, qx), qy), phi, False)

            hvp = hessian_vector_product(support_loss, phi, gradient)

            def matvec(v):  # (I + H/λ) v
                hv = hvp(v)
                return {n: v[n] + hv[n] / self.lam for n in v}

            meta_grad = conjugate_gradient(matvec, query_grad, self.cg_steps, self.cg_tol)
            return meta_grad, self.loss_fn(forward(phi, qx), qy)

        grads, loss = mean_over_tasks(self, per_task, tensors, theta)
        accumulate_grad(self.parameters_to_adapt(), grads)
        return loss

    def adapt(self, x: Tensor, y: Tensor, steps: int | None = None) -> fn.Params:
        """Parameters adapted to one task by the proximal inner loop (no graph)."""
        check_task(x, y, self._reference_tensor())
        steps = self.eval_inner_steps if steps is None else check_steps(steps, "steps")
        gradient = fn.func_gradient if self._uses_vmap() else fn.autograd_gradient
        return self._adapt_task(partial(self._forward, self._constants()), self._theta(), x, y, steps, gradient)

    @torch.no_grad()
    def evaluate(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
                 steps: int | None = None, metrics=None, chunk_size: int | None = None) -> dict[str, Tensor]:
        """As :meth:`MAML.evaluate`, each inner step a step of the proximal inner loop."""
        tensors = (support_x, support_y, query_x, query_y)
        check_task_batch(tensors, self._reference_tensor())
        steps = self.eval_inner_steps if steps is None else check_steps(steps, "steps")
        metrics = dict(metrics or {"loss": self.loss_fn})
        forward, theta = partial(self._forward, self._constants()), self._theta()

        def per_task(gradient, sx, sy, qx, qy):
            rows, phi = [], theta
            for step in range(steps + 1):
                prediction = forward(phi, qx)
                rows.append(torch.stack([metric(prediction, qy) for metric in metrics.values()]))
                if step < steps:
                    phi = self._adapt_task(forward, theta, sx, sy, 1, gradient, start=phi)
            return torch.stack(rows)

        return self._curves_by_metric(per_task, tensors, metrics, chunk_size)
