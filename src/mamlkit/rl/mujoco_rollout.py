"""Half-cheetah tasks stepped for all T × N copies in one ``mujoco.rollout`` call per policy step.

Same physics, observation (qpos[1:], qvel) and rewards as ``GymTasks`` over HalfCheetah-v5, but the
frame-skipped steps of every copy run in C: about twice the Python loop's speed on this CPU
(benchmarks/rl_sampler.py). Only envs whose observation is read from the state qualify; the ant's
includes contact forces, so it keeps the gymnasium loop.
"""

import mujoco
import numpy as np
import torch
from mujoco import rollout
from torch import Tensor

from mamlkit.rl.mujoco_tasks import TaskReward, TaskSampler, make_gym_env

SPEC = mujoco.mjtState.mjSTATE_FULLPHYSICS


class RolloutCheetah:
    def __init__(self, sample_tasks: TaskSampler, reward: TaskReward, horizon: int, threads: int = 1):
        env = make_gym_env("HalfCheetah-v5")
        self._sample_tasks, self.reward, self.horizon = sample_tasks, reward, horizon
        self.model, self.skip, self.dt = env.model, env.frame_skip, env.dt
        self.init_qpos, self.init_qvel, self.noise = env.init_qpos, env.init_qvel, env._reset_noise_scale
        self.ctrl_weight = env._ctrl_cost_weight
        self.nq, self.nv, self.act_dim = self.model.nq, self.model.nv, self.model.nu
        self.obs_dim = self.nq - 1 + self.nv
        self.low, self.high = self.model.actuator_ctrlrange.T
        self.datas = [mujoco.MjData(self.model) for _ in range(threads)]
        self.blank = np.zeros(mujoco.mj_stateSize(self.model, SPEC))
        mujoco.mj_getState(self.model, mujoco.MjData(self.model), self.blank, SPEC)

    def sample_tasks(self, n: int, generator: torch.Generator) -> Tensor:
        return self._sample_tasks(n, generator)[:, None]

    def reset(self, tasks: Tensor, per_task: int, generator: torch.Generator) -> Tensor:
        """gymnasium's reset distribution: qpos + U(−0.1, 0.1), qvel + 0.1·N(0, 1)."""
        count = tasks.shape[0] * per_task
        self.shape, self.tasks = (tasks.shape[0], per_task), tasks.double().repeat_interleave(per_task, 0).numpy().T
        uniform = torch.rand(count, self.nq, generator=generator, dtype=torch.float64).numpy()
        normal = torch.randn(count, self.nv, generator=generator, dtype=torch.float64).numpy()
        self.state = np.tile(self.blank, (count, 1))
        self.state[:, 1:1 + self.nq] = self.init_qpos + self.noise * (2 * uniform - 1)
        self.state[:, 1 + self.nq:1 + self.nq + self.nv] = self.init_qvel + self.noise * normal
        return self._observe()

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        actions = np.clip(actions.detach().reshape(-1, self.act_dim).double().numpy(), self.low, self.high)
        x_before = self.state[:, 1].copy()
        states, _ = rollout.rollout(self.model, self.datas, self.state, np.repeat(actions[:, None], self.skip, 1),
                                    nstep=self.skip, persistent_pool=len(self.datas) > 1)
        self.state = states[:, -1].copy()
        info = {"x_velocity": (self.state[:, 1] - x_before) / self.dt,
                "reward_ctrl": -self.ctrl_weight * np.square(actions).sum(1)}
        reward = self.reward(self.tasks, info, None)
        done = torch.zeros(self.shape, dtype=torch.bool)
        return self._observe(), torch.as_tensor(reward, dtype=torch.float32).reshape(self.shape), done

    def _observe(self) -> Tensor:
        obs = np.concatenate([self.state[:, 2:1 + self.nq], self.state[:, 1 + self.nq:1 + self.nq + self.nv]], 1)
        return torch.as_tensor(obs, dtype=torch.float32).reshape(*self.shape, self.obs_dim)
