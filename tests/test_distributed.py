"""torchrun distribution on loopback gloo: 2 processes equal 1, a SIGKILLed worker restarts the group
from the last checkpoint with the numbers of an uninterrupted run, and the device option."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REAL_OMNIGLOT, needs_real_omniglot
from mamlkit import MamlkitError
from mamlkit.cli import main
from mamlkit.engine import distributed
from mamlkit.engine.checkpoint import load_latest_checkpoint
from mamlkit.experiments.sinusoid import SinusoidConfig, build_models
from mamlkit.tasks.sinusoid import SinusoidBatch, SinusoidTasks

SMALL = ["--meta-batch", "8", "--eval-tasks", "20", "--eval-shots", "5", "--eval-steps", "3", "--compile", "off",
         "--log-every", "10", "--device", "cpu"]
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def torchrun(*args, processes=2, restarts=0):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
            "--max-restarts", str(restarts), "-m", "mamlkit", *args]


def final_state(run: Path, folder="checkpoints") -> tuple[dict, str]:
    state, path = load_latest_checkpoint(run / folder)
    return state, path.name


def models(state: dict) -> dict[str, torch.Tensor]:
    if "learners" not in state:
        return dict(state["model"])
    return {f"{learner}.{key}": value for learner, learned in state["learners"].items()
            for key, value in learned["model"].items()}


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def nested_max_difference(a, b) -> float:
    """Largest absolute difference between two JSON trees of equal shape holding numbers."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        return max(nested_max_difference(a[k], b[k]) for k in a)
    if isinstance(a, list):
        assert len(a) == len(b)
        return max(nested_max_difference(x, y) for x, y in zip(a, b))
    return abs(a - b) if isinstance(a, float) else float(a != b)


