"""Gymnasium task environments: a user's own env plugs in, and the paper's MuJoCo task rewards."""

import gymnasium
import numpy as np
import pytest
import torch

from mamlkit.errors import MamlkitError
from mamlkit.rl.mujoco_tasks import GymTasks, direction, make_gym_env, make_mujoco_tasks
from mamlkit.rl.policy import GaussianPolicy
from mamlkit.rl.sampler import per_task, sample


class PointLine(gymnasium.Env):
    """A user's env: a point on a line that should reach ``goal``; ends within 0.05 of it."""
    observation_space = gymnasium.spaces.Box(-10, 10, (1,))
    action_space = gymnasium.spaces.Box(-0.5, 0.5, (1,))
    goal = 0.0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.x = np.zeros(1)
        return self.x.astype(np.float32), {}

    def step(self, action):
        self.x = self.x + action
        distance = abs(self.x[0] - self.goal)
        return self.x.astype(np.float32), -distance, distance < 0.05, False, {"x": self.x[0]}


def set_goal(env, task):
    env.goal = float(task[0])


def test_a_users_gymnasium_env_and_task_sampler_plug_in():
    env = GymTasks(PointLine, lambda n, g: torch.rand(n, generator=g), horizon=15, set_task=set_goal)
    assert (env.obs_dim, env.act_dim) == (1, 1)
    tasks = env.sample_tasks(3, torch.Generator().manual_seed(0))
    assert tasks.shape == (3, 1)
    obs = env.reset(tasks, 2, torch.Generator().manual_seed(0))
    assert obs.shape == (3, 2, 1)
    obs, reward, done = env.step(torch.full((3, 2, 1), 2.0))  # clipped to the action space: 0.5
    torch.testing.assert_close(obs, torch.full((3, 2, 1), 0.5))
    torch.testing.assert_close(reward, -(0.5 - tasks).abs().expand(3, 2).float())
    torch.manual_seed(0)
    policy = GaussianPolicy(1, 1, hidden=(8,))
    episodes = sample(env, policy, per_task(policy.params(), 3), tasks, 4, torch.Generator().manual_seed(1))
    assert episodes.obs.shape[:2] == (3, 4) and episodes.obs.shape[2] <= 15
    assert (episodes.mask[..., 1:] <= episodes.mask[..., :-1]).all()


def test_env_with_image_observations_is_refused_with_the_fix():
    class Image(PointLine):
        observation_space = gymnasium.spaces.Box(0, 1, (2, 2))
    with pytest.raises(MamlkitError, match="FlattenObservation"):
        GymTasks(Image, direction, horizon=5)


def test_directions_are_stratified_and_each_a_fair_coin():
    g = torch.Generator().manual_seed(0)
    batches = torch.stack([direction(10, g) for _ in range(400)])
    assert set(batches.unique().tolist()) == {-1.0, 1.0}
    assert (batches.sum(dim=1) == 0).all()  # exactly 5 forward, 5 backward in every batch
    assert batches.mean(dim=0).abs().max() < 0.2  # no position leans one way (±4 standard errors)
    odd = torch.stack([direction(5, g) for _ in range(400)]).sum(dim=1)
    assert set(odd.tolist()) == {-1.0, 1.0} and abs(odd.mean()) < 0.2  # the odd one out is either


@pytest.mark.parametrize("name", ["cheetah-dir", "cheetah-vel"])
def test_cheetah_rewards_are_the_papers(name):
    env = make_mujoco_tasks(name, horizon=5, backend="gym")
    tasks = env.sample_tasks(2, torch.Generator().manual_seed(0))
    env.reset(tasks, 1, torch.Generator().manual_seed(0))
    twin = make_gym_env("HalfCheetah-v5")  # the same env stepped by hand from the same state
    twin.reset(seed=0)
    action = np.linspace(-0.9, 0.9, 6)
    for index in range(2):
        twin.set_state(env.envs[index].data.qpos.copy(), env.envs[index].data.qvel.copy())
        _, reward, _ = env.step(torch.tensor(action, dtype=torch.float32).expand(2, 1, 6))
        _, _, _, _, info = twin.step(action.astype(np.float32).astype(np.float64))
        goal = tasks[index, 0].item()
        task_term = goal * info["x_velocity"] if name == "cheetah-dir" else -abs(info["x_velocity"] - goal)
        control = 0.05 * float(np.sum(action.astype(np.float32).astype(np.float64) ** 2))  # rllab: 0.5 · 0.1 · |a|²
        assert reward[index, 0].item() == pytest.approx(task_term - control, rel=1e-5, abs=1e-6)
    values = env.sample_tasks(200, torch.Generator().manual_seed(1))
    if name == "cheetah-dir":
        assert set(values.flatten().tolist()) == {-1.0, 1.0}
    else:
        assert values.min() >= 0 and values.max() <= 2 and values.std() > 0.4


