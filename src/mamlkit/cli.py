"""``mamlkit train | eval | adapt | predict | presets``: the command line, built with tyro.

Why tyro: the options *are* the config dataclasses. tyro turns every field into a flag whose help is
the field's docstring, lists a ``Literal`` field's values and rejects others at parse time, parses
``tuple[int, ...]`` fields as ``--hidden 40 40`` (click and typer have no variadic options), and
takes an instance as the defaults, so a preset, a saved run (``--resume``) and a config file
(``--config``) are all just defaults that the options given override. Each preset is a subcommand.

Under torchrun (``torchrun --nproc-per-node N -m mamlkit train ...``) every rank runs the same
command inside one process group; rank 0 alone creates the run folder, and a group restarted by
torchrun (``--max-restarts``) continues from the folder's last checkpoint instead of starting over.
"""

import argparse
import dataclasses
import io
import os
import re
import sys
from contextlib import redirect_stderr
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Generic, TypeVar, Union

import tyro
from tyro.conf import Positional, Suppress, arg, subcommand

from mamlkit.config_file import read_config_file
from mamlkit.deploy import adapt_run, predict_run
from mamlkit.engine import distributed
from mamlkit.engine.distributed import Device
from mamlkit.engine.run import (config_from_dict, evaluation_config, locked_on_main, opened_run, resumed_config,
                                saved_config)
from mamlkit.errors import MamlkitError
from mamlkit.presets import PRESETS, get_preset

DESCRIPTION = ("Exact MAML for any PyTorch nn.Module: train the paper's experiments or your own data "
               "(`mamlkit presets`), evaluate the runs, adapt them to new tasks. `mamlkit --version` prints "
               "the version; docs/cli.md has more.")
ConfigT = TypeVar("ConfigT")
PresetT = TypeVar("PresetT")
RunFolder = Annotated[Positional[Path], arg(metavar="RUN")]
InnerSteps = Annotated[int | None, arg(metavar="N", help_behavior_hint="(default: the run's evaluation inner steps)")]


@dataclass
class PresetRun(Generic[ConfigT]):
    """A preset's name and its config, whose fields are the flags."""
    name: Suppress[str]
    config: Annotated[ConfigT, arg(name="")]


@dataclass
class Train(Generic[PresetT]):
    """Meta-train a preset, continue a run (--resume RUN) or rerun a config file (--config FILE), then test it."""
    preset: Annotated[PresetT, arg(name="")]
    resume: Annotated[Path | None, arg(metavar="RUN", help_behavior_hint="(optional)")] = None
    """continue the run in this folder: its preset and saved config, changed by the options given"""
    config: Annotated[Path | None, arg(metavar="FILE", help_behavior_hint="(optional)")] = None
    """start from this config file (TOML, YAML, or a run's config.json) naming its preset"""
    out: Annotated[Path | None, arg(metavar="DIR", help_behavior_hint=(
        "(default: runs/<preset>-<time>; under torchrun runs/<preset>-<rendezvous id>)"))] = None
    """the run folder to create"""

    def __call__(self) -> None:
        name, config = self.preset.name, self.preset.config
        if self.resume:  # only options that keep the run's training so far valid may change
            saved_name, _, saved = saved_config(self.resume)
            changed = {} if saved_name != name else {  # another preset's name is refused as it is
                field.name: getattr(config, field.name) for field in dataclasses.fields(config)
                if getattr(config, field.name) != getattr(saved, field.name)}
            config = resumed_config(self.resume, saved_name, saved, changed, named_preset=name)
        with distributed.process_group(config.device):
            _check_distributable(name, get_preset(name).experiment)  # all checked before any folder is made
            distributed.resolve_device(config.device)
            if distributed.world_size() > 1:
                distributed.shard_size(config.meta_batch)
            with opened_run(name, config, self.resume, self.out) as (run_dir, resume):
                if distributed.is_main():
                    print(f"mamlkit: {name} -> {run_dir} ({distributed.world_size()} process(es))",
                          file=sys.stderr)
                get_preset(name).experiment.train(config, run_dir, resume=resume)


