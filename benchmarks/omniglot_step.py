"""One MAML meta-iteration on Omniglot 5-way 1-shot: mamlkit (vmap, loop) vs learn2learn, and the data pipeline.

Workload: the `omniglot-5w1s` preset (Finn et al. 2017, §5.2): the paper's 4-block conv net (64 filters,
stride 2, transductive BatchNorm, 28x28 input) from ``fewshot.build_model``, 32 tasks of 5-way 1-shot with
1 query per class, real Omniglot episodes (paper split, random rotations, ``fewshot.load_samplers``), one
inner SGD step α=0.4 on cross-entropy × 5 (the official loss scaling). One meta-iteration = zero_grad +
meta-gradient of the mean query loss + Adam(1e-3) step, in second and first order, with
torch.set_num_threads(1) and (2). learn2learn: ``l2l.algorithms.MAML(model, lr=0.4, first_order=...)``,
per task ``learner = maml.clone(); learner.adapt(support_loss)``, query losses averaged, same model class,
initial weights and loss.

Every (method, order, threads) runs in a fresh subprocess of the same interpreter, which reports:
  * ms/iter: median (and min) over --repeats timed blocks of --iters iterations in all, after a warm-up,
    cycling over the same pre-sampled batches (data loading is measured separately, below);
  * max rel grad err: max|g - g_ref| / max|g_ref| over all parameters for the meta-gradient of the first
    batch at the initial weights, g_ref = a plain autograd loop over tasks in float64; also for the same
    method run in float64, which separates a wrong gradient from float32 rounding;
  * peak MB: peak RSS (VmHWM, reset just before the method's first call) minus RSS at that moment.

Data pipeline rows (mamlkit vmap, second order, fresh batches from ``task_stream`` with workers 0 and 2):
mean time blocked in ``next(stream)`` per iteration, its share of the end-to-end time (target < 5%), and
the end-to-end iteration over the pre-sampled ``mamlkit vmap`` row (worker processes share the CPUs).

learn2learn is optional (shown as "not installed"); mamlkit is taken from <repo>/src.

    /work/peers-venv/bin/python benchmarks/omniglot_step.py            # full run (~6 min), writes results
    python benchmarks/omniglot_step.py --quick                          # smoke test, report in $TMPDIR
"""

import argparse
import copy
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import harness  # noqa: E402  (benchmarks/harness.py, beside this file)
import torch  # noqa: E402
from torch.func import functional_call  # noqa: E402


from mamlkit.errors import MamlkitError  # noqa: E402
from mamlkit.experiments import fewshot  # noqa: E402
from mamlkit.presets import get_preset  # noqa: E402
from mamlkit.tasks.stream import batch_generator, task_stream  # noqa: E402
from mamlkit.timed_choice import cpu_name  # noqa: E402

PRESET, SEED, N_BATCHES = "omniglot-5w1s", 0, 8
METHODS = ("mamlkit vmap", "mamlkit loop", "learn2learn")
OPTIONAL = ("learn2learn",)  # method name = module name
PIPELINE_WORKERS = (0, 2)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", help="torch.set_num_threads values (default 1 2)")
    parser.add_argument("--orders", nargs="+", choices=["second", "first"], default=["second", "first"])
    parser.add_argument("--iters", type=int, help="timed meta-iterations per row (default 25)")
    parser.add_argument("--repeats", type=int, help="timed blocks the iterations are split into (default 5)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "omniglot",
                        help="Omniglot folder")
    parser.add_argument("--out", type=Path, help="markdown report (a .json with the raw numbers goes next to it; "
                        "default benchmarks/results/omniglot_step.md, with --quick $TMPDIR/omniglot_step_quick.md)")
    parser.add_argument("--quick", action="store_true", help="smoke test: threads 1, a few iterations per row")
    parser.add_argument("--only", help="worker mode: run this method (or 'pipeline') and print a JSON line")
    parser.add_argument("--order", choices=["second", "first"], default="second", help="worker mode")
    parser.add_argument("--workers", type=int, default=0, help="worker mode, pipeline: task_stream workers")
    args = parser.parse_args()
    quick = args.quick
    args.threads = args.threads or ([1] if quick else [1, 2])
    args.iters = args.iters or (2 if quick else 25)
    args.repeats = args.repeats or (2 if quick else 5)
    args.warmup, args.max_block_s = (1, 2.0) if quick else (3, 4.0)
    args.out = args.out or (Path(tempfile.gettempdir()) / "omniglot_step_quick.md" if quick
                            else REPO / "benchmarks" / "results" / "omniglot_step.md")
    return args


