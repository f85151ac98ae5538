"""Peak memory and time against the number of inner steps, with and without inner-loop checkpointing.

Workloads (random images: memory and time do not depend on the pixel values; cross-entropy, second
order, `inner_steps` = 1..20, --tasks tasks per meta-batch):
  * omniglot-5w1s: the paper's 4-block conv net (64 filters, stride 2, transductive BatchNorm, 28x28),
    5-way 1-shot, 1 query per class, α = 0.4;
  * omniglot-5w5s: the same with 5 shots and 5 queries per class (5x the activations per step);
  * miniimagenet-5w1s: the paper's 32-filter conv net on 84x84x3, 5-way 1-shot, 15 queries per class,
    α = 0.01 (slow on a CPU: not run by default).
`MAML(checkpoint_inner=True)` recomputes each inner step in the backward pass instead of storing its
graph, and its `meta_backward` back-propagates task by task (it runs the task loop anyway, since
torch.utils.checkpoint does not compose with vmap in torch 2.13). Baselines: the task loop without
checkpointing (same per-step arithmetic) and, for context, vmap (the default path).

Every row runs in a fresh subprocess of this interpreter (benchmarks/harness.py) with
MALLOC_MMAP_THRESHOLD_=65536, so freed tensors go back to the OS and RSS follows tensor memory, and
reports, after one warm-up meta-iteration (lazy imports and allocator caches):
  * peak MB: peak RSS (VmHWM, reset just before the measured meta-iteration) minus the RSS at that
    moment, i.e. what one meta-iteration adds on top of the loaded model and data;
  * ms/iter: median wall time over --repeats meta-iterations (zero_grad + meta_backward + Adam step)
    after that first one; CPU ms/step: median CPU time of this process per meta-iteration, divided by
    the inner steps (with 1 thread this is the work done, and far less disturbed than wall time when
    other processes share the machine; the time ratios use it);
  * grad sum: Σ|meta-gradient| of the first meta-iteration (identical with and without checkpointing);
  * load: the share of the machine's CPUs busy during the row (this process included).
Memory ratios: against the task loop's 1-step row without checkpointing (the target's baseline) and
against the row's own configuration at 1 step (the growth with the number of steps).

    python benchmarks/inner_checkpointing.py                 # full table, writes benchmarks/results/
    python benchmarks/inner_checkpointing.py --quick         # smoke test (steps 1 and 3, 2 tasks), no files
"""

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import harness  # noqa: E402  (benchmarks/harness.py, beside this file)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mamlkit import MAML  # noqa: E402
from mamlkit.models.conv import omniglot_conv  # noqa: E402

from mamlkit.models.conv import miniimagenet_conv  # noqa: E402

# name -> (model factory, shots, queries per class, image shape, α); all 5-way
WORKLOADS = {
    "omniglot-5w1s": (lambda: omniglot_conv(5), 1, 1, (1, 28, 28), 0.4),
    "omniglot-5w5s": (lambda: omniglot_conv(5), 5, 5, (1, 28, 28), 0.4),
    "miniimagenet-5w1s": (lambda: miniimagenet_conv(5), 1, 15, (3, 84, 84), 0.01),
}
WAYS = 5


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["omniglot-5w1s", "omniglot-5w5s"], choices=list(WORKLOADS))
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--vmap-steps", type=int, nargs="*", default=[1, 5], help="context rows on the vmap path")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--table-only", action="store_true", help="rewrite the table from the saved JSON")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "inner_checkpointing")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # internal: "workload,steps,checkpoint,batching"
    return parser.parse_args()


def batch(tasks: int, shots: int, queries: int, image: tuple[int, ...]):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(WAYS).repeat_interleave(shots).expand(tasks, -1)
    query_labels = torch.arange(WAYS).repeat_interleave(queries).expand(tasks, -1)
    return (torch.rand(tasks, WAYS * shots, *image, generator=g), labels.contiguous(),
            torch.rand(tasks, WAYS * queries, *image, generator=g), query_labels.contiguous())


