"""The sinusoid experiment end to end through the CLI: outputs, determinism, kill + resume, errors."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from mamlkit import MamlkitError
from mamlkit.cli import main
from mamlkit.engine.checkpoint import load_latest_checkpoint
from mamlkit.engine.trainer import TrainLoop
from mamlkit.tasks.sinusoid import SinusoidTasks

SMALL = ["--eval-tasks", "20", "--eval-shots", "5", "10", "--compile", "off", "--log-every", "50"]


def mamlkit(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "mamlkit", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"}, **kwargs)


def final_state(run):
    state, path = load_latest_checkpoint(run / "checkpoints")
    return state, path.name


def assert_same_run(a, b):
    (state_a, name_a), (state_b, name_b) = final_state(a), final_state(b)
    assert name_a == name_b
    for learner in state_a["learners"]:
        for key, value in state_a["learners"][learner]["model"].items():
            assert torch.equal(value, state_b["learners"][learner]["model"][key]), (learner, key)
    assert json.loads((a / "results.json").read_text()) == json.loads((b / "results.json").read_text())


def test_sinusoid_tasks_follow_the_paper_ranges():
    batch = SinusoidTasks().sample(2000, 10, 5, torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (2000, 10, 1) and batch.query_y.shape == (2000, 5, 1)
    assert 0.1 <= batch.amplitude.min() and batch.amplitude.max() <= 5.0
    assert 0 <= batch.phase.min() and batch.phase.max() <= torch.pi
    assert -5 <= batch.support_x.min() and batch.support_x.max() <= 5
    expected = batch.amplitude[:, None, None] * torch.sin(batch.query_x - batch.phase[:, None, None])
    assert torch.allclose(batch.query_y, expected)


def test_train_writes_every_output_and_same_seed_gives_same_numbers(tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        assert main(["train", "sinusoid", "--iterations", "120", "--checkpoint-every", "60", *SMALL,
                     "--out", str(run)]) == 0
    a = runs[0]
    for name in ("config.json", "metrics.jsonl", "results.json", "fig2_adaptation.png", "fig3_mse_vs_steps.png"):
        assert (a / name).stat().st_size > 0, name
    assert any((a / "tensorboard").iterdir())
    results = json.loads((a / "results.json").read_text())["results"]
    assert set(results) == {"K=5", "K=10"} and len(results["K=5"]["maml"]["mse"]) == 11
    config = json.loads((a / "config.json").read_text())
    assert config["preset"] == "sinusoid" and config["iterations"] == 120 and config["inner_lr"] == 0.01
    assert [r["iteration"] for r in map(json.loads, (a / "metrics.jsonl").read_text().splitlines())] == [50, 100, 120]
    assert_same_run(runs[0], runs[1])


def test_killed_run_resumes_to_the_same_numbers(tmp_path):
    args = ["train", "sinusoid", "--iterations", "1500", "--checkpoint-every", "100", *SMALL]
    assert mamlkit(*args, "--out", str(tmp_path / "whole")).returncode == 0

    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "mamlkit", *args, "--out", str(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((killed / "checkpoints").glob("ckpt-*.pt")) and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "results.json").exists(), "the run finished before it could be killed"
    resumed = mamlkit("train", "--resume", str(killed))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(tmp_path / "whole", killed)
    iterations = [r["iteration"] for r in map(json.loads, (killed / "metrics.jsonl").read_text().splitlines())]
    assert iterations == sorted(set(iterations)) and iterations[-1] == 1500


def test_resume_falls_back_past_a_corrupt_checkpoint(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "sinusoid", "--iterations", "100", "--checkpoint-every", "40", *SMALL, "--out", str(run)]) == 0
    newest = sorted((run / "checkpoints").glob("ckpt-*.pt"))[-1]
    newest.write_bytes(newest.read_bytes()[:100])
    result = mamlkit("train", "--resume", str(run), "--iterations", "120")
    assert result.returncode == 0, result.stderr
    assert final_state(run)[1] == "ckpt-000000120.pt"


def test_resume_skips_a_metrics_record_cut_off_by_the_kill(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "sinusoid", "--iterations", "100", "--checkpoint-every", "50", *SMALL, "--out", str(run)]) == 0
    metrics = run / "metrics.jsonl"
    with open(metrics, "a") as handle:  # a process killed while writing the record after the checkpoint
        handle.write('{"iteration": 110, "maml/query_lo')
    result = mamlkit("train", "--resume", str(run), "--iterations", "120")
    assert result.returncode == 0, result.stderr
    assert [r["iteration"] for r in map(json.loads, metrics.read_text().splitlines())] == [50, 100, 120]


def test_diverging_run_stops_with_one_line_error_naming_the_iteration(tmp_path):
    result = mamlkit("train", "sinusoid", "--iterations", "400", *SMALL, "--meta-lr", "1e30",
                     "--out", str(tmp_path / "run"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert re.match(r"mamlkit: error: the loss became (nan|inf) at iteration 2; .*--meta-lr", error)


class FailsAt:
    """A learner whose loss turns NaN at a given iteration."""

    def __init__(self, iteration):
        self.iteration, self.calls, self.weight = iteration, 0, torch.zeros(1)

    def step(self, batch):
        self.calls += 1
        self.weight += 1
        return {"loss": float("nan") if self.calls == self.iteration else 1.0}

    def state_dict(self):
        return {"weight": self.weight.clone()}

    def load_state_dict(self, state):
        self.weight = state["weight"]


def test_nan_stops_the_loop_and_keeps_the_last_good_checkpoint(tmp_path):
    loop = TrainLoop(tmp_path, {"model": FailsAt(8)}, lambda start: iter(lambda: None, 0), iterations=20,
                     checkpoint_every=5, log_every=1)
    with pytest.raises(MamlkitError, match="the loss became nan at iteration 8; model diverged"):
        loop.run()
    state, path = load_latest_checkpoint(tmp_path / "checkpoints")
    assert path.name == "ckpt-000000005.pt" and state["learners"]["model"]["weight"].item() == 5


class Slow(FailsAt):
    def step(self, batch):
        time.sleep(0.05)
        return super().step(batch)


def test_time_limit_stops_early_with_a_checkpoint_to_resume_from(tmp_path):
    loop = TrainLoop(tmp_path, {"model": Slow(0)}, lambda start: iter(lambda: None, 0), iterations=1000,
                     checkpoint_every=1000, log_every=1000, time_limit=0.3)
    loop.run()
    state, path = load_latest_checkpoint(tmp_path / "checkpoints")
    assert 3 <= state["iteration"] < 20 and state["learners"]["model"]["weight"].item() == state["iteration"]


@pytest.mark.parametrize("args, message", [
    (["train", "--resume", "{tmp}/nothing"], "is not a mamlkit run folder"),
    (["train", "sinusoid", "--inner-steps", "-1", "--out", "{tmp}/neg"], "inner_steps must be a whole number >= 0"),
    (["train", "cifar"], "Unrecognized options: cifar; Available subcommands: sinusoid, sinusoid-fo"),
    (["train"], "Missing subcommand: Expected one of {sinusoid, sinusoid-fo"),
    (["eval", "{tmp}/nothing"], "is not a mamlkit run folder"),
])
def test_bad_input_gets_one_line_error(tmp_path, capsys, args, message):
    assert main([a.format(tmp=tmp_path) for a in args]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_existing_out_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"preset": "sinusoid", "iterations": 10}))
    assert main(["train", "sinusoid", "--out", str(run)]) == 1
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "ckpt-000000005.pt").write_bytes(b"x")
    assert main(["train", "sinusoid", "--out", str(run)]) == 1
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err


@pytest.mark.parametrize("algo", ["metasgd", "mamlpp", "reptile", "imaml"])
def test_every_algorithm_trains_resumes_and_evaluates_from_the_cli(tmp_path, algo):
    """--algo picks the meta-learner; its extra state (learned rates, MAML++'s iteration counter)
    is checkpointed, so a resumed run ends where an uninterrupted one does."""
    options = ["--algo", algo, "--inner-steps", "2", "--eval-steps", "2"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(["train", "sinusoid", "--iterations", "20", "--checkpoint-every", "10", *SMALL, *options,
                 "--out", str(whole)]) == 0
    assert main(["train", "sinusoid", "--iterations", "10", "--checkpoint-every", "10", *SMALL, *options,
                 "--out", str(split)]) == 0
    assert main(["train", "--resume", str(split), "--iterations", "20"]) == 0
    assert_same_run(whole, split)
    saved = final_state(whole)[0]["learners"]["maml"]["model"]
    if algo in ("metasgd", "mamlpp"):
        assert any(key.startswith(("inner_lr.", "inner_lr_scale.")) for key in saved)
    assert json.loads((whole / "results.json").read_text())["algo"] == algo


def test_algorithm_options_that_do_not_apply_are_one_line_errors(tmp_path, capsys):
    assert main(["train", "sinusoid", "--iterations", "2", *SMALL, "--algo", "reptile", "--compile", "on",
                 "--out", str(tmp_path / "a")]) == 1
    assert "Reptile does not take compile=True" in capsys.readouterr().err
    assert main(["train", "sinusoid", "--iterations", "2", *SMALL, "--algo", "imaml", "--algo-options", "lam",
                 "--out", str(tmp_path / "b")]) == 1
    assert "KEY=VALUE" in capsys.readouterr().err
