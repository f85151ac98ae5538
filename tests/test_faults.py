"""Fault injection: in every phase of a run (start, training, checkpoint write, validation, final
evaluation, figures) a kill, a full disk (ENOSPC), a permission error and a corrupt file.

Each case checks the folder is intact (no temporary left by a failed write, every checkpoint that
should survive still loads, the config unchanged), that failures are one line naming the file and
the fix, and that the run then ends exactly as an uninterrupted one. A tiny 2D-navigation run is
used: it has every phase, validation with best checkpoints included, and takes seconds.
Faults are injected in ``files.write_all``, through which every byte a run writes passes.
"""

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import signal
from pathlib import Path

import pytest
import torch
from PIL import Image

from mamlkit.cli import main
from mamlkit.engine import files
from mamlkit.engine.checkpoint import load_latest_checkpoint, read_checkpoint

TRAIN = ["train", "2dnav", "--iterations", "4", "--checkpoint-every", "2", "--validate-every", "2",
         "--log-every", "1", "--meta-batch", "2", "--trajectories", "2", "--horizon", "10", "--hidden", "8",
         "--eval-tasks", "2", "--validation-tasks", "2", "--eval-steps", "1", "--render"]

# phase: (a fragment of the path written, which write of it fails, checkpoints that must survive)
PHASES = {
    "start": ("config.json", 1, []),
    "training": ("metrics.jsonl", 4, [2]),  # the emptied log, iterations 1, 2, then 3 (past checkpoint 2)
    "checkpoint": ("checkpoints/.ckpt-000000004", 1, [2]),
    "validation": ("best/pretrained/", 1, []),  # iteration 2: maml's best is written, pretrained's fails
    "evaluation": ("results.json", 1, [2, 4]),
    "figures": ("fig5_returns_vs_steps.png", 1, [2, 4]),
}
# phase: the file corrupted in a finished run
CORRUPTED = {"start": "config.json", "training": "metrics.jsonl", "checkpoint": "checkpoints/ckpt-000000004.pt",
             "validation": "best/maml", "evaluation": "results.json", "figures": "fig5_returns_vs_steps.png"}

