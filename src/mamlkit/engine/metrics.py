"""Training metrics to a JSON-lines file and TensorBoard, consistent across resumes."""

import json
import warnings
from pathlib import Path

from mamlkit.engine.files import append_text, atomic_write_bytes, writing


class MetricsLog:
    """Appends ``{"iteration": i, **scalars}`` records; on resume drops records past the checkpoint."""

    def __init__(self, run_dir: Path, resume_iteration: int = 0):
        self.path = Path(run_dir) / "metrics.jsonl"
        kept = [record for record in _complete_records(self.path) if record["iteration"] <= resume_iteration] \
            if resume_iteration and self.path.exists() else []
        atomic_write_bytes(self.path, "".join(json.dumps(record) + "\n" for record in kept).encode())
        from torch.utils.tensorboard import SummaryWriter  # imports TensorBoard only for training runs

        tensorboard = Path(run_dir) / "tensorboard"
        with writing(tensorboard):
            self.writer = SummaryWriter(str(tensorboard), purge_step=resume_iteration + 1)

    def log(self, iteration: int, scalars: dict[str, float]) -> None:
        append_text(self.path, json.dumps({"iteration": iteration, **scalars}) + "\n")
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, iteration)

    def close(self) -> None:
        self.writer.close()


def read_metrics(run_dir: Path) -> list[dict]:
    return _complete_records(Path(run_dir) / "metrics.jsonl")


def _complete_records(path: Path) -> list[dict]:
    """The records of whole lines: a process killed mid-write leaves a last line without its newline
    (always past the last checkpoint, which is written after the record), and it is skipped; so is,
    with a warning, a line damaged otherwise."""
    records = []
    for number, line in enumerate(path.read_text(errors="replace").split("\n")[:-1], 1):
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            record = None
            warnings.warn(f"mamlkit: line {number} of {path} is not a metrics record; skipped", stacklevel=2)
        if isinstance(record, dict) and "iteration" in record:
            records.append(record)
    return records
