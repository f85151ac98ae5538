"""Sample N trajectories for each of T tasks in one batched pass: one policy call and one env step
per time step for all T × N copies, each task acting with its own (adapted) parameters."""

from dataclasses import dataclass

import torch
from torch import Tensor

from mamlkit.functional import Params
from mamlkit.rl.envs import TaskEnv
from mamlkit.rl.policy import GaussianPolicy


@dataclass
class Episodes:
    """Trajectories of T tasks × N trajectories × H steps (H ≤ the horizon); ``mask`` is 0 after an
    episode ended. ``success`` (envs that report it, e.g. Meta-World): whether each trajectory
    succeeded at some step."""
    obs: Tensor      # [T, N, H, obs_dim]
    actions: Tensor  # [T, N, H, act_dim]
    rewards: Tensor  # [T, N, H]
    mask: Tensor     # [T, N, H]
    success: Tensor | None = None  # [T, N] bool

    def returns(self) -> Tensor:
        """Undiscounted return of each trajectory: [T, N]."""
        return (self.rewards * self.mask).sum(-1)


def per_task(params: Params, tasks: int) -> Params:
    """Parameters with a leading task dimension (shared parameters are expanded, not copied)."""
    return {name: p.expand(tasks, *p.shape) for name, p in params.items()}


def task_distribution(policy: GaussianPolicy, params: Params, obs: Tensor) -> tuple[Tensor, Tensor]:
    """(mean, log_std) for ``obs [T, ...]`` with task-stacked ``params`` (leading dim T)."""
    return torch.vmap(policy.distribution)(params, obs)


@torch.no_grad()
def sample(env: TaskEnv, policy: GaussianPolicy, params: Params, tasks: Tensor, trajectories: int,
           generator: torch.Generator, deterministic: bool = False) -> Episodes:
    """Roll out ``trajectories`` episodes per task; ``params`` are task-stacked (see ``per_task``)."""
    params = {name: p.detach() for name, p in params.items()}
    count, horizon = tasks.shape[0], env.horizon
    obs = env.reset(tasks, trajectories, generator)
    alive = torch.ones(count, trajectories, dtype=torch.bool)
    steps = {"obs": [], "actions": [], "rewards": [], "mask": []}
    for _ in range(horizon):
        mean, log_std = task_distribution(policy, params, obs.to(mean_dtype(params)))
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        actions = mean if deterministic else mean + torch.exp(log_std) * noise
        next_obs, reward, done = env.step(actions)
        steps["obs"].append(obs)
        steps["actions"].append(actions)
        steps["rewards"].append(reward.to(mean.dtype) * alive)
        steps["mask"].append(alive.to(mean.dtype))
        alive = alive & ~done
        obs = next_obs
        if not alive.any():
            break
    episodes = Episodes(**{k: torch.stack(v, dim=2) for k, v in steps.items()})
    episodes.obs = episodes.obs.to(episodes.actions.dtype)
    if getattr(env, "records_success", False):
        episodes.success = env.successes()
    return episodes  # shorter than the horizon when every episode ended early: no dead rows


def mean_dtype(params: Params) -> torch.dtype:
    return next(iter(params.values())).dtype
