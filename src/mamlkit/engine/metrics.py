"""Training metrics to a JSON-lines file and TensorBoard, consistent across resumes."""

import json
from pathlib import Path


class MetricsLog:
    """Appends ``{"iteration": i, **scalars}`` records; on resume drops records past the checkpoint."""

    def __init__(self, run_dir: Path, resume_iteration: int = 0):
        self.path = Path(run_dir) / "metrics.jsonl"
        if resume_iteration and self.path.exists():
            kept = [record for record in _complete_records(self.path) if record["iteration"] <= resume_iteration]
            self.path.write_text("".join(json.dumps(record) + "\n" for record in kept))
        elif not resume_iteration:
            self.path.write_text("")
        from torch.utils.tensorboard import SummaryWriter  # imports TensorBoard only for training runs

        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resume_iteration + 1)

    def log(self, iteration: int, scalars: dict[str, float]) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"iteration": iteration, **scalars}) + "\n")
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, iteration)

    def close(self) -> None:
        self.writer.close()


def read_metrics(run_dir: Path) -> list[dict]:
    return _complete_records(Path(run_dir) / "metrics.jsonl")


def _complete_records(path: Path) -> list[dict]:
    """The records of whole lines: a process killed mid-write leaves a last line without its newline
    (always past the last checkpoint, which is written after the record), and it is skipped."""
    return [json.loads(line) for line in path.read_text().split("\n")[:-1] if line.strip()]