# -- workload --------------------------------------------------------------------------------------
def config_for(args, first_order=False, batching="auto"):
    return dataclasses.replace(get_preset(PRESET).config, data=str(args.data), first_order=first_order,
                               batching=batching, seed=SEED)


def sample_batches(sampler, config, n):
    """Batches 0..n-1 of the training stream, exactly as task_stream(seed=SEED) yields them."""
    return [sampler.sample(config.meta_batch, batch_generator(SEED, i)) for i in range(n)]


# -- methods: build(config, model) -> meta_grad(sx, sy, qx, qy), accumulating into .grad -------------
def mamlkit(batching):
    def build(config, model):
        return fewshot.make_maml(dataclasses.replace(config, batching=batching), model).meta_backward
    return build


def learn2learn(config, model):
    import learn2learn as l2l
    maml = l2l.algorithms.MAML(model, lr=config.inner_lr, first_order=config.first_order)
    loss_fn = fewshot.loss_function(config)

    def meta_grad(sx, sy, qx, qy):
        total = 0.0
        for t in range(len(sx)):
            learner = maml.clone()
            learner.adapt(loss_fn(learner(sx[t]), sy[t]))
            total = total + loss_fn(learner(qx[t]), qy[t])
        (total / len(sx)).backward()
    return meta_grad


BUILDERS = {"mamlkit vmap": mamlkit("vmap"), "mamlkit loop": mamlkit("loop"), "learn2learn": learn2learn}


def reference_gradient(config, model, batch) -> dict[str, torch.Tensor]:
    """The meta-gradient from a plain float64 loop: torch.autograd.grad + functional_call per task."""
    loss_fn = fewshot.loss_function(config)
    params = {name: p.detach().double().requires_grad_() for name, p in model.named_parameters()}
    sx, sy, qx, qy = batch
    sx, qx = sx.double(), qx.double()
    query_losses = []
    for t in range(len(sx)):
        support_loss = loss_fn(functional_call(model, params, (sx[t],)), sy[t])
        grads = torch.autograd.grad(support_loss, list(params.values()), create_graph=not config.first_order)
        adapted = {name: p - config.inner_lr * g for (name, p), g in zip(params.items(), grads)}
        query_losses.append(loss_fn(functional_call(model, adapted, (qx[t],)), qy[t]))
    return dict(zip(params, torch.autograd.grad(torch.stack(query_losses).mean(), list(params.values()))))


def relative_error(model, reference) -> float:
    diff = max((p.grad.double() - reference[name]).abs().max().item() for name, p in model.named_parameters())
    return diff / max(g.abs().max().item() for g in reference.values())


