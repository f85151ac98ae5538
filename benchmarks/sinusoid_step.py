"""One MAML meta-iteration on the sinusoid benchmark: mamlkit vs a plain loop, learn2learn and higher.

Workload (Finn et al. 2017, sinusoid regression): MLP 1-40-40-1 ReLU, 25 tasks, K=10 support and
10 query points per task, x ~ U[-5, 5], y = A sin(x - φ), A ~ U[0.1, 5], φ ~ U[0, π], one inner
SGD step α=0.01, MSE. One meta-iteration = zero_grad + meta-gradient of the mean query loss +
Adam(1e-3) step, timed in second and first order with torch.set_num_threads(1) and (2).

Every (method, order, threads) runs in a fresh subprocess of the same interpreter, which reports:
  * ms/iter: median (and min) over --repeats timed blocks (time.perf_counter) of --iters iterations
    in all, after a warm-up (torch.compile compiles on the first call, outside the timing);
  * max rel grad err: max|g - g_ref| / max|g_ref| over all parameters for the meta-gradient of
    the first batch at the initial weights, g_ref = the plain loop in float64;
  * peak MB: peak RSS (ru_maxrss) minus RSS just before the method's first call, so it includes
    lazy library initialisation and, for the compiled method, compilation.

learn2learn and higher are optional (shown as "not installed"); mamlkit is taken from <repo>/src.

    /work/peers-venv/bin/python benchmarks/sinusoid_step.py            # full run, writes results
    python benchmarks/sinusoid_step.py --threads 1 --iters 50 --out /tmp/sinusoid_step.md
"""

import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import harness  # noqa: E402  (benchmarks/harness.py, beside this file)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.func import functional_call  # noqa: E402

from mamlkit import MAML  # noqa: E402
from mamlkit.timed_choice import cpu_name  # noqa: E402

TASKS, SHOTS, INNER_LR, META_LR = 25, 10, 0.01, 1e-3
N_BATCHES, WARMUP, MAX_BLOCK_S = 10, 10, 1.0


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch.set_num_threads values")
    parser.add_argument("--iters", type=int, default=100, help="timed meta-iterations per configuration")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks the iterations are split into")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "sinusoid_step.md",
                        help="markdown report (a .json with the raw numbers is written next to it)")
    parser.add_argument("--only", help="worker mode: run this one method and print a JSON line")
    parser.add_argument("--order", choices=["second", "first"], default="second", help="worker mode")
    return parser.parse_args()


# -- workload ------------------------------------------------------------------------------------
def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))


def sample_batches(n: int) -> list[tuple[torch.Tensor, ...]]:
    """n meta-batches (support_x, support_y, query_x, query_y), each tensor [TASKS, SHOTS, 1]."""
    gen = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(n):
        amplitude = torch.empty(TASKS, 1, 1).uniform_(0.1, 5.0, generator=gen)
        phase = torch.empty(TASKS, 1, 1).uniform_(0.0, math.pi, generator=gen)
        x = torch.empty(TASKS, 2 * SHOTS, 1).uniform_(-5.0, 5.0, generator=gen)
        y = amplitude * torch.sin(x - phase)
        batches.append(tuple(t.contiguous() for t in (x[:, :SHOTS], y[:, :SHOTS], x[:, SHOTS:], y[:, SHOTS:])))
    return batches


# -- methods: build(model, first_order) -> meta_grad(sx, sy, qx, qy), accumulating into .grad -------
def mamlkit(**options):
    def build(model, first_order):
        return MAML(model, F.mse_loss, inner_lr=INNER_LR, inner_steps=1, first_order=first_order,
                    **options).meta_backward
    return build


def plain_meta_loss(model, params, sx, sy, qx, qy, first_order):
    """The reference: a Python loop over tasks with torch.autograd.grad and functional_call."""
    query_losses = []
    for t in range(len(sx)):
        support_loss = F.mse_loss(functional_call(model, params, (sx[t],)), sy[t])
        grads = torch.autograd.grad(support_loss, list(params.values()), create_graph=not first_order)
        adapted = {name: p - INNER_LR * g for (name, p), g in zip(params.items(), grads)}
        query_losses.append(F.mse_loss(functional_call(model, adapted, (qx[t],)), qy[t]))
    return torch.stack(query_losses).mean()


