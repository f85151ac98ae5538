"""benchmarks/paired.py: two runs' accuracies paired task by task."""

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import paired  # noqa: E402

PROTOCOL = {"dataset": "omniglot", "split": "paper", "ways": 5, "shots": 1, "queries": 1, "eval_tasks": 4}


def run_folder(path: Path, task_accuracy, **config) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps({**PROTOCOL, "algo": "maml", **config}))
    (path / "results.json").write_text(json.dumps({"task_accuracy": task_accuracy}))
    return path


def test_the_difference_is_paired_task_by_task(tmp_path):
    a = run_folder(tmp_path / "a", [100.0, 80.0, 60.0, 100.0], algo="mamlpp")
    b = run_folder(tmp_path / "b", [80.0, 80.0, 40.0, 100.0])
    result = paired.compare(a, b)
    differences = [20.0, 0.0, 20.0, 0.0]
    mean = sum(differences) / 4
    std = math.sqrt(sum((d - mean) ** 2 for d in differences) / 3)
    assert result["difference"] == pytest.approx((mean, 1.96 * std / 2))
    assert result["a"][0] == pytest.approx(85.0) and result["b"][0] == pytest.approx(75.0)
    assert (result["a_better"], result["b_better"], result["tasks"]) == (2, 0, 4)


def test_runs_on_other_tasks_or_without_per_task_results_are_refused(tmp_path):
    a = run_folder(tmp_path / "a", [100.0] * 4)
    with pytest.raises(SystemExit, match="shots differ"):
        paired.compare(a, run_folder(tmp_path / "b", [100.0] * 4, shots=5))
    old = run_folder(tmp_path / "old", [100.0] * 4)
    (old / "results.json").write_text(json.dumps({"accuracy": [99.0]}))
    with pytest.raises(SystemExit, match="mamlkit eval"):
        paired.compare(a, old)


def test_the_comparison_table_puts_each_run_against_the_base_beside_its_paper(tmp_path):
    runs = []
    for name, algo, accuracy, trained in (("base", "maml", [80.0, 80.0, 40.0, 100.0], 900),
                                          ("other", "mamlpp", [100.0, 80.0, 60.0, 100.0], 1200)):
        run = run_folder(tmp_path / name, accuracy, algo=algo, iterations=2000,
                         model="conv-pool" if algo == "mamlpp" else "conv")
        results = json.loads((run / "results.json").read_text())
        ensemble = {"ensemble": [{"iteration": 500}, {"iteration": 1000}]} if algo == "mamlpp" else {}
        (run / "results.json").write_text(json.dumps({**results, "checkpoint_iteration": 500, "val_accuracy": 0.9,
                                                      **ensemble}))
        (run / "metrics.jsonl").write_text(json.dumps({"iteration": trained // 2}) + "\n"
                                           + json.dumps({"iteration": trained}) + "\n")
        runs.append(run)
    lines = paired.comparison_table(runs[0], runs[1:]).splitlines()
    base, other = lines[2].split(" | "), lines[3].split(" | ")
    assert base[1:6] == ["900 (2,000)", "500 (90.00)", "75.00 ± 24.66", "—", "—"]
    assert other[1:6] == ["1,200 (2,000)", "mean of the 2 best; best 500 (90.00)", "85.00 ± 18.77", "+10.00 ± 11.32",
                          "2 / 0"]
    assert base[0].startswith("| maml ([run]") and other[0].startswith("| mamlpp, conv-pool ([run]")  # the network named
    assert other[6].startswith("99.47, ensemble of 5") and base[6].startswith("98.7 ± 0.4")
