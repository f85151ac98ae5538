"""`predict` on new Omniglot tasks from a committed run gives the accuracy its evaluation reports.

For each of --tasks 5-way 1-shot tasks drawn (seeded) from the paper split's 423 test characters,
one drawing of each character is copied into a support folder and another into a query folder
(`<Alphabet>/<characterNN>/<drawing>.png`, the original 105x105 PNGs), and
`mamlkit.deploy.predict_run(RUN, support, query)` adapts the run's best checkpoint (its evaluation's
3 inner steps) and labels the 5 query images. The table compares the mean accuracy ± 95% CI over
the tasks with the run's results.json (600 test tasks; those turn each class by a random multiple
of 90°, the files here are upright).

    python benchmarks/own_predict.py                 # ~2-4 min on one CPU thread
"""

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from own_images import lay_out  # noqa: E402  (the same unpacked character folders)
from mamlkit.deploy import predict_run  # noqa: E402
from mamlkit.stats import mean_and_ci95  # noqa: E402
from mamlkit.tasks.omniglot import load_omniglot, omniglot_split  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=ROOT / "benchmarks" / "results" / "omniglot-5w1s-long")
    parser.add_argument("--omniglot", type=Path, default=ROOT.parent / "shared" / "data" / "omniglot")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "mamlkit-own-images")
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder, _ = lay_out(args.omniglot, args.work)
    names = load_omniglot(args.omniglot).names
    test = [names[c] for c in omniglot_split(len(names), kind="paper")[2]]
    rng = random.Random(args.seed)
    accuracies = []
    with tempfile.TemporaryDirectory() as scratch:
        for task in range(args.tasks):
            support, query = Path(scratch) / f"{task}" / "support", Path(scratch) / f"{task}" / "query"
            for character in rng.sample(test, 5):
                drawings = sorted((folder / character).iterdir())
                for target, drawing in zip((support, query), rng.sample(drawings, 2)):
                    (target / character).mkdir(parents=True)
                    shutil.copy(drawing, target / character / drawing.name)
            outcome = predict_run(args.run, support, query, out=Path(scratch) / f"{task}.csv")
            accuracies.append(100 * outcome["accuracy"])
    mean, ci = mean_and_ci95(torch.tensor(accuracies)[:, None])
    evaluation = json.loads((args.run / "results.json").read_text())
    report = "\n".join([
        f"# predict_run on Omniglot 5-way 1-shot test tasks ({args.run.name}, 3 inner steps)", "",
        "| source | tasks | accuracy % |", "|---|---|---|",
        f"| `predict_run`, support/query folders of original PNGs | {args.tasks} | {mean.item():.2f} ± {ci.item():.2f} |",
        f"| the run's evaluation (results.json) | {evaluation['eval_tasks']} | "
        f"{evaluation['accuracy'][-1]:.2f} ± {evaluation['ci95'][-1]:.2f} |"])
    print(report)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "own_predict.md").write_text(report + "\n")
    (args.results / "own_predict.json").write_text(json.dumps(
        {"run": args.run.name, "tasks": args.tasks, "accuracy": mean.item(), "ci95": ci.item(),
         "per_task": accuracies, "evaluation": {"accuracy": evaluation["accuracy"][-1],
                                                "ci95": evaluation["ci95"][-1]}}, indent=2) + "\n")


if __name__ == "__main__":
    main()