def plain_loop(model, first_order):
    params = dict(model.named_parameters())
    return lambda *batch: plain_meta_loss(model, params, *batch, first_order).backward()


def learn2learn(model, first_order):
    import learn2learn as l2l
    maml = l2l.algorithms.MAML(model, lr=INNER_LR, first_order=first_order)

    def meta_grad(sx, sy, qx, qy):
        total = 0.0
        for t in range(len(sx)):
            learner = maml.clone()
            learner.adapt(F.mse_loss(learner(sx[t]), sy[t]))
            total = total + F.mse_loss(learner(qx[t]), qy[t])
        (total / len(sx)).backward()
    return meta_grad


def higher_(model, first_order):
    import higher
    inner_opt = torch.optim.SGD(model.parameters(), lr=INNER_LR)

    def meta_grad(sx, sy, qx, qy):
        for t in range(len(sx)):
            with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False,
                                      track_higher_grads=not first_order) as (fmodel, diffopt):
                diffopt.step(F.mse_loss(fmodel(sx[t]), sy[t]))
                query_loss = F.mse_loss(fmodel(qx[t]), qy[t]) / len(sx)
                if not first_order:
                    query_loss.backward()
                    continue
                # track_higher_grads=False detaches the fast weights, so backward() would not reach θ:
                # first-order MAML applies the query gradient taken at the adapted weights to θ.
                for p, g in zip(model.parameters(), torch.autograd.grad(query_loss, list(fmodel.parameters()))):
                    p.grad = g if p.grad is None else p.grad + g
    return meta_grad


METHODS = {
    "mamlkit vmap": mamlkit(batching="vmap"),
    "mamlkit vmap compiled": mamlkit(batching="vmap", compile=True),
    "mamlkit loop": mamlkit(batching="loop"),
    "plain loop": plain_loop,
    "learn2learn": learn2learn,
    "higher": higher_,
}
OPTIONAL = ("learn2learn", "higher")  # method name = module name


# -- worker: one method, one order, one thread count ----------------------------------------------
def reference_gradient(model, batch, first_order) -> dict[str, torch.Tensor]:
    params = {name: p.detach().double().requires_grad_() for name, p in model.named_parameters()}
    loss = plain_meta_loss(model, params, *(t.double() for t in batch), first_order)
    return dict(zip(params, torch.autograd.grad(loss, list(params.values()))))


