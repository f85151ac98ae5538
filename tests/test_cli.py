"""The command line explains itself: help on stdout, every option described, choices checked at
parse time, config files (TOML, YAML, a run's config.json) that rerun a run exactly."""

import ast
import dataclasses
import inspect
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from importlib.metadata import version

import pytest
import torch

from mamlkit.cli import main
from mamlkit.engine.checkpoint import load_latest_checkpoint
from mamlkit.presets import PRESETS

TINY = ["--iterations", "6", "--checkpoint-every", "3", "--eval-tasks", "10", "--eval-shots", "5",
        "--eval-steps", "1", "--compile", "off", "--log-every", "3", "--hidden", "8"]
ONE_PRESET_PER_CONFIG_CLASS = list({type(p.config): name for name, p in PRESETS.items()}.values())


def flat(text: str) -> str:
    """Help text without tyro's frame and line wrapping."""
    return " ".join(text.replace("│", " ").split())


def field_docstrings(config_class) -> dict[str, str]:
    """Each field's docstring, the string literal right below it in the class body."""
    body = ast.parse(textwrap.dedent(inspect.getsource(config_class))).body[0].body
    return {node.target.id: below.value.value for node, below in zip(body, body[1:])
            if isinstance(node, ast.AnnAssign) and isinstance(below, ast.Expr)
            and isinstance(below.value, ast.Constant) and isinstance(below.value.value, str)}


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mamlkit: error: "), captured.err
    return lines[0]


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["eval", "--help"], ["presets", "--help"],
                                  *[["train", name, "--help"] for name in ONE_PRESET_PER_CONFIG_CLASS]])
def test_help_goes_to_stdout_and_exits_0(capsys, argv):
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"usage: mamlkit {' '.join(argv[:-1])}".rstrip()) and captured.err == ""


def test_the_installed_entry_point_prints_help_and_version():
    help_run = subprocess.run([sys.executable, "-m", "mamlkit", "--help"], capture_output=True, text=True)
    assert help_run.returncode == 0 and "train" in help_run.stdout and help_run.stderr == ""
    version_run = subprocess.run([sys.executable, "-m", "mamlkit", "--version"], capture_output=True, text=True)
    assert version_run.returncode == 0 and version_run.stdout == f"mamlkit {version('mamlkit')}\n"


