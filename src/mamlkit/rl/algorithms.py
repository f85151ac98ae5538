"""MAML-RL's two loops. Inner: one REINFORCE step per task through ``functional.inner_step`` (the same
code as supervised MAML: x = (state, action), the "prediction" is log π(a|s) and the loss is
−mean(log π · A)). Outer: TRPO on the post-update surrogate, whose gradient and Fisher-vector
products go exactly through the inner step by double backward."""

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from mamlkit import functional as fn
from mamlkit.functional import Params
from mamlkit.linalg import conjugate_gradient
from mamlkit.rl.policy import GaussianPolicy, gaussian_fisher_diagonal, gaussian_kl, gaussian_log_prob
from mamlkit.rl.sampler import Episodes, per_task, task_distribution


def pg_inputs(episodes: Episodes, adv: Tensor) -> tuple[Tensor, Tensor]:
    """Per-task ``x = [state, action]`` rows and weights ``A·mask / #valid steps``: [T, N·H, ·]."""
    x = torch.cat([episodes.obs, episodes.actions], dim=-1).flatten(1, 2)
    weights = adv * episodes.mask / episodes.mask.sum((1, 2), keepdim=True)
    return x, weights.flatten(1, 2)


def log_prob_forward(policy: GaussianPolicy) -> fn.Forward:
    """``forward(params, x)`` for ``functional.inner_step``: log π(a|s) of the rows x = [s, a]."""
    def forward(params: Params, x: Tensor) -> Tensor:
        return policy.log_prob(params, x[..., :policy.obs_dim], x[..., policy.obs_dim:])
    return forward


def pg_loss(log_probs: Tensor, weights: Tensor) -> Tensor:
    """REINFORCE surrogate: its gradient is the policy-gradient estimate (weights carry A / count)."""
    return -(log_probs * weights).sum()


def adapt_tasks(policy: GaussianPolicy, params: Params, episodes: Episodes, adv: Tensor, lr: float,
                first_order: bool, stacked: bool = False) -> Params:
    """One policy-gradient step for every task at once (vmap): task-stacked adapted parameters.
    ``stacked``: ``params`` already carry a leading task dimension (later test-time steps)."""
    x, weights = pg_inputs(episodes, adv)
    forward = log_prob_forward(policy)

    def one_task(p: Params, x_t: Tensor, w_t: Tensor) -> Params:
        return fn.inner_step(forward, pg_loss, p, x_t, w_t, lr, first_order, fn.func_gradient)
    return torch.vmap(one_task, in_dims=(0 if stacked else None, 0, 0))(params, x, weights)


@dataclass
class MetaBatch:
    """What the outer step needs: pre-update data (for the inner step) and post-update data with
    the log-probabilities and action distributions of the policy that collected it (the ``old_*``
    fields, filled in by ``MetaObjective.linearise``)."""
    pre: Episodes | None
    pre_adv: Tensor | None
    post: Episodes
    post_adv: Tensor
    old_log_prob: Tensor
    old_mean: Tensor
    old_log_std: Tensor


class MetaObjective:
    """θ ↦ (surrogate loss, mean KL) of the adapted policies on the post-update data. With
    ``inner_lr`` None there is no inner step (the "pretrained" baseline: plain TRPO on all tasks)."""

    def __init__(self, policy: GaussianPolicy, inner_lr: float | None, first_order: bool = False):
        self.policy, self.inner_lr, self.first_order = policy, inner_lr, first_order

    def adapted(self, params: Params, batch: MetaBatch) -> Params:
        if self.inner_lr is None:
            return per_task(params, batch.post.obs.shape[0])
        return adapt_tasks(self.policy, params, batch.pre, batch.pre_adv, self.inner_lr, self.first_order)

    def distribution(self, params: Params, batch: MetaBatch) -> tuple[Tensor, Tensor]:
        return task_distribution(self.policy, self.adapted(params, batch), batch.post.obs)

    def __call__(self, params: Params, batch: MetaBatch) -> tuple[Tensor, Tensor]:
        return self.surrogate_and_kl(self.distribution(params, batch), batch)

    def surrogate_and_kl(self, distribution: tuple[Tensor, Tensor], batch: MetaBatch) -> tuple[Tensor, Tensor]:
        mean, log_std = distribution
        post, mask = batch.post, batch.post.mask
        count = mask.sum((1, 2))
        ratio = torch.exp(gaussian_log_prob(mean, log_std, post.actions) - batch.old_log_prob)
        loss = -((ratio * batch.post_adv * mask).sum((1, 2)) / count).mean()
        kl = ((gaussian_kl(batch.old_mean, batch.old_log_std, mean, log_std) * mask).sum((1, 2)) / count).mean()
        return loss, kl

    def linearise(self, params: Params, batch: MetaBatch) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """At the collecting parameters, from one pass through the inner step: record the collecting
        policy's terms in ``batch``, and return the surrogate (with its graph) and v ↦ F v.

        F = Jᵀ M J is the Hessian of the mean KL there: J the Jacobian of the adapted policies'
        (mean, log σ) on the post-update data with respect to θ (through the inner step), M the
        Gaussians' Fisher (1/σ² and 2) weighted as the KL is. At the collecting parameters the KL's
        own gradient vanishes, so this is exact, and it needs one order of differentiation less
        than differentiating the KL's gradient again."""
        outputs = self.distribution(params, batch)
        record_collecting_policy(batch, *(o.detach() for o in outputs))
        mask = batch.post.mask
        weights = (mask / mask.sum((1, 2), keepdim=True) / mask.shape[0])[..., None]
        metric = [weights * m for m in gaussian_fisher_diagonal(batch.old_mean, batch.old_log_std)]
        loss, _ = self.surrogate_and_kl(outputs, batch)
        return loss, gauss_newton_product(outputs, list(params.values()), metric)


