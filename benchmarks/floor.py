"""How far each real MAML workload runs from this machine's FLOP floor, beside learn2learn.

For every workload (sinusoid; Omniglot 5w1s, 5w5s, 20w1s; MiniImagenet 5w1s, all second order, the
presets' model, meta-batch, inner steps and α) it reports ms per meta-iteration (zero_grad +
meta-gradient + Adam step), the GFLOP of one iteration counted by ``torch.utils.flop_counter`` on the
task-loop path (the vmap path's grouped convolutions would be over-counted), the achieved GFLOP/s,
their fraction of the measured float32 2048² matmul peak on the same threads, and the peak memory
of one iteration (RSS high-water mark above the level before it).

Images are random tensors of the presets' shapes (timings do not depend on pixel values); every
method of a workload starts from the same weights and steps through the same pre-sampled batches.
Methods are timed INTERLEAVED in one process (round-robin blocks, medians), so a load change on this
shared machine hits them alike; the 1-minute load average is recorded beside every row, and the CPU
time this process used per iteration beside the wall time (on a busy machine the fairer comparison).

    /work/peers-venv/bin/python benchmarks/floor.py           # ~4 min; benchmarks/results/floor.md + .json
    python benchmarks/floor.py --quick --out /tmp/floor.md     # smoke test (learn2learn optional)
"""

import argparse
import copy
import dataclasses
import datetime
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import harness  # noqa: E402  (benchmarks/harness.py, beside this file)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from mamlkit import MAML  # noqa: E402
from mamlkit.compiled_iteration import CompiledMetaLearner  # noqa: E402
from mamlkit.engine.trainer import MetaLearner  # noqa: E402
from mamlkit.experiments import fewshot, sinusoid  # noqa: E402
from mamlkit.mapping import channels_last_images  # noqa: E402
from mamlkit.presets import get_preset  # noqa: E402
from mamlkit.timed_choice import cpu_name  # noqa: E402

WORKLOADS = ("sinusoid", "omniglot-5w1s", "omniglot-5w5s", "omniglot-20w1s", "miniimagenet-5w1s")
N_BATCHES = 4


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--seconds", type=float, help="timed seconds per method and workload (default 6)")
    parser.add_argument("--quick", action="store_true", help="smoke test: ~1 s per method, small repeats")
    parser.add_argument("--peak-of", nargs=2, metavar=("WORKLOAD", "METHOD"),
                        help="worker mode: print the peak memory of one meta-iteration as a JSON line")
    parser.add_argument("--out", type=Path, help="markdown report, JSON beside it "
                        "(default benchmarks/results/floor[-threadsN].md)")
    args = parser.parse_args()
    args.seconds = args.seconds or (1.0 if args.quick else 6.0)
    suffix = "" if args.threads == 1 else f"-threads{args.threads}"
    args.out = args.out or REPO / "benchmarks" / "results" / f"floor{suffix}.md"
    return args


# -- workloads: (model, meta-gradient builders, batches) ---------------------------------------------
@dataclasses.dataclass
class Workload:
    name: str
    make_model: object  # () -> nn.Module, the same initial weights on every call
    make_maml: object  # (model, batching, compile, meta_batch_chunk) -> MAML
    loss_fn: object
    inner_lr: float
    inner_steps: int
    batches: list
    summary: str


def sinusoid_workload(name) -> Workload:
    config = get_preset(name).config
    tasks = sinusoid.SinusoidTasks()
    gen = torch.Generator().manual_seed(0)
    batches = [tuple(tasks.sample(config.meta_batch, config.support, config.query, gen))[:4] for _ in range(N_BATCHES)]

    def make_model():
        return sinusoid.build_models(config)["maml"]

    def make_maml(model, batching, compile_step=False, chunk=None):
        return MAML(model, F.mse_loss, inner_lr=config.inner_lr, inner_steps=config.inner_steps,
                    batching=batching, compile=compile_step, meta_batch_chunk=chunk)

    return Workload(name, make_model, make_maml, F.mse_loss, config.inner_lr, config.inner_steps, batches,
                    f"MLP 1-40-40-1, {config.meta_batch} tasks, K={config.support}, {config.inner_steps} step")


def fewshot_workload(name) -> Workload:
    config = get_preset(name).config
    side, channels = (84, 3) if config.dataset == "miniimagenet" else (28, 1)
    gen = torch.Generator().manual_seed(0)

    def images(n):
        return torch.rand(config.meta_batch, n, channels, side, side, generator=gen)

    def labels(per_class):
        return torch.arange(config.ways).repeat_interleave(per_class).repeat(config.meta_batch, 1)

    batches = [(images(config.ways * config.shots), labels(config.shots),
                images(config.ways * config.queries), labels(config.queries)) for _ in range(N_BATCHES)]

    def make_maml(model, batching, compile_step=False, chunk=None):
        options = {"batching": batching, "compile": "on" if compile_step else "off", "meta_batch_chunk": chunk or 0}
        return fewshot.make_maml(dataclasses.replace(config, **options), model)

    return Workload(name, lambda: fewshot.build_model(config), make_maml, fewshot.loss_function(config),
                    config.inner_lr, config.inner_steps, batches,
                    f"{config.ways}-way {config.shots}-shot, {config.meta_batch} tasks, {config.inner_steps} "
                    f"step(s), random {side}×{side} images")


