"""The paper's MuJoCo tasks stepped for all T × N copies by ``mujoco.rollout`` (C, optionally threaded).

Same physics, observation, rewards, termination and reset noise as ``GymTasks`` over our gymnasium
configuration (``make_gym_env``), read from that env so the two cannot drift apart:

- half-cheetah: observation qpos[1:], qvel; velocity from qpos[0]; all frame-skipped steps in C.
- ant: observation qpos[2:], qvel and the contact forces ``clip(cfrc_ext[1:], −1, 1)``; reward adds
  the contact cost and the survival bonus; an episode ends when the torso leaves the healthy z range.
  ``cfrc_ext`` is not part of a rollout's state, and gymnasium reads it (and the torso position that
  gives the velocity) from the data *after* ``mj_step`` + ``mj_rnePostConstraint``, i.e. at RK4's
  last internal stage. So the last frame of each policy step runs per copy here, exactly as
  gymnasium runs it; the other frames run in C, and finished episodes are not stepped at all.
"""

import mujoco
import numpy as np
import torch
from mujoco import rollout
from torch import Tensor

from mamlkit.rl.mujoco_tasks import TaskReward, TaskSampler, make_gym_env

SPEC = mujoco.mjtState.mjSTATE_FULLPHYSICS


class RolloutTasks:
    def __init__(self, env_id: str, sample_tasks: TaskSampler, reward: TaskReward, horizon: int, threads: int = 1):
        env = make_gym_env(env_id)
        self._sample_tasks, self.reward, self.horizon = sample_tasks, reward, horizon
        self.model, self.skip, self.dt = env.model, env.frame_skip, env.dt
        self.init_qpos, self.init_qvel, self.noise = env.init_qpos, env.init_qvel, env._reset_noise_scale
        self.ctrl_weight = env._ctrl_cost_weight
        self.nq, self.nv, self.act_dim = self.model.nq, self.model.nv, self.model.nu
        structure = env.observation_structure
        self.skipped = structure["skipped_qpos"]
        self.contact = structure.get("cfrc_ext", 0) > 0  # the ant: contact forces in obs and cost
        if self.contact:
            self.contact_weight, self.contact_range = env._contact_cost_weight, env._contact_force_range
            self.main_body = env.data.body(env._main_body).id
            self.healthy_reward, self.healthy_z = env._healthy_reward, env._healthy_z_range
            self.terminate = env._terminate_when_unhealthy
        self.obs_dim = env.observation_space.shape[0]
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
        self.alive = np.ones(count, dtype=bool)
        self.x = self.state[:, 1].copy()  # the free joint's x is the torso's after gymnasium's mj_forward
        self.forces = np.zeros((count, self.model.nbody, 6))  # mj_forward leaves cfrc_ext at zero
        self.obs = self._observe(np.arange(count))
        return self._tensor(self.obs)

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        actions = np.clip(actions.detach().reshape(-1, self.act_dim).double().numpy(), self.low, self.high)
        live = np.flatnonzero(self.alive)
        x_before = self.x[live].copy()
        self.state[live] = self._advance(self.state[live], actions[live], self.skip - 1 if self.contact else self.skip)
        if self.contact:
            self._last_frame(live, actions)
        else:
            self.x[live] = self.state[live, 1]
        info = {"x_velocity": (self.x[live] - x_before) / self.dt,
                "reward_ctrl": -self.ctrl_weight * np.square(actions[live]).sum(1)}
        done = np.zeros(len(self.alive), dtype=bool)
        if self.contact:
            healthy = self._healthy(live)
            clipped = np.clip(self.forces[live], *self.contact_range)
            info["reward_contact"] = -self.contact_weight * np.square(clipped).sum((1, 2))
            info["reward_survive"] = self.healthy_reward * healthy
            done[live] = self.terminate & ~healthy
        rewards = np.zeros(len(self.alive))
        rewards[live] = self.reward(self.tasks[:, live], info, None)
        self.obs[live] = self._observe(live)
        done |= ~self.alive
        self.alive = ~done
        return self._tensor(self.obs), self._tensor(rewards), torch.from_numpy(done).reshape(self.shape)

    def _advance(self, states: np.ndarray, actions: np.ndarray, frames: int) -> np.ndarray:
        """``frames`` frames of every copy in one C call."""
        if frames == 0 or len(states) == 0:
            return states
        out, _ = rollout.rollout(self.model, self.datas, states, np.repeat(actions[:, None], frames, 1),
                                 nstep=frames, persistent_pool=len(self.datas) > 1)
        return out[:, -1].copy()

    def _last_frame(self, live: np.ndarray, actions: np.ndarray) -> None:
        """gymnasium's last frame: ``mj_step`` then ``mj_rnePostConstraint``, keeping the contact
        forces and the torso position that data holds afterwards."""
        data = self.datas[0]
        for i in live:
            mujoco.mj_setState(self.model, data, self.state[i], SPEC)
            data.ctrl[:] = actions[i]
            mujoco.mj_step(self.model, data)
            mujoco.mj_rnePostConstraint(self.model, data)
            mujoco.mj_getState(self.model, data, self.state[i], SPEC)
            self.forces[i] = data.cfrc_ext
            self.x[i] = data.xpos[self.main_body, 0]

    def _healthy(self, rows: np.ndarray) -> np.ndarray:
        physics = self.state[rows, 1:1 + self.nq + self.nv]
        z = physics[:, 2]
        return np.isfinite(physics).all(1) & (self.healthy_z[0] <= z) & (z <= self.healthy_z[1])

    def _observe(self, rows: np.ndarray) -> np.ndarray:
        parts = [self.state[rows, 1 + self.skipped:1 + self.nq], self.state[rows, 1 + self.nq:1 + self.nq + self.nv]]
        if self.contact:
            parts.append(np.clip(self.forces[rows, 1:], *self.contact_range).reshape(len(rows), -1))
        return np.concatenate(parts, 1)

    def _tensor(self, array: np.ndarray) -> Tensor:
        return torch.as_tensor(array, dtype=torch.float32).reshape(*self.shape, *array.shape[1:])
