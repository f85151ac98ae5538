"""The GPU check: exact meta-gradients on the device, timed meta-iterations, and the training path.

One file for a session that has a GPU lent for a few minutes (≤ 10 min on one H100). It

1. checks the meta-gradient computed ON THE DEVICE in float64 against the independent reference
   loop of tests/reference.py run on the CPU (relative error < 1e-10): every model of
   tests/zoo.py plus the paper's full-size networks (sinusoid MLP 1-40-40-1, Omniglot conv 4×64,
   Omniglot MLP, MiniImagenet conv 4×32 at 84×84), second and first order, vmap (whole meta-batch
   and one task per backward) and loop paths. On CUDA also the CUDA-graph learner (`--compile cuda-graph`): 4 float64 training steps through the
   replayed graph, with SGD against SGD on the reference loop's meta-gradients and with Adam against
   the eager learner;
2. times one meta-iteration (zero_grad + meta-gradient + Adam step, `MetaLearner.step`) of the
   sinusoid preset (25 tasks), Omniglot 5-way and 20-way 1-shot (real data when found, else random
   images of the same shape) and MiniImagenet 5-way 1-shot (random 84×84 images), tasks vmapped,
   as `batching="auto"` chooses after timing its candidates (with its timings), and looped (CPU) or
   replayed as a captured CUDA graph (GPU), float32, with CUDA synchronised around every timed block;
   compiled, last (compiling can take minutes): the sinusoid's whole iteration (meta-gradient and
   Adam step in one call, what `mamlkit train sinusoid` runs), and Omniglot 5-way with the compiled
   meta-gradient and as a whole compiled iteration (on CUDA with `mode="reduce-overhead"`: CUDA graphs);
3. runs the training path end to end: `mamlkit train sinusoid --device <device>` for a few
   iterations, then resumes that run on the CPU (a checkpoint written on the device loads on the
   CPU), and `torchrun --nproc-per-node 1` (NCCL on CUDA, gloo on CPU); on CUDA with Omniglot found,
   `mamlkit train omniglot-5w1s --compile cuda-graph` beside an eager run (logged losses agree), then
   resumed on the CPU.

It writes a markdown table and a JSON file after every section (a run cut off by a time limit
still leaves its report) and exits non-zero when a check fails. `--sections` runs a part of it
(gradients, graph, eager, path, compiled).

    python benchmarks/gpu_check.py                              # on a GPU machine: benchmarks/results/gpu_check.md
    python benchmarks/gpu_check.py --device cpu --quick --compile sinusoid   # the same script on a CPU, in $TMPDIR
    python benchmarks/gpu_check.py --sections graph,eager                    # a part of it
"""

import argparse
import copy
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mamlkit import MAML  # noqa: E402
from mamlkit.compiled_iteration import CompiledMetaLearner, meta_learner  # noqa: E402
from mamlkit.cuda_graph import GraphedMetaLearner  # noqa: E402
from mamlkit.engine.trainer import MetaLearner  # noqa: E402
from mamlkit.experiments import fewshot, sinusoid  # noqa: E402
from mamlkit.models.conv import miniimagenet_conv, omniglot_conv, omniglot_mlp  # noqa: E402
from mamlkit.models.mlp import mlp  # noqa: E402
from mamlkit.presets import get_preset  # noqa: E402
from mamlkit.tasks.sinusoid import SinusoidTasks  # noqa: E402
from mamlkit.tasks.stream import batch_generator  # noqa: E402
from mamlkit.timed_choice import device_description  # noqa: E402
from reference import reference_meta_grad, relative_error, trainable  # noqa: E402  (tests/reference.py)
from zoo import CASES, image_batch, regression_batch  # noqa: E402  (tests/zoo.py)

