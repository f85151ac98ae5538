"""MAML and its variants on one benchmark: sinusoid MSE, Omniglot 5w1s accuracy on a fixed CPU budget, speed, memory.

Every (variant, task) row runs in a fresh subprocess with torch.set_num_threads(--threads):
  * sinusoid (paper §5.1: MLP 1-40-40-1, 25 tasks of K=10 support + 10 query points, Adam 1e-3):
    --sinusoid-iterations meta-iterations, then the MSE on 100 fresh points of --eval-tasks
    held-out tasks (the seeds of `mamlkit train sinusoid`) at K = 5 and 10 after 1 and 10 inner
    steps, mean ± 95% CI;
  * Omniglot 5-way 1-shot (paper conv net, meta-batch 32, Adam 1e-3, real data from --data, the
    paper's split): meta-train until the process has used --omniglot-cpu-s CPU seconds, then the
    query accuracy of the final weights (no validation-based selection) on --eval-tasks test tasks
    (the seed of `mamlkit train omniglot-*`) after the variant's evaluation steps;
  * ms/it: process CPU milliseconds per meta-iteration (zero_grad + meta_backward + optimizer
    step), which contention on a shared machine inflates less than wall time; wall: the median
    wall-clock milliseconds of one meta-iteration;
  * peak MB: peak RSS during training above the RSS before the first meta-iteration.

A variant is a row of VARIANTS: a factory ``(model, loss_fn, **options) -> MAML`` (or subclass)
and its options per task (None: the variant does not apply to the task). Add one with one line.
Meta-SGD's sinusoid row stops at the one step its rates are learned for: they are a learned update
for that step (signed, per weight), not a step size to repeat, so its 10-step cells read n/a.

    python benchmarks/algorithms.py                                   # smoke run, ~10 minutes
    python benchmarks/algorithms.py --sinusoid-iterations 20000 --omniglot-cpu-s 1800 \\
        --eval-tasks 600 --out benchmarks/results/algorithms.md       # the full comparison
"""

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import harness  # noqa: E402  (benchmarks/harness.py, beside this file)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mamlkit.algorithms import build_algorithm  # noqa: E402
from mamlkit.algorithms.imaml import IMAML  # noqa: E402
from mamlkit.algorithms.protomaml import ProtoMAML  # noqa: E402
from mamlkit.algorithms.reptile import Reptile  # noqa: E402
from mamlkit.experiments.algorithm_settings import parse_options  # noqa: E402
from mamlkit.timed_choice import cpu_name  # noqa: E402


@dataclass(frozen=True)
class Variant:
    factory: object  # (model, loss_fn, **options) -> MAML
    sinusoid: dict | None
    omniglot: dict | None
    sinusoid_eval_steps: int = 10  # inner steps the sinusoid evaluation runs (the table shows 1 and 10)


def registered(name: str):
    return partial(build_algorithm, name)


# The papers' settings where they exist (MAML: α = 0.01 sinusoid, 0.4 Omniglot with the N-scaled loss).
# With 5 inner steps α = 0.4 overshoots on Omniglot (iMAML's query loss went above chance; Reptile
# and ProtoMAML were behind α = 0.1 in 40-iteration checks). iMAML and MAML++ run at their
# defaults (iMAML: λ = 1/(α k), 10 inner steps, 5 CG steps; MAML++: every switch, LSLR included).
SIN, OMNI = dict(inner_lr=0.01, eval_inner_steps=10), dict(inner_lr=0.4, eval_inner_steps=3)
VARIANTS = {
    "maml": Variant(registered("maml"), {**SIN, "inner_steps": 1}, {**OMNI, "inner_steps": 1}),
    "reptile": Variant(Reptile, {**SIN, "inner_steps": 5, "inner_data": "all"},
                       {**OMNI, "inner_lr": 0.1, "inner_steps": 5, "inner_data": "all"}),
    "imaml": Variant(IMAML, SIN, {**OMNI, "inner_lr": 0.1, "inner_steps": 5, "eval_inner_steps": 5}),
    "protomaml": Variant(ProtoMAML, None, {**OMNI, "inner_lr": 0.1, "inner_steps": 1}),
    "metasgd": Variant(registered("metasgd"), {**SIN, "inner_steps": 1}, {**OMNI, "inner_steps": 1},
                       sinusoid_eval_steps=1),
    "lslr": Variant(registered("lslr"), {**SIN, "inner_steps": 1}, {**OMNI, "inner_steps": 1}),
    "mamlpp": Variant(registered("mamlpp"), {**SIN, "inner_steps": 5}, {**OMNI, "inner_steps": 5, "eval_inner_steps": 5}),
    "anil": Variant(registered("anil"), {**SIN, "inner_steps": 1}, {**OMNI, "inner_steps": 1}),
}

