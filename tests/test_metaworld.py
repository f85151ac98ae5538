"""Meta-World (the optional extra): the batched tasks against a plain Meta-World env, the split,
worker processes, bad names, and a few iterations of ml1-reach end to end. Skipped where
metaworld is not installed (pip install -e '.[test,metaworld]')."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("metaworld")

from mamlkit.errors import MamlkitError  # noqa: E402
from mamlkit.experiments import rl  # noqa: E402
from mamlkit.presets import get_preset  # noqa: E402
from mamlkit.rl.metaworld_tasks import TEST, TRAIN, benchmark_tasks, make_family_env, make_metaworld_tasks  # noqa: E402
from mamlkit.rl.policy import GaussianPolicy  # noqa: E402
from mamlkit.rl.sampler import per_task, sample  # noqa: E402

HORIZON = 12


@pytest.fixture(scope="module")
def reach():
    return make_metaworld_tasks("ml1", "reach-v3", HORIZON)


def random_episodes(env, tasks, trajectories=2, seed=0):
    torch.manual_seed(seed)
    policy = GaussianPolicy(env.obs_dim, env.act_dim, hidden=(8,))
    return sample(env, policy, per_task(policy.params(), len(tasks)), tasks, trajectories,
                  torch.Generator().manual_seed(seed))


def test_episodes_replay_in_a_plain_metaworld_env(reach):
    """Rewards and success of the batched sampler equal stepping Meta-World's own env by hand."""
    tasks = reach.sample_test_tasks(2, torch.Generator().manual_seed(0))
    episodes = random_episodes(reach, tasks)
    assert episodes.obs.shape == (2, 2, HORIZON, 39) and episodes.success.dtype == torch.bool
    _, test = benchmark_tasks("ml1", "reach-v3")
    for t, row in enumerate(tasks.tolist()):
        for n in range(2):
            env = make_family_env("reach-v3")
            env.set_task(test[row[1]])
            obs, _ = env.reset()
            np.testing.assert_allclose(episodes.obs[t, n, 0].numpy(), obs, rtol=1e-6, atol=1e-6)
            rewards, succeeded = [], False
            for action in episodes.actions[t, n].double().numpy():
                _, reward, _, _, info = env.step(np.clip(action, -1, 1))
                rewards.append(reward)
                succeeded |= bool(info["success"])
            np.testing.assert_allclose(episodes.rewards[t, n].numpy(), rewards, rtol=1e-5, atol=1e-5)
            assert episodes.success[t, n].item() == succeeded


def test_training_and_held_out_tasks_come_from_metaworlds_split(reach):
    train, test = benchmark_tasks("ml1", "reach-v3")
    generator = torch.Generator().manual_seed(0)
    drawn_train, drawn_test = reach.sample_tasks(50, generator), reach.sample_test_tasks(50, generator)
    assert (drawn_train[:, 0] == TRAIN).all() and (drawn_test[:, 0] == TEST).all()
    assert sorted(drawn_test[:, 1].tolist()) == list(range(50))  # all 50 distinct held-out goals
    assert {reach.task(row) for row in drawn_test.tolist()} == set(test)
    assert not set(train) & set(test)


def test_worker_processes_give_the_same_episodes(reach):
    tasks = reach.sample_tasks(3, torch.Generator().manual_seed(1))
    here = random_episodes(reach, tasks, seed=1)
    workers = make_metaworld_tasks("ml1", "reach-v3", HORIZON, workers=2)
    try:
        there = random_episodes(workers, tasks, seed=1)
        assert torch.equal(workers.sample_test_tasks(4, torch.Generator().manual_seed(2)),
                           reach.sample_test_tasks(4, torch.Generator().manual_seed(2)))
    finally:
        workers.close()
    for field in ("obs", "actions", "rewards", "mask", "success"):
        assert torch.equal(getattr(here, field), getattr(there, field)), field


@pytest.mark.parametrize("benchmark, family, message", [
    ("ml1", "reach-v2", r"unknown Meta-World task 'reach-v2'; choose one of assembly-v3, .*reach-v3"),
    ("ml5", "reach-v3", "unknown Meta-World benchmark 'ml5'; choose one of ml1, ml10")])
def test_bad_names_get_one_line_with_the_valid_ones(benchmark, family, message):
    with pytest.raises(MamlkitError, match=message) as error:
        make_metaworld_tasks(benchmark, family, HORIZON)
    assert "\n" not in str(error.value)


def test_horizon_beyond_metaworlds_episode_is_refused():
    with pytest.raises(MamlkitError, match="at most 500 steps"):
        make_metaworld_tasks("ml1", "reach-v3", 501)


def test_tiny_ml1_reach_run_end_to_end(tmp_path):
    config = replace(get_preset("ml1-reach-small").config, iterations=2, meta_batch=2, trajectories=2,
                     horizon=HORIZON, hidden=(8, 8), eval_tasks=3, eval_steps=1, validation_tasks=2,
                     validate_every=1, checkpoint_every=1)
    summary = rl.train(config, tmp_path)
    for split in (summary["results"], summary["training_tasks"]["results"]):
        assert {"maml", "pretrained", "random"} <= set(split)
        for row in split.values():
            assert len(row["success"]) == len(row["success_ci95"]) == 2
            assert all(0 <= s <= 1 for s in row["success"])
    assert all(task[0] == TEST for task in summary["tasks"])
    assert all(task[0] == TRAIN for task in summary["training_tasks"]["tasks"])
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all("maml/success_post" in r and "maml/success_pre" in r for r in records if "maml/return_post" in r)
    for name in ("learning_curve.png", "fig5_returns_vs_steps.png", "success_vs_steps.png", "adapted_policy.gif"):
        assert (tmp_path / name).stat().st_size > 0


def test_presets_use_metaworlds_benchmarks():
    assert (get_preset("ml1-push").config.metaworld_task, get_preset("ml1-push").config.horizon) == ("push-v3", 500)
    assert get_preset("ml10-small").config.env == "ml10" and get_preset("ml10-small").config.horizon == 150