@dataclass
class Eval:
    """Re-evaluate a saved run and rewrite its results and figures."""
    run: RunFolder
    """the run folder (given to --out when it was trained)"""
    device: Annotated[Device | None, arg(metavar="{auto,cpu,cuda}", help_behavior_hint="(default: the run's)")] = None
    """evaluate on this device"""
    data: Annotated[str | None, arg(metavar="PATH", help_behavior_hint="(default: the run's)")] = None
    """the data set's folder or file, if it moved since training (not stored)"""

    def __call__(self) -> None:
        name, preset, config = saved_config(self.run)
        config = evaluation_config(config, device=self.device, data=self.data)
        with distributed.process_group(config.device):
            _check_distributable(name, preset.experiment)
            with locked_on_main(self.run):
                preset.experiment.evaluate(config, self.run)


@dataclass
class Adapt:
    """Adapt a trained run's model to a new task and write the adapted weights (a plain state_dict)."""
    run: RunFolder
    """the trained run folder"""
    support: Annotated[Path, arg(metavar="PATH")]
    """the new task's labelled examples: a folder of class folders (image runs) or a table (table runs)"""
    steps: InnerSteps = None
    """inner steps to adapt for"""
    out: Annotated[Path | None, arg(metavar="FILE", help_behavior_hint="(default: RUN/adapted.pt)")] = None
    """weights file, .pt or .safetensors; FILE.json beside it names the classes"""

    def __call__(self) -> None:
        print(f"adapted weights -> {adapt_run(self.run, self.support, self.steps, self.out)}")


@dataclass
class Predict:
    """Adapt a trained run's model to a new task and predict its query items into a CSV."""
    run: RunFolder
    """the trained run folder"""
    support: Annotated[Path, arg(metavar="PATH")]
    """the new task's labelled examples: a folder of class folders (image runs) or a table (table runs)"""
    query: Annotated[Path, arg(metavar="PATH")]
    """the items to predict, labelled (then scored) or not"""
    steps: InnerSteps = None
    """inner steps to adapt for"""
    out: Annotated[Path | None, arg(metavar="FILE", help_behavior_hint="(default: RUN/predictions.csv)")] = None
    """predictions CSV"""

    def __call__(self) -> None:
        outcome = predict_run(self.run, self.support, self.query, self.steps, self.out)
        score = (f", accuracy {outcome['accuracy']:.2%}" if "accuracy" in outcome
                 else f", MSE {outcome['mse']:.4g}" if "mse" in outcome else "")
        print(f"{outcome['items']} predictions -> {outcome['path']}{score}")


@dataclass
class Presets:
    """List the presets and what each reproduces."""

    def __call__(self) -> None:
        for name, preset in PRESETS.items():
            print(f"{name:24s} {preset.summary}")


def _config_file(path: Path) -> tuple[str, object]:
    """(preset name, its config with the fields that the config file sets)."""
    name, fields = read_config_file(path)
    preset = get_preset(name).config
    return name, config_from_dict(type(preset), {**dataclasses.asdict(preset), **fields})


def _starting_point(argv: list[str]) -> tuple[str, object] | None:
    """The run (``--resume``) or config file (``--config``) that ``train`` starts from, if any:
    it must be read before parsing, because its values are the defaults of every flag."""
    if argv[:1] != ["train"]:
        return None
    sources = argparse.ArgumentParser(add_help=False)
    sources.add_argument("--resume", type=Path)
    sources.add_argument("--config", type=Path)
    known, _ = sources.parse_known_args(argv[1:])
    if known.resume and known.config:
        raise MamlkitError("give --resume RUN or --config FILE, not both")
    if known.resume:
        name, _, config = saved_config(known.resume)
        return name, config
    if known.config:
        return _config_file(known.config)
    return None