def run_row(args, workload: str, steps: int, checkpoint: bool, batching: str) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    make_model, shots, queries, image, inner_lr = WORKLOADS[workload]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # checkpoint_inner's warning that tasks run in a loop: known here
        maml = MAML(make_model(), F.cross_entropy, inner_lr=inner_lr, inner_steps=steps, batching=batching,
                    checkpoint_inner=checkpoint)
    optimizer = torch.optim.Adam(maml.parameters(), lr=1e-3)
    tasks = batch(args.tasks, shots, queries, image)
    maml.meta_backward(*tasks)  # warm-up

    def iteration():
        optimizer.zero_grad(set_to_none=True)
        maml.meta_backward(*tasks)
        optimizer.step()

    machine_start, own_start, wall_start = *harness.cpu_seconds(), time.perf_counter()
    hwm_reset, rss_before = harness.reset_peak_rss(), harness.rss_mb()
    optimizer.zero_grad(set_to_none=True)
    maml.meta_backward(*tasks)
    peak = harness.rss_mb("VmHWM")
    grad_sum = sum(p.grad.abs().sum().item() for p in maml.parameters() if p.grad is not None)
    optimizer.step()
    times, cpu_times = [], []
    for _ in range(args.repeats):
        start, cpu_start = time.perf_counter(), harness.cpu_seconds()[1]
        iteration()
        times.append(time.perf_counter() - start)
        cpu_times.append(harness.cpu_seconds()[1] - cpu_start)
    machine_end = harness.cpu_seconds()[0]
    load = (machine_end - machine_start) / ((time.perf_counter() - wall_start) * os.cpu_count())
    ms, cpu_ms = 1000 * statistics.median(times), 1000 * statistics.median(cpu_times)
    return {"peak_mb": peak - rss_before if hwm_reset else None, "vmhwm_mb": peak, "ms_iter": ms,
            "cpu_ms_iter": cpu_ms, "cpu_ms_step": cpu_ms / steps, "grad_sum": grad_sum, "load": load}


def table(rows: list[dict]) -> str:
    by_key = {(r["workload"], r["batching"], r["checkpoint"], r["steps"]): r for r in rows}
    lines = ["| workload | path | checkpoint | inner steps | peak MB | × 1-step loop peak | × own 1-step peak | "
             "ms/iter | CPU ms/step | CPU ms/step ÷ same-steps loop | grad sum | load |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        head = f"| {r['workload']} | {r['batching']} | {'on' if r['checkpoint'] else 'off'} | {r['steps']} |"
        if r["status"] != "ok":
            lines.append(f"{head} {r['status']} |")
            continue
        fewest = min(x["steps"] for x in rows)
        plain_one = by_key.get((r["workload"], "loop", False, fewest))
        own_one = by_key.get((r["workload"], r["batching"], r["checkpoint"], fewest))
        plain = by_key.get((r["workload"], "loop", False, r["steps"]))
        mem_ratio = r["peak_mb"] / plain_one["peak_mb"] if plain_one and plain_one.get("peak_mb") else None
        own_ratio = r["peak_mb"] / own_one["peak_mb"] if own_one and own_one.get("peak_mb") else None
        time_ratio = r["cpu_ms_step"] / plain["cpu_ms_step"] if plain and plain["status"] == "ok" else None
        lines.append(f"{head} {harness.fmt(r['peak_mb'], '.0f')} | {harness.fmt(mem_ratio, '.2f')} | "
                     f"{harness.fmt(own_ratio, '.2f')} | "
                     f"{r['ms_iter']:.0f} | {r['cpu_ms_step']:.0f} | {harness.fmt(time_ratio, '.2f')} | {r['grad_sum']:.6g} | "
                     f"{100 * r['load']:.0f}% |")
    return "\n".join(lines)


def main():
    args = parse_args()
    if args.row:
        workload, steps, checkpoint, batching = args.row.split(",")
        print(json.dumps(run_row(args, workload, int(steps), checkpoint == "1", batching)))
        return
    if args.table_only:
        saved = json.loads(args.out.with_suffix(".json").read_text())
        args.out.with_suffix(".md").write_text(saved["header"] + "\n\n" + table(saved["rows"]) + "\n")
        print(args.out.with_suffix(".md").read_text())
        return
    if args.quick:
        args.workloads, args.steps, args.vmap_steps, args.tasks, args.repeats = ["omniglot-5w1s"], [1, 3], [1], 2, 1
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # rows inherit it: freed tensors leave the RSS
    plan = [(w, s, c, "loop") for w in args.workloads for s in args.steps for c in (False, True)]
    plan += [(w, s, False, "vmap") for w in args.workloads for s in args.vmap_steps]
    rows = []
    for workload, steps, checkpoint, batching in plan:
        row = {"workload": workload, "steps": steps, "checkpoint": checkpoint, "batching": batching}
        cmd = [__file__, "--row", f"{workload},{steps},{int(checkpoint)},{batching}", "--tasks", str(args.tasks),
               "--repeats", str(args.repeats), "--threads", str(args.threads)]
        rows.append(harness.run_row(row, cmd))
        print(rows[-1], flush=True)
    report = table(rows)
    header = (f"{', '.join(args.workloads)}; {args.tasks} tasks, second order, {args.threads} thread(s), "
              f"torch {torch.__version__}, {os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(header + "\n\n" + report)
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(header + "\n\n" + report + "\n")
        args.out.with_suffix(".json").write_text(json.dumps({"config": vars(args) | {"out": str(args.out)},
                                                             "header": header, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
