"""Run folders survive every ordinary mistake: a refused command leaves the folder byte-identical,
a folder is a mamlkit run of its preset or refused, and the advice in each error works."""

import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mamlkit.cli import main
from mamlkit.engine.checkpoint import load_latest_checkpoint, read_checkpoint, save_checkpoint
from mamlkit.engine.trainer import TrainLoop
from mamlkit.experiments.fewshot import FewShotConfig

SMALL = ["--checkpoint-every", "10", "--log-every", "5", "--eval-tasks", "10", "--eval-shots", "5",
         "--eval-steps", "2", "--meta-batch", "4", "--compile", "off", "--device", "cpu"]
TRAIN = ["train", "sinusoid", "--iterations", "20", *SMALL]


def folder_hashes(folder: Path) -> dict[str, str]:
    """Every file's SHA-256 and every subfolder, by path: equal dicts mean a byte-identical folder."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def one_line_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mamlkit: error: "), err
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main([*TRAIN, "--out", str(run)]) == 0
    return run


@pytest.fixture
def run(trained, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def follow_advice(error: str) -> None:
    """Do what an 'every checkpoint is corrupt' error says, as a shell would, and expect success."""
    removed, command = re.search(r"`rm -rf (.+) && mamlkit (train --resume \S+)`", error).groups()
    for path in removed.split():
        shutil.rmtree(path, ignore_errors=True)
    assert main(command.split()) == 0


def final_models(run: Path) -> dict:
    state, path = load_latest_checkpoint(run / "checkpoints")
    return {"iteration": state["iteration"], **{name: learner["model"] for name, learner in state["learners"].items()}}


def assert_same_result(a: Path, b: Path) -> None:
    models_a, models_b = final_models(a), final_models(b)
    assert models_a["iteration"] == models_b["iteration"]
    for name in ("maml", "pretrained", "oracle"):
        for key, value in models_a[name].items():
            assert torch.equal(value, models_b[name][key]), (name, key)
    assert json.loads((a / "results.json").read_text()) == json.loads((b / "results.json").read_text())


@pytest.mark.parametrize("args, message", [
    (["--hidden", "80", "80"], "--hidden cannot change when resuming: .* was trained with hidden=\\(40, 40\\)"),
    (["--seed", "3"], "--seed cannot change when resuming"),
    (["--hidden", "-3"], "hidden must be layer widths of at least 1, got \\(-3,\\)"),
    (["--iterations", "10"], "already trained to iteration 20; --iterations must be at least that"),
    (["--iterations", "0"], "iterations must be at least 1, got 0"),
])
def test_refused_resume_leaves_the_folder_byte_identical(run, capsys, args, message):
    before = folder_hashes(run)
    capsys.readouterr()
    code = main(["train", "--resume", str(run), *args])
    assert code != 0
    assert re.search(message, capsys.readouterr().err)
    assert folder_hashes(run) == before
    assert main(["train", "--resume", str(run), "--iterations", "30"]) == 0  # the run still continues


def test_a_preset_named_with_resume_must_be_the_runs(run, capsys):
    before = folder_hashes(run)
    err = one_line_error(capsys, ["train", "sinusoid-fo", "--resume", str(run)])
    assert f"{run} is a run of preset sinusoid, not sinusoid-fo" in err
    assert folder_hashes(run) == before
    assert main(["train", "sinusoid", "--resume", str(run)]) == 0


def test_changed_options_are_kept_as_config_history(run):
    old = json.loads((run / "config.json").read_text())
    assert main(["train", "--resume", str(run), "--iterations", "25", "--eval-tasks", "10"]) == 0
    assert json.loads((run / "config.json").read_text()) == {**old, "iterations": 25}
    history = [json.loads(line) for line in (run / "config-history.jsonl").read_text().splitlines()]
    assert len(history) == 1 and history[0]["config"] == old
    assert main(["train", "--resume", str(run)]) == 0  # nothing changed: no new history entry
    assert len((run / "config-history.jsonl").read_text().splitlines()) == 1


def test_fewshot_resume_with_a_missing_data_folder_is_refused_before_any_write(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    config = dataclasses.asdict(FewShotConfig(data=str(tmp_path)))
    (run / "config.json").write_text(json.dumps({"preset": "omniglot-5w1s", **config}))
    before = folder_hashes(run)
    err = one_line_error(capsys, ["train", "--resume", str(run), "--data", "/nonexistent"])
    assert "data path /nonexistent does not exist; pass --data" in err
    assert folder_hashes(run) == before
    err = one_line_error(capsys, ["eval", str(run), "--data", "/nonexistent"])
    assert "data path /nonexistent does not exist" in err
    assert folder_hashes(run) == before


@pytest.mark.parametrize("args, message", [
    (["--hidden", "-3"], "hidden must be layer widths of at least 1"),
    (["--iterations", "0"], "iterations must be at least 1, got 0"),
])
def test_bad_options_of_a_new_run_create_nothing(tmp_path, capsys, args, message):
    err = one_line_error(capsys, [*TRAIN, *args, "--out", str(tmp_path / "new")])
    assert message in err and not (tmp_path / "new").exists()


def test_options_the_experiment_refuses_leave_the_folder_as_it_was(tmp_path, capsys):
    """Refused only once the experiment builds its learner, after the folder was opened."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder in (tmp_path / "new", empty):
        capsys.readouterr()
        assert main([*TRAIN, "--algo", "reptile", "--compile", "on", "--out", str(folder)]) == 1
        assert "Reptile does not take compile=True" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "new").exists() and list(empty.iterdir()) == []
    assert main([*TRAIN, "--algo", "reptile", "--out", str(empty)]) == 0