def gauss_newton_product(outputs: tuple[Tensor, ...], leaves: list[Tensor], metric: list[Tensor]) -> Callable[[Tensor], Tensor]:
    """v ↦ Jᵀ diag(metric) J v for the Jacobian J of ``outputs`` with respect to ``leaves``. Jᵀu is
    built once as a graph in a dummy u; J v is then its derivative in u along v (the double-vjp
    trick), so each product is two backward passes through graphs that are kept."""
    dummies = [torch.zeros_like(o, requires_grad=True) for o in outputs]
    transposed = flat(torch.autograd.grad(outputs, leaves, grad_outputs=dummies, create_graph=True))

    def product(v: Tensor) -> Tensor:
        jv = torch.autograd.grad(transposed @ v, dummies, retain_graph=True)
        return flat(torch.autograd.grad(outputs, leaves, grad_outputs=[m * j for m, j in zip(metric, jv)],
                                        retain_graph=True))
    return product


def flat(tensors) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def record_collecting_policy(batch: MetaBatch, mean: Tensor, log_std: Tensor) -> None:
    """The collecting policy's distributions and log-probabilities: constants of the TRPO step."""
    batch.old_mean, batch.old_log_std = mean, log_std
    batch.old_log_prob = gaussian_log_prob(mean, log_std, batch.post.actions)


@dataclass
class TRPOSettings:
    max_kl: float = 0.01
    cg_iterations: int = 10
    cg_damping: float = 1e-5
    backtrack_ratio: float = 0.8
    max_backtracks: int = 15


def trpo_step(params: Params, objective: Callable[[Params], tuple[Tensor, Tensor]],
              linearise: Callable[[Params], tuple[Tensor, Callable[[Tensor], Tensor]]],
              settings: TRPOSettings) -> dict[str, float]:
    """One TRPO update of ``params`` (leaf tensors, changed in place): natural-gradient direction by
    conjugate gradient on exact Fisher-vector products (``linearise(params)`` gives the surrogate
    with its graph and v ↦ F v, the KL's Hessian at the collecting policy), scaled to the KL bound,
    then a backtracking line search on ``objective`` (surrogate, KL) that accepts only a lower
    surrogate within the bound."""
    names, leaves = list(params), list(params.values())
    loss, fisher = linearise(params)
    grad = flat(torch.autograd.grad(loss, leaves, retain_graph=True))

    def hvp(v: Tensor) -> Tensor:
        return fisher(v) + settings.cg_damping * v

    direction = conjugate_gradient(lambda v: {"x": hvp(v["x"])}, {"x": -grad.detach()}, settings.cg_iterations,
                                   tol=1e-10)["x"]
    curvature = direction @ hvp(direction)
    full_step = torch.sqrt(2 * settings.max_kl / curvature.clamp_min(1e-12)) * direction
    old_loss = loss.item()
    result = {"surrogate_before": old_loss, "kl": 0.0, "backtracks": settings.max_backtracks,
              "accepted": 0.0, "surrogate_after": old_loss}
    with torch.no_grad():
        for k in range(settings.max_backtracks):
            candidate = shifted(leaves, names, full_step * settings.backtrack_ratio ** k)
            new_loss, new_kl = objective(candidate)
            if new_loss.item() < old_loss and new_kl.item() <= settings.max_kl:
                for leaf, new in zip(leaves, candidate.values()):
                    leaf.copy_(new)
                result.update(kl=new_kl.item(), backtracks=k, accepted=1.0, surrogate_after=new_loss.item())
                break
    return result


def shifted(leaves: list[Tensor], names: list[str], step: Tensor) -> Params:
    """``{name: leaf + step-slice}``: parameters moved along a flat step vector."""
    out, offset = {}, 0
    for name, leaf in zip(names, leaves):
        out[name] = leaf.detach() + step[offset:offset + leaf.numel()].view_as(leaf)
        offset += leaf.numel()
    return out
