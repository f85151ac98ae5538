"""Ways to run the few-shot conv meta-step on a CPU, measured side by side (issue 16's explorations).

Rows: what ``batching="auto"`` chooses from (vmap over all tasks, vmap in chunks, the task loop with
the native BatchNorm kernel), then the alternatives that were tried and did not win, kept here so the
numbers can be rerun:

* ``compact BN``: vmap in chunks with the BatchNorm-from-primitives replaced by an
  ``autograd.Function`` whose backward is the closed form r·(g − mean(g) − y·mean(g·y)) in
  differentiable ops (fewer elementwise passes in every derivative order);
* ``inductor``: ``torch.compile`` of ``grad_and_value`` of the meta-objective, per chunk of tasks
  under vmap, or per task (``--compiled``; minutes of compilation on the first call): one graph, no
  graph breaks or recompiles, so the elementwise terms fuse, yet its generated kernels ran slower
  than eager's here;
* ``aot_eager``: the same traced graph run op by op (``--compiled``): what is left of vmap's and
  grad's per-op overhead once they are traced away.

Every method runs the workload's preset (model, α, inner steps, second order) on the same random
images and starts from the same weights; one iteration = zero_grad + meta-gradient + Adam step.
Methods are timed INTERLEAVED in one process (round-robin blocks, medians) and the 1-minute load is
recorded beside each row. ``f32 diff`` is the max relative difference of the first meta-gradient from
the task loop's; ``f64 error`` runs the same method on a 4-filter copy of the network in float64
against the independent reference loop of tests/reference.py (second order, 2 inner steps).

    /work/peers-venv/bin/python benchmarks/conv_paths.py                  # ~3 min; results/conv_paths.md
    /work/peers-venv/bin/python benchmarks/conv_paths.py --compiled       # + compiled rows: inductor compiles for minutes
    python benchmarks/conv_paths.py --quick --out /tmp/conv_paths.md      # smoke test
"""

import argparse
import copy
import dataclasses
import datetime
import json
import math
import os
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

import floor  # noqa: E402  (benchmarks/floor.py: workloads, learn2learn, the interleaved runner)
import harness  # noqa: E402
import torch  # noqa: E402
from reference import reference_meta_grad, relative_error, trainable  # noqa: E402  (tests/reference.py)

import mamlkit.exact_norm as exact_norm  # noqa: E402
from mamlkit import functional as fn  # noqa: E402
from mamlkit.experiments import fewshot  # noqa: E402
from mamlkit.models.conv import miniimagenet_conv, omniglot_conv  # noqa: E402
from mamlkit.presets import get_preset  # noqa: E402
from mamlkit.mapping import vmap_tasks  # noqa: E402
from mamlkit.strategies import accumulate_grad  # noqa: E402

WORKLOADS = ("omniglot-5w1s", "omniglot-5w5s", "omniglot-20w1s", "miniimagenet-5w1s")


class CompactNormalize(torch.autograd.Function):
    """(x − mean)·r over ``dims`` with r = 1/sqrt(var + eps); returns (y, r). The backward is the closed
    form in differentiable ops on the outputs, so every higher derivative reuses it."""
    generate_vmap_rule = True

    @staticmethod
    def forward(x, dims, eps):
        centered = x - x.mean(dims, keepdim=True)
        rstd = torch.rsqrt((centered * centered).mean(dims, keepdim=True) + eps)
        return centered * rstd, rstd

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.dims = inputs[1]
        ctx.save_for_backward(*output)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad_y, grad_rstd):
        y, rstd = ctx.saved_tensors
        count = math.prod(y.shape[d] for d in ctx.dims)
        rstd_term = None if grad_rstd is None else grad_rstd * rstd / count  # ∂r/∂x = −r²·y / count
        if grad_y is None:
            return -rstd * y * rstd_term, None, None
        coefficient = (grad_y * y).mean(ctx.dims, keepdim=True)
        if rstd_term is not None:
            coefficient = coefficient + rstd_term
        return rstd * (grad_y - grad_y.mean(ctx.dims, keepdim=True) - y * coefficient), None, None


@contextmanager
def compact_batch_norm():
    """vmap's exact BatchNorm through CompactNormalize instead of autograd over the composition."""
    original = exact_norm._normalize
    exact_norm._normalize = lambda x, dims, eps: CompactNormalize.apply(x, tuple(dims), eps)[0]
    try:
        yield
    finally:
        exact_norm._normalize = original


def loop_map(per_task, tensors):
    """Tasks one by one with torch.func.grad (traceable by torch.compile, unlike autograd.grad)."""
    return torch.stack([per_task(fn.func_gradient, *(t[i] for t in tensors)) for i in range(tensors[0].shape[0])])


