"""Checkpoints that survive a kill at any instant and open safely with ``torch.load``.

A checkpoint is a plain ``torch.save`` file of ``{"format": 2, "sha256": ..., "state": ...}``, so
``torch.load(path, weights_only=True)`` opens it and no file can run code when loaded. The SHA-256
covers every key, number and tensor byte of the state: a truncated or corrupted checkpoint is
detected on load and the previous good one is used instead. Checkpoints of the first format (a
text header line ``mamlkit-checkpoint sha256=...`` before the payload) still load.
Each file is written atomically (``files.atomic_write_bytes``).
"""

import hashlib
import io
import warnings
from pathlib import Path

import torch

from mamlkit.engine.files import atomic_write_bytes, writing
from mamlkit.errors import MamlkitError

FORMAT = 2
LEGACY_MAGIC = b"mamlkit-checkpoint sha256="
PATTERN = "ckpt-*.pt"


class CorruptCheckpoint(MamlkitError):
    """A checkpoint file that is truncated, altered or not a checkpoint at all."""


def state_digest(state) -> str:
    """SHA-256 over the structure, keys, numbers and tensor bytes of a (nested) state."""
    digest = hashlib.sha256()

    def visit(value):
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            digest.update(f"D{len(value)}".encode())
            for key, item in value.items():
                visit(key)
                visit(item)
        elif isinstance(value, (list, tuple)):
            digest.update(f"{type(value).__name__[0]}{len(value)}".encode())
            for item in value:
                visit(item)
        else:
            digest.update(f"{type(value).__name__}:{value!r};".encode())

    visit(state)
    return digest.hexdigest()


def checkpoint_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "sha256": state_digest(state), "state": state}, buffer)
    return buffer.getvalue()


def write_checkpoint(directory: Path, iteration: int, state: dict) -> Path:
    """Write ``ckpt-<iteration>.pt`` in ``directory`` atomically."""
    directory = Path(directory)
    with writing(directory):
        directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"ckpt-{iteration:09d}.pt"
    atomic_write_bytes(path, checkpoint_bytes(state))
    return path


def remove_checkpoints(paths) -> None:
    for path in paths:
        with writing(path):
            path.unlink()


def save_checkpoint(directory: Path, iteration: int, state: dict, keep: int = 2) -> Path:
    """Write ``ckpt-<iteration>.pt`` atomically, then keep only the newest ``keep`` checkpoints
    (older ones are removed only once the new one is safely on disk)."""
    path = write_checkpoint(directory, iteration, state)
    remove_checkpoints(sorted(Path(directory).glob(PATTERN))[:-keep])
    return path


def _load(source) -> object:
    return torch.load(source, map_location="cpu", weights_only=True)


