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
from mamlkit.engine.checkpoint import PATTERN
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
    parser.add_argument("--out", type=Path, help="run folder (default: runs/<preset>-<time>; under torchrun "
                        "runs/<preset>-<rendezvous id>)")
    _config_flags(parser, base)
    args = vars(parser.parse_args(argv))
    overrides = {k: v for k, v in args.items() if k not in ("preset", "resume", "out")}
    config = dataclasses.replace(base, **overrides)
    with distributed.process_group(config.device):
        _check_distributable(preset_name, preset.experiment)  # all checked before any folder is made
        distributed.resolve_device(config.device)
        if distributed.world_size() > 1:
            distributed.shard_size(config.meta_batch)
        run_dir, resume = distributed.from_main(lambda: _open_run(known.resume, args.get("out"), preset_name, config))
        if distributed.is_main():
            print(f"mamlkit: {preset_name} -> {run_dir} ({distributed.world_size()} process(es))", file=sys.stderr)
        preset.experiment.train(config, run_dir, resume=resume)


def _check_distributable(preset_name: str, experiment) -> None:
    """Experiments opt in to torchrun with ``DISTRIBUTED = True`` once they shard their work."""
    if distributed.world_size() > 1 and not getattr(experiment, "DISTRIBUTED", False):
        raise MamlkitError(f"preset {preset_name} runs in one process only; launch it without torchrun "
                           f"(or with --nproc-per-node 1)")


def _open_run(resume: Path | None, out: Path | None, preset_name: str, config) -> tuple[Path, bool]:
    """(run folder, whether to continue it): ``--resume``, a torchrun restart of a run that has
    checkpoints, or a fresh folder. Under torchrun the default folder is named after the
    rendezvous id, which stays the same across restarts."""
    if out is None and distributed.launched_by_torchrun():
        out = Path("runs") / f"{preset_name}-{os.environ.get('TORCHELASTIC_RUN_ID', 'none')}"
    restarted = out is not None and distributed.restart_count() > 0 and any((Path(out) / "checkpoints").glob(PATTERN))
    if resume or restarted:
        write_run_config(resume or out, preset_name, config)
        return Path(resume or out), True
    return create_run(out, preset_name, config), False


def _eval(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="mamlkit eval", description="re-evaluate a saved run")
    parser.add_argument("run", type=Path)
    parser.add_argument("--device", choices=distributed.DEVICES, help="evaluate on this device instead of the run's")
    args = parser.parse_args(argv)
    preset_name, saved = read_run(args.run)
    preset = get_preset(preset_name)
    config = config_from_dict(type(preset.config), saved)
    if args.device:
        config = dataclasses.replace(config, device=args.device)
    with distributed.process_group(config.device):
        _check_distributable(preset_name, preset.experiment)
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
    except KeyboardInterrupt:
        print("mamlkit: interrupted; continue with `mamlkit train --resume RUN`", file=sys.stderr)
        return 130
    return 0