def workload(name) -> Workload:
    return sinusoid_workload(name) if name == "sinusoid" else fewshot_workload(name)


# -- methods: (workload, model) -> step(batch), one whole meta-iteration that leaves the gradient in .grad --
def adam(model):
    return torch.optim.Adam(model.parameters(), lr=1e-3)


def mamlkit(batching, compile_step=False, chunk=None):
    def build(w: Workload, model):
        return MetaLearner(w.make_maml(model, batching, compile_step, chunk), adam(model)).step
    return build


def compiled_iteration(w: Workload, model):
    """What ``mamlkit train sinusoid`` runs: meta-gradient and Adam step as one compiled call."""
    return CompiledMetaLearner(w.make_maml(model, "vmap"), adam(model)).step


def learn2learn(w: Workload, model):
    import learn2learn as l2l
    maml, optimizer = l2l.algorithms.MAML(model, lr=w.inner_lr, first_order=False), adam(model)

    def step(batch):
        sx, sy, qx, qy = batch
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for t in range(len(sx)):
            learner = maml.clone()
            for _ in range(w.inner_steps):
                learner.adapt(w.loss_fn(learner(sx[t]), sy[t]))
            total = total + w.loss_fn(learner(qx[t]), qy[t])
        (total / len(sx)).backward()
        optimizer.step()
    return step


def methods_for(name: str) -> dict:
    methods = {"mamlkit vmap": mamlkit("vmap"), "mamlkit loop": mamlkit("loop"), "mamlkit auto": mamlkit("auto")}
    if name == "sinusoid":
        methods["mamlkit vmap, compiled gradient"] = mamlkit("vmap", compile_step=True)
        methods["mamlkit compiled iteration"] = compiled_iteration
    if importlib.util.find_spec("learn2learn") is not None:
        methods["learn2learn"] = learn2learn
    return methods


# -- measurements -------------------------------------------------------------------------------------
def matmul_peak_gflops(seconds: float) -> float:
    """Median GFLOP/s of a float32 2048×2048 matmul on the current threads."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    rates, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(rates) < 3:
        start = time.perf_counter()
        a @ b
        rates.append(2 * 2048 ** 3 / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


def counted_gflop(w: Workload) -> float:
    """FLOPs of one second-order meta-gradient on the task-loop path (plain per-task ops, counted exactly)."""
    maml = w.make_maml(w.make_model(), "loop")
    with FlopCounterMode(display=False) as counter:
        maml.meta_backward(*w.batches[0])
    return counter.get_total_flops() / 1e9


class Runner:
    """One method on its own copy of the model and Adam, stepping through the workload's batches."""

    def __init__(self, w: Workload, build, model):
        self.model = copy.deepcopy(model)
        self.iteration = build(w, self.model)
        self.batches, self.i, self.ms, self.cpu_ms = w.batches, 0, [], []

    def step(self):
        self.iteration(self.batches[self.i % len(self.batches)])
        self.i += 1

    def settle(self) -> str | None:
        """batching='auto': step until it has timed its candidates; the path it keeps (None for other methods)."""
        learner = getattr(self.iteration, "__self__", None)
        if not isinstance(learner, MetaLearner) or learner.maml.mapping.batching != "auto":
            return None
        while learner.maml.mapping.report().get("chosen") is None:
            self.step()
        return learner.maml.mapping.report()["chosen"]

    def gradient(self, batch) -> list[torch.Tensor]:
        """The meta-gradient at the current weights (then the iteration's optimizer step)."""
        self.iteration(batch)
        return [p.grad.clone() for p in self.model.parameters()]

    def block(self, seconds: float):
        """Iterations for about ``seconds`` (at least one); appends wall and CPU (this process) ms/iter."""
        done, start, cpu_start = 0, time.perf_counter(), time.process_time()
        while done == 0 or time.perf_counter() - start < seconds:
            self.step()
            done += 1
        self.ms.append((time.perf_counter() - start) / done * 1e3)
        self.cpu_ms.append((time.process_time() - cpu_start) / done * 1e3)


def interleave(runners: dict, seconds: float, repeats: int) -> list[float]:
    """Round-robin blocks of every runner, so load hits all alike; the 1-minute load after each round."""
    loads = []
    for _ in range(repeats):
        for runner in runners.values():
            runner.block(seconds / repeats)
        loads.append(os.getloadavg()[0])
    return loads


def peak_mb(name: str, method: str, threads: int) -> float | None:
    """Peak RSS of a method's first meta-iteration above the RSS before it, in a fresh process (in this one
    the allocator keeps what earlier methods freed)."""
    result = harness.run_row({}, [str(Path(__file__).resolve()), "--peak-of", name, method, "--threads", str(threads)])
    return result.get("peak_mb")


