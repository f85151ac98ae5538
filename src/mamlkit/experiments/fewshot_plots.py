"""The learning curve of a few-shot run: training query loss and validation accuracy."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mamlkit.engine.files import save_figure  # noqa: E402
from mamlkit.engine.metrics import read_metrics  # noqa: E402


def plot_learning_curve(run_dir: Path, results: dict, path: Path) -> None:
    records = read_metrics(run_dir)
    train = [(r["iteration"], r["maml/query_loss"]) for r in records if "maml/query_loss" in r]
    val = [(r["iteration"], 100 * r["val/accuracy"]) for r in records if "val/accuracy" in r]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    if train:
        left.plot(*zip(*train), color="tab:blue", lw=1)
    left.set_xlabel("meta-iteration")
    left.set_ylabel("query loss after adaptation (train)")
    if val:
        right.plot(*zip(*val), "o-", color="tab:green", ms=3, label="validation")
    tested = f"mean of the {len(results['ensemble'])} best" if "ensemble" in results else "best checkpoint"
    right.axhline(results["accuracy"][-1], color="tab:red", ls="--",
                  label=f"test ({tested}): {results['accuracy'][-1]:.1f}%")
    right.set_xlabel("meta-iteration")
    right.set_ylabel("accuracy after adaptation (%)")
    right.legend(loc="lower right")
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)