@pytest.mark.parametrize("name", ["ant-dir", "ant-vel"])
def test_ant_takes_the_official_codes_timing_and_rewards(name):
    """cbfinn/maml_rl's ant: one 0.02 s step per action; rllab's cost weights and 0.05 survival bonus;
    the velocity task adds 1 per step (without it, falling over early is the best a policy can do)."""
    env = make_mujoco_tasks(name, horizon=5, backend="gym")
    tasks = env.sample_tasks(2, torch.Generator().manual_seed(0))
    env.reset(tasks, 1, torch.Generator().manual_seed(0))
    assert (env.envs[0].frame_skip, env.envs[0].dt) == (1, pytest.approx(0.02))
    action = np.linspace(-0.9, 0.9, 8).astype(np.float32).astype(np.float64)
    twins = [make_gym_env("Ant-v5") for _ in range(2)]  # the same envs stepped by hand from the same states
    for twin, copy in zip(twins, env.envs):
        twin.reset(seed=0)
        twin.set_state(copy.data.qpos.copy(), copy.data.qvel.copy())
    _, reward, _ = env.step(torch.tensor(action, dtype=torch.float32).expand(2, 1, 8))
    for index, twin in enumerate(twins):
        x_before = twin.data.qpos[0]
        twin.step(action)
        velocity = (twin.data.xpos[1, 0] - x_before) / 0.02
        goal = tasks[index, 0].item()
        task_term = goal * velocity if name == "ant-dir" else 1.0 - abs(velocity - goal)
        contact = 5e-4 * float(np.sum(np.clip(twin.data.cfrc_ext, -1, 1) ** 2))
        expected = task_term - 0.005 * float(np.sum(action ** 2)) - contact + 0.05
        assert reward[index, 0].item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_ant_terminates_when_unhealthy_and_masks_the_rest():
    env = make_mujoco_tasks("ant-dir", horizon=3, backend="gym")
    tasks = torch.tensor([[1.0]])
    env.reset(tasks, 1, torch.Generator().manual_seed(0))
    ant = env.envs[0]
    qpos = ant.data.qpos.copy()
    qpos[2] = 5.0  # torso far above the healthy z range
    ant.set_state(qpos, ant.data.qvel.copy())
    _, reward, done = env.step(torch.zeros(1, 1, 8))
    assert done.tolist() == [[True]]
    _, reward, done = env.step(torch.zeros(1, 1, 8))
    assert reward.item() == 0.0 and done.tolist() == [[True]]


