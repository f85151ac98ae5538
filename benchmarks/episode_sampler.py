"""Omniglot data speed: first decode vs cached load, and episode sampling per meta-batch.

Settings are the paper's (Finn et al. 2017, Omniglot): 5-way 1-shot with 32 tasks and 20-way
1-shot with 16 tasks, one query per class, random 90-degree rotations, classes from the paper's
1100-character meta-training split. Sampling is timed in this process (workers 0) and through
``task_stream`` with background workers, which pays off only when the consumer is busy; here the
consumer does nothing, so the worker rows show the ceiling of the pipeline. ms/batch is the
median over --repeats blocks of --batches batches, after one untimed batch (worker start-up).

    python benchmarks/episode_sampler.py --data /work/shared/data/omniglot
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from mamlkit.tasks.episodes import EpisodeSampler  # noqa: E402
from mamlkit.tasks.stream import task_stream  # noqa: E402
from mamlkit.tasks.omniglot import load_omniglot, omniglot_split  # noqa: E402

SETTINGS = (("omniglot-5w1s", 5, 32), ("omniglot-20w1s", 20, 16))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="/work/shared/data/omniglot", help="Omniglot folder")
    parser.add_argument("--batches", type=int, default=100, help="batches per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per row")
    parser.add_argument("--workers", type=int, default=2, help="background workers to compare")
    return parser.parse_args()


def timed(call):
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def main():
    args = parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as cache:  # a fresh cache forces the first decode
        data, decode = timed(lambda: load_omniglot(args.data, cache_dir=cache))
        _, cached = timed(lambda: load_omniglot(args.data, cache_dir=cache))
    print(f"Omniglot {tuple(data.images.shape)}: first decode {decode:.2f} s "
          f"({os.cpu_count()} processes), cached load {cached * 1e3:.0f} ms\n")

    train, _, _ = omniglot_split(data.names)
    print("| setting | tasks | workers | ms/batch | episodes/s |")
    print("| --- | --- | --- | --- | --- |")
    for name, ways, tasks in SETTINGS:
        sampler = EpisodeSampler(data.images, train, ways, shots=1, queries=1, rotations=True)
        for workers in (0, args.workers):
            total = 1 + args.batches * args.repeats
            stream = task_stream(partial(sampler.sample, tasks), seed=0, workers=workers, stop=total)
            next(stream)
            blocks = [timed(lambda: [next(stream) for _ in range(args.batches)])[1]
                      for _ in range(args.repeats)]
            seconds = statistics.median(blocks) / args.batches
            print(f"| {name} | {tasks} | {workers} | {seconds * 1e3:.2f} | "
                  f"{tasks / seconds:,.0f} |")


if __name__ == "__main__":
    main()