TASKS = ("sinusoid", "omniglot")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--sinusoid-iterations", type=int, default=300)
    parser.add_argument("--omniglot-cpu-s", type=float, default=30.0,
                        help="CPU seconds of Omniglot training per variant")
    parser.add_argument("--eval-tasks", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1, help="rows run side by side (CPU ms/it stays per process)")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "omniglot"))
    parser.add_argument("--out", type=Path, help="also write the markdown table here (and a .json beside it)")
    parser.add_argument("--keep-rows", type=Path, help="a previous run's .json: its rows of variants not rerun "
                        "here stay in the table (and the header says so)")
    parser.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override the rerun variants' options (as `mamlkit train --algo-options`), e.g. lam=10.0")
    parser.add_argument("--only", help="worker mode: run this variant on --tasks[0] and print a JSON line")
    return parser.parse_args()


# -- training, shared by both tasks ------------------------------------------------------------
def train(algorithm, batches, keep_going) -> dict:
    """Meta-train while ``keep_going(iterations, cpu_seconds)``; speed and peak memory."""
    optimizer = torch.optim.Adam(algorithm.parameters(), lr=1e-3)
    scheduler = algorithm.lr_scheduler(optimizer)
    harness.reset_peak_rss()
    rss_before, cpu_start = harness.rss_mb(), harness.cpu_seconds()[1]
    walls, losses = [], []
    while keep_going(len(walls), harness.cpu_seconds()[1] - cpu_start):
        batch = next(batches)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        losses.append(algorithm.meta_backward(*batch[:4]).item())
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        walls.append(time.perf_counter() - start)
    cpu = harness.cpu_seconds()[1] - cpu_start
    return {"iterations": len(walls), "cpu_ms_per_it": 1000 * cpu / max(len(walls), 1),
            "wall_ms_median": 1000 * statistics.median(walls) if walls else None,
            "peak_mb": harness.rss_mb("VmHWM") - rss_before, "final_train_loss": losses[-1] if losses else None}


def run_sinusoid(variant: Variant, args) -> dict:
    from mamlkit.experiments.sinusoid import EVAL_SEED, SinusoidConfig
    from mamlkit.models.mlp import mlp
    from mamlkit.stats import mean_and_ci95
    from mamlkit.tasks.sinusoid import SinusoidTasks
    from mamlkit.tasks.stream import task_stream

    config = SinusoidConfig()
    torch.manual_seed(config.seed)
    algorithm = variant.factory(mlp((1, *config.hidden, 1)), F.mse_loss, **variant.sinusoid)
    tasks = SinusoidTasks()
    batches = task_stream(partial(tasks.sample, config.meta_batch, config.support, config.query), config.seed)
    result = train(algorithm, batches, lambda done, cpu: done < args.sinusoid_iterations)
    for shots in (5, 10):
        generator = torch.Generator().manual_seed(EVAL_SEED + shots)
        batch = tasks.sample(args.eval_tasks, shots, config.eval_points, generator)
        curves = algorithm.evaluate(*batch[:4], steps=variant.sinusoid_eval_steps, chunk_size=200)["loss"]
        mean, ci = mean_and_ci95(curves)
        result[f"K={shots}"] = {"mse": mean.tolist(), "ci95": ci.tolist()}
    return result


def run_omniglot(variant: Variant, args) -> dict:
    from mamlkit.experiments.fewshot import (TEST_SEED, FewShotConfig, accuracy, build_model, fixed_tasks,
                                             load_samplers, loss_function)
    from mamlkit.stats import mean_and_ci95
    from mamlkit.tasks.stream import task_stream

    config = FewShotConfig(data=args.data, ways=5, shots=1, threads=args.threads)
    samplers = load_samplers(config)
    algorithm = variant.factory(build_model(config), loss_function(config), **variant.omniglot)
    batches = task_stream(partial(samplers["train"].sample, config.meta_batch), config.seed)
    result = train(algorithm, batches, lambda done, cpu: cpu < args.omniglot_cpu_s)
    curves = algorithm.evaluate(*fixed_tasks(samplers["test"], args.eval_tasks, TEST_SEED),
                                metrics={"accuracy": accuracy}, chunk_size=config.eval_chunk)["accuracy"]
    mean, ci = mean_and_ci95(curves * 100)
    return {**result, "accuracy": mean.tolist(), "ci95": ci.tolist()}


def worker(args) -> None:
    torch.set_num_threads(args.threads)
    task, variant, options = args.tasks[0], VARIANTS[args.only], parse_options(args.options)
    variant = replace(variant, **{task: {**getattr(variant, task), **options}})
    print(json.dumps({"sinusoid": run_sinusoid, "omniglot": run_omniglot}[task](variant, args)))