def read_checkpoint(path: Path) -> dict:
    """Load one checkpoint, verifying its checksum; raises CorruptCheckpoint if it is damaged."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise MamlkitError(f"cannot read {path} ({error.strerror}); make it readable (chmod u+r)") from None
    try:
        if data.startswith(LEGACY_MAGIC):
            header, _, payload = data.partition(b"\n")
            if hashlib.sha256(payload).hexdigest().encode() == header[len(LEGACY_MAGIC):]:
                return _load(io.BytesIO(payload))
        else:
            saved = _load(io.BytesIO(data))
            if isinstance(saved, dict) and saved.get("format") == FORMAT and \
                    saved.get("sha256") == state_digest(saved.get("state")):
                return saved["state"]
    except Exception:  # noqa: BLE001 - any failure to unpickle a damaged file means the same thing
        pass
    raise CorruptCheckpoint(f"checkpoint {path} is truncated or corrupt (checksum mismatch)")


def checkpoint_iteration(path: Path) -> int:
    return int(Path(path).stem.split("-")[1])


def load_latest_checkpoint(directory: Path) -> tuple[dict, Path]:
    """The newest intact checkpoint in ``directory``, falling back past damaged ones with a warning."""
    directory = Path(directory)
    candidates = sorted(directory.glob(PATTERN), reverse=True)
    for path in candidates:
        try:
            return read_checkpoint(path), path
        except CorruptCheckpoint as error:
            warnings.warn(f"mamlkit: {error}; trying the previous one", stacklevel=2)
    if candidates:
        run = _run_folder(directory)
        raise MamlkitError(f"every checkpoint in {directory} is corrupt; train the run again from iteration 0: "
                           f"`rm -rf {run / 'checkpoints'} {run / 'best'} && mamlkit train --resume {run}`")
    raise MamlkitError(f"no checkpoint in {directory}; train the run first "
                       f"(`mamlkit train --resume {_run_folder(directory)}`)")


def remove_checkpoints_after(directory: Path, iteration: int) -> None:
    """Delete checkpoints under ``directory`` (and its subfolders) from past ``iteration``: a run
    continued from ``iteration`` must not report a best state that it has not reached again."""
    remove_checkpoints([path for path in Path(directory).rglob(PATTERN) if checkpoint_iteration(path) > iteration])


def _run_folder(directory: Path) -> Path:
    """The run folder holding ``directory`` (the nearest one with a config.json)."""
    return next((p for p in (directory, *directory.parents) if (p / "config.json").is_file()), directory.parent)


WEIGHTS = "weights.safetensors"


def export_weights(run_dir: Path, states: dict[str, dict], **metadata) -> None:
    """The evaluated weights as ``weights.safetensors`` (opens anywhere, no pickle), written
    atomically; tensor ``<learner>.<key>`` for each learner's state_dict entry."""
    from safetensors.torch import save

    flat = {f"{learner}.{key}": value.detach().cpu().contiguous().clone()
            for learner, state in states.items() for key, value in state.items() if isinstance(value, torch.Tensor)}
    atomic_write_bytes(Path(run_dir) / WEIGHTS, save(flat, metadata={k: str(v) for k, v in metadata.items()}))


def intact_checkpoints(directory: Path) -> list[tuple[Path, dict]]:
    """Every checkpoint in ``directory`` that loads, oldest first; damaged ones are skipped with a warning."""
    found = []
    for path in sorted(Path(directory).glob(PATTERN)):
        try:
            found.append((path, read_checkpoint(path)))
        except CorruptCheckpoint as error:
            warnings.warn(f"mamlkit: {error}; skipping it", stacklevel=2)
    return found


def load_best(directory: Path, key: str, count: int = 1) -> list[dict]:
    """The ``count`` intact checkpoints in ``directory`` with the highest ``key``, best first."""
    states = dict(intact_checkpoints(directory))
    if not states:
        load_latest_checkpoint(directory)  # raises the error that says what to do
    return [states[path] for path in best_first({path: state[key] for path, state in states.items()})[:count]]


def best_first(scores: dict[Path, float]) -> list[Path]:
    """Checkpoint files by score, highest first; a tie goes to the earlier iteration (the earlier name)."""
    return sorted(scores, key=lambda path: (-scores[path], path.name))


class BestCheckpoint:
    """Keeps the ``keep`` states with the highest validation scores so far in ``directory`` (one file
    each), under ``key`` in the saved dict. ``keep`` > 1 serves tests of an ensemble of the best
    checkpoints (MAML++'s protocol). The scores carry over a resume (read at the first offer, after
    the run folder has dropped checkpoints from past the resumed iteration)."""

    def __init__(self, directory: Path, key: str, keep: int = 1):
        self.directory, self.key, self.keep = Path(directory), key, keep
        self.scores: dict[Path, float] | None = None

    def offer(self, iteration: int, score: float, state: dict) -> None:
        if self.scores is None:
            self.scores = {path: saved[self.key] for path, saved in intact_checkpoints(self.directory)}
        if len(self.scores) >= self.keep and score <= min(self.scores.values()):
            return
        path = write_checkpoint(self.directory, iteration, {"iteration": iteration, self.key: score, **state})
        self.scores[path] = score
        self.scores = {p: self.scores[p] for p in best_first(self.scores)[:self.keep]}
        remove_checkpoints([p for p in self.directory.glob(PATTERN) if p not in self.scores])  # damaged ones too