def path_of(chosen: str) -> str:
    """The method that runs the path batching='auto' chose ("vmap, 4 tasks per backward" -> "mamlkit vmap:4")."""
    return "mamlkit " + chosen.replace(", ", ":").replace(" tasks per backward", "")


def build_method(name: str, method: str):
    if method.startswith("mamlkit vmap:"):
        return mamlkit("vmap", chunk=int(method.split(":")[1]))
    if method == "mamlkit loop:channels-last images":
        def build(w: Workload, model):
            step = mamlkit("loop")(w, model)
            return lambda batch: step(channels_last_images(batch))
        return build
    return methods_for(name)[method]


def first_iteration_peak(name: str, method: str) -> dict:
    w = workload(name)
    runner = Runner(w, build_method(name, method), w.make_model())
    harness.reset_peak_rss()
    before = harness.rss_mb()
    runner.step()
    return {"peak_mb": harness.rss_mb("VmHWM") - before}


def measure(name: str, args) -> list[dict]:
    w = workload(name)
    peak = matmul_peak_gflops(1.0 if args.quick else 3.0)  # per workload: the load changes over the run
    model = w.make_model()
    gflop = counted_gflop(w)
    runners = {method: Runner(w, build, model) for method, build in methods_for(name).items()}
    reference = Runner(w, mamlkit("loop"), model).gradient(w.batches[0])  # at the initial weights
    rows = {}
    for method, runner in runners.items():
        start = time.perf_counter()
        grads = runner.gradient(w.batches[0])  # also the warm-up (compilation happens here)
        first_s = time.perf_counter() - start
        diff = max((g - r).abs().max().item() for g, r in zip(grads, reference)) / max(
            r.abs().max().item() for r in reference)  # conv biases before BatchNorm have ~0 gradients
        chosen = runner.settle()
        rows[method] = {"workload": name, "summary": w.summary, "first_call_s": first_s, "rel_diff_vs_loop": diff,
                        "method": method if chosen is None else f"{method} → {chosen}",
                        "peak_mb": peak_mb(name, method if chosen is None else path_of(chosen), args.threads),
                        "gflop": gflop}
    loads = interleave(runners, args.seconds, 3 if args.quick else 5)
    l2l = runners.get("learn2learn")
    for method, runner in runners.items():
        ms = statistics.median(runner.ms)
        rows[method].update(ms=ms, ms_min=min(runner.ms), ms_blocks=runner.ms, cpu_ms=statistics.median(runner.cpu_ms),
                            gflops=gflop / ms * 1e3,
                            matmul_peak=peak, peak_fraction=gflop / ms * 1e3 / peak, load1=statistics.median(loads),
                            speedup_vs_l2l=None if l2l is None else statistics.median(l2l.ms) / ms)
    return list(rows.values())


# -- report ---------------------------------------------------------------------------------------------
def table(rows, threads) -> str:
    lines = [f"Second order, {threads} thread(s); matmul peak = median GFLOP/s of a float32 2048² matmul on the "
             f"same threads, measured just before each workload.",
             "",
             "| workload | method | ms/iter median (min) | CPU ms/iter | × vs learn2learn | GFLOP/iter (loop path) "
             "| GFLOP/s | matmul peak GFLOP/s | % of peak | peak MB (RSS, one iteration; auto: its choice) "
             "| max rel. diff vs loop | 1st call s | load1 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['method']} | {r['ms']:.1f} ({r['ms_min']:.1f}) | {r['cpu_ms']:.1f} "
                     f"| {harness.fmt(r['speedup_vs_l2l'], '.2f')} | {r['gflop']:.3f} | {r['gflops']:.1f} "
                     f"| {r['matmul_peak']:.0f} | {100 * r['peak_fraction']:.1f}% | {harness.fmt(r['peak_mb'], '.0f')} "
                     f"| {r['rel_diff_vs_loop']:.1e} | {r['first_call_s']:.1f} | {r['load1']:.2f} |")
    return "\n".join(lines)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.peak_of:
        print(json.dumps(first_iteration_peak(*args.peak_of)))
        return
    started = datetime.datetime.now(datetime.timezone.utc)
    rows = []
    for name in args.workloads:
        rows.extend(measure(name, args))
        for r in rows[-len(methods_for(name)):]:
            print(f"{name:18s} {r['method']:22s} {r['ms']:8.1f} ms  {100 * r['peak_fraction']:5.1f}% of peak  "
                  f"load {r['load1']:.2f}", file=sys.stderr, flush=True)
    harness.write_report(
        args.out, "MAML meta-iteration against this machine's FLOP floor",
        f"`{' '.join(['python', 'benchmarks/floor.py', *sys.argv[1:]])}`, {started:%Y-%m-%d %H:%M} UTC, "
        f"{cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"learn2learn {harness.version('learn2learn')}. Methods interleaved in one process (round-robin "
        f"blocks of {args.seconds / (3 if args.quick else 5):.1f} s, medians); load1 = 1-minute load average.",
        table(rows, args.threads), {"started": started.isoformat(), "threads": args.threads, "rows": rows})
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
