"""The in-memory form of a few-shot image data set, shared by every loader."""

import contextlib
import hashlib
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable

import numpy as np
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


def cache_folders(root: Path, cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """Where a data set under ``root`` is cached: ``cache_dir`` if given, else ``root/.mamlkit-cache``
    or, when that is not writable, the user's cache."""
    return [Path(cache_dir).expanduser()] if cache_dir is not None else [root / ".mamlkit-cache",
                                                                         user_cache_dir(root)]


def cached_classes(folders: Sequence[Path], name: str, build: Callable[[], ImageClasses]) -> ImageClasses:
    """``build()`` the first time only: the result is saved as ``name`` (.npz, keyed by its name) in the
    first writable of ``folders`` and read back from the first that has it; a damaged cache is rebuilt."""
    for folder in folders:
        cached = _read_cache(folder / name)
        if cached is not None:
            return cached
    data = build()
    arrays = {"images": data.images.numpy(), "names": np.array(data.names)}
    if data.counts is not None:
        arrays["counts"] = data.counts.numpy()
    for folder in folders:
        if write_cache(folder / name, lambda handle: np.savez(handle, **arrays)):
            break
    return data


def _read_cache(path: Path) -> ImageClasses | None:
    """The cached data set, or None when the cache is missing or damaged."""
    try:
        with np.load(path) as cached:
            images, names = cached["images"], cached["names"].tolist()
            counts = torch.from_numpy(cached["counts"]) if "counts" in cached else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None
    if images.dtype != np.uint8 or images.ndim != 5 or images.shape[0] != len(names):
        return None
    return ImageClasses(torch.from_numpy(images), names, counts)
