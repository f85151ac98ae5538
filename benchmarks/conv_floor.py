"""How much of a few-shot meta-iteration its convolutions alone take: a floor for each path.

floor.py measures a step against the float32 matmul peak; the few-shot conv nets never get near it,
because their convolutions are small (5–25 images of 28×28 or 84×84 per task, 7×7 and 4×4 maps deep
in the net). This script asks what the step would cost if everything but the convolutions were free:
it records every ``aten.convolution`` and ``aten.convolution_backward`` call of one second-order
meta-iteration (a ``TorchDispatchMode`` sees the calls vmap and autograd really make: the grouped
per-task convolutions, the double backward's extra ones), replays exactly those calls on fresh random
tensors of the same shapes and strides, and times the replay against the whole iteration, interleaved
in one process. learn2learn ÷ the fastest replay is then an upper bound on any speed-up over
learn2learn that keeps these oneDNN float32 convolutions.

    /work/peers-venv/bin/python benchmarks/conv_floor.py       # ~7 min; benchmarks/results/conv_floor.md + .json
    python benchmarks/conv_floor.py --quick --out /tmp/conv_floor.md
"""

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import floor  # noqa: E402  (benchmarks/floor.py: workloads, methods, the runner)
import harness  # noqa: E402
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

WORKLOADS = ("omniglot-5w1s", "omniglot-5w5s", "omniglot-20w1s", "miniimagenet-5w1s")
CONVOLUTIONS = (torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--repeats", type=int, help="timed iterations per method (default 6; --quick 2)")
    parser.add_argument("--quick", action="store_true", help="smoke test")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "conv_floor.md")
    args = parser.parse_args()
    args.repeats = args.repeats or (2 if args.quick else 6)
    return args


class RecordConvolutions(TorchDispatchMode):
    """Keeps (op, args, kwargs) of every convolution dispatched inside it."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in CONVOLUTIONS:
            self.calls.append((func, args, kwargs))
        return func(*args, **kwargs)


def fresh(value):
    """A new random tensor of ``value``'s shape, strides and dtype (expanded dimensions stay expanded)."""
    if isinstance(value, (list, tuple)):
        return type(value)(fresh(v) for v in value)
    if not isinstance(value, torch.Tensor):
        return value
    if 0 in value.stride():
        base = [1 if stride == 0 else size for size, stride in zip(value.shape, value.stride())]
        return torch.randn(base, dtype=value.dtype).expand(value.shape)
    return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype).normal_()


class ConvReplay:
    """One iteration's convolutions of ``runner``'s path, on fresh tensors, as a callable."""

    def __init__(self, runner: floor.Runner):
        recorder = RecordConvolutions()
        with recorder:
            runner.step()
        self.calls = [(op, fresh(args), kwargs) for op, args, kwargs in recorder.calls]

    def __call__(self):
        for op, args, kwargs in self.calls:
            op(*args, **kwargs)


def seconds_of(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def measure(name: str, repeats: int) -> list[dict]:
    w = floor.workload(name)
    model = w.make_model()
    runners = {method: floor.Runner(w, build, model) for method, build in floor.methods_for(name).items()
               if method in ("mamlkit auto", "mamlkit loop", "learn2learn")}
    labels = {}
    for method, runner in runners.items():
        runner.step()  # warm-up
        chosen = runner.settle()
        labels[method] = method if chosen is None else f"{method} → {chosen}"
    replays = {method: ConvReplay(runner) for method, runner in runners.items()}
    with FlopCounterMode(display=False) as counter:  # the loop's plain convolutions: the counter
        replays["mamlkit loop"]()                      # over-counts the grouped ones' backward
    gflop = counter.get_total_flops() / 1e9
    steps, convs = {m: [] for m in runners}, {m: [] for m in runners}
    loads = []
    for _ in range(repeats):  # interleaved: a load change hits every method alike
        for method, runner in runners.items():
            steps[method].append(seconds_of(runner.step))
            convs[method].append(seconds_of(replays[method]))
        loads.append(os.getloadavg()[0])
    l2l = statistics.median(steps["learn2learn"]) if "learn2learn" in steps else None
    rows = []
    for method in runners:
        step_ms, conv_ms = 1e3 * statistics.median(steps[method]), 1e3 * statistics.median(convs[method])
        rows.append({"workload": name, "method": labels[method], "step_ms": step_ms, "conv_ms": conv_ms,
                     "conv_calls": len(replays[method].calls), "conv_gflop": gflop,
                     "conv_gflops": gflop / conv_ms * 1e3, "conv_share": conv_ms / step_ms,
                     "l2l_over_step": None if l2l is None else 1e3 * l2l / step_ms,
                     "l2l_over_conv": None if l2l is None else 1e3 * l2l / conv_ms,
                     "load1": statistics.median(loads)})
    return rows


def table(rows) -> str:
    lines = ["| workload | path | ms/iter | its convolutions alone, ms | share | calls | conv GFLOP | conv GFLOP/s "
             "| × learn2learn | × learn2learn if only convolutions cost | load1 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['method']} | {r['step_ms']:.0f} | {r['conv_ms']:.0f} "
                     f"| {100 * r['conv_share']:.0f}% | {r['conv_calls']} | {r['conv_gflop']:.2f} "
                     f"| {r['conv_gflops']:.0f} | {harness.fmt(r['l2l_over_step'], '.2f')} "
                     f"| {harness.fmt(r['l2l_over_conv'], '.2f')} | {r['load1']:.2f} |")
    return "\n".join(lines)


def main():
    args = parse_args()
    torch.set_num_threads(1)
    started = datetime.datetime.now(datetime.timezone.utc)
    rows = []
    for name in args.workloads:
        rows.extend(measure(name, args.repeats))
        print(table([r for r in rows if r["workload"] == name]), file=sys.stderr, flush=True)
    harness.write_report(
        args.out, "The few-shot step's convolutions alone",
        f"`{' '.join(['python', 'benchmarks/conv_floor.py', *sys.argv[1:]])}`, {started:%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} CPUs, 1 thread, torch {torch.__version__}, learn2learn {harness.version('learn2learn')}. "
        f"Second order, the presets' model, meta-batch, inner steps and α on random images. Per path: one "
        f"iteration's convolution calls recorded, replayed on fresh tensors and timed, interleaved with the whole "
        f"iteration ({args.repeats} rounds, medians). Conv GFLOP: counted by `torch.utils.flop_counter` on the task "
        f"loop's convolutions (the same arithmetic on every path). The last ratio is learn2learn's iteration over "
        f"the replay: the speed-up that path would reach if nothing but its convolutions took time.",
        table(rows), {"started": started.isoformat(), "rows": rows})


if __name__ == "__main__":
    main()
