"""``mamlkit train | eval | presets``: the command line around the presets.

Under torchrun (``torchrun --nproc-per-node N -m mamlkit train ...``) every rank runs the same
command inside one process group; rank 0 alone creates the run folder, and a group restarted by
torchrun (``--max-restarts``) continues from the folder's last checkpoint instead of starting over.
"""

import argparse
import dataclasses
import os
import sys
import typing
from pathlib import Path

from mamlkit.engine import distributed
from mamlkit.engine.run import (evaluation_config, locked_on_main, opened_run, resumed_config, saved_config,
                                with_overrides)
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
        preset_name, preset, base = saved_config(known.resume)
    elif known.preset and not known.preset.startswith("-"):
        preset_name, preset = known.preset, get_preset(known.preset)
        base = preset.config
    else:
        raise MamlkitError("name a preset (`mamlkit train sinusoid`) or a run to continue (`--resume RUN`); "
                           "`mamlkit presets` lists them")
    parser = argparse.ArgumentParser(prog="mamlkit train", description=preset.summary)
    parser.add_argument("preset", nargs="?", help="preset name (see `mamlkit presets`)")
    parser.add_argument("--resume", type=Path, metavar="RUN", help="continue the run in this folder")
    parser.add_argument("--out", type=Path, help="run folder (default: runs/<preset>-<time>; under torchrun "
                        "runs/<preset>-<rendezvous id>)")
    _config_flags(parser, base)
    args = vars(parser.parse_args(argv))
    overrides = {k: v for k, v in args.items() if k not in ("preset", "resume", "out")}
    if known.resume:
        config = resumed_config(known.resume, preset_name, base, overrides, args.get("preset"))
    else:
        config = with_overrides(base, overrides)
    with distributed.process_group(config.device):
        _check_distributable(preset_name, preset.experiment)  # all checked before any folder is made
        distributed.resolve_device(config.device)
        if distributed.world_size() > 1:
            distributed.shard_size(config.meta_batch)
        with opened_run(preset_name, config, known.resume, args.get("out")) as (run_dir, resume):
            if distributed.is_main():
                print(f"mamlkit: {preset_name} -> {run_dir} ({distributed.world_size()} process(es))",
                      file=sys.stderr)
            preset.experiment.train(config, run_dir, resume=resume)


def _check_distributable(preset_name: str, experiment) -> None:
    """Experiments opt in to torchrun with ``DISTRIBUTED = True`` once they shard their work."""
    if distributed.world_size() > 1 and not getattr(experiment, "DISTRIBUTED", False):
        raise MamlkitError(f"preset {preset_name} runs in one process only; launch it without torchrun "
                           f"(or with --nproc-per-node 1)")


def _eval(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="mamlkit eval", description="re-evaluate a saved run")
    parser.add_argument("run", type=Path)
    parser.add_argument("--device", choices=distributed.DEVICES, help="evaluate on this device instead of the run's")
    parser.add_argument("--data", help="the data set's folder, if it moved since training (not stored)")
    args = parser.parse_args(argv)
    preset_name, preset, config = saved_config(args.run)
    config = evaluation_config(config, device=args.device, data=args.data)
    with distributed.process_group(config.device):
        _check_distributable(preset_name, preset.experiment)
        with locked_on_main(args.run):
            preset.experiment.evaluate(config, args.run)


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
        where = f" (rank {os.environ['RANK']})" if distributed.launched_by_torchrun() else ""
        print(f"mamlkit: error{where}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:
        run_dir = getattr(interrupt, "run_dir", None)
        hint = f"; continue with `mamlkit train --resume {run_dir}`" if run_dir else ""
        print(f"mamlkit: interrupted{hint}", file=sys.stderr)
        return 130
    return 0