def run_worker(method: str, first_order: bool, threads: int, iters: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    model = make_model()
    batches = sample_batches(N_BATCHES)
    meta_grad = METHODS[method](model, first_order)
    optimizer = torch.optim.Adam(model.parameters(), lr=META_LR)

    rss_before = harness.rss_mb()
    start = time.perf_counter()
    meta_grad(*batches[0])
    first_call_s = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before

    reference = reference_gradient(model, batches[0], first_order)
    diff = max((p.grad.double() - reference[name]).abs().max().item() for name, p in model.named_parameters())
    grad_err = diff / max(g.abs().max().item() for g in reference.values())

    def step(i):
        optimizer.zero_grad()
        meta_grad(*batches[i % N_BATCHES])
        optimizer.step()

    def timed_block(n):
        """ms/iter over n iterations, cut short after MAX_BLOCK_S (a contended CPU can stall 100x)."""
        done, start = 0, time.perf_counter()
        while done < n and time.perf_counter() - start < MAX_BLOCK_S:
            step(done)
            done += 1
        return (time.perf_counter() - start) / done * 1e3, done

    timed_block(WARMUP)
    (machine_before, own_before), start = harness.cpu_seconds(), time.perf_counter()
    blocks = [timed_block(max(1, iters // repeats)) for _ in range(repeats)]
    (machine_after, own_after), wall = harness.cpu_seconds(), time.perf_counter() - start
    ms_per_iter = [ms for ms, _ in blocks]
    return {"ms": statistics.median(ms_per_iter), "ms_min": min(ms_per_iter), "ms_blocks": ms_per_iter,
            "iters_timed": sum(done for _, done in blocks), "grad_err": grad_err, "peak_mb": peak_mb,
            "first_call_s": first_call_s, "load1": os.getloadavg()[0],
            "other_cores": max(0.0, (machine_after - machine_before) - (own_after - own_before)) / wall}


# -- driver: every configuration in a fresh subprocess, then the report -----------------------------
def run_config(method, order, threads, args) -> dict:
    row = {"method": method, "order": order, "threads": threads}
    if method in OPTIONAL and importlib.util.find_spec(method) is None:
        return {**row, "status": "not installed"}
    cmd = [str(Path(__file__).resolve()), "--only", method, "--order", order,
           "--threads", str(threads), "--iters", str(args.iters), "--repeats", str(args.repeats)]
    return harness.run_row(row, cmd)


def markdown_table(rows) -> str:
    lines = ["| method | order | threads | ms/iter median (min) | × vs learn2learn | max rel grad err "
             "| peak MB (RSS) | 1st call s | other cores busy |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    l2l_ms = {(r["order"], r["threads"]): r["ms"] for r in rows
              if r["method"] == "learn2learn" and r["status"] == "ok"}
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['method']} | {r['order']} | {r['threads']} | {r['status']} | | | | | |")
            continue
        base = l2l_ms.get((r["order"], r["threads"]))
        speedup = None if base is None else base / r["ms"]
        contended = " ⚠" if r["other_cores"] > os.cpu_count() - r["threads"] + 0.1 else ""
        lines.append(f"| {r['method']} | {r['order']} | {r['threads']} "
                     f"| {r['ms']:.2f} ({r['ms_min']:.2f}){contended} | {harness.fmt(speedup, '.2f')} | {r['grad_err']:.1e} "
                     f"| {r['peak_mb']:.1f} | {r['first_call_s']:.2f} | {r['other_cores']:.2f} |")
    return "\n".join(lines)


def main():
    args = parse_args()
    if args.only:
        print(json.dumps(run_worker(args.only, args.order == "first", args.threads[0], args.iters, args.repeats)))
        return

    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = os.getloadavg()
    rows = []
    for threads in args.threads:
        for order in ("second", "first"):
            for method in METHODS:
                row = run_config(method, order, threads, args)
                rows.append(row)
                print(f"{method:22s} {order:6s} threads={threads}: "
                      f"{harness.fmt(row.get('ms'), '.2f') + ' ms/iter' if row['status'] == 'ok' else row['status']}",
                      file=sys.stderr, flush=True)
    load_end = os.getloadavg()
    elapsed = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()

    table = markdown_table(rows)
    command = " ".join([sys.executable, "benchmarks/sinusoid_step.py", *sys.argv[1:]])
    report = f"""# Sinusoid MAML meta-iteration: mamlkit vs plain loop, learn2learn, higher

- command: `{command}`
- date: {started:%Y-%m-%d %H:%M} UTC, {elapsed:.0f} s in all
- torch {torch.__version__}, learn2learn {harness.version('learn2learn')}, higher {harness.version('higher')}, \
Python {platform.python_version()}, {os.cpu_count()} CPUs ({cpu_name()})
- load average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in load_start)} at start, \
{', '.join(f'{x:.2f}' for x in load_end)} at end (1-min load after each row in the .json)
- other cores busy: CPU time used by other processes during the row's timed blocks (/proc/stat minus this \
process) per wall second; ⚠ marks rows where that left fewer free cores than torch threads: the threads \
then wait on each other's time slices (up to ~100x slower), so those times are unreliable
- workload: MLP 1-40-40-1 ReLU, {TASKS} tasks, K={SHOTS} support + {SHOTS} query, one inner step α={INNER_LR}, \
MSE; iteration = zero_grad + meta-gradient + Adam({META_LR})
- ms/iter: median (and min) of {args.repeats} blocks of {args.iters // args.repeats} iterations after {WARMUP} \
warm-up iterations; a block stops early after {MAX_BLOCK_S} s (iterations timed per row in the .json); \
× vs learn2learn compares medians at the same order and thread count
- max rel grad err: max|g − g_ref| / max|g_ref| on the first batch at the initial weights, \
g_ref = plain loop in float64 (same order)
- peak MB: peak RSS (ru_maxrss) − RSS just before the method's first call, in a fresh process per row; \
includes lazy library initialisation and, for the compiled rows, compilation (1st call s)

{table}
"""
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"command": command, "date": started.isoformat(), "torch": torch.__version__,
         "load_start": load_start, "load_end": load_end, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
