"""An RL run end to end at a toy scale: outputs, resume to the same numbers, config errors."""

import json
import shutil
from dataclasses import replace

import pytest
import torch

from mamlkit.engine.checkpoint import load_latest_checkpoint
from mamlkit.errors import MamlkitError
from mamlkit.experiments import rl
from mamlkit.presets import get_preset
from mamlkit.rl.envs import Navigation2D, TaskInObservation

TINY = rl.RLConfig(iterations=2, meta_batch=2, trajectories=3, horizon=8, hidden=(8, 8), eval_tasks=3,
                   eval_steps=1, checkpoint_every=1, validation_tasks=2, validate_every=1)


def final_params(run_dir):
    state, _ = load_latest_checkpoint(run_dir / "checkpoints")
    return state["iteration"], state["learners"]


def test_train_writes_results_figures_and_timings(tmp_path):
    summary = rl.train(TINY, tmp_path)
    assert set(summary["results"]) == {"maml", "pretrained", "pretrained-own", "pretrained-last", "random"}
    assert all(len(row["return"]) == 2 for row in summary["results"].values())
    selected = json.loads((tmp_path / "results.json").read_text())["checkpoint_iteration"]
    assert set(selected) == {"maml", "pretrained", "pretrained-own", "pretrained-last"}
    assert all(1 <= i <= 2 for i in selected.values()) and selected["pretrained-last"] == 2
    for name in ("learning_curve.png", "fig5_returns_vs_steps.png", "adapted_paths.png", "metrics.jsonl"):
        assert (tmp_path / name).stat().st_size > 0
    timing = summary["seconds_per_iteration"]["maml"]
    assert timing["sample_s"] > 0 and timing["optimize_cpu_s"] > 0


def test_resumed_run_ends_with_the_same_parameters(tmp_path):
    for name in ("straight", "stopped"):
        (tmp_path / name).mkdir()
    rl.make_loop(TINY, tmp_path / "straight").run()
    rl.make_loop(replace(TINY, iterations=1), tmp_path / "stopped").run()
    loop = rl.make_loop(TINY, tmp_path / "stopped")
    loop.run(start=loop.restore())
    (i, straight), (j, resumed) = final_params(tmp_path / "straight"), final_params(tmp_path / "stopped")
    assert i == j == 2
    for learner in straight:
        for name, value in straight[learner]["model"].items():
            assert torch.equal(value, resumed[learner]["model"][name]), (learner, name)


def test_evaluation_uses_each_learners_best_validation_checkpoint(tmp_path):
    config = replace(TINY, iterations=3)
    rl.make_loop(config, tmp_path).run()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    scores = {name: [r[f"val/{name}"] for r in records] for name in ("maml", "pretrained", "pretrained-own")}
    env = rl.make_env(config)
    policies, iterations = rl.load_policies(config, tmp_path, env)
    for name, values in scores.items():
        assert len(values) == 3 and iterations[name] == 1 + values.index(max(values))
        best, _ = load_latest_checkpoint(tmp_path / "best" / name)
        assert best["val_return"] == max(values)
        for key, value in best["model"].items():
            assert torch.equal(policies[name].state_dict()[key], value)
    last, _ = load_latest_checkpoint(tmp_path / "checkpoints")
    assert iterations["pretrained-last"] == 3
    for key, value in last["learners"]["pretrained"]["model"].items():
        assert torch.equal(policies["pretrained-last"].state_dict()[key], value)
    # the last validation scored the last policy: after the steps ("pretrained"), and before ("-own")
    validation = env.sample_tasks(config.validation_tasks, torch.Generator().manual_seed(rl.VALIDATION_SEED))
    returns, _ = rl.adaptation_returns(env, policies["pretrained-last"], validation, config,
                                       torch.Generator().manual_seed(rl.VALIDATION_SEED + 1))
    assert records[-1]["val/pretrained"] == returns[:, 1:].mean().item()
    assert records[-1]["val/pretrained-own"] == returns[:, 0].mean().item() != records[-1]["val/pretrained"]


def test_a_selection_missing_from_an_older_run_is_not_started_on_resume(tmp_path, capsys):
    rl.make_loop(replace(TINY, iterations=1), tmp_path).run()
    shutil.rmtree(tmp_path / "best" / "pretrained-own")  # as in a run validated before it existed
    records = (tmp_path / "metrics.jsonl").read_text().splitlines()
    old = [json.dumps({k: v for k, v in json.loads(line).items() if k != "val/pretrained-own"}) for line in records]
    (tmp_path / "metrics.jsonl").write_text("\n".join(old) + "\n")
    loop = rl.make_loop(TINY, tmp_path)
    loop.run(start=loop.restore())
    assert not (tmp_path / "best" / "pretrained-own").exists()
    policies, iterations = rl.load_policies(TINY, tmp_path, rl.make_env(TINY))
    assert "pretrained-own" not in policies and "pretrained-last" in policies
    assert "pretrained-own: this run kept no checkpoint selected that way" in capsys.readouterr().out


