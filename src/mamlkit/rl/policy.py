"""The paper's policy: an MLP (2 × 100 ReLU) giving the mean of a Gaussian whose log standard
deviation is a learned, state-independent vector. Used functionally: every method takes a
parameter dict so the inner step and the TRPO line search can swap parameters freely."""

import math

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mamlkit.functional import Params
from mamlkit.models.mlp import mlp


class GaussianPolicy(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (100, 100), init_std: float = 1.0):
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.mean = mlp((obs_dim, *hidden, act_dim))
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(init_std)))

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        return self.mean(obs), self.log_std.expand(*obs.shape[:-1], self.act_dim)

    def params(self) -> Params:
        return dict(self.named_parameters())

    def distribution(self, params: Params, obs: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, log_std) of the action distribution at ``obs`` under ``params``."""
        return functional_call(self, params, (obs,))

    def log_prob(self, params: Params, obs: Tensor, actions: Tensor) -> Tensor:
        mean, log_std = self.distribution(params, obs)
        return gaussian_log_prob(mean, log_std, actions)


def gaussian_log_prob(mean: Tensor, log_std: Tensor, actions: Tensor) -> Tensor:
    """log N(actions; mean, diag(exp(log_std))²), summed over action dimensions."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_kl(mean_p: Tensor, log_std_p: Tensor, mean_q: Tensor, log_std_q: Tensor) -> Tensor:
    """KL(p ‖ q) between diagonal Gaussians, summed over action dimensions."""
    var_p, var_q = torch.exp(2 * log_std_p), torch.exp(2 * log_std_q)
    return (log_std_q - log_std_p + (var_p + (mean_p - mean_q).pow(2)) / (2 * var_q) - 0.5).sum(-1)


def gaussian_fisher_diagonal(mean: Tensor, log_std: Tensor) -> tuple[Tensor, Tensor]:
    """The Fisher information of a diagonal Gaussian in its (mean, log σ) outputs: 1/σ² and 2 per
    action dimension (the KL's second derivatives there; the parameters are independent)."""
    return torch.exp(-2 * log_std).expand_as(mean), torch.full_like(log_std, 2.0)
