"""Advantages for the policy gradient: discounted returns minus rllab's linear feature baseline,
refitted on each task's own trajectories (optionally GAE), normalised per task as rllab does."""

import torch
from torch import Tensor

from mamlkit.rl.sampler import Episodes


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """R_t = Σ_k γ^k r_{t+k} along the last (time) axis, ignoring masked steps."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in reversed(range(rewards.shape[-1])):
        running = rewards[..., t] * mask[..., t] + gamma * running * mask[..., t]
        out[..., t] = running
    return out


def baseline_features(episodes: Episodes) -> Tensor:
    """rllab's LinearFeatureBaseline features: [o, o², t, t², t³, 1] with t = step / 100."""
    obs = episodes.obs.clamp(-10, 10)
    t = torch.arange(obs.shape[2], dtype=obs.dtype).div(100).expand(*obs.shape[:2], -1)[..., None]
    return torch.cat([obs, obs.pow(2), t, t.pow(2), t.pow(3), torch.ones_like(t)], dim=-1)


def fit_linear_baseline(episodes: Episodes, returns: Tensor, reg: float = 1e-5) -> Tensor:
    """Per-task least squares of returns on the features (in float64); values ``[T, N, H]``.
    Like rllab, the ridge term grows tenfold until the solve is finite."""
    features = baseline_features(episodes).double() * episodes.mask.double()[..., None]
    x = features.flatten(1, 2)                                   # [T, N·H, F]
    y = (returns.double() * episodes.mask.double()).flatten(1, 2)
    gram, rhs = x.transpose(1, 2) @ x, (x.transpose(1, 2) @ y[..., None])
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype)
    for _ in range(5):
        weights = torch.linalg.lstsq(gram + reg * eye, rhs).solution
        if torch.isfinite(weights).all():
            break
        reg *= 10
    return (features @ weights[:, None]).squeeze(-1).to(returns.dtype)


def advantages(episodes: Episodes, gamma: float = 0.99, gae_lambda: float = 1.0, normalize: bool = True,
               baseline: bool = True) -> Tensor:
    """A_t for every step ``[T, N, H]`` (zero where masked). λ = 1: R_t − b(s_t); λ < 1: GAE(γ, λ)
    with the fitted baseline as value function. ``normalize`` centres and scales per task."""
    rewards, mask = episodes.rewards, episodes.mask
    returns = discounted_returns(rewards, mask, gamma)
    values = fit_linear_baseline(episodes, returns) if baseline else torch.zeros_like(returns)
    if gae_lambda == 1.0:
        adv = returns - values
    else:
        next_values = torch.cat([values[..., 1:] * mask[..., 1:], torch.zeros_like(values[..., :1])], dim=-1)
        deltas = rewards + gamma * next_values - values
        adv = discounted_returns(deltas, mask, gamma * gae_lambda)
    adv = adv * mask
    if normalize:
        count = mask.sum((1, 2), keepdim=True)
        mean = adv.sum((1, 2), keepdim=True) / count
        var = ((adv - mean).pow(2) * mask).sum((1, 2), keepdim=True) / count
        adv = (adv - mean) / (var.sqrt() + 1e-8) * mask
    return adv