# -- worker: one row in this process ---------------------------------------------------------------
def timed_blocks(step, args) -> tuple[list[float], int, float, float]:
    """ms/iter of --repeats blocks (each cut short after max_block_s), iterations timed, their seconds in
    all, and other cores busy."""
    def block(n):
        done, start = 0, time.perf_counter()
        while done < n and time.perf_counter() - start < args.max_block_s:
            step()
            done += 1
        return (time.perf_counter() - start) / done * 1e3, done

    block(args.warmup)
    (machine_before, own_before), start = harness.cpu_seconds(), time.perf_counter()
    blocks = [block(max(1, args.iters // args.repeats)) for _ in range(args.repeats)]
    (machine_after, own_after), wall = harness.cpu_seconds(), time.perf_counter() - start
    other = max(0.0, (machine_after - machine_before) - (own_after - own_before)) / wall
    seconds = sum(ms * done for ms, done in blocks) / 1e3
    return [ms for ms, _ in blocks], sum(done for _, done in blocks), seconds, other


def run_method(args, method, first_order) -> dict:
    config = config_for(args, first_order)
    batches = sample_batches(fewshot.load_samplers(config)["train"], config, N_BATCHES)
    model = fewshot.build_model(config)
    meta_grad = BUILDERS[method](config, model)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.meta_lr)

    hwm_reset, rss_before = harness.reset_peak_rss(), harness.rss_mb()
    start = time.perf_counter()
    meta_grad(*batches[0])
    first_call_s = time.perf_counter() - start
    peak = harness.rss_mb("VmHWM") if hwm_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    reference = reference_gradient(config, model, batches[0])
    grad_err = relative_error(model, reference)
    model64 = copy.deepcopy(model).double()  # the same method in float64: rounding out of the way
    model64.zero_grad(set_to_none=True)
    BUILDERS[method](config, model64)(*(t.double() if t.is_floating_point() else t for t in batches[0]))
    grad_err64 = relative_error(model64, reference)

    iteration = iter(range(10**9))

    def step():
        optimizer.zero_grad()
        meta_grad(*batches[next(iteration) % N_BATCHES])
        optimizer.step()

    ms, timed, _, other = timed_blocks(step, args)
    return {"ms": statistics.median(ms), "ms_min": min(ms), "ms_blocks": ms, "iters_timed": timed,
            "grad_err": grad_err, "grad_err64": grad_err64, "peak_mb": peak - rss_before,
            "first_call_s": first_call_s, "load1": os.getloadavg()[0], "other_cores": other}


def run_pipeline(args, workers) -> dict:
    """mamlkit vmap (second order) on fresh batches from task_stream; times the wait in next(stream)."""
    config = config_for(args, batching="vmap")
    sampler = fewshot.load_samplers(config)["train"]
    model = fewshot.build_model(config)
    maml = fewshot.make_maml(config, model)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.meta_lr)
    stream = task_stream(partial(sampler.sample, config.meta_batch), SEED, workers=workers)
    next(stream)  # worker start-up, untimed
    waits = []

    def step():
        start = time.perf_counter()
        batch = next(stream)
        waits.append(time.perf_counter() - start)
        optimizer.zero_grad()
        maml.meta_backward(*batch)
        optimizer.step()

    ms, timed, seconds, other = timed_blocks(step, args)
    waited = sum(waits[-timed:])  # the iterations of the timed blocks
    return {"wait_ms": waited / timed * 1e3, "ms": statistics.median(ms), "share": waited / seconds,
            "iters_timed": timed, "load1": os.getloadavg()[0], "other_cores": other}


# -- driver: every row in a fresh subprocess, then the report ----------------------------------------
def run_row(args, row: dict, extra: list[str]) -> dict:
    if row.get("method") in OPTIONAL and importlib.util.find_spec(row["method"]) is None:
        return {**row, "status": "not installed"}
    cmd = [str(Path(__file__).resolve()), *extra, "--threads", str(row["threads"]),
           "--iters", str(args.iters), "--repeats", str(args.repeats), "--data", str(args.data)]
    return harness.run_row(row, cmd + (["--quick"] if args.quick else []))


def method_table(rows) -> str:
    lines = ["| method | order | threads | ms/iter median (min) | × vs learn2learn | max rel grad err "
             "f32 (f64) | peak MB (RSS) | 1st call s | other cores busy | load1 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    l2l_ms = {(r["order"], r["threads"]): r["ms"] for r in rows if r["method"] == "learn2learn" and r["status"] == "ok"}
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['method']} | {r['order']} | {r['threads']} | {r['status']} | | | | | | |")
            continue
        base = l2l_ms.get((r["order"], r["threads"]))
        lines.append(f"| {r['method']} | {r['order']} | {r['threads']} | {r['ms']:.1f} ({r['ms_min']:.1f}) "
                     f"| {harness.fmt(None if base is None else base / r['ms'], '.2f')} "
                     f"| {r['grad_err']:.1e} ({r['grad_err64']:.0e}) | {r['peak_mb']:.1f} | {r['first_call_s']:.2f} "
                     f"| {r['other_cores']:.2f} | {r['load1']:.2f} |")
    return "\n".join(lines)


def pipeline_table(rows, method_rows) -> str:
    lines = ["| threads | task_stream workers | wait for batch ms/iter (mean) | end-to-end ms/iter | data share "
             "| end-to-end ÷ pre-sampled vmap | other cores busy | load1 |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    vmap_ms = {r["threads"]: r["ms"] for r in method_rows
               if r["method"] == "mamlkit vmap" and r["order"] == "second" and r["status"] == "ok"}
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['threads']} | {r['workers']} | {r['status']} | | | | | |")
            continue
        ratio = r["ms"] / vmap_ms[r["threads"]] if r["threads"] in vmap_ms else None
        lines.append(f"| {r['threads']} | {r['workers']} | {r['wait_ms']:.2f} | {r['ms']:.1f} "
                     f"| {100 * r['share']:.1f}% {'✓' if r['share'] < 0.05 else '✗'} | {harness.fmt(ratio, '.2f')} "
                     f"| {r['other_cores']:.2f} | {r['load1']:.2f} |")
    return "\n".join(lines)


