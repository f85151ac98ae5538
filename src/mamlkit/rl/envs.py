"""Task environments stepped as one batch: ``[tasks, trajectories, ...]`` in, the same out.

A task environment samples task parameters, resets ``T × N`` copies (N trajectories for each of T
tasks) and steps them all at once. ``Navigation2D`` is pure torch; the MuJoCo tasks live in
``mujoco_tasks.py`` and share this interface.
"""

from typing import Protocol

import torch
from torch import Tensor

from mamlkit.errors import MamlkitError


class TaskEnv(Protocol):
    obs_dim: int
    act_dim: int
    horizon: int

    def sample_tasks(self, n: int, generator: torch.Generator) -> Tensor: ...
    def reset(self, tasks: Tensor, per_task: int, generator: torch.Generator) -> Tensor: ...
    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]: ...


class Navigation2D:
    """The paper's point robot: goal ~ U[−0.5, 0.5]², start at the origin, reward −‖x − goal‖,
    horizon 100; an episode ends once both coordinates are within 0.01 of the goal (as in the
    official code). The policy acts in [−1, 1] and the robot moves by 0.1·clip(a, −1, 1), i.e.
    moves are clipped to [−0.1, 0.1]: the official code wraps the env in rllab's ``normalize``,
    which rescales the action space [−0.1, 0.1] to [−1, 1]. Without it a unit-variance policy only
    ever saturates, and the mean has to be learned on a 10× finer scale."""

    obs_dim, act_dim = 2, 2
    max_move = 0.1

    def __init__(self, horizon: int = 100, dtype: torch.dtype = torch.float32):
        self.horizon, self.dtype = horizon, dtype

    def sample_tasks(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.rand(n, 2, generator=generator, dtype=self.dtype) - 0.5

    def reset(self, tasks: Tensor, per_task: int, generator: torch.Generator) -> Tensor:
        if tasks.dim() != 2 or tasks.shape[1] != 2:
            raise MamlkitError(f"2D navigation tasks are goals of shape [T, 2], got {tuple(tasks.shape)}")
        self.goals = tasks[:, None, :].expand(-1, per_task, -1)
        self.state = torch.zeros(tasks.shape[0], per_task, 2, dtype=self.dtype)
        return self.state.clone()

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        self.state = self.state + self.max_move * actions.clamp(-1.0, 1.0).to(self.dtype)
        offset = self.state - self.goals
        reward = -offset.norm(dim=-1)
        done = (offset.abs() < 0.01).all(dim=-1)
        return self.state.clone(), reward, done


class TaskInObservation:
    """``env`` with each observation followed by its task's parameters (goal position, velocity or
    direction): what the paper's oracle baseline sees. Any ``TaskEnv`` works."""

    def __init__(self, env: TaskEnv):
        self.env, self.act_dim, self.horizon = env, env.act_dim, env.horizon
        self.obs_dim = env.obs_dim + env.sample_tasks(1, torch.Generator().manual_seed(0)).shape[1]

    def sample_tasks(self, n: int, generator: torch.Generator) -> Tensor:
        return self.env.sample_tasks(n, generator)

    def reset(self, tasks: Tensor, per_task: int, generator: torch.Generator) -> Tensor:
        self.seen = tasks[:, None, :].expand(-1, per_task, -1)
        return self._with_task(self.env.reset(tasks, per_task, generator))

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        obs, reward, done = self.env.step(actions)
        return self._with_task(obs), reward, done

    def _with_task(self, obs: Tensor) -> Tensor:
        return torch.cat([obs, self.seen.to(obs.dtype)], dim=-1)
