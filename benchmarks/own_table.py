"""`mamlkit train table` on a table of sinusoid tasks: does MAML beat the pretrained baseline?

The paper's sinusoid family (y = A sin(x − φ), A ∈ [0.1, 5], φ ∈ [0, π], x ∈ [−5, 5]) written as a
CSV of --tasks tasks × --rows rows (columns task, x, y), as a user's table would be; `train table`
splits the tasks 70/10/20, standardises x and y, and trains MAML (K = 10, α = 0.01, one step)
beside the pretrained baseline for --iterations. The table is the test MSE (in y's units) after
0, 1, 5 and 10 steps on 600 test-task draws, ± 95% CI.

    python benchmarks/own_table.py --iterations 5000     # a few minutes on one CPU thread
"""

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mamlkit.tasks.sinusoid import SinusoidTasks  # noqa: E402


def write_table(path: Path, tasks: int, rows: int) -> None:
    batch = SinusoidTasks().sample(tasks, rows, 0, torch.Generator().manual_seed(0))
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["task", "x", "y"])
        for t in range(tasks):
            for x, y in zip(batch.support_x[t, :, 0].tolist(), batch.support_y[t, :, 0].tolist()):
                writer.writerow([f"t{t:05d}", f"{x:.6f}", f"{y:.6f}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "mamlkit-own-table")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    table, run = args.work / "sinusoids.csv", args.work / f"run-{args.iterations}"
    write_table(table, args.tasks, args.rows)
    if not (run / "results.json").exists():
        subprocess.run([sys.executable, "-m", "mamlkit", "train", "table", "--data", str(table), "--task-column",
                        "task", "--target-column", "y", "--iterations", str(args.iterations), "--threads", "1",
                        "--out", str(run)], check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    results = json.loads((run / "results.json").read_text())
    rows = results["results"]["K=10"]
    steps = [0, 1, 5, 10]
    lines = [f"# `train table` on {args.tasks} sinusoid tasks × {args.rows} rows ({args.iterations} iterations, "
             f"checkpoint of iteration {results['checkpoint_iteration']})", "",
             "| method | " + " | ".join(f"{s} steps" for s in steps) + " |", "|---|" + "---|" * len(steps)]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{row['mse'][s]:.3f} ± {row['ci95'][s]:.3f}" for s in steps) + " |")
    report = "\n".join(lines)
    print(report)
    (args.results / "own_table.md").write_text(report + "\n")
    (args.results / "own_table.json").write_text(json.dumps({"tasks": args.tasks, "rows": args.rows,
                                                             "iterations": args.iterations, **results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