def test_foreign_files_are_never_overwritten(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.json").write_text('{"learning_rate": 3}\n')
    (folder / "metrics.jsonl").write_text('{"step": 1}\n')
    before = folder_hashes(folder)
    err = one_line_error(capsys, [*TRAIN, "--out", str(folder)])
    assert f"{folder} is not empty (config.json, metrics.jsonl) and is not a mamlkit run" in err
    assert folder_hashes(folder) == before


def test_a_folder_holding_an_earlier_runs_best_is_refused_for_a_new_run(run, capsys):
    (run / "best").mkdir()
    save_checkpoint(run / "best", 200, {"iteration": 200, "val_accuracy": 0.772})
    shutil.rmtree(run / "checkpoints")
    before = folder_hashes(run)
    err = one_line_error(capsys, [*TRAIN, "--out", str(run)])
    assert f"{run} already holds a run; continue it with --resume {run}" in err
    assert folder_hashes(run) == before


def test_a_best_checkpoint_from_past_the_resumed_iteration_is_never_reported(tmp_path):
    """A run whose checkpoints are gone restarts from iteration 0; its old best/ (here a score no
    new validation can beat) must not be evaluated as the new result."""
    run = tmp_path / "rl"
    args = ["train", "2dnav", "--iterations", "4", "--checkpoint-every", "2", "--validate-every", "2",
            "--meta-batch", "2", "--trajectories", "2", "--horizon", "10", "--hidden", "8", "--eval-tasks", "2",
            "--validation-tasks", "2", "--eval-steps", "1", "--render"]
    assert main([*args, "--out", str(run)]) == 0
    old = read_checkpoint(next((run / "best" / "maml").glob("ckpt-*.pt")))
    shutil.rmtree(run / "checkpoints")
    save_checkpoint(run / "best" / "maml", 200, {**old, "iteration": 200, "val_return": 1e9}, keep=2)
    assert main(["train", "--resume", str(run)]) == 0
    iterations = json.loads((run / "results.json").read_text())["checkpoint_iteration"]
    assert 0 < iterations["maml"] <= 4 and not list((run / "best").rglob("ckpt-000000200.pt"))


def test_config_without_preset_is_one_line(run, capsys):
    config = json.loads((run / "config.json").read_text())
    del config["preset"]
    (run / "config.json").write_text(json.dumps(config))
    before = folder_hashes(run)
    for command in (["train", "--resume", str(run)], ["eval", str(run)]):
        assert 'config.json names no "preset"' in one_line_error(capsys, command)
    assert folder_hashes(run) == before


def test_unwritable_out_is_one_line(capsys):
    """/sys refuses new folders to every user, root included: a real permission error."""
    err = one_line_error(capsys, [*TRAIN, "--out", "/sys/mamlkit-test/run"])
    assert re.fullmatch(r"mamlkit: error: cannot write /sys/mamlkit-test/run \((Operation not permitted|"
                        r"Permission denied)\); make it writable \(chmod u\+w\) or choose another --out", err)


def test_file_size_limit_is_one_line_and_loses_nothing(tmp_path):
    """A real RLIMIT_FSIZE: the first checkpoint exceeds it (EFBIG)."""
    import resource

    run = tmp_path / "run"
    limited = subprocess.run([sys.executable, "-m", "mamlkit", *TRAIN, "--out", str(run)], capture_output=True,
                             text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
                             preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000)))
    assert limited.returncode == 1
    error = limited.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"mamlkit: error: cannot write \S+/checkpoints/ckpt-000000010.pt \(File too large\); "
                        r"raise the file-size limit \(ulimit -f unlimited\), then continue with --resume", error)
    assert not list(run.rglob("*.tmp")) and not list(run.rglob("ckpt-*.pt"))
    assert main(["train", "--resume", str(run)]) == 0
    assert final_models(run)["iteration"] == 20