def main():
    args = parse_args()
    if args.only:
        torch.set_num_threads(args.threads[0])
        result = (run_pipeline(args, args.workers) if args.only == "pipeline"
                  else run_method(args, args.only, args.order == "first"))
        print(json.dumps(result))
        return

    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = os.getloadavg()
    try:  # fail early without data; decodes the PNGs once if they are not cached yet
        fewshot.load_samplers(config_for(args))
    except MamlkitError as error:
        sys.exit(f"omniglot_step: {error}")
    rows, pipeline = [], []
    for threads in args.threads:
        for order in args.orders:
            for method in METHODS:
                row = run_row(args, {"method": method, "order": order, "threads": threads},
                              ["--only", method, "--order", order])
                rows.append(row)
                print(f"{method:13s} {order:6s} threads={threads}: " + (
                    f"{row['ms']:.1f} ms/iter, max rel grad err {row['grad_err']:.1e} (float64 {row['grad_err64']:.0e})"
                    if row["status"] == "ok" else row["status"]), file=sys.stderr, flush=True)
        for workers in PIPELINE_WORKERS:
            row = run_row(args, {"threads": threads, "workers": workers},
                          ["--only", "pipeline", "--workers", str(workers)])
            pipeline.append(row)
            print(f"data pipeline workers={workers} threads={threads}: " + (
                f"{row['wait_ms']:.2f} ms/iter waiting for batches, {100 * row['share']:.1f}% of {row['ms']:.1f} ms"
                if row["status"] == "ok" else row["status"]), file=sys.stderr, flush=True)
    load_end = os.getloadavg()
    elapsed = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()

    tables = f"{method_table(rows)}\n\nData pipeline (mamlkit vmap, second order, real Omniglot batches):\n\n" \
             f"{pipeline_table(pipeline, rows)}"
    command = " ".join([sys.executable, "benchmarks/omniglot_step.py", *sys.argv[1:]])
    loads = [", ".join(f"{x:.2f}" for x in load) for load in (load_start, load_end)]
    report = f"""# Omniglot 5-way 1-shot MAML meta-iteration: mamlkit vs learn2learn, and the data pipeline

- command: `{command}`{' (smoke test, not a measurement)' if args.quick else ''}
- date: {started:%Y-%m-%d %H:%M} UTC, {elapsed:.0f} s in all
- torch {torch.__version__}, learn2learn {harness.version('learn2learn')}, Python {platform.python_version()}, \
{os.cpu_count()} CPUs ({cpu_name()})
- load average (1, 5, 15 min): {loads[0]} at start, {loads[1]} at end; load1 column: after each row
- other cores busy: CPU time used by other processes during the row's timed blocks (/proc/stat minus this \
process) per wall second; rows with threads = CPUs and other cores busy > ~0.1 are unreliable
- workload: preset {PRESET}: conv 4×64 stride 2 + transductive BatchNorm, 32 tasks, 5-way 1-shot, 1 query per \
class, one inner step α=0.4 on cross-entropy × 5, Adam(1e-3); iteration = zero_grad + meta-gradient + Adam step
- ms/iter: median (and min) of {args.repeats} blocks of {max(1, args.iters // args.repeats)} iterations after \
{args.warmup} warm-up iterations on {N_BATCHES} pre-sampled batches; a block stops early after {args.max_block_s} s; \
× vs learn2learn compares medians at the same order and thread count
- max rel grad err: max|g − g_ref| / max|g_ref| on the first batch at the initial weights, g_ref = plain \
autograd loop in float64 (same order); in brackets the same method run in float64, which tells a wrong \
gradient (≫ 1e-12) from float32 rounding: at these weights some ReLU inputs after the inner step lie within \
1e-6 of 0, and perturbing the weights by float32 rounding moves g_ref itself by up to ~1e-3
- peak MB: peak RSS (VmHWM, reset just before the first call) − RSS at that moment, in a fresh process per row
- data pipeline: fresh batches from task_stream (EpisodeSampler from load_samplers, real Omniglot); wait = mean \
time blocked in next(stream) per iteration of the timed blocks; data share = total wait / total time of the timed \
blocks (target < 5%); other cores busy includes the row's own task_stream worker processes

{tables}
"""
    print(tables)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"command": command, "date": started.isoformat(), "torch": torch.__version__,
         "learn2learn": harness.version("learn2learn"), "load_start": load_start, "load_end": load_end,
         "rows": rows, "pipeline": pipeline}, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