def _command_type(start: tuple[str, object] | None):
    """The union of commands; under ``train`` one subcommand per preset, defaulting to ``start``."""
    presets = []
    for name, preset in PRESETS.items():
        config = start[1] if start and start[0] == name else preset.config
        presets.append(Annotated[PresetRun[type(config)],
                                 subcommand(name, default=PresetRun(name, config), description=preset.summary)])
    train_defaults = {"default": Train(PresetRun(*start))} if start else {}
    return Union[
        Annotated[Train[Union[tuple(presets)]], subcommand("train", description=Train.__doc__, **train_defaults)],
        Annotated[Eval, subcommand("eval", description=Eval.__doc__)],
        Annotated[Adapt, subcommand("adapt", description=Adapt.__doc__)],
        Annotated[Predict, subcommand("predict", description=Predict.__doc__)],
        Annotated[Presets, subcommand("presets", description=Presets.__doc__)],
    ]


def parse(argv: list[str]):
    """The command ``argv`` asks for, ready to call; parse errors raise one-line MamlkitErrors."""
    start = _starting_point(argv)
    command_type = _command_type(start)
    captured = io.StringIO()
    try:
        with redirect_stderr(captured):
            command = tyro.cli(command_type, args=argv, prog="mamlkit", description=DESCRIPTION,
                               config=(tyro.conf.CascadeSubcommandArgs, tyro.conf.OmitSubcommandPrefixes))
    except SystemExit as exit:
        if exit.code:
            raise MamlkitError(_one_line(captured.getvalue())) from None
        raise
    if isinstance(command, Train) and command.config and start[0] != command.preset.name:
        raise MamlkitError(f"{command.config} holds a {start[0]} config, not {command.preset.name}; "
                           f"drop the preset name")
    return command


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_BORDER = "│|╭╮╰╯─-+ "


def _one_line(panel: str) -> str:
    """tyro reports a parse error as a framed panel: a title, then sections between rules.
    mamlkit's errors are one line: the title, then the sections (the argument's help left out)."""
    lines = [_ANSI.sub("", line).strip() for line in panel.strip().splitlines()] or ["invalid arguments"]
    title, sections = lines[0].strip(_BORDER), [[]]
    for line in lines[1:]:
        text = line.strip("│|").strip()
        if text and set(text) <= set(_BORDER):
            sections.append([])
        elif text:
            sections[-1].append(text)
    kept = [" ".join(s).rstrip(".") for s in sections if s and not s[0].startswith("Argument helptext")]
    message = "; ".join(kept)
    return message if message.lower().startswith(title.lower()) else f"{title}: {message}"


def _check_distributable(preset_name: str, experiment) -> None:
    """Experiments opt in to torchrun with ``DISTRIBUTED = True`` once they shard their work."""
    if distributed.world_size() > 1 and not getattr(experiment, "DISTRIBUTED", False):
        raise MamlkitError(f"preset {preset_name} runs in one process only; launch it without torchrun "
                           f"(or with --nproc-per-node 1)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv == ["--version"]:
        print(f"mamlkit {version('mamlkit')}")
        return 0
    try:
        parse(argv)()
    except SystemExit as exit:  # --help printed
        return exit.code or 0
    except MamlkitError as error:
        where = f" (rank {os.environ['RANK']})" if distributed.launched_by_torchrun() else ""
        print(f"mamlkit: error{where}: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader closed our output early, as `mamlkit train --help | head` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # and the flush at exit stays quiet
        return 1
    except KeyboardInterrupt as interrupt:
        run_dir = getattr(interrupt, "run_dir", None)
        hint = f"; continue with `mamlkit train --resume {run_dir}`" if run_dir else ""
        print(f"mamlkit: interrupted{hint}", file=sys.stderr)
        return 130
    return 0