def test_a_locked_folder_is_refused(run, capsys):
    from mamlkit.engine.run import locked

    before = folder_hashes(run)
    with locked(run):
        assert "is in use by another mamlkit process" in one_line_error(capsys, ["train", "--resume", str(run)])
        assert "is in use by another mamlkit process" in one_line_error(capsys, ["eval", str(run)])
    assert folder_hashes(run) == before
    empty = run.parent / "empty"
    empty.mkdir()
    with locked(empty):
        assert "is in use" in one_line_error(capsys, [*TRAIN, "--out", str(empty)])
    assert not list(empty.iterdir())


def test_advice_for_all_corrupt_checkpoints_is_accepted(trained, run, capsys):
    for path in (run / "checkpoints").glob("ckpt-*.pt"):
        path.write_bytes(b"garbage")
    before = folder_hashes(run)
    with pytest.warns(UserWarning, match="trying the previous one"):
        err = one_line_error(capsys, ["train", "--resume", str(run)])
    assert folder_hashes(run) == before
    follow_advice(err)
    assert_same_result(trained, run)


def test_eval_of_a_run_without_a_data_set_refuses_data(run, capsys):
    assert "reads no data set; drop --data" in one_line_error(capsys, ["eval", str(run), "--data", str(run)])


def test_interrupt_names_the_real_folder(run, capsys, monkeypatch):
    def interrupted(self, start=0):
        raise KeyboardInterrupt

    monkeypatch.setattr(TrainLoop, "run", interrupted)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--iterations", "30"]) == 130
    assert capsys.readouterr().err.strip().endswith(f"interrupted; continue with `mamlkit train --resume {run}`")


def test_cli_checkpoints_open_with_plain_torch_load_and_weights_with_safetensors(run):
    from safetensors.torch import load_file

    for path in (run / "checkpoints").glob("ckpt-*.pt"):
        saved = torch.load(path, weights_only=True)
        assert saved["format"] == 2 and set(saved["state"]["learners"]) == {"maml", "pretrained", "oracle"}
    weights = load_file(run / "weights.safetensors")
    final = final_models(run)
    assert torch.equal(weights["maml.0.weight"], final["maml"]["0.weight"])


def test_a_run_with_first_format_checkpoints_still_resumes(trained, run):
    """Checkpoints from before the change: a text header line, then the pickled state."""
    for path in (run / "checkpoints").glob("ckpt-*.pt"):
        buffer = io.BytesIO()
        torch.save(read_checkpoint(path), buffer)
        payload = buffer.getvalue()
        path.write_bytes(b"mamlkit-checkpoint sha256=" + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
    latest = sorted((run / "checkpoints").glob("ckpt-*.pt"))[-1]
    latest.write_bytes(latest.read_bytes()[:200])  # and the newest damaged: back to the one before
    with pytest.warns(UserWarning, match="trying the previous one"):
        assert main(["train", "--resume", str(run)]) == 0
    assert_same_result(trained, run)


def test_unwritable_checkpoints_on_resume_is_refused_before_any_write(run, capsys, monkeypatch):
    """The resume probes every folder of the run before it writes (as root chmod cannot make a
    folder unwritable, so the denial is injected where every write passes)."""
    from mamlkit.engine import files

    original = files.write_all

    def denied(handle, data):
        if "/checkpoints/" in str(handle.name):
            raise PermissionError(13, "Permission denied")
        original(handle, data)

    monkeypatch.setattr(files, "write_all", denied)
    before = folder_hashes(run)
    err = one_line_error(capsys, ["train", "--resume", str(run), "--iterations", "30"])
    assert err == (f"mamlkit: error: cannot write {run / 'checkpoints'} (Permission denied); make it writable "
                   f"(chmod u+w) or choose another --out")
    assert folder_hashes(run) == before