TOLERANCE = 1e-10
# Adam divides each gradient element by its own magnitude (+ eps = 1e-8): rounding of order 1e-16 · max|g|
# in an element whose |g| is far below max|g| moves it by up to ~1e-16 · max|g| / eps of a full step, so two
# exact paths whose kernels round differently (cuBLAS inside and outside a capture) agree only to ~1e-8.
ADAM_TOLERANCE = 1e-8
# float32 training is chaotic: two eager CPU runs differing only in thread count (reduction order) log
# query losses within 3e-7 for 8 iterations, 2e-4 apart at the 10th and ~1% by the 20th. So the graphed
# CLI run is held to the eager one over its first iterations (the first replays), not later ones.
LOSS_ITERATIONS, LOSS_TOLERANCE = 5, 1e-4
SECTIONS = ("gradients", "graph", "eager", "path", "compiled")
PAPER_CASES = {  # full-size networks, 2 tasks each
    "paper sinusoid mlp 1-40-40-1": (lambda: mlp((1, 40, 40, 1)), lambda: regression_batch(2, 10, 1), F.mse_loss),
    "paper omniglot conv 4x64": (lambda: omniglot_conv(5), lambda: image_batch(2, 5, 5, size=28), F.cross_entropy),
    "paper omniglot mlp": (lambda: omniglot_mlp(5), lambda: image_batch(2, 5, 5, size=28), F.cross_entropy),
    "paper miniimagenet conv 4x32": (lambda: miniimagenet_conv(5, channels=1), lambda: image_batch(2, 5, 5, size=84),
                                     F.cross_entropy),
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="fewer timed iterations")
    parser.add_argument("--compile", choices=["all", "sinusoid", "none"], default="all",
                        help="which workloads also run compiled (Omniglot compiles for minutes on a CPU)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated, of {', '.join(SECTIONS)} (a report holds the sections run)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "omniglot")
    parser.add_argument("--out", type=Path, help="markdown report (JSON beside it; default "
                        "benchmarks/results/gpu_check.md on CUDA, $TMPDIR/gpu_check_cpu.md otherwise)")
    args = parser.parse_args()
    args.sections = args.sections.split(",")
    if not set(args.sections) <= set(SECTIONS):
        raise SystemExit(f"gpu_check: --sections takes {', '.join(SECTIONS)}, got {args.sections}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible; run with --device cpu to check the script itself")
    args.device = torch.device(args.device)
    args.out = args.out or (REPO / "benchmarks" / "results" / "gpu_check.md" if args.device.type == "cuda"
                            else Path(tempfile.gettempdir()) / "gpu_check_cpu.md")
    return args


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- 1. exact meta-gradients on the device -----------------------------------------------------------
def gradient_checks(device: torch.device) -> list[dict]:
    rows = []
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        for name, (make_model, make_batch, loss_fn) in {**CASES, **PAPER_CASES}.items():
            torch.manual_seed(0)
            model, batch = make_model(), make_batch()
            for first_order in (False, True):
                expected = reference_meta_grad(model, loss_fn, 0.3, 2, batch, first_order=first_order)
                for batching, chunk in (("vmap", None), ("vmap", 1), ("loop", None)):
                    on_device = copy.deepcopy(model).to(device)
                    maml = MAML(on_device, loss_fn, inner_lr=0.3, inner_steps=2, first_order=first_order,
                                batching=batching, meta_batch_chunk=chunk)
                    batching = batching if chunk is None else f"{batching}, {chunk} task per backward"
                    start = time.perf_counter()
                    maml.meta_backward(*(t.to(device) for t in batch))
                    synchronize(device)
                    grads = {n: p.grad.cpu() for n, p in on_device.named_parameters() if p.requires_grad}
                    error = relative_error(grads, expected)
                    rows.append({"model": name, "order": "first" if first_order else "second", "batching": batching,
                                 "rel_error": error, "ok": error < TOLERANCE, "s": time.perf_counter() - start})
                    print(f"grad {name:32s} {rows[-1]['order']:6s} {batching:26s} {error:.1e}", flush=True)
    finally:
        torch.set_default_dtype(previous)
    return rows


def graph_checks(device: torch.device) -> list[dict]:
    """The CUDA-graph learner (--compile cuda-graph) in float64, 4 meta-iterations (the first eager, then
    captured and replayed) on the same batches: with SGD its parameters' displacement against SGD on
    the CPU reference loop's meta-gradients (the captured meta-gradient is exact); with Adam against
    the eager learner on the device (the captured optimizer step is the eager one), to ADAM_TOLERANCE."""
    rows = []
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        for name in ("paper omniglot conv 4x64", "paper omniglot mlp"):
            make_model, make_batch, loss_fn = PAPER_CASES[name]
            for first_order in (False, True):
                torch.manual_seed(0)
                model, batches = make_model(), [make_batch() for _ in range(4)]
                start = {n: p.detach().clone() for n, p in model.named_parameters()}
                reference = copy.deepcopy(model)
                optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
                for batch in batches:
                    grads = reference_meta_grad(reference, loss_fn, 0.3, 2, batch, first_order=first_order)
                    for n, p in trainable(reference).items():
                        p.grad = grads[n]
                    optimizer.step()
                moved = {}
                for optimizer_name, learner_class, make_optimizer in (
                        ("SGD", GraphedMetaLearner, partial(torch.optim.SGD, lr=0.1)),
                        ("Adam", GraphedMetaLearner, partial(torch.optim.Adam, lr=1e-3)),
                        ("Adam eager", MetaLearner, partial(torch.optim.Adam, lr=1e-3))):
                    on_device = copy.deepcopy(model).to(device)
                    learner = learner_class(MAML(on_device, loss_fn, inner_lr=0.3, inner_steps=2, batching="vmap",
                                                 first_order=first_order), make_optimizer(on_device.parameters()))
                    for batch in batches:
                        learner.step(tuple(t.to(device) for t in batch))
                    moved[optimizer_name] = {n: p.detach().cpu() - start[n] for n, p in on_device.named_parameters()}
                moved["SGD reference"] = {n: p.detach() - start[n] for n, p in reference.named_parameters()}
                for compared, against, tolerance in (("SGD", "SGD reference", TOLERANCE),
                                                     ("Adam", "Adam eager", ADAM_TOLERANCE)):
                    error = relative_error(moved[compared], moved[against])
                    rows.append({"model": name, "order": "first" if first_order else "second",
                                 "batching": f"CUDA graph, 4 {compared} steps vs {against} (pass < {tolerance:g})",
                                 "rel_error": error, "ok": error < tolerance, "s": 0.0})
                    print(f"graph {name:32s} {rows[-1]['order']:6s} {rows[-1]['batching']:40s} {error:.1e}", flush=True)
    finally:
        torch.set_default_dtype(previous)
    return rows


# -- 2. timed meta-iterations ------------------------------------------------------------------------
def time_steps(learner, batches, device, warmup: int, iters: int) -> dict:
    start = time.perf_counter()
    learner.step(batches[0])  # compiles, when compiled
    synchronize(device)
    first = time.perf_counter() - start
    for i in range(warmup):
        learner.step(batches[i % len(batches)])
    blocks = []
    for _ in range(3):
        synchronize(device)
        start = time.perf_counter()
        for i in range(iters):
            learner.step(batches[i % len(batches)])
        synchronize(device)
        blocks.append((time.perf_counter() - start) / iters * 1e3)
    return {"ms_median": statistics.median(blocks), "ms_min": min(blocks), "first_call_s": first}


def sinusoid_learner(device, compiled: bool, graphed: bool = False):
    """What `mamlkit train sinusoid` runs: compiled, the meta-gradient and Adam step as one call
    (``graphed``: the eager iteration captured as a CUDA graph instead)."""
    config = dataclasses.replace(get_preset("sinusoid").config, device=str(device))
    model = sinusoid.build_models(config)["maml"]
    maml, optimizer = sinusoid.make_maml(config, model), torch.optim.Adam(model.parameters(), lr=config.meta_lr)
    if graphed:
        return GraphedMetaLearner(maml, optimizer), config
    return meta_learner(maml, optimizer, compile_iteration=compiled), config


def choose_path(learner, batches) -> str:
    """Steps until batching='auto' has timed its candidates; the path it keeps."""
    mapping = learner.maml.mapping
    for i in range(100):
        if mapping.choice is not None and mapping.choice.chosen is not None:
            break
        learner.step(batches[i % len(batches)])
    return mapping.report()["chosen"]


def sinusoid_batches(config, device, n=8):
    tasks = SinusoidTasks()
    return [tuple(t.to(device) for t in tasks.sample(config.meta_batch, config.support, config.query,
                                                     batch_generator(0, i))[:4]) for i in range(n)]


def fewshot_batches(config, device, n=8) -> tuple[list, str]:
    """Real Omniglot episodes when the data is found; else random images of the preset's shape."""
    if config.dataset == "omniglot" and Path(config.data).exists():
        sampler = fewshot.load_samplers(config)["train"]
        batches = [sampler.sample(config.meta_batch, batch_generator(0, i)) for i in range(n)]
        source = "real Omniglot"
    else:
        g = torch.Generator().manual_seed(0)
        shape = (config.meta_batch, config.ways * config.shots) + ((3, 84, 84) if config.dataset == "miniimagenet"
                                                                    else (1, 28, 28))
        labels = torch.arange(config.ways).repeat_interleave(config.shots).expand(config.meta_batch, -1)
        batches = [(torch.rand(shape, generator=g), labels, torch.rand(shape, generator=g), labels) for _ in range(n)]
        source = "random images"
    return [tuple(t.to(device) for t in b) for b in batches], source


FEWSHOT_WORKLOADS = {  # preset: the row's name
    "omniglot-5w1s": "omniglot 5w1s, 32 tasks, conv 4×64",
    "omniglot-20w1s": "omniglot 20w1s, 16 tasks, conv 4×64",
    "miniimagenet-5w1s": "miniimagenet 5w1s, 4 tasks, 5 inner steps, conv 4×32 at 84×84",
}


def eager_batchings(device: torch.device) -> tuple[str, ...]:
    """On a GPU the loop is timed by 'auto' among its candidates (it lost 1.3-17x to vmap on an H200)."""
    return ("vmap", "auto", "cuda graph") if device.type == "cuda" else ("vmap", "loop", "auto")


def timings(args, compiled: bool) -> list[dict]:
    """Eager rows time both task batchings (vmap and a Python loop), to pick per workload; compiled
    rows (vmap only) run last, since compiling a conv net's step can take minutes."""
    warmup, iters = (1, 3) if args.quick else (5, 20)
    mode = "compiled" if compiled else "eager"
    rows = []

    def record(workload, batching, learner, batches, source):
        rows.append({"workload": workload, "mode": mode, "batching": batching, "data": source,
                     **time_steps(learner, batches, args.device, warmup, iters)})
        print(f"time {rows[-1]}", flush=True)

    if not compiled or args.compile != "none":
        learner, config = sinusoid_learner(args.device, compiled)
        batches = sinusoid_batches(config, args.device)
        record("sinusoid 25 tasks, K=10", "vmap, whole iteration" if compiled else "vmap", learner, batches, "sampled")
        if not compiled and args.device.type == "cuda":
            graphed, _ = sinusoid_learner(args.device, compiled=False, graphed=True)
            record("sinusoid 25 tasks, K=10", "vmap, captured CUDA graph", graphed, batches, "sampled")
    for preset, workload in FEWSHOT_WORKLOADS.items():
        if compiled and (args.compile != "all" or preset != "omniglot-5w1s"):
            continue
        config = dataclasses.replace(get_preset(preset).config, data=str(args.data), device=str(args.device),
                                     compile="on" if compiled else "off")
        batches, source = fewshot_batches(config, args.device)  # the same episodes for every batching
        for batching in ("vmap", "whole iteration") if compiled else eager_batchings(args.device):
            config = dataclasses.replace(config, batching="vmap" if compiled or batching == "cuda graph" else batching)
            model = fewshot.build_model(config)
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            if batching == "whole iteration":  # meta-gradient and Adam in one call, CUDA graphs on a GPU
                compile_mode = "reduce-overhead" if args.device.type == "cuda" else None
                learner = CompiledMetaLearner(fewshot.make_maml(dataclasses.replace(config, compile="off"), model),
                                              optimizer, mode=compile_mode)
                batching = f"vmap, whole iteration, mode={compile_mode}"
            elif batching == "cuda graph":  # the eager iteration captured once, replayed (--compile cuda-graph)
                learner = GraphedMetaLearner(fewshot.make_maml(config, model), optimizer)
                batching = "vmap, captured CUDA graph"
            else:
                learner = MetaLearner(fewshot.make_maml(config, model), optimizer)
            if batching == "auto":
                batching = f"auto → {choose_path(learner, batches)} (timed ms: {learner.batching()['ms']})"
            record(workload, batching, learner, batches, source)
    return rows


# -- 3. the training path end to end -----------------------------------------------------------------
def logged(run: Path, key: str) -> dict[int, float]:
    """Iteration -> ``key`` from a run folder's metrics.jsonl."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["iteration"]: r[key] for r in records if key in r}


def training_path(device: torch.device, data: Path) -> list[dict]:
    """`mamlkit train` end to end; on CUDA with Omniglot found also the few-shot CLI with --compile
    cuda-graph: its logged losses beside an eager run's on the same batches, then resumed on the CPU."""
    small = ["--eval-tasks", "20", "--eval-shots", "5", "--eval-steps", "3", "--compile", "off", "--meta-batch", "8",
             "--log-every", "10"]
    fewshot_small = ["omniglot-5w1s", "--data", str(data), "--iterations", "40", "--validate-every", "20",
                     "--validation-tasks", "20", "--eval-tasks", "20", "--checkpoint-every", "20", "--log-every", "1",
                     "--batching", "vmap", "--device", device.type]
    env = {**os.environ, "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src")] + os.environ.get("PYTHONPATH", "").split(os.pathsep))}
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        run = Path(scratch) / "run"
        commands = {
            f"train on {device.type}": ["-m", "mamlkit", "train", "sinusoid", "--iterations", "20",
                                        "--checkpoint-every", "10", "--device", device.type, *small, "--out", str(run)],
            f"resume the {device.type} checkpoint on cpu": ["-m", "mamlkit", "train", "--resume", str(run),
                                                            "--iterations", "30", "--device", "cpu"],
            "torchrun 1 process": ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m",
                                   "mamlkit", "train", "sinusoid", "--iterations", "20", "--device", device.type,
                                   *small, "--out", str(Path(scratch) / "torchrun")],
        }
        eager, graphed = Path(scratch) / "eager", Path(scratch) / "graphed"
        if device.type == "cuda" and data.exists():
            commands.update({
                "omniglot-5w1s eager": ["-m", "mamlkit", "train", *fewshot_small, "--compile", "off", "--out", str(eager)],
                "omniglot-5w1s --compile cuda-graph, losses as eager's": [
                    "-m", "mamlkit", "train", *fewshot_small, "--compile", "cuda-graph", "--out", str(graphed)],
                "resume the cuda-graph checkpoint on cpu": ["-m", "mamlkit", "train", "--resume", str(graphed),
                                                            "--iterations", "60", "--device", "cpu", "--compile", "off"],
            })
        for name, command in commands.items():
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, *command], capture_output=True, text=True, env=env)
            ok = proc.returncode == 0
            if name == f"resume the {device.type} checkpoint on cpu" and ok:
                ok = list(logged(run, "iteration")) == [10, 20, 30]
            detail = ""
            if name.startswith("omniglot-5w1s --compile") and ok:  # replays from iteration 2 (vmap: no timing)
                losses, reference = logged(graphed, "maml/query_loss"), logged(eager, "maml/query_loss")
                differences = {i: abs(losses[i] - reference[i]) / abs(reference[i]) for i in reference if i in losses}
                early = [differences.get(i, float("inf")) for i in range(1, LOSS_ITERATIONS + 1)]
                ok = losses.keys() == reference.keys() and max(early) <= LOSS_TOLERANCE
                detail = (f"query loss vs eager, relative: ≤ {max(early):.1e} over iterations 1-{LOSS_ITERATIONS} "
                          f"(bar {LOSS_TOLERANCE:g}), {differences.get(10, float('nan')):.1e} at 10, "
                          f"{differences.get(40, float('nan')):.1e} at 40")
            if name == "resume the cuda-graph checkpoint on cpu" and ok:
                ok = max(logged(graphed, "iteration")) == 60
            failure = "" if ok or detail else " ".join(proc.stderr.strip().splitlines()[-1:]) or "(no output)"
            rows.append({"check": name, "ok": ok, "s": time.perf_counter() - start, "detail": detail or failure})
            print(f"path {rows[-1]}", flush=True)
    return rows


