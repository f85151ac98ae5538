"""Few-shot runs compared task by task on the same test tasks: is one really better?

Every run of a preset tests on the same tasks (drawn with the test seed from the same split, ways,
shots, queries and count), so the accuracies pair up; the difference per task has a far narrower
interval than the two runs' separate ones. Reads ``task_accuracy`` from each run's results.json
(written by ``mamlkit train`` and ``mamlkit eval RUN``; re-evaluate an older run to add it).

    python benchmarks/paired.py RUN_A RUN_B
    python benchmarks/paired.py BASE RUN [RUN ...] --table   # each run against BASE, with published figures
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from mamlkit.engine.metrics import read_metrics  # noqa: E402
from mamlkit.stats import mean_and_ci95  # noqa: E402

# The config fields that fix the test tasks; the runs may differ in anything else (the method).
SAME_TASKS = ("dataset", "split", "ways", "shots", "queries", "eval_tasks")

# What each learner's paper reports on Omniglot's protocol, keyed by (algo, ways, shots): citations to
# compare against, not results. MAML++'s figure is the mean prediction of its five best-on-validation
# checkpoints (the official experiment_builder.py); the others are one network's.
PUBLISHED = {
    ("maml", 5, 1): "98.7 ± 0.4 (Finn et al. 2017)",
    ("metasgd", 5, 1): "99.53 ± 0.26 (Li et al. 2017)",
    ("mamlpp", 5, 1): "99.47, ensemble of 5 checkpoints (Antoniou et al. 2019)",
}


def load(run: Path) -> tuple[dict, dict]:
    results, config = (json.loads((run / name).read_text()) for name in ("results.json", "config.json"))
    if "task_accuracy" not in results:
        raise SystemExit(f"{run}/results.json has no per-task accuracies; run `mamlkit eval {run}` to add them")
    return results, config


def compare(run_a: Path, run_b: Path) -> dict:
    (a, config_a), (b, config_b) = load(run_a), load(run_b)
    differing = [key for key in SAME_TASKS if config_a.get(key) != config_b.get(key)]
    if differing:
        raise SystemExit(f"the runs were tested on different tasks ({', '.join(differing)} differ); "
                         f"a paired comparison needs the same preset protocol")
    accuracy = torch.tensor([a["task_accuracy"], b["task_accuracy"]], dtype=torch.float64).T
    mean, ci = mean_and_ci95(torch.cat([accuracy, accuracy[:, :1] - accuracy[:, 1:]], dim=1))
    return {"tasks": len(accuracy), "a": (mean[0].item(), ci[0].item()), "b": (mean[1].item(), ci[1].item()),
            "difference": (mean[2].item(), ci[2].item()), "a_better": int((accuracy[:, 0] > accuracy[:, 1]).sum()),
            "b_better": int((accuracy[:, 0] < accuracy[:, 1]).sum())}


def comparison_table(base: Path, runs: list[Path]) -> str:
    """One row per run (the base first): how far it trained, its selected checkpoint and test accuracy,
    the paired difference from the base on the same tasks, and what the learner's paper reports."""
    lines = ["| learner | iterations trained (schedule) | selected checkpoint (validation %) | test accuracy % | "
             "− base, paired | tasks better / worse than base | published |", "|---|---|---|---|---|---|---|"]
    for run in [base, *runs]:
        (results, config), result = load(run), compare(run, base)
        trained = read_metrics(run)[-1]["iteration"]
        test, difference = result["a"], result["difference"]
        paired_cells = ("—", "—") if run == base else (f"{difference[0]:+.2f} ± {difference[1]:.2f}",
                                                       f"{result['a_better']} / {result['b_better']}")
        published = PUBLISHED.get((config["algo"], config["ways"], config["shots"]), "—")
        selected = f"{results['checkpoint_iteration']:,} ({100 * results['val_accuracy']:.2f})"
        if "ensemble" in results:  # --ensemble N: the mean prediction of the N best; the best one named
            selected = f"mean of the {len(results['ensemble'])} best; best {selected}"
        network = "" if config.get("model", "conv") == "conv" else f", {config['model']}"  # conv: the MAML paper's
        lines.append(f"| {config['algo']}{network} ([run]({os.path.relpath(run, ROOT)})) | {trained:,} ({config['iterations']:,}) "
                     f"| {selected} "
                     f"| {test[0]:.2f} ± {test[1]:.2f} | {' | '.join(paired_cells)} | {published} |")
    return "\n".join(lines) + f"\n\n({result['tasks']} test tasks, ± 95% CI, after each learner's last test step)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path, nargs="+")
    parser.add_argument("--table", action="store_true", help="RUN_A is the base; a table of every run against it")
    args = parser.parse_args()
    if args.table:
        print(comparison_table(args.run_a.resolve(), [run.resolve() for run in args.run_b]))
        return
    if len(args.run_b) > 1:
        parser.error("give two runs, or --table for more")
    run_a, run_b = args.run_a, args.run_b[0]
    result = compare(run_a, run_b)
    print(f"| run | test accuracy % ({result['tasks']} tasks) |\n|---|---|")
    for key, run in (("a", run_a), ("b", run_b)):
        print(f"| {run.name} | {result[key][0]:.2f} ± {result[key][1]:.2f} |")
    difference, ci = result["difference"]
    print(f"| {run_a.name} − {run_b.name}, paired | {difference:+.2f} ± {ci:.2f} |\n\n"
          f"{run_a.name} better on {result['a_better']} tasks, {run_b.name} on {result['b_better']}, "
          f"tied on {result['tasks'] - result['a_better'] - result['b_better']}")


if __name__ == "__main__":
    main()
