"""``mamlkit train | eval | presets``: the command line around the presets."""

import argparse
import dataclasses
import sys
import typing
from pathlib import Path

from mamlkit.engine.run import config_from_dict, create_run, read_run, write_run_config
from mamlkit.errors import MamlkitError
from mamlkit.presets import PRESETS, get_preset


def _config_flags(parser: argparse.ArgumentParser, config) -> None:
    """One ``--flag`` per config field, typed from the dataclass; only given flags override."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        flag, hint = "--" + field.name.replace("_", "-"), hints[field.name]
        common = {"dest": field.name, "default": argparse.SUPPRESS,
                  "help": f"(default: {getattr(config, field.name)})"}
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif typing.get_origin(hint) is tuple:
            parser.add_argument(flag, nargs="+", type=typing.get_args(hint)[0], **common)
        else:
            parser.add_argument(flag, type=hint, **common)


def _train(argv: list[str]) -> None:
    head = argparse.ArgumentParser(prog="mamlkit train", add_help=False)
    head.add_argument("preset", nargs="?")
    head.add_argument("--resume", type=Path, metavar="RUN")
    known, _ = head.parse_known_args(argv)
    if known.resume:
        preset_name, saved = read_run(known.resume)
        preset = get_preset(preset_name)
        base = config_from_dict(type(preset.config), saved)
    elif known.preset and not known.preset.startswith("-"):
        preset_name, preset = known.preset, get_preset(known.preset)
        base = preset.config
    else:
        raise MamlkitError("name a preset (`mamlkit train sinusoid`) or a run to continue (`--resume RUN`); "
                           "`mamlkit presets` lists them")
    parser = argparse.ArgumentParser(prog="mamlkit train", description=preset.summary)
    parser.add_argument("preset", nargs="?", help="preset name (see `mamlkit presets`)")
    parser.add_argument("--resume", type=Path, metavar="RUN", help="continue the run in this folder")
    parser.add_argument("--out", type=Path, help="run folder (default: runs/<preset>-<time>)")
    _config_flags(parser, base)
    args = vars(parser.parse_args(argv))
    overrides = {k: v for k, v in args.items() if k not in ("preset", "resume", "out")}
    config = dataclasses.replace(base, **overrides)
    if known.resume:
        write_run_config(known.resume, preset_name, config)
        run_dir = known.resume
    else:
        run_dir = create_run(args.get("out"), preset_name, config)
    print(f"mamlkit: {preset_name} -> {run_dir}", file=sys.stderr)
    preset.experiment.train(config, run_dir, resume=bool(known.resume))


def _eval(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="mamlkit eval", description="re-evaluate a saved run")
    parser.add_argument("run", type=Path)
    args = parser.parse_args(argv)
    preset_name, saved = read_run(args.run)
    preset = get_preset(preset_name)
    preset.experiment.evaluate(config_from_dict(type(preset.config), saved), args.run)


def _presets(argv: list[str]) -> None:
    for name, preset in PRESETS.items():
        print(f"{name:24s} {preset.summary}")


COMMANDS = {"train": _train, "eval": _eval, "presets": _presets}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print("usage: mamlkit {train,eval,presets} ...  (e.g. `mamlkit train sinusoid`)", file=sys.stderr)
        return 2
    try:
        COMMANDS[argv[0]](argv[1:])
    except MamlkitError as error:
        print(f"mamlkit: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mamlkit: interrupted; continue with `mamlkit train --resume RUN`", file=sys.stderr)
        return 130
    return 0