def write_report(args, grads, times, paths, seconds, finished=True) -> bool:
    passed = all(r["ok"] for r in grads) and all(r["ok"] for r in paths)
    verdict = ("PASS" if passed else "FAIL") if finished else f"incomplete, {'no failure' if passed else 'FAIL'} so far"
    lines = ["# GPU check: exact meta-gradients on the device, meta-iteration times, training path", "",
             f"- command: `python benchmarks/gpu_check.py {' '.join(sys.argv[1:])}`".rstrip(),
             f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {seconds:.0f} s in all; "
             f"load average {os.getloadavg()[0]:.2f}",
             f"- device: {device_description(args.device)}; torch {torch.__version__}, Python {platform.python_version()}",
             f"- sections: {', '.join(args.sections)}; result: {verdict}", "",
             f"## Meta-gradients on {args.device.type} (float64) vs the CPU reference loop (tests/reference.py)", "",
             f"2 inner steps, α = 0.3; pass: relative error < {TOLERANCE:g}.", "",
             "| model | order | path | rel error | ok |", "|---|---|---|---:|---|"]
    lines += [f"| {r['model']} | {r['order']} | {r['batching']} | {r['rel_error']:.1e} | {'yes' if r['ok'] else 'NO'} |"
              for r in grads]
    lines += ["", f"## One meta-iteration on {args.device.type} (float32; MetaLearner.step: zero_grad, meta-gradient, "
              "Adam)", "", f"Omniglot data: {args.data}. ms: median (min) of 3 timed blocks after warm-up; first call "
              "includes compilation.", "",
              "| workload | data | mode | tasks by | ms/iter median (min) | first call s |",
              "|---|---|---|---|---:|---:|"]
    lines += [f"| {r['workload']} | {r['data']} | {r['mode']} | {r['batching']} | {r['ms_median']:.2f} "
              f"({r['ms_min']:.2f}) | {r['first_call_s']:.1f} |" for r in times]
    lines += ["", "## Training path", "", "| check | ok | s | detail (or the error) |", "|---|---|---:|---|"]
    lines += [f"| {r['check']} | {'yes' if r['ok'] else 'NO'} | {r['s']:.1f} | {r['detail']} |" for r in paths]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(
        {"device": device_description(args.device), "passed": passed, "finished": finished, "gradients": grads,
         "timings": times, "omniglot_data": str(args.data), "training_path": paths}, indent=2) + "\n")
    if finished:
        print("\n".join(lines))
    print(f"\nwritten: {args.out} and {args.out.with_suffix('.json')}")
    return passed


def main() -> int:
    """Writes the report after every section, so a run cut off by its time limit still leaves one."""
    args = parse_args()
    start = time.perf_counter()
    grads, times, paths = [], [], []

    def report(finished=False) -> bool:
        return write_report(args, grads, times, paths, time.perf_counter() - start, finished)

    if "gradients" in args.sections:
        grads += gradient_checks(args.device)
        report()
    if "graph" in args.sections and args.device.type == "cuda":
        grads += graph_checks(args.device)
        report()
    if "eager" in args.sections:
        times += timings(args, compiled=False)
        report()
    if "path" in args.sections:
        paths += training_path(args.device, args.data)
        report()
    if "compiled" in args.sections:
        times += timings(args, compiled=True)
    return 0 if report(finished=True) else 1


if __name__ == "__main__":
    sys.exit(main())
