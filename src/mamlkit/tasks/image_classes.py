"""The in-memory form of a few-shot image data set, shared by every loader."""

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class ImageClasses:
    """Every image of a split, grouped by class so an N-way K-shot episode is pure indexing."""

    images: torch.Tensor  # uint8 [num_classes, per_class, channels, height, width]
    names: list[str]  # names[c] labels images[c]


def user_cache_dir(root: Path) -> Path:
    """A per-dataset folder under the user's cache, for data roots that are read-only."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mamlkit" / hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:16]