class Compiled:
    """``torch.compile(grad_and_value(meta-objective))`` called per chunk of tasks; grads into ``.grad``."""

    def __init__(self, maml, chunk: int, vmapped: bool, backend: str):
        strategy, self.maml, self.chunk = maml.strategy, maml, chunk

        def objective(meta, constants, batch):
            return strategy.objective(maml, meta["params"], {**constants, **meta["fixed"]}, batch,
                                      map_tasks=vmap_tasks if vmapped else loop_map, rates=meta["rates"],
                                      first_order=False, step_weights=None)
        self.compiled = torch.compile(torch.func.grad_and_value(objective), backend=backend)

    def __call__(self, *batch):
        meta, constants = self.maml.strategy.meta_inputs(self.maml)
        tasks = batch[0].shape[0]
        for start in range(0, tasks, self.chunk):
            chunk = tuple(t[start:start + self.chunk] for t in batch)
            grads, _ = self.compiled(meta, constants, chunk)
            share = chunk[0].shape[0] / tasks
            for group, tensors in meta.items():
                accumulate_grad(tensors, {n: g * share for n, g in grads[group].items()})


@dataclasses.dataclass
class Method:
    batching: str
    chunk: int | None = None
    compact: bool = False
    compiled: tuple[str, str] | None = None  # (backend, "vmap" or "loop")

    def meta_gradient(self, maml):
        """maml -> f(*batch) that accumulates the meta-gradient into .grad."""
        if self.compiled:
            return Compiled(maml, self.chunk or 1, self.compiled[1] == "vmap", self.compiled[0])
        if self.compact:
            def with_compact_norm(*batch):
                with compact_batch_norm():
                    return maml.meta_backward(*batch)
            return with_compact_norm
        return maml.meta_backward

    def build(self, w, model):
        maml = w.make_maml(model, self.batching, False, self.chunk)
        gradient, optimizer = self.meta_gradient(maml), floor.adam(model)

        def step(batch):
            optimizer.zero_grad(set_to_none=True)
            gradient(*batch)
            optimizer.step()
        step.maml = maml
        return step

    def float64_error(self, name: str) -> float:
        """Relative error of this method's meta-gradient against the reference loop, on a 4-filter network in float64."""
        config = dataclasses.replace(get_preset(name).config, inner_steps=2)
        side, channels = (20, 3) if config.dataset == "miniimagenet" else (12, 1)
        with default_dtype(torch.float64):
            torch.manual_seed(0)
            model = (miniimagenet_conv(config.ways, filters=4, size=side) if config.dataset == "miniimagenet"
                     else omniglot_conv(config.ways, filters=4))
            images = [torch.rand(4, config.ways * n, channels, side, side) for n in (config.shots, config.queries)]
            labels = [torch.arange(config.ways).repeat_interleave(n).repeat(4, 1) for n in (config.shots, config.queries)]
            batch = (images[0], labels[0], images[1], labels[1])
            loss_fn = fewshot.loss_function(config)
            expected = reference_meta_grad(model, loss_fn, config.inner_lr, 2, batch)
            maml = fewshot.make_maml(dataclasses.replace(config, batching=self.batching, compile="off",
                                                         meta_batch_chunk=min(self.chunk or 0, 2)), model)
            self.meta_gradient(maml)(*batch)
            return relative_error({n: p.grad for n, p in trainable(model).items()}, expected)


