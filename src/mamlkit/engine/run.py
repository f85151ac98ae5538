"""Run folders: the resolved config, checkpoints, metrics and results of one training run.

A folder is changed only by a command that can succeed with it. ``opened_run`` checks everything
first (the preset, each override against the saved run, the data path, that a checkpoint loads,
that every folder is writable) and only then writes. A fresh run needs a new or empty folder, so
no earlier ``best/`` and no user's file is ever reused or overwritten. While a command works in a
folder it holds a lock on it (``flock`` on the folder itself: nothing is written, and a killed
process releases it). Config changes on resume are written atomically, the replaced config kept in
``config-history.jsonl``.
"""

import contextlib
import dataclasses
import fcntl
import json
import os
import time
from pathlib import Path

from mamlkit.engine import distributed
from mamlkit.engine.checkpoint import PATTERN, checkpoint_iteration, load_latest_checkpoint
from mamlkit.engine.files import (TEMPORARY_SUFFIX, atomic_write_bytes, check_writable, remove_temporaries,
                                  writing)
from mamlkit.errors import MamlkitError

CONFIG = "config.json"
HISTORY = "config-history.jsonl"
# options any resumed run may change: the schedule, resources and evaluation size, none of which
# makes what was trained so far invalid; a config class adds its own in ``RESUMABLE``
RESUMABLE = ("iterations", "max_minutes", "time_limit", "checkpoint_every", "log_every", "validate_every", "threads",
             "device", "compile", "batching", "workers", "eval_tasks", "eval_chunk")
PATH_FIELDS = ("data", "split_files")  # stored absolute (when given), so eval works from any directory


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a command on a run folder; carries the folder for the --resume hint."""

    def __init__(self, run_dir: Path):
        super().__init__(str(run_dir))
        self.run_dir = run_dir


def write_json(path: Path, data) -> None:
    atomic_write_bytes(Path(path), (json.dumps(data, indent=2) + "\n").encode())


def config_from_dict(config_class, data: dict):
    """Rebuild a config dataclass from JSON, restoring tuples that JSON turned into lists."""
    names = {field.name for field in dataclasses.fields(config_class)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise MamlkitError(f"unknown config keys {unknown} for {config_class.__name__}; remove them from {CONFIG}")
    return config_class(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def read_run(run_dir: Path) -> tuple[str, dict]:
    """The preset name and the config dict saved in ``run_dir``."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise MamlkitError(f"{run_dir} is not a mamlkit run folder (no {CONFIG}); pass the folder given to --out")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise MamlkitError(f"{path} is not valid JSON ({error.msg}); restore it or start a new run") from None
    except OSError as error:
        raise MamlkitError(f"cannot read {path} ({error.strerror}); make it readable (chmod u+r)") from None
    if not isinstance(data, dict) or not isinstance(data.get("preset"), str):
        raise MamlkitError(f'{path} names no "preset"; it is not a mamlkit run config (restore it, or add '
                           f'"preset": "<name>" as listed by `mamlkit presets`)')
    return data.pop("preset"), data


def saved_config(run_dir: Path):
    """(preset name, preset, config) of the run saved in ``run_dir``."""
    from mamlkit.presets import get_preset  # presets import the experiments, which import this module

    preset_name, saved = read_run(run_dir)
    preset = get_preset(preset_name)
    return preset_name, preset, config_from_dict(type(preset.config), saved)


def with_overrides(config, overrides: dict):
    """``config`` with options replaced (and checked by its class): lists as tuples, as in the
    dataclass, and paths absolute, so the stored config works from any directory."""
    def normal(name, value):
        if name in PATH_FIELDS and value:
            return str(Path(value).expanduser().resolve())
        return tuple(value) if isinstance(value, list) else value

    return dataclasses.replace(config, **{name: normal(name, value) for name, value in overrides.items()})


