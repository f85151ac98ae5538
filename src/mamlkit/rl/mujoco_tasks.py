"""Gymnasium environments as batched task environments, and the paper's MuJoCo tasks on top.

``GymTasks`` turns any gymnasium env (a user's own included) plus a task sampler and a task reward
into the ``TaskEnv`` interface: it keeps a pool of ``T × N`` unwrapped envs and steps them in a
plain loop, which measured fastest on this CPU (benchmarks/rl_sampler.py). The paper's tasks
replace the env's reward with a task reward computed from the step's ``info``.
"""

from functools import partial
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from mamlkit.errors import MamlkitError

TaskReward = Callable[[float, dict, float], float]  # (task value, info, env reward) -> reward
TaskSampler = Callable[[int, torch.Generator], Tensor]


class GymTasks:
    """A batched ``TaskEnv`` over copies of one gymnasium env. ``make_env()`` builds a copy;
    ``sample_tasks(n, generator)`` draws ``[n, k]`` task parameters; ``reward(task, info, r)``
    gives the task's reward for a step (None: the env's own reward); ``set_task(env, task)``
    (optional) configures a copy for its task before each reset. With ``records_success`` the
    env's ``info["success"]`` is kept per episode: ``successes()`` says whether it was ever set."""

    records_success = False

    def __init__(self, make_env: Callable, sample_tasks: TaskSampler, horizon: int,
                 reward: TaskReward | None = None, set_task: Callable | None = None):
        self.make_env, self._sample_tasks, self.horizon = make_env, sample_tasks, horizon
        self.reward, self.set_task = reward, set_task
        self.envs: list = []
        probe = make_env()
        if len(probe.observation_space.shape) != 1 or len(probe.action_space.shape) != 1:
            raise MamlkitError("GymTasks needs flat Box observation and action spaces; wrap the env with "
                               "gymnasium.wrappers.FlattenObservation")
        self.obs_dim, self.act_dim = probe.observation_space.shape[0], probe.action_space.shape[0]
        self.low, self.high = probe.action_space.low, probe.action_space.high
        probe.close()

    def sample_tasks(self, n: int, generator: torch.Generator) -> Tensor:
        tasks = self._sample_tasks(n, generator)
        return tasks[:, None] if tasks.dim() == 1 else tasks

    def reset(self, tasks: Tensor, per_task: int, generator: torch.Generator) -> Tensor:
        return self.reset_with_seeds(tasks, per_task, self.draw_seeds(tasks.shape[0] * per_task, generator))

    @staticmethod
    def draw_seeds(count: int, generator: torch.Generator) -> list[int]:
        return torch.randint(2**31 - 1, (count,), generator=generator).tolist()

    def reset_with_seeds(self, tasks: Tensor, per_task: int, seeds: list[int]) -> Tensor:
        count = tasks.shape[0] * per_task
        while len(self.envs) < count:
            self.envs.append(self.make_env())
        self.tasks = tasks.double().repeat_interleave(per_task, dim=0).numpy()
        self.shape = (tasks.shape[0], per_task)
        self.alive = np.ones(count, dtype=bool)
        self.succeeded = np.zeros(count, dtype=bool)
        obs = []
        for env, task, seed in zip(self.envs, self.tasks, seeds):
            if self.set_task is not None:
                self.set_task(env, task)
            obs.append(env.reset(seed=seed)[0])
        self.last_obs = np.stack(obs)
        return self._tensor(self.last_obs)

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        actions = np.clip(actions.detach().reshape(-1, self.act_dim).double().numpy(), self.low, self.high)
        rewards = np.zeros(len(actions))
        done = ~self.alive
        for i in np.flatnonzero(self.alive):
            obs, reward, terminated, _, info = self.envs[i].step(actions[i])
            rewards[i] = reward if self.reward is None else self.reward(self.tasks[i], info, reward)
            self.last_obs[i] = obs
            done[i] = terminated
            if self.records_success:
                self.succeeded[i] |= bool(info["success"])
        self.alive = ~done
        return self._tensor(self.last_obs), self._tensor(rewards), torch.from_numpy(done).reshape(self.shape)

    def successes(self) -> Tensor:
        """Whether each episode since the last reset succeeded at some step: ``[T, N]`` bool."""
        return torch.from_numpy(self.succeeded.copy()).reshape(self.shape)

    def _tensor(self, array: np.ndarray) -> Tensor:
        return torch.as_tensor(array, dtype=torch.float32).reshape(*self.shape, *array.shape[1:])


def uniform(low: float, high: float) -> TaskSampler:
    return partial(_uniform, low, high)  # a partial, not a lambda: worker processes pickle it