# -- the table ---------------------------------------------------------------------------------
def mse_cell(row: dict, shots: int, steps: int, evaluated_steps: int) -> str:
    if steps > evaluated_steps:
        return f"n/a (rates learned for {evaluated_steps} step{'s' * (evaluated_steps > 1)})"
    if row.get("status") != "ok":
        return row.get("status", "—")
    values = row[f"K={shots}"]
    return f"{values['mse'][steps]:.3f} ± {values['ci95'][steps]:.3f}"


def speed_cell(row: dict, spec: str) -> str:
    return f"{harness.fmt(row.get('cpu_ms_per_it'), spec)} ({harness.fmt(row.get('wall_ms_median'), spec)})"


def table(rows: dict) -> str:
    lines = ["| variant | sin K=5, 1 step | sin K=5, 10 steps | sin K=10, 1 step | sin K=10, 10 steps | sin ms/it "
             "(wall) | sin peak MB | Omniglot 5w1s acc % (steps) | Omniglot iterations | Omniglot ms/it (wall) "
             "| Omniglot peak MB |", "|---|" + "---|" * 10]
    for name, by_task in rows.items():
        sin, omni = by_task.get("sinusoid", {}), by_task.get("omniglot", {})
        cells = [mse_cell(sin, k, s, VARIANTS[name].sinusoid_eval_steps) if sin else "—" for k in (5, 10)
                 for s in (1, 10)]
        cells.append(speed_cell(sin, ".1f"))
        cells.append(harness.fmt(sin.get("peak_mb"), ".0f"))
        if omni.get("status") == "ok":
            cells.append(f"{omni['accuracy'][-1]:.1f} ± {omni['ci95'][-1]:.1f} ({len(omni['accuracy']) - 1})")
        else:
            cells.append(omni.get("status", "—"))
        cells.append(str(omni.get("iterations", "—")))
        cells.append(speed_cell(omni, ".0f"))
        cells.append(harness.fmt(omni.get("peak_mb"), ".0f"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def with_kept_rows(rows: dict, previous: Path) -> tuple[dict, str]:
    """``rows`` completed by a previous run's .json: each (variant, task) not rerun keeps its old cells
    and the time it was measured (a row without one, that of the previous run); the header says which."""
    kept = json.loads(previous.read_text())
    when = (kept.get("header") or previous.with_suffix(".md").read_text().splitlines()[0]).split(",")[0]
    merged, old = {}, {}
    for name in [name for name in VARIANTS if name in kept["rows"] or name in rows]:
        new, before = rows.get(name, {}), kept["rows"].get(name, {})
        for task in before.keys() - new.keys():
            before[task].setdefault("measured", when)
            old.setdefault(before[task]["measured"], []).append(f"{name} {task}")
        merged[name] = {**before, **new}
    return merged, "".join(f"; kept from {time}: {', '.join(names)}" for time, names in sorted(old.items()))


def run_variant_task(name: str, task: str, args) -> dict:
    cmd = [__file__, "--only", name, "--tasks", task, "--sinusoid-iterations", str(args.sinusoid_iterations),
           "--omniglot-cpu-s", str(args.omniglot_cpu_s), "--eval-tasks", str(args.eval_tasks),
           "--threads", str(args.threads), "--data", args.data, *(["--options", *args.options] if args.options else [])]
    row = harness.run_row({}, cmd)
    print(f"{name} {task}: {row.get('status')}", file=sys.stderr, flush=True)
    return {**row, "measured": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"}


def main(args) -> None:
    start_cpu, start = harness.cpu_seconds()[0], time.perf_counter()
    jobs = [(name, task) for name in args.variants for task in args.tasks if getattr(VARIANTS[name], task) is not None]
    with ThreadPoolExecutor(args.jobs) as pool:  # each row is its own process
        results = list(pool.map(lambda job: run_variant_task(*job, args), jobs))
    rows = {name: {} for name in args.variants}
    for (name, task), row in zip(jobs, results):
        rows[name][task] = row
    machine_load = (harness.cpu_seconds()[0] - start_cpu) / (time.perf_counter() - start) / (os.cpu_count() or 1)
    header = (f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
              f"{cpu_name()}, {os.cpu_count()} cores, {args.threads} thread(s); "
              f"sinusoid {args.sinusoid_iterations} iterations, Omniglot {args.omniglot_cpu_s:g} CPU s per variant, "
              f"{args.eval_tasks} evaluation tasks; machine busy {100 * machine_load:.0f}% on average")
    if args.jobs > 1:
        header += f"; {args.jobs} rows at a time"
    if args.options:
        header += f"; options {' '.join(args.options)}"
    if args.keep_rows:
        rows, kept_note = with_kept_rows(rows, args.keep_rows)
        header += kept_note
    report = header + "\n\n" + table(rows)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report + "\n")
        args.out.with_suffix(".json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                             "header": header, "rows": rows}, indent=1))


if __name__ == "__main__":
    arguments = parse_args()
    worker(arguments) if arguments.only else main(arguments)
