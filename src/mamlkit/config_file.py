"""Config files for ``mamlkit train --config FILE``: TOML, YAML, or JSON such as a run's ``config.json``.

A file is one table: ``preset = "sinusoid"`` plus any config fields to change, so every run
folder's saved config is itself a config file that reruns the run exactly.
"""

import json
import tomllib
from pathlib import Path

import yaml

from mamlkit.engine.run import PATH_FIELDS
from mamlkit.errors import MamlkitError

_LOADERS = {".toml": tomllib.loads, ".yaml": yaml.safe_load, ".yml": yaml.safe_load, ".json": json.loads}
_ERRORS = (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError)


def read_config_file(path: Path) -> tuple[str, dict]:
    """The preset named in ``path`` and the config fields it sets."""
    path = Path(path)
    loader = _LOADERS.get(path.suffix.lower())
    if loader is None:
        raise MamlkitError(f"{path}: unknown config format {path.suffix!r}; use .toml, .yaml, .yml or .json")
    try:
        data = loader(path.read_text())
    except OSError as error:
        raise MamlkitError(f"cannot read {path} ({error.strerror}); check the path") from None
    except _ERRORS as error:
        reason = str(error).splitlines()[0]
        raise MamlkitError(f"{path} is not valid {path.suffix[1:].upper()} ({reason}); fix the file") from None
    if not isinstance(data, dict) or not isinstance(data.get("preset"), str):
        raise MamlkitError(f"{path} names no preset; add a line such as preset = \"sinusoid\" "
                           f"(see `mamlkit presets`)")
    name = data.pop("preset")
    return name, {key: _beside(path, value) if key in PATH_FIELDS and value else value for key, value in data.items()}


def _beside(config_file: Path, value: str) -> str:
    """A relative data path in a config file is relative to the file, wherever mamlkit runs from."""
    return str(config_file.parent / Path(value).expanduser())