def _uniform(low: float, high: float, n: int, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def direction(n: int, generator: torch.Generator) -> Tensor:
    """+1 (forward) or −1 (backward), half of the ``n`` tasks each in random order (the odd one out
    of an odd ``n`` at random). Each task is still a fair coin, but a small meta-batch no longer
    draws, say, 7 backward and 3 forward: every meta-gradient, validation and test set weighs both
    directions equally."""
    first = 1.0 - 2.0 * torch.randint(2, (), generator=generator)
    alternating = first * (-1.0) ** torch.arange(n)
    return alternating[torch.randperm(n, generator=generator)]


def velocity_reward(task, info: dict, reward: float) -> float:
    """−|v − goal| plus the env's costs."""
    return -abs(info["x_velocity"] - task[0]) + _costs(info)


def ant_velocity_reward(task, info: dict, reward: float) -> float:
    """The official ant's −|v − goal| + 1 plus its costs and survival bonus: without the +1 every
    step costs, and ending the episode by falling over is the quickest way to stop paying."""
    return velocity_reward(task, info, reward) + 1.0


def direction_reward(task, info: dict, reward: float) -> float:
    """direction · v plus the env's costs."""
    return task[0] * info["x_velocity"] + _costs(info)


def _costs(info: dict) -> float:
    return info["reward_ctrl"] + info.get("reward_contact", 0.0) + info.get("reward_survive", 0.0)


# rllab's weights: cheetah control cost 0.5·0.1·|a|²; ant 0.5·0.01·|a|², contact 0.5·0.001·|clip(f)|²,
# survival bonus 0.05 (gymnasium's own defaults are 0.1, 0.5, 5e-4 and 1.0).
# The ant also takes rllab's timing: one RK4 step of 0.02 s per action (``frame_skip=1`` here, the
# timestep set in ``make_gym_env``), where gymnasium's five steps of 0.01 s make each action last 2.5×
# as long and cost 5× the physics.
ENV_KWARGS = {"HalfCheetah-v5": {"ctrl_cost_weight": 0.05},
              "Ant-v5": {"ctrl_cost_weight": 0.005, "contact_cost_weight": 5e-4, "healthy_reward": 0.05,
                         "frame_skip": 1}}
TIMESTEPS = {"Ant-v5": 0.02}
TASKS = {"cheetah-vel": ("HalfCheetah-v5", uniform(0.0, 2.0), velocity_reward),
         "cheetah-dir": ("HalfCheetah-v5", direction, direction_reward),
         "ant-vel": ("Ant-v5", uniform(0.0, 3.0), ant_velocity_reward),
         "ant-dir": ("Ant-v5", direction, direction_reward)}


def make_gym_env(env_id: str, **kwargs):
    """The unwrapped env (no checker or time-limit wrappers: the sampler owns the horizon)."""
    import gymnasium
    env = gymnasium.make(env_id, disable_env_checker=True, **ENV_KWARGS.get(env_id, {}), **kwargs).unwrapped
    if env_id in TIMESTEPS:
        env.model.opt.timestep = TIMESTEPS[env_id]
    return env


def make_mujoco_tasks(name: str, horizon: int, backend: str = "auto", threads: int = 1, workers: int = 0):
    """The paper's task ``name``. ``backend``: "gym" (a loop over gymnasium envs, in ``workers``
    processes if > 0), "rollout" (``mujoco.rollout`` with ``threads`` C threads) or "auto" (rollout
    unless workers are asked for: the faster on one core, benchmarks/rl_sampler.py)."""
    if name not in TASKS:
        raise MamlkitError(f"unknown MuJoCo task {name!r}; choose one of {', '.join(TASKS)}")
    try:
        import gymnasium  # noqa: F401
        import mujoco  # noqa: F401
    except ImportError:
        raise MamlkitError("MuJoCo tasks need gymnasium[mujoco]; pip install 'gymnasium[mujoco]==1.4.0'") from None
    env_id, sampler, reward = TASKS[name]
    if backend == "rollout" or (backend == "auto" and not workers):
        if workers:
            raise MamlkitError("worker processes step the gym backend; the rollout backend takes --env-threads")
        from mamlkit.rl.mujoco_rollout import RolloutTasks
        return RolloutTasks(env_id, sampler, reward, horizon, threads)
    if backend != "gym" and backend != "auto":
        raise MamlkitError(f"backend must be auto, gym or rollout, got {backend!r}")
    make_tasks = partial(GymTasks, partial(make_gym_env, env_id), sampler, horizon, reward)
    if workers:
        from mamlkit.rl.workers import WorkerTasks
        return WorkerTasks(make_tasks, workers)
    return make_tasks()


def render_gif(config, policy, tasks: Tensor, path, frames_every: int = 2, size: int = 160) -> None:
    """A GIF of the policy after one policy-gradient step on two test tasks (side by side): the
    first and last of ``tasks`` sorted by task value (backward/forward, or slowest/fastest)."""
    from mamlkit.rl import rendering
    rendering.offscreen()
    order = tasks[:, 0].argsort()
    chosen = tasks[[order[0].item(), order[-1].item()]]
    adapted = rendering.adapted_params(config, policy, make_mujoco_tasks(config.env, config.horizon, config.backend),
                                       chosen)
    env_id = TASKS[config.env][0]
    videos = [rendering.record(make_gym_env(env_id, render_mode="rgb_array", width=size, height=size,
                                            camera_name="track"),  # the model's camera that follows the body
                               policy, {n: p[index] for n, p in adapted.items()}, config.horizon, frames_every,
                               seed=index)
              for index in range(len(chosen))]
    rendering.save_side_by_side(videos, path)