def resumed_config(run_dir: Path, preset_name: str, saved, overrides: dict, named_preset: str | None = None):
    """The saved config with ``overrides`` applied; only options that leave what was trained so far
    valid (``RESUMABLE`` and the config class's own) may differ from the saved values, and a preset
    named beside --resume must be the run's."""
    if named_preset is not None and named_preset != preset_name:
        raise MamlkitError(f"{run_dir} is a run of preset {preset_name}, not {named_preset}; drop the preset "
                           f"name to continue it, or start a new {named_preset} run with another --out")
    config = with_overrides(saved, overrides)  # each value checked first, by the config class
    allowed = RESUMABLE + getattr(type(saved), "RESUMABLE", ())
    for name in overrides:
        if getattr(config, name) != getattr(saved, name) and name not in allowed:
            flag = "--" + name.replace("_", "-")
            raise MamlkitError(f"{flag} cannot change when resuming: {run_dir} was trained with {name}="
                               f"{getattr(saved, name)!r}; drop {flag}, or train a new run with it (another --out)")
    return config


def check_data(config) -> None:
    """A data path given must exist unless the run downloads it."""
    data = getattr(config, "data", None)
    if data and not getattr(config, "download", False) and not Path(data).exists():
        raise MamlkitError(f"data path {data} does not exist; pass --data with the data set's folder or file")


def default_folder(preset_name: str) -> Path:
    """runs/<preset>-<time>; under torchrun runs/<preset>-<rendezvous id>, the same across restarts."""
    if distributed.launched_by_torchrun():
        return Path("runs") / f"{preset_name}-{os.environ.get('TORCHELASTIC_RUN_ID', 'none')}"
    return Path("runs") / f"{preset_name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _entries(run_dir: Path) -> list[str]:
    """The folder's entries, without temporaries a killed process left."""
    if not run_dir.exists():
        return []
    if not run_dir.is_dir():
        raise MamlkitError(f"{run_dir} is a file, not a folder; choose another --out")
    return sorted(p.name for p in run_dir.iterdir() if not p.name.endswith(TEMPORARY_SUFFIX))


def _holds_run(run_dir: Path) -> bool:
    try:
        read_run(run_dir)
    except MamlkitError:
        return False
    return True


def _check_new_folder(run_dir: Path) -> None:
    entries = _entries(run_dir)
    if CONFIG in entries and _holds_run(run_dir):
        raise MamlkitError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out")
    if entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise MamlkitError(f"{run_dir} is not empty ({shown}) and is not a mamlkit run; choose a new or empty --out")


def _check_checkpoints(run_dir: Path, config) -> bool:
    """Whether the run has an intact checkpoint; every checkpoint of a folder (``checkpoints/`` or
    a ``best/`` one) corrupt is an error, and the run may not lie beyond the requested iterations."""
    for folder in sorted({path.parent for path in (run_dir / "best").rglob(PATTERN)}):
        load_latest_checkpoint(folder)
    if not any((run_dir / "checkpoints").glob(PATTERN)):
        return False
    _, path = load_latest_checkpoint(run_dir / "checkpoints")
    reached = checkpoint_iteration(path)
    if getattr(config, "iterations", reached) < reached:
        raise MamlkitError(f"{run_dir} is already trained to iteration {reached}; --iterations must be at least "
                           f"that (or use `mamlkit eval {run_dir}`)")
    return True


@contextlib.contextmanager
def locked(run_dir: Path):
    """Hold the folder's lock for the block; another process holding it is a one-line error."""
    with writing(run_dir):
        fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MamlkitError(f"{run_dir} is in use by another mamlkit process; wait for it to finish "
                               f"or choose another --out") from None
        yield
    finally:
        os.close(fd)


def locked_on_main(run_dir: Path):
    """The folder's lock on rank 0, which alone writes (see ``distributed``); nothing on other ranks."""
    return locked(run_dir) if distributed.is_main() else contextlib.nullcontext()


def _write_config(run_dir: Path, preset_name: str, config) -> None:
    write_json(run_dir / CONFIG, {"preset": preset_name, **dataclasses.asdict(config)})


