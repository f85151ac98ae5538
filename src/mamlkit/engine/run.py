"""Run folders: the resolved config, checkpoints, metrics and results of one training run."""

import dataclasses
import json
import time
from pathlib import Path

from mamlkit.engine.checkpoint import PATTERN, atomic_write_bytes
from mamlkit.errors import MamlkitError

CONFIG = "config.json"


def write_json(path: Path, data) -> None:
    atomic_write_bytes(Path(path), (json.dumps(data, indent=2) + "\n").encode())


def config_from_dict(config_class, data: dict):
    """Rebuild a config dataclass from JSON, restoring tuples that JSON turned into lists."""
    names = {field.name for field in dataclasses.fields(config_class)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise MamlkitError(f"unknown config keys {unknown} for {config_class.__name__}; remove them from {CONFIG}")
    return config_class(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def create_run(out: Path | None, preset: str, config) -> Path:
    """A fresh run folder holding the resolved config; refuses to overwrite a run that has checkpoints."""
    run_dir = Path(out) if out else Path("runs") / f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    if any((run_dir / "checkpoints").glob(PATTERN)):
        raise MamlkitError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                           f"or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(run_dir, preset, config)
    return run_dir


def read_run(run_dir: Path) -> tuple[str, dict]:
    """The preset name and the config dict saved in ``run_dir``."""
    path = Path(run_dir) / CONFIG
    if not path.exists():
        raise MamlkitError(f"{run_dir} is not a mamlkit run folder (no {CONFIG}); pass the folder given to --out")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise MamlkitError(f"{path} is not valid JSON ({error.msg}); restore it or start a new run") from None
    return data.pop("preset"), data


def write_run_config(run_dir: Path, preset: str, config) -> None:
    write_json(Path(run_dir) / CONFIG, {"preset": preset, **dataclasses.asdict(config)})