@contextmanager
def default_dtype(dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def methods_for(name: str, tasks: int, compiled: bool) -> dict:
    chunks = sorted({math.ceil(tasks / parts) for parts in (8, 4, 2)} - {tasks})
    methods = {"auto": Method("auto"), "loop (native BatchNorm)": Method("loop"), "vmap": Method("vmap")}
    methods.update({f"vmap, {c} tasks per backward": Method("vmap", c) for c in chunks})
    best_chunk = chunks[len(chunks) // 2] if chunks else tasks
    methods[f"vmap, {best_chunk} per backward, compact BN"] = Method("vmap", best_chunk, compact=True)
    if compiled:
        for backend in ("inductor", "aot_eager"):
            methods[f"{backend}, vmap, {best_chunk} per call"] = Method("vmap", best_chunk, compiled=(backend, "vmap"))
            methods[f"{backend}, task by task"] = Method("loop", 1, compiled=(backend, "loop"))
    return methods


def peak_mb(name: str, method: str, threads: int, compiled: bool) -> float | None:
    """Peak RSS of a method's first meta-iteration (compilation included) above the RSS before it, in a fresh process."""
    result = harness.run_row({}, [str(Path(__file__).resolve()), "--peak-of", name, method, "--threads", str(threads),
                                  *(["--compiled"] if compiled else [])])
    return result.get("peak_mb")


def first_iteration_peak(name: str, method: str, compiled: bool) -> dict:
    w = floor.workload(name)
    build = floor.learn2learn if method == "learn2learn" else methods_for(name, w.batches[0][0].shape[0],
                                                                            compiled)[method].build
    runner = floor.Runner(w, build, w.make_model())
    harness.reset_peak_rss()
    before = harness.rss_mb()
    runner.step()
    return {"peak_mb": harness.rss_mb("VmHWM") - before}


def measure(name: str, args) -> list[dict]:
    w = floor.workload(name)
    model = w.make_model()
    specs = methods_for(name, w.batches[0][0].shape[0], args.compiled)
    methods = {k: m.build for k, m in specs.items()}
    if floor.importlib.util.find_spec("learn2learn") is not None:
        methods["learn2learn"] = floor.learn2learn
    runners = {k: floor.Runner(w, build, model) for k, build in methods.items()}
    reference = floor.Runner(w, Method("loop").build, model).gradient(w.batches[0])
    rows = {}
    for k, runner in runners.items():
        start = time.perf_counter()
        grads = runner.gradient(w.batches[0])
        first_s = time.perf_counter() - start
        diff = max((g - r).abs().max().item() for g, r in zip(grads, reference)) / max(
            r.abs().max().item() for r in reference)
        maml = getattr(runner.iteration, "maml", None)
        while maml is not None and maml.mapping.batching == "auto" and maml.mapping.report().get("chosen") is None:
            runner.step()
        chosen = maml.mapping.report().get("chosen") if maml is not None else None
        f64 = specs[k].float64_error(name) if k in specs else None
        rows[k] = {"workload": name, "method": k if chosen is None else f"{k} → {chosen}", "first_call_s": first_s,
                   "f32_diff": diff, "f64_error": f64, "peak_mb": peak_mb(name, k, args.threads, args.compiled)}
        print(f"{name} {rows[k]['method']}: first call {first_s:.1f} s, f64 error {harness.fmt(f64, '.1e')}",
              file=sys.stderr, flush=True)
    loads = floor.interleave(runners, args.seconds, 3 if args.quick else 5)
    l2l = runners.get("learn2learn")
    for k, runner in runners.items():
        ms = statistics.median(runner.ms)
        rows[k].update(ms=ms, ms_min=min(runner.ms), cpu_ms=statistics.median(runner.cpu_ms),
                       load1=statistics.median(loads), load_range=(min(loads), max(loads)),
                       speedup_vs_l2l=None if l2l is None else statistics.median(l2l.ms) / ms)
    return list(rows.values())


def table(rows) -> str:
    lines = ["| workload | method | ms/iter median (min) | CPU ms/iter | × vs learn2learn | peak MB | f32 diff vs loop "
             "| f64 error vs reference | 1st call s | load1 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['method']} | {r['ms']:.1f} ({r['ms_min']:.1f}) | {r['cpu_ms']:.1f} "
                     f"| {harness.fmt(r['speedup_vs_l2l'], '.2f')} | {harness.fmt(r['peak_mb'], '.0f')} "
                     f"| {r['f32_diff']:.1e} | {harness.fmt(r['f64_error'], '.1e')} | {r['first_call_s']:.1f} "
                     f"| {r['load1']:.2f} ({r['load_range'][0]:.1f}–{r['load_range'][1]:.1f}) |")
    return "\n".join(lines)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=["omniglot-5w1s"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, help="timed seconds per method and workload (default 10)")
    parser.add_argument("--compiled", action="store_true", help="add the torch.compile (inductor) rows")
    parser.add_argument("--quick", action="store_true", help="smoke test: ~1 s per method")
    parser.add_argument("--peak-of", nargs=2, metavar=("WORKLOAD", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="markdown report, JSON beside it (default benchmarks/results/conv_paths.md)")
    args = parser.parse_args()
    args.seconds = args.seconds or (1.0 if args.quick else 10.0)
    args.out = args.out or REPO / "benchmarks" / "results" / "conv_paths.md"
    return args


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.peak_of:
        print(json.dumps(first_iteration_peak(*args.peak_of, args.compiled)))
        return
    started = datetime.datetime.now(datetime.timezone.utc)
    rows = [row for name in args.workloads for row in measure(name, args)]
    harness.write_report(
        args.out, "Ways to run the few-shot conv meta-step (second order)",
        f"`{' '.join(['python', 'benchmarks/conv_paths.py', *sys.argv[1:]])}`, {started:%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} CPUs, {args.threads} thread(s), torch {torch.__version__}, learn2learn "
        f"{harness.version('learn2learn')}. Methods interleaved in one process (round-robin blocks, medians); "
        f"load1 = median (range) of the 1-minute load average over the blocks. Peak MB: RSS high-water mark of "
        f"the first iteration above the RSS before it, in a fresh process.",
        table(rows), {"started": started.isoformat(), "rows": rows})


if __name__ == "__main__":
    main()