def _update_config(run_dir: Path, preset_name: str, config) -> None:
    """Rewrite config.json when the config changed, the replaced one appended to the history."""
    old = json.loads((run_dir / CONFIG).read_text())
    new = json.loads(json.dumps({"preset": preset_name, **dataclasses.asdict(config)}))
    if new == old:
        return
    history = (run_dir / HISTORY).read_text() if (run_dir / HISTORY).exists() else ""
    entry = {"replaced_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": old}
    atomic_write_bytes(run_dir / HISTORY, (history + json.dumps(entry) + "\n").encode())
    _write_config(run_dir, preset_name, config)


def _open_existing(run_dir: Path, preset_name: str, config) -> bool:
    check_data(config)
    with_checkpoint = _check_checkpoints(run_dir, config)
    for folder, _, _ in os.walk(run_dir):
        check_writable(Path(folder))
    remove_temporaries(run_dir)
    _update_config(run_dir, preset_name, config)
    return with_checkpoint


def _open_new(run_dir: Path, preset_name: str, config, stack: contextlib.ExitStack) -> bool:
    """Create the run's folder (or fill an empty one) with its config; return whether it was created."""
    check_data(config)
    _check_new_folder(run_dir)
    created = not run_dir.exists()
    with writing(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
    try:
        stack.enter_context(locked(run_dir))
        _check_new_folder(run_dir)  # again under the lock: no other process filled it meanwhile
        check_writable(run_dir)
        remove_temporaries(run_dir)
        _write_config(run_dir, preset_name, config)
    except BaseException:
        if created:
            stack.close()
            with contextlib.suppress(OSError):
                run_dir.rmdir()
        raise
    return created


def _undo_new(run_dir: Path, created: bool) -> None:
    """A new run that failed before writing anything but its config (a model or algorithm option
    its experiment refused) leaves the folder as it found it: gone, or empty."""
    if {path.name for path in run_dir.iterdir()} != {CONFIG}:
        return
    with contextlib.suppress(OSError):
        (run_dir / CONFIG).unlink()
        if created:
            run_dir.rmdir()


@contextlib.contextmanager
def opened_run(preset_name: str, config, resume: Path | None = None, out: Path | None = None):
    """Yield ``(run folder, whether it continues from a checkpoint)`` for a train command, holding
    the folder's lock on rank 0. ``resume``: continue that run with ``config`` (the saved config
    with checked overrides, see ``resumed_config``); otherwise a new run in ``out`` (or the default
    folder) -- unless torchrun restarted this group, which continues the run its first attempt made."""
    config = with_overrides(config, {name: getattr(config, name) for name in PATH_FIELDS if hasattr(config, name)})
    with contextlib.ExitStack() as stack:
        def open_on_main() -> tuple[Path, bool]:
            run_dir = Path(resume or out or default_folder(preset_name))
            restarted = resume is None and distributed.restart_count() > 0 and (run_dir / CONFIG).is_file()
            if resume is None and not restarted:
                return run_dir, False, _open_new(run_dir, preset_name, config, stack)
            stack.enter_context(locked(run_dir))
            return run_dir, _open_existing(run_dir, preset_name, config), None

        run_dir, continued, created = distributed.from_main(open_on_main)
        try:
            yield run_dir, continued
        except KeyboardInterrupt:
            raise RunInterrupted(run_dir) from None
        except MamlkitError:
            if created is not None and distributed.is_main():
                _undo_new(run_dir, created)
            raise


def evaluation_config(config, device: str | None = None, data: str | None = None):
    """The saved config for ``mamlkit eval``, on another device or with the data found elsewhere."""
    if data is not None:
        if not hasattr(config, "data"):
            raise MamlkitError("this run's preset reads no data set; drop --data")
        config = with_overrides(config, {"data": data})
    if device is not None:
        config = dataclasses.replace(config, device=device)
    check_data(config)
    return config
