"""MAML++ with LSLR on the sinusoid: rates learned as multiples of inner_lr (mamlkit's LSLR) against
rates learned directly (as before; MAML++'s official code), each with and without 50 first-order epochs.

Adam moves each parameter by about its learning rate per iteration, whatever its scale, so at
1e-3 a rate that starts at α = 0.01 moves by ~10% of itself per iteration, while a multiple of α
that starts at 1 moves by ~0.1%. Rates learned directly are reproduced by giving the multiples
their own Adam param group with learning rate 1e-3 / α (a multiple moving by 1e-3 / α is a rate
moving by 1e-3). This trains the family benchmark's MAML++ row (benchmarks/algorithms.py: 5 inner
steps, α = 0.01, 10,000 iterations, 300 evaluation tasks) and prints the MSE after 1 and 10 steps
(± 95% CI) per setting. One process, settings one after another.

    python benchmarks/mamlpp_rates.py [--settings direct relative] [--iterations 10000]
"""

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import algorithms  # noqa: E402  (the family benchmark: its MAML++ row, run_sinusoid; puts src/ on the path)
from mamlkit.errors import MamlkitError  # noqa: E402

SETTINGS = {  # name -> (rates learned directly?, MAML++ options)
    "direct-fo50": (True, {"first_order_epochs": 50}),
    "direct": (True, {}),
    "relative-fo50": (False, {"first_order_epochs": 50}),
    "relative": (False, {}),
}
META_LR = 1e-3


def trainer(direct: bool, record: dict):
    """benchmarks/algorithms.py's ``train`` with the rates' multiples in their own Adam param group;
    what it measured also goes into ``record`` (the evaluation refuses a diverged model)."""
    def train(algorithm, batches, keep_going) -> dict:
        scales = list(algorithm.inner_lrs.values())
        others = [p for p in algorithm.parameters() if all(p is not r for r in scales)]
        scale_lr = META_LR / algorithm.inner_lr if direct else META_LR
        optimizer = torch.optim.Adam([{"params": others}, {"params": scales, "lr": scale_lr}], lr=META_LR)
        done, start, diverged = 0, time.process_time(), None
        while keep_going(done, 0):
            optimizer.zero_grad(set_to_none=True)
            loss = algorithm.meta_backward(*next(batches)[:4])
            optimizer.step()
            done += 1
            if diverged is None and not torch.isfinite(loss):
                diverged = done
        rates = [algorithm.inner_lr * r.detach() for r in scales]
        span = [round(float(r.min()), 4) for r in rates], [round(float(r.max()), 4) for r in rates]
        record.update(iterations=done, cpu_ms_per_it=1000 * (time.process_time() - start) / done,
                      rates_min=min(span[0]), rates_max=max(span[1]), diverged=diverged)
        return dict(record)
    return train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--iterations", type=int, default=10_000)
    parser.add_argument("--eval-tasks", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = algorithms.VARIANTS["mamlpp"]
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, 1 thread, "
          f"{args.iterations} iterations, {args.eval_tasks} evaluation tasks; load average before "
          f"{os.getloadavg()[0]:.1f}")
    print("| setting | a rate moves by about | K=5, 1 step | K=5, 10 steps | K=10, 1 step | K=10, 10 steps | "
          "rates min..max | CPU ms/it |\n|---|---|---|---|---|---|---|---|")
    for name in args.settings:
        direct, options = SETTINGS[name]
        result = {}
        algorithms.train = trainer(direct, result)
        variant = algorithms.Variant(base.factory, {**base.sinusoid, **options}, None)
        run_args = argparse.Namespace(sinusoid_iterations=args.iterations, eval_tasks=args.eval_tasks)
        try:
            result.update(algorithms.run_sinusoid(variant, run_args))
            cells = [f"{result[f'K={k}']['mse'][s]:.3f} ± {result[f'K={k}']['ci95'][s]:.3f}"
                     for k in (5, 10) for s in (1, 10)]
        except MamlkitError:  # the evaluation refuses NaN
            cells = [f"diverged (loss not finite from iteration {result['diverged']})"] + ["—"] * 3
        lr = "1e-3" if direct else f"1e-3 · α = {META_LR * base.sinusoid['inner_lr']:.0e}"
        print(f"| {name} {json.dumps(options) if options else ''} | {lr} | {' | '.join(cells)} | "
              f"{result['rates_min']}..{result['rates_max']} | {result['cpu_ms_per_it']:.1f} |", flush=True)
    print(f"load average after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