def test_oracle_observes_the_task_and_leaves_the_other_learners_unchanged(tmp_path):
    env = TaskInObservation(Navigation2D(horizon=4))
    goals = torch.tensor([[0.3, -0.2], [-0.1, 0.4]])
    obs = env.reset(goals, 3, torch.Generator())
    assert env.obs_dim == 4 and obs.shape == (2, 3, 4)
    obs, _, _ = env.step(torch.ones(2, 3, 2))
    torch.testing.assert_close(obs[..., 2:], goals[:, None].expand(2, 3, 2))
    torch.testing.assert_close(obs[..., :2], torch.full((2, 3, 2), 0.1))
    for name, config in (("without", TINY), ("with", replace(TINY, oracle=True))):
        (tmp_path / name).mkdir()
        rl.make_loop(config, tmp_path / name).run()
    (_, without), (_, with_oracle) = final_params(tmp_path / "without"), final_params(tmp_path / "with")
    assert set(with_oracle) == {"maml", "pretrained", "oracle"}
    assert with_oracle["oracle"]["model"]["mean.0.weight"].shape[1] == 4  # position and goal
    for learner in without:
        for key, value in without[learner]["model"].items():
            assert torch.equal(value, with_oracle[learner]["model"][key]), (learner, key)


def test_an_oracle_only_run_is_selected_on_its_unadapted_return(tmp_path):
    config = replace(TINY, iterations=3, maml=False, pretrained=False, oracle=True)
    summary = rl.train(config, tmp_path)
    assert set(summary["results"]) == {"oracle", "random"}
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    values = [r["val/oracle"] for r in records]
    assert summary["checkpoint_iteration"]["oracle"] == 1 + values.index(max(values))
    env = rl.method_env("oracle", rl.make_env(config))
    validation = env.sample_tasks(config.validation_tasks, torch.Generator().manual_seed(rl.VALIDATION_SEED))
    last, _ = load_latest_checkpoint(tmp_path / "checkpoints")
    policy = rl.new_policy(config, env)
    policy.load_state_dict(last["learners"]["oracle"]["model"])
    returns, _ = rl.adaptation_returns(env, policy, validation, config,
                                       torch.Generator().manual_seed(rl.VALIDATION_SEED + 1))
    assert values[-1] == returns[:, 0].mean().item()


def test_presets_carry_the_papers_settings():
    cheetah = get_preset("cheetah-dir").config
    assert (cheetah.meta_batch, cheetah.trajectories, cheetah.horizon, cheetah.inner_lr, cheetah.max_kl) == \
        (40, 20, 200, 0.1, 0.01)
    nav = get_preset("2dnav").config
    assert (nav.meta_batch, nav.trajectories, nav.horizon, nav.hidden) == (20, 20, 100, (100, 100))
    assert get_preset("ant-vel-fo").config.first_order


@pytest.mark.parametrize("change, message", [({"env": "pong"}, "env must be one of"),
                                             ({"gamma": 1.5}, "gamma must be in"),
                                             ({"meta_batch": 0}, "meta_batch must be at least 1"),
                                             ({"maml": False, "pretrained": False}, "nothing to train")])
def test_bad_config_gets_a_one_line_error(change, message):
    with pytest.raises(MamlkitError, match=message):
        replace(TINY, **change)


def test_adapted_cheetah_renders_offscreen_to_a_gif(tmp_path):
    import imageio.v3 as iio
    from mamlkit.rl.mujoco_tasks import render_gif
    from mamlkit.rl.policy import GaussianPolicy
    config = rl.RLConfig(env="cheetah-dir", horizon=6, trajectories=2)
    torch.manual_seed(0)
    policy = GaussianPolicy(17, 6, hidden=(8,))
    render_gif(config, policy, torch.tensor([[1.0], [-1.0]]), tmp_path / "a.gif", size=32)
    frames = iio.imread(tmp_path / "a.gif")
    assert frames.shape[0] == 3 and frames.shape[1:3] == (32, 64)  # every 2nd of 6 steps, two tasks side by side
    assert frames.std() > 0
    assert iio.immeta(tmp_path / "a.gif")["duration"] == 100  # ms: two of the cheetah's 0.05 s steps, real time