def test_a_reader_that_stops_early_gets_no_traceback():
    """`mamlkit train --help | head` closes the pipe before the help is written."""
    run = subprocess.Popen([sys.executable, "-m", "mamlkit", "train", "--help"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run.stdout.close()  # long before the interpreter has imported torch and written a line
    assert run.wait() == 1 and run.stderr.read() == ""


def test_train_help_lists_every_preset_with_its_summary(capsys):
    assert main(["train", "--help"]) == 0
    text = flat(capsys.readouterr().out)
    for name, preset in PRESETS.items():
        assert f"• {name} {flat(preset.summary)}" in text
    for option in ("--resume RUN", "--config FILE", "--out DIR"):
        assert option in text


@pytest.mark.parametrize("preset", ONE_PRESET_PER_CONFIG_CLASS)
def test_every_option_is_described_by_its_field_docstring(capsys, monkeypatch, preset):
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping inside words
    assert main(["train", preset, "--help"]) == 0
    text = flat(capsys.readouterr().out)
    config = PRESETS[preset].config
    docstrings = field_docstrings(type(config))
    fields = [field.name for field in dataclasses.fields(config)]
    assert sorted(docstrings) == sorted(fields), "every config field needs a docstring: it is the option's help"
    for name in fields:
        assert "--" + name.replace("_", "-") in text
        assert "\n" not in docstrings[name] and f"{flat(docstrings[name])} (default:" in text, name


def test_enumerations_list_their_choices(capsys):
    assert main(["train", "sinusoid", "--help"]) == 0
    text = flat(capsys.readouterr().out)
    assert "--algo {maml,metasgd,lslr,mamlpp,anil,reptile,imaml,protomaml}" in text
    assert "--device {auto,cpu,cuda}" in text and "--compile {auto,on,off}" in text
    assert main(["train", "omniglot-5w1s", "--help"]) == 0
    text = flat(capsys.readouterr().out)
    for choices in ("--dataset {omniglot,miniimagenet,images}", "--batching {auto,vmap,loop}",
                    "--split {paper,vinyals}", "--model {conv,conv-pool,mlp}", "--loss-scale {official,mean}",
                    "--compile {auto,on,off,cuda-graph}"):
        assert choices in text


@pytest.mark.parametrize("argv, message", [
    (["train", "sinusoid", "--algo", "maml2"], "invalid choice 'maml2' for argument '--algo'"),
    (["train", "sinusoid", "--device", "tpu"], "invalid choice 'tpu' for argument '--device'"),
    (["train", "omniglot-5w1s", "--batching", "vectorised"], "invalid choice 'vectorised' for argument '--batching'"),
    (["train", "2dnav", "--env", "moon"], "invalid choice 'moon' for argument '--env'"),
    (["train", "sinusoid", "--iterations", "many"], "Error parsing --iterations"),
    (["train", "sinusoid", "--no-such-flag"], "Unrecognized options: --no-such-flag"),
    (["eval", "somewhere", "--device", "tpu"], "invalid choice 'tpu' for argument '--device'"),
])
def test_bad_options_are_rejected_at_parse_time_in_one_line(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--out", "run"] if argv[0] == "train" else argv) == 1
    assert message in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_presets_lists_every_preset(capsys):
    assert main(["presets"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == list(PRESETS)


def run_state(run):
    state, path = load_latest_checkpoint(run / "checkpoints")
    return path.name, state["learners"]


def test_a_run_folders_saved_config_reruns_it_exactly(tmp_path, capsys):
    first, again = tmp_path / "first", tmp_path / "again"
    assert main(["train", "sinusoid", *TINY, "--algo", "metasgd", "--out", str(first)]) == 0
    assert main(["train", "--config", str(first / "config.json"), "--out", str(again)]) == 0
    assert json.loads((again / "config.json").read_text()) == json.loads((first / "config.json").read_text())
    (name, learners), (name_again, learners_again) = run_state(first), run_state(again)
    assert name == name_again
    for learner in learners:
        for key, value in learners[learner]["model"].items():
            assert torch.equal(value, learners_again[learner]["model"][key]), (learner, key)
    assert (first / "results.json").read_text() == (again / "results.json").read_text()


def test_resume_help_shows_the_runs_own_values_as_defaults(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "sinusoid", *TINY, "--algo", "anil", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--help"]) == 0
    text = flat(capsys.readouterr().out)
    assert "(source subcommand: sinusoid)" in text
    assert "--iterations INT meta-training iterations (meta-batches) (default: 6)" in text
    assert "(default: anil)" in text
    assert "--hidden [INT [INT ...]] widths of the MLP's hidden layers (default: 8)" in text


@pytest.mark.parametrize("suffix, text", [
    (".toml", 'preset = "sinusoid-fo"\niterations = 6\nhidden = [8, 8]\neval_shots = [5]\ncompile = "off"\n'),
    (".yaml", 'preset: sinusoid-fo\niterations: 6\nhidden: [8, 8]\neval_shots: [5]\ncompile: "off"\n'),
])
def test_config_files_set_the_preset_and_fields_and_options_override_them(tmp_path, suffix, text):
    config = tmp_path / f"config{suffix}"
    config.write_text(text)
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--eval-tasks", "10", "--eval-steps", "1", "--iterations", "3",
                 "--checkpoint-every", "3", "--out", str(run)]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["preset"] == "sinusoid-fo" and saved["first_order"] is True  # the preset's own defaults
    assert saved["hidden"] == [8, 8] and saved["eval_shots"] == [5] and saved["compile"] == "off"  # the file's
    assert saved["iterations"] == 3 and saved["eval_tasks"] == 10  # the command line's


def test_a_relative_data_path_in_a_config_file_is_relative_to_the_file(tmp_path, monkeypatch):
    from mamlkit.config_file import read_config_file
    folder = tmp_path / "experiment"
    folder.mkdir()
    (folder / "c.toml").write_text('preset = "images"\ndata = "my-images"\n')
    monkeypatch.chdir(tmp_path)
    assert read_config_file(Path("experiment/c.toml")) == ("images", {"data": "experiment/my-images"})
    (folder / "c.toml").write_text('preset = "images"\ndata = "/srv/images"\n')
    assert read_config_file(folder / "c.toml")[1] == {"data": "/srv/images"}


@pytest.mark.parametrize("name, text, message", [
    ("c.toml", 'iterations = 5\n', "names no preset; add a line such as preset = \"sinusoid\""),
    ("c.toml", 'preset = "sinusoid"\niterations = [\n', "is not valid TOML"),
    ("c.yaml", 'preset: sinusoid\n  - : :\n', "is not valid YAML"),
    ("c.toml", 'preset = "sinusoid"\nlayers = 3\n', "unknown config keys ['layers'] for SinusoidConfig"),
    ("c.toml", 'preset = "sinusoid"\ncompile = "sometimes"\n', "compile must be one of auto, on, off"),
    ("c.toml", 'preset = "cifar"\n', "unknown preset 'cifar'"),
    ("c.ini", 'preset = sinusoid\n', "unknown config format '.ini'; use .toml, .yaml, .yml or .json"),
])
def test_bad_config_files_get_one_line_errors(tmp_path, capsys, name, text, message):
    (tmp_path / name).write_text(text)
    assert main(["train", "--config", str(tmp_path / name), "--out", str(tmp_path / "run")]) == 1
    assert message in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_a_missing_config_file_and_a_conflicting_preset_are_one_line_errors(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nope.toml")]) == 1
    assert re.search(r"cannot read .*nope.toml \(No such file or directory\); check the path", one_error_line(capsys))
    (tmp_path / "c.toml").write_text('preset = "sinusoid"\n')
    assert main(["train", "omniglot-5w1s", "--config", str(tmp_path / "c.toml")]) == 1
    assert "holds a sinusoid config, not omniglot-5w1s; drop the preset name" in one_error_line(capsys)
    assert main(["train", "--config", str(tmp_path / "c.toml"), "--resume", str(tmp_path)]) == 1
    assert "give --resume RUN or --config FILE, not both" in one_error_line(capsys)
