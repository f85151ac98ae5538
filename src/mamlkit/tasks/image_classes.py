"""The in-memory form of a few-shot image data set, shared by every loader."""

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable

import torch


@dataclass
class ImageClasses:
    """Every image of a split, grouped by class so an N-way K-shot episode is pure indexing."""

    images: torch.Tensor  # uint8 [num_classes, per_class, channels, height, width]
    names: list[str]  # names[c] labels images[c]
    counts: torch.Tensor | None = None  # images[c, :counts[c]] are real where classes differ in size (padded)


def user_cache_dir(root: Path) -> Path:
    """A per-dataset folder under the user's cache, for data roots that are read-only."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mamlkit" / hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:16]


def write_cache(path: Path, save: Callable[[IO[bytes]], None]) -> bool:
    """Write a cache file atomically with ``save(file)``, so an interrupted run never leaves a
    half-written cache; returns False (and writes nothing) where the folder is not writable."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            save(handle)
        os.replace(tmp, path)
        return True
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        return False
