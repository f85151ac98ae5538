"""Few-shot classification end to end on the real Omniglot, plus its one-line errors."""

import json

import pytest
import torch

from conftest import REAL_OMNIGLOT, needs_real_omniglot
from mamlkit.cli import main
from mamlkit.engine.checkpoint import load_best
from mamlkit.engine.run import saved_config
from mamlkit.experiments.fewshot import (TEST_SEED, FewShotConfig, build_model, fixed_tasks, load_samplers, make_maml,
                                         scaled_cross_entropy)
from mamlkit.presets import PRESETS

TINY = ["--data", str(REAL_OMNIGLOT), "--meta-batch", "4", "--validation-tasks", "10", "--eval-tasks", "20",
        "--threads", "1"]


def test_presets_follow_the_paper_table():
    expected = {  # preset: (ways, shots, queries, α, train steps, test steps, meta-batch)
        "omniglot-5w1s": (5, 1, 1, 0.4, 1, 3, 32), "omniglot-5w5s": (5, 5, 5, 0.4, 1, 3, 32),
        "omniglot-20w1s": (20, 1, 1, 0.1, 5, 5, 16), "omniglot-20w5s": (20, 5, 5, 0.1, 5, 5, 16),
        "miniimagenet-5w1s": (5, 1, 15, 0.01, 5, 10, 4), "miniimagenet-5w5s": (5, 5, 15, 0.01, 5, 10, 2),
    }
    for name, row in expected.items():
        c = PRESETS[name].config
        assert (c.ways, c.shots, c.queries, c.inner_lr, c.inner_steps, c.eval_inner_steps, c.meta_batch) == row
        assert c.iterations == 60_000 and c.meta_lr == 1e-3 and not c.first_order
        assert PRESETS[f"{name}-fo"].config.first_order
    assert PRESETS["miniimagenet-5w1s"].config.clip_value == 10
    assert PRESETS["omniglot-5w1s-mlp"].config.model == "mlp"


def test_official_loss_scaling_is_sum_over_k():
    logits, labels = torch.randn(10, 5), torch.arange(5).repeat(2)  # 5-way, K = 2
    official = torch.nn.functional.cross_entropy(logits, labels, reduction="sum") / 2
    assert torch.allclose(scaled_cross_entropy(logits, labels, scale=5), official)