@pytest.mark.parametrize("name", ["cheetah-dir", "cheetah-vel", "ant-dir", "ant-vel"])
def test_rollout_backend_steps_like_gymnasium(name):
    """Same start states and actions: the same observations, rewards and ends, step for step. One
    ant is thrown upwards so that it leaves the healthy z range (its episode ends) mid-way."""
    steps = 20
    fast, slow = make_mujoco_tasks(name, steps, backend="rollout"), make_mujoco_tasks(name, steps, backend="gym")
    tasks = fast.sample_tasks(2, torch.Generator().manual_seed(0))
    fast.reset(tasks, 2, torch.Generator().manual_seed(0))
    slow.reset(tasks, 2, torch.Generator().manual_seed(0))
    qpos, qvel = slice(1, 1 + fast.nq), slice(1 + fast.nq, 1 + fast.nq + fast.nv)
    if fast.contact:
        fast.state[3, qpos.start + 2], fast.state[3, qvel.start + 2] = 0.9, 3.0
    for i, env in enumerate(slow.envs[:4]):  # start the gymnasium copies from the rollout's states
        env.set_state(fast.state[i, qpos], fast.state[i, qvel])
    assert fast.obs_dim == slow.obs_dim
    actions = torch.randn(steps, 2, 2, fast.act_dim, generator=torch.Generator().manual_seed(1))
    ended, touched = torch.zeros(2, 2, dtype=torch.bool), False
    for t in range(steps):
        fast_out, slow_out = fast.step(actions[t]), slow.step(actions[t])
        for a, b in zip(fast_out, slow_out):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        ended |= fast_out[2]
        touched |= bool(fast_out[0][..., 27:].abs().sum() > 0)
    if fast.contact:
        assert ended.tolist() == [[False, False], [False, True]]
        assert touched  # contact forces observed, not just zeros
    else:
        assert not ended.any()


@pytest.mark.parametrize("name", ["ant-dir", "cheetah-vel"])
def test_worker_processes_step_the_same_episodes_as_one_process(name):
    torch.manual_seed(0)
    local, workers = make_mujoco_tasks(name, 6, backend="gym"), make_mujoco_tasks(name, 6, backend="gym", workers=2)
    try:
        policy = GaussianPolicy(local.obs_dim, local.act_dim, hidden=(8,))
        tasks = local.sample_tasks(3, torch.Generator().manual_seed(0))  # 3 tasks over 2 workers: shares 2 and 1
        runs = [sample(env, policy, per_task(policy.params(), 3), tasks, 2, torch.Generator().manual_seed(1))
                for env in (local, workers)]
        for field in ("obs", "actions", "rewards", "mask"):
            torch.testing.assert_close(getattr(runs[0], field), getattr(runs[1], field), rtol=0, atol=0)
        assert runs[0].rewards.abs().sum() > 0
    finally:
        workers.close()


def test_workers_need_the_gym_backend():
    with pytest.raises(MamlkitError, match="env-threads"):
        make_mujoco_tasks("cheetah-dir", 5, backend="rollout", workers=2)


class PointLineWithSuccess(PointLine):
    """Reports Meta-World's ``info["success"]``: within 0.2 of the goal, and only there."""

    def step(self, action):
        obs, reward, _, truncated, info = super().step(action)
        return obs, reward, False, truncated, {**info, "success": float(abs(self.x[0] - self.goal) < 0.2)}


class SuccessTasks(GymTasks):
    records_success = True


def test_success_counts_an_episode_that_passes_the_goal_and_leaves_it():
    env = SuccessTasks(PointLineWithSuccess, lambda n, g: torch.rand(n, generator=g), horizon=4, set_task=set_goal)
    env.reset(torch.tensor([[1.0], [-1.0]]), 1, torch.Generator().manual_seed(0))
    for _ in range(4):  # the first task's point passes its goal (x = 0.5, 1.0, 1.5, 2.0), the second never
        env.step(torch.full((2, 1, 1), 0.5))
    assert env.successes().tolist() == [[True], [False]]
    env.reset(torch.tensor([[1.0]]), 1, torch.Generator().manual_seed(0))
    assert env.successes().tolist() == [[False]]  # a reset forgets
    torch.manual_seed(0)
    policy = GaussianPolicy(1, 1, hidden=(4,))
    episodes = sample(env, policy, per_task(policy.params(), 2), torch.tensor([[0.5], [5.0]]), 3,
                      torch.Generator().manual_seed(0))
    assert episodes.success.shape == (2, 3) and not episodes.success[1].any()  # 5.0 is out of reach in 4 moves


def test_missing_metaworld_gets_the_install_hint(monkeypatch):
    import sys
    from mamlkit.rl.metaworld_tasks import benchmark_tasks
    monkeypatch.setitem(sys.modules, "metaworld", None)  # import metaworld raises ImportError
    with pytest.raises(MamlkitError, match=r"pip install 'mamlkit\[metaworld\]'"):
        benchmark_tasks.__wrapped__("ml1", "reach-v3")  # past the per-process cache of built benchmarks
