"""Checkpoints that survive a kill at any instant.

Each file is written to a temporary name, fsynced and renamed, so a reader sees either the old
set of files or the new one. A SHA-256 of the payload heads the file: a truncated or corrupted
checkpoint is detected on load and the previous good one is used instead.
"""

import hashlib
import io
import os
import warnings
from pathlib import Path

import torch

from mamlkit.errors import MamlkitError

MAGIC = b"mamlkit-checkpoint sha256="
PATTERN = "ckpt-*.pt"


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)


def save_checkpoint(directory: Path, iteration: int, state: dict, keep: int = 2) -> Path:
    """Write ``ckpt-<iteration>.pt`` atomically and keep only the newest ``keep`` checkpoints."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    path = directory / f"ckpt-{iteration:09d}.pt"
    atomic_write_bytes(path, MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
    for old in sorted(directory.glob(PATTERN))[:-keep]:
        old.unlink()
    return path


def read_checkpoint(path: Path) -> dict:
    """Load one checkpoint, verifying its checksum; raises MamlkitError if it is damaged."""
    data = Path(path).read_bytes()
    header, _, payload = data.partition(b"\n")
    if not header.startswith(MAGIC) or hashlib.sha256(payload).hexdigest().encode() != header[len(MAGIC):]:
        raise MamlkitError(f"checkpoint {path} is truncated or corrupt (checksum mismatch)")
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)


def load_latest_checkpoint(directory: Path) -> tuple[dict, Path]:
    """The newest intact checkpoint in ``directory``, falling back past damaged ones with a warning."""
    directory = Path(directory)
    candidates = sorted(directory.glob(PATTERN), reverse=True)
    for path in candidates:
        try:
            return read_checkpoint(path), path
        except MamlkitError as error:
            warnings.warn(f"mamlkit: {error}; trying the previous one", stacklevel=2)
    if candidates:
        raise MamlkitError(f"every checkpoint in {directory} is corrupt; start a new run without --resume")
    raise MamlkitError(f"no checkpoint in {directory}; start a new run without --resume")


class BestCheckpoint:
    """Keeps the state with the highest validation score so far in ``directory`` (one file), under
    ``key`` in the saved dict; the score carries over a resume."""

    def __init__(self, directory: Path, key: str):
        self.directory, self.key = Path(directory), key
        self.score = float("-inf")
        if any(self.directory.glob(PATTERN)):
            self.score = load_latest_checkpoint(self.directory)[0][key]

    def offer(self, iteration: int, score: float, state: dict) -> None:
        if score > self.score:
            self.score = score
            save_checkpoint(self.directory, iteration, {"iteration": iteration, self.key: score, **state}, keep=1)
