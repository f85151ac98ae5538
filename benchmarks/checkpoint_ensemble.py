"""How much does testing the mean of several checkpoints of one few-shot run add over the best alone?

MAML++'s published figures test the mean logits of its five best-on-validation checkpoints
(``mamlkit train ... --ensemble 5`` does the same). A run trained without ``--ensemble`` keeps only
its best checkpoint and the last two (``checkpoints/``); this script tests each of them alone and
the mean of the best with each and with all, on the run's own 600 test tasks, with mamlkit's
evaluation (each checkpoint adapts on the support set on its own). Paired differences against the
best alone tell whether the ensemble is worth its N-fold test cost.

    python benchmarks/checkpoint_ensemble.py --run benchmarks/results/omniglot-5w1s-mamlpp \
        --out benchmarks/results/checkpoint_ensemble-mamlpp.md
    python benchmarks/checkpoint_ensemble.py --run benchmarks/results/omniglot-5w1s-long \
        --out benchmarks/results/checkpoint_ensemble-maml.md
"""

import argparse
import datetime
import json
import os
import sys
from itertools import combinations
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from mamlkit.engine.checkpoint import intact_checkpoints, load_best  # noqa: E402
from mamlkit.engine.run import evaluation_config, saved_config  # noqa: E402
from mamlkit.experiments.fewshot import (TEST_SEED, build_model, fixed_tasks, load_samplers,  # noqa: E402
                                         make_maml, member_logits, query_labels, task_accuracy)
from mamlkit.stats import mean_and_ci95  # noqa: E402


def members(run: Path) -> list[dict]:
    """The best-on-validation checkpoint, then the last ones the run kept (model state and iteration)."""
    best = load_best(run / "best", "val_accuracy")[0]
    last = [{"iteration": state["iteration"], "model": state["learners"]["maml"]["model"]}
            for _, state in intact_checkpoints(run / "checkpoints")]
    return [best, *(state for state in last if state["iteration"] != best["iteration"])]


def table(run: Path, data: str | None) -> tuple[str, list[dict]]:
    _, _, config = saved_config(run)
    config = evaluation_config(config, device="cpu", data=data)
    torch.set_num_threads(config.threads)
    states = members(run)
    maml = make_maml(config, build_model(config))
    tasks = fixed_tasks(load_samplers(config)["test"], config.eval_tasks, TEST_SEED)
    logits = member_logits(maml, states, tasks, config.eval_chunk)  # each member adapts once
    labels = query_labels(tasks)

    def final_accuracy(chosen):
        return task_accuracy(logits[list(chosen)].mean(dim=0), labels)[:, -1] * 100

    best_alone = final_accuracy([0])
    rows = []
    for size in range(1, len(states) + 1):
        for chosen in combinations(range(len(states)), size):
            if size > 1 and 0 not in chosen:
                continue  # ensembles always hold the selected checkpoint
            accuracy = final_accuracy(chosen)
            (mean, difference), (ci, difference_ci) = mean_and_ci95(torch.stack([accuracy, accuracy - best_alone], 1))
            rows.append({"iterations": [states[i]["iteration"] for i in chosen], "accuracy": mean.item(),
                         "ci95": ci.item(), "minus_best_alone": difference.item(),
                         "minus_best_alone_ci95": difference_ci.item()})
    lines = [f"Run `{os.path.relpath(run, ROOT)}`, {config.eval_tasks} test tasks, accuracy % after "
             f"{config.eval_inner_steps} steps ({datetime.date.today()}).", "",
             "| checkpoints (iterations) | test accuracy % | − best alone, paired |", "|---|---|---|"]
    for row in rows:
        name = " + ".join(f"{i:,}" for i in row["iterations"])
        lines.append(f"| {name} | {row['accuracy']:.2f} ± {row['ci95']:.2f} | "
                     f"{row['minus_best_alone']:+.2f} ± {row['minus_best_alone_ci95']:.2f} |")
    return "\n".join(lines), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "benchmarks" / "results" / "omniglot-5w1s-mamlpp")
    parser.add_argument("--data", help="the data set's folder, if it moved since the run trained")
    parser.add_argument("--out", type=Path, help="also write the table here (and the rows beside it as .json)")
    args = parser.parse_args()
    text, rows = table(args.run.resolve(), args.data)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