def test_two_processes_equal_one_process(tmp_path):
    """With an uneven meta-batch (7 tasks: 4 + 3), so the all-reduce must weight each rank by its tasks."""
    args = ["train", "sinusoid", "--iterations", "30", "--checkpoint-every", "30", *SMALL, "--meta-batch", "7"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    two = subprocess.run(torchrun(*args, "--out", str(tmp_path / "two")), env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    (one_state, one_name), (two_state, two_name) = final_state(tmp_path / "one"), final_state(tmp_path / "two")
    assert one_name == two_name == "ckpt-000000030.pt"
    assert set(one_state["learners"]) == {"maml", "pretrained", "oracle"}
    assert max_difference(models(one_state), models(two_state)) < 1e-6
    initial = build_models(SinusoidConfig()) # the run really trained: parameters moved far beyond the tolerance
    assert (models(two_state)["maml.0.weight"] - initial["maml"][0].weight).abs().max() > 1e-3
    results = [json.loads((tmp_path / run / "results.json").read_text()) for run in ("one", "two")]
    assert nested_max_difference(results[0], results[1]) < 1e-5  # sharded evaluation, gathered on rank 0
    logged = [[json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
              for run in ("one", "two")]
    assert [r["iteration"] for r in logged[1]] == [10, 20, 30]  # rank 0 alone logs
    for a, b in zip(*logged):  # logged losses are means over the whole meta-batch, not one shard
        assert abs(a["maml/query_loss"] - b["maml/query_loss"]) < 1e-5 * abs(a["maml/query_loss"])


def worker_pid(agent: int, rank: int) -> int | None:
    """The pid of torchrun's worker with the given RANK (workers are the agent's children)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == agent and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def test_killed_worker_restarts_group_from_last_checkpoint(tmp_path):
    every = 25
    args = ["train", "sinusoid", "--iterations", "150", "--checkpoint-every", str(every), *SMALL]
    whole = subprocess.run(torchrun(*args, "--out", str(tmp_path / "whole"), restarts=1), env=ENV,
                           capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed = tmp_path / "killed"
    agent = subprocess.Popen(torchrun(*args, "--out", str(killed), restarts=1), env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list((killed / "checkpoints").glob("ckpt-*.pt")) and time.time() < deadline:
        time.sleep(0.01)
    before_kill = max(int(p.stem.split("-")[1]) for p in (killed / "checkpoints").glob("ckpt-*.pt"))
    victim = worker_pid(agent.pid, rank=1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    assert not (killed / "results.json").exists(), "the run finished before it could be killed"
    _, stderr = agent.communicate(timeout=300)
    assert agent.returncode == 0, stderr[-3000:]

    resumed = [int(i) for i in re.findall(r"resuming from the checkpoint of iteration (\d+)", stderr)]
    assert len(resumed) == 1 and resumed[0] >= before_kill and resumed[0] % every == 0  # no work lost beyond it
    (whole_state, whole_name), (killed_state, killed_name) = final_state(tmp_path / "whole"), final_state(killed)
    assert whole_name == killed_name == "ckpt-000000150.pt"
    assert max_difference(models(whole_state), models(killed_state)) == 0
    assert (tmp_path / "whole" / "results.json").read_text() == (killed / "results.json").read_text()
    iterations = [json.loads(line)["iteration"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert iterations == list(range(10, 151, 10))  # records past the checkpoint were replaced, none repeated


def test_meta_batch_smaller_than_the_processes_is_a_one_line_error(tmp_path):
    result = subprocess.run(torchrun("train", "sinusoid", *SMALL, "--meta-batch", "1", "--out", str(tmp_path / "r")),
                            env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("mamlkit: error")]
    assert errors and all(re.fullmatch(r"mamlkit: error \(rank \d\): meta_batch 1 cannot be shared by 2 "
                                       r"processes; .*--meta-batch.*", line) for line in errors), errors
    assert not (tmp_path / "r").exists()


@needs_real_omniglot
def test_omniglot_two_processes_equal_one_process(tmp_path):
    args = ["train", "omniglot-5w1s", "--data", str(REAL_OMNIGLOT), "--meta-batch", "4", "--iterations", "3",
            "--validate-every", "3", "--validation-tasks", "10", "--eval-tasks", "20", "--threads", "1",
            "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    two = subprocess.run(torchrun(*args, "--out", str(tmp_path / "two")), env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    # A conv bias right before BatchNorm has an analytically zero meta-gradient: Adam turns its float
    # noise (any summation order, even other thread counts) into ±lr steps that BatchNorm cancels.
    cancelled = re.compile(r"(maml\.)?\d\.0\.bias")
    for folder in ("checkpoints", "best"):
        one, two_state = (models(final_state(tmp_path / run, folder)[0]) for run in ("one", "two"))
        kept = [k for k in one if not cancelled.fullmatch(k)]
        assert len(kept) == len(one) - 4
        assert max_difference({k: one[k] for k in kept}, {k: two_state[k] for k in kept}) < 1e-6
    results = [json.loads((tmp_path / run / "results.json").read_text()) for run in ("one", "two")]
    assert nested_max_difference(results[0], results[1]) < 1e-6


def test_device_option(monkeypatch):
    assert distributed.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(MamlkitError, match="no CUDA device is visible; use --device cpu"):
        distributed.resolve_device("cuda")
    with pytest.raises(MamlkitError, match="device must be one of auto, cpu, cuda"):
        distributed.resolve_device("tpu")


def test_cuda_without_gpu_is_a_one_line_cli_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["train", "sinusoid", *SMALL, "--device", "cuda", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA device is visible" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_and_evaluation_parts_cover_every_task_once_in_order(monkeypatch, world):
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    batch = SinusoidTasks().sample(11, 2, 3, torch.Generator().manual_seed(0))
    shards, parts = [], []
    for rank in range(world):
        monkeypatch.setattr(distributed, "rank", lambda: rank)
        shard = distributed.shard(batch, 11)
        assert type(shard) is SinusoidBatch and shard.support_x.shape[0] == distributed.shard_size(11)
        assert shard.support_x.shape[0] in (11 // world, 11 // world + 1)
        shards.append(shard)
        parts.append(distributed.span(10))
    for field in range(len(batch)):
        assert torch.equal(torch.cat([s[field] for s in shards]), batch[field])
    assert [i for part in parts for i in range(10)[part]] == list(range(10))
    assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1


def test_shard_errors_name_the_fix(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 4)
    with pytest.raises(MamlkitError, match="meta_batch 3 cannot be shared by 4 processes; use at least 4 tasks"):
        distributed.shard_size(3)
    with pytest.raises(MamlkitError, match="3 evaluation tasks cannot be shared by 4 processes"):
        distributed.span(3)


def test_experiments_that_do_not_shard_refuse_several_processes(monkeypatch):
    from types import SimpleNamespace

    from mamlkit import cli
    from mamlkit.experiments import fewshot, sinusoid
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    for experiment in (sinusoid, fewshot):
        cli._check_distributable("x", experiment)
    with pytest.raises(MamlkitError, match="preset solo runs in one process only; launch it without torchrun"):
        cli._check_distributable("solo", SimpleNamespace())


def test_run_trained_for_cuda_evaluates_on_cpu(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert main(["train", "sinusoid", "--iterations", "5", *SMALL, "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "device": "cuda"}))  # as if trained on a GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    capsys.readouterr()
    assert main(["eval", str(run)]) == 1
    assert "no CUDA device is visible" in capsys.readouterr().err
    expected = (run / "results.json").read_text()
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    assert (run / "results.json").read_text() == expected