class Killer:
    """``files.write_all`` that kills the process (SIGKILL) halfway through the ``nth`` write of a
    path containing ``target``."""

    def __init__(self, target: str, nth: int):
        self.target, self.nth, self.seen = target, nth, 0
        self.original = files.write_all

    def __call__(self, handle, data):
        if self.target in str(handle.name):
            self.seen += 1
            if self.seen == self.nth:
                handle.write(data[: len(data) // 2])
                handle.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        self.original(handle, data)


def killed_run(target: str, nth: int, argv: list[str]) -> int:
    """The exit status of ``mamlkit argv`` in a forked process (no second start-up of torch) that
    ``Killer`` kills; a child that is not killed never returns into pytest."""
    pid = os.fork()
    if pid == 0:
        try:
            files.write_all = Killer(target, nth)
            main(argv)
        finally:
            os._exit(1)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


class FailingWrite:
    """``files.write_all`` that fails the ``nth`` write of a path containing ``target``: a full disk
    after half the bytes, or a permission error before any."""

    def __init__(self, target: str, nth: int, error: int):
        self.target, self.nth, self.error, self.seen = target, nth, error, 0
        self.original = files.write_all

    def __call__(self, handle, data):
        if self.target in str(handle.name):
            self.seen += 1
            if self.seen == self.nth:
                if self.error == errno.ENOSPC:
                    handle.write(data[: len(data) // 2])
                    handle.flush()
                raise OSError(self.error, os.strerror(self.error))
        self.original(handle, data)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("faults") / "uninterrupted"
    assert main([*TRAIN, "--out", str(run)]) == 0
    return run


def outcome(run: Path) -> dict:
    """What a run ends with: its final learners and its evaluation (timings aside)."""
    state, path = load_latest_checkpoint(run / "checkpoints")
    results = json.loads((run / "results.json").read_text())
    return {"checkpoint": path.name, "learners": state["learners"], "results": results["results"],
            "selected": results["checkpoint_iteration"]}


def assert_same_outcome(run: Path, reference: Path) -> None:
    a, b = outcome(run), outcome(reference)
    assert (a["checkpoint"], a["results"], a["selected"]) == (b["checkpoint"], b["results"], b["selected"])
    for learner, state in b["learners"].items():
        for key, value in state["model"].items():
            assert torch.equal(a["learners"][learner]["model"][key], value), (learner, key)
    assert not list(run.rglob("*.tmp"))


def assert_intact(run: Path, phase: str, reference: Path) -> None:
    """After a fault: the checkpoints that must survive load, and the config is the run's."""
    _, _, surviving = PHASES[phase]
    if phase == "start":
        assert not (run / "config.json").exists()
        return
    assert (run / "config.json").read_bytes() == (reference / "config.json").read_bytes()
    present = sorted(int(p.stem.split("-")[1]) for p in (run / "checkpoints").glob("ckpt-*.pt"))
    assert present[: len(surviving)] == surviving
    for iteration in surviving:
        read_checkpoint(run / "checkpoints" / f"ckpt-{iteration:09d}.pt")


def recover(run: Path, phase: str) -> None:
    """A failed start is simply run again; anything later continues with --resume."""
    command = [*TRAIN, "--out", str(run)] if phase == "start" else ["train", "--resume", str(run)]
    assert main(command) == 0


@pytest.mark.parametrize("phase", PHASES)
def test_kill(phase, uninterrupted, tmp_path):
    run = tmp_path / "run"
    target, nth, _ = PHASES[phase]
    assert killed_run(target, nth, [*TRAIN, "--out", str(run)]) == -signal.SIGKILL
    assert_intact(run, phase, uninterrupted)
    recover(run, phase)
    assert_same_outcome(run, uninterrupted)


@pytest.mark.parametrize("error, reason, fix", [
    (errno.ENOSPC, "No space left on device", "free space on that disk"),
    (errno.EACCES, "Permission denied", "make it writable"),
])
@pytest.mark.parametrize("phase", PHASES)
def test_write_failure(phase, error, reason, fix, uninterrupted, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    target, nth, _ = PHASES[phase]
    fault = FailingWrite(target, nth, error)
    monkeypatch.setattr(files, "write_all", fault)
    capsys.readouterr()
    assert main([*TRAIN, "--out", str(run)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    written = target.replace("/.", "/").rstrip("/")
    assert re.fullmatch(rf"mamlkit: error: cannot write \S*{re.escape(written)}\S* \({reason}\); {fix}.*", err), err
    assert fault.seen == nth
    monkeypatch.undo()
    assert not run.exists() or not list(run.rglob("*.tmp"))
    assert_intact(run, phase, uninterrupted)
    recover(run, phase)
    assert_same_outcome(run, uninterrupted)


def folder_hashes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("phase", CORRUPTED)
def test_corrupt_file(phase, uninterrupted, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    damaged = run / CORRUPTED[phase]
    for path in ([damaged] if damaged.is_file() else damaged.glob("ckpt-*.pt")):
        path.write_bytes(path.read_bytes()[: 40] + b"\x00garbage\n" + path.read_bytes()[60:])
    before = folder_hashes(run)
    capsys.readouterr()
    if phase == "start":  # no config, no run: refused, untouched
        for command in (["train", "--resume", str(run)], ["eval", str(run)]):
            assert main(command) == 1
            assert "config.json is not valid JSON" in capsys.readouterr().err
        assert folder_hashes(run) == before
        return
    if phase == "validation":  # the best state is lost: refused untouched, and the advice given works
        with pytest.warns(UserWarning):
            assert main(["train", "--resume", str(run)]) == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert folder_hashes(run) == before
        removed, command = re.search(r"`rm -rf (.+) && mamlkit (train --resume \S+)`", err).groups()
        for path in removed.split():
            shutil.rmtree(path, ignore_errors=True)
        assert main(command.split()) == 0
    else:
        with pytest.warns(UserWarning) if phase in ("training", "checkpoint") else contextlib.nullcontext():
            assert main(["train", "--resume", str(run)]) == 0
    assert_same_outcome(run, uninterrupted)
    figure = run / CORRUPTED["figures"]
    with Image.open(figure) as image:
        image.verify()