@needs_real_omniglot
def test_omniglot_run_selects_on_validation_and_reevaluates(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.chdir(REAL_OMNIGLOT.parent)  # a relative --data is stored absolute
    assert main(["train", "omniglot-5w1s", *TINY, "--data", REAL_OMNIGLOT.name, "--iterations", "6",
                 "--validate-every", "3", "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["data"] == str(REAL_OMNIGLOT.resolve())
    monkeypatch.chdir(tmp_path)
    results = json.loads((run / "results.json").read_text())
    assert len(results["accuracy"]) == 4 and results["eval_tasks"] == 20  # 0..3 inner steps
    assert results["checkpoint_iteration"] in (3, 6)
    assert all(0 <= a <= 100 for a in results["accuracy"])
    assert len(results["task_accuracy"]) == 20  # per test task, for paired comparisons
    assert abs(sum(results["task_accuracy"]) / 20 - results["accuracy"][-1]) < 1e-3
    validated = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val/accuracy" in r]
    assert [r["iteration"] for r in validated] == [3, 6]
    best = max(validated, key=lambda r: r["val/accuracy"])
    assert results["val_accuracy"] == best["val/accuracy"]
    assert (run / "learning_curve.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    assert json.loads((run / "results.json").read_text()) == results
    assert "test accuracy %" in capsys.readouterr().out
    moved = tmp_path / "moved"  # the data set moved: eval --data finds it, the stored config stays
    moved.symlink_to(REAL_OMNIGLOT.resolve())
    config = (run / "config.json").read_text()
    assert main(["eval", str(run), "--data", str(moved)]) == 0
    assert json.loads((run / "results.json").read_text()) == results and (run / "config.json").read_text() == config


def per_task_logits(config, state, task) -> torch.Tensor:
    """An independent reading of one checkpoint on one task: adapt with ``maml.adapt`` for each step
    count, one task at a time, and predict the queries: ``[steps + 1, Q, N]``."""
    maml = make_maml(config, build_model(config))
    maml.load_state_dict(state["model"])
    support_x, support_y, query_x, _ = task
    with torch.no_grad():
        unadapted = maml.predict(query_x)
    adapted = [maml.predict(query_x, {k: v.detach() for k, v in maml.adapt(support_x, support_y, steps).items()},
                            step=steps).detach() for steps in range(1, config.eval_inner_steps + 1)]
    return torch.stack([unadapted, *adapted])


@needs_real_omniglot
def test_ensemble_tests_the_mean_logits_of_the_best_checkpoints(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "omniglot-5w1s", *TINY, "--iterations", "8", "--validate-every", "2", "--ensemble", "3",
                 "--eval-tasks", "12", "--out", str(run)]) == 0
    results = json.loads((run / "results.json").read_text())
    members = load_best(run / "best", "val_accuracy", count=10)
    assert len(members) == 3 and [m["iteration"] for m in results["ensemble"]] == [m["iteration"] for m in members]
    assert results["checkpoint_iteration"] == members[0]["iteration"]
    _, _, config = saved_config(run)
    tasks = fixed_tasks(load_samplers(config)["test"], config.eval_tasks, TEST_SEED)
    ensemble, alone = [], []  # per task: accuracy % after 0..steps inner steps
    for t in range(config.eval_tasks):
        task = tuple(tensor[t] for tensor in tasks)
        logits = [per_task_logits(config, state, task) for state in members]
        ensemble.append(100 * (sum(logits).argmax(-1) == task[3]).float().mean(-1))
        alone.append(100 * (logits[0].argmax(-1) == task[3]).float().mean(-1))
    for curves, summary in ((ensemble, results), (alone, results["best_alone"])):
        curves = torch.stack(curves)
        assert curves[:, -1].tolist() == pytest.approx(summary["task_accuracy"], abs=1e-3)
        assert curves.mean(0).tolist() == pytest.approx(summary["accuracy"], abs=1e-3)
    assert not torch.equal(torch.stack(ensemble), torch.stack(alone))  # the members differ: a real ensemble
    table = capsys.readouterr().out
    assert "mean of the 3 best, test accuracy %" in table and "best alone, test accuracy %" in table


@needs_real_omniglot
@pytest.mark.parametrize("args, message", [
    (["--ways", "150"], "ways"),
    (["--shots", "15", "--queries", "10"], "shots"),
])
def test_impossible_episodes_get_one_line_errors(tmp_path, capsys, args, message):
    assert main(["train", "omniglot-5w1s", *TINY, *args, "--out", str(tmp_path / "run")]) == 1
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "error" in line]
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]


@pytest.mark.parametrize("args, message", [
    (["--data", "{tmp}/missing"], "data path"),
    (["--dataset", "imagenet"], "invalid choice 'imagenet' for argument '--dataset'. "
                                "Expected one of ('omniglot', 'miniimagenet', 'images')"),
])
def test_bad_data_gets_one_line_errors(tmp_path, capsys, args, message):
    argv = ["train", "omniglot-5w1s", *[a.format(tmp=tmp_path) for a in args], "--out", str(tmp_path / "run")]
    assert main(argv) == 1
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "error" in line]
    assert len(err) == 1 and message in err[0], err


def test_missing_miniimagenet_names_the_expected_files(tmp_path, capsys):
    assert main(["train", "miniimagenet-5w1s", "--data", str(tmp_path), "--out", str(tmp_path / "run")]) == 1
    assert "mini-imagenet-cache" in capsys.readouterr().err


def test_mlp_only_for_omniglot():
    with pytest.raises(ValueError, match="Omniglot's baseline"):
        FewShotConfig(dataset="miniimagenet", model="mlp")


def test_conv_pool_is_maml_plus_plus_omniglot_network():
    """Stride-1 convs, each block max-pooled: 28 → 14 → 7 → 3 → 1, the parameters of the strided net."""
    pooled, strided = (build_model(FewShotConfig(model=name)) for name in ("conv-pool", "conv"))
    convs = [m for m in pooled.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4 and all(c.stride == (1, 1) and c.padding == (1, 1) for c in convs)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in pooled.modules()) == 4
    assert [p.shape for p in pooled.parameters()] == [p.shape for p in strided.parameters()]
    images = torch.rand(2, 1, 28, 28)
    assert pooled[:4](images).shape == (2, 64, 1, 1) and pooled(images).shape == (2, 5)
    with pytest.raises(ValueError, match="max-pools already"):
        FewShotConfig(dataset="miniimagenet", model="conv-pool")
    with pytest.raises(ValueError, match="--image-size 16 or more"):
        FewShotConfig(dataset="images", model="conv-pool", image_size=12)
