"""Re-evaluates a committed few-shot Omniglot run along a code path that shares nothing with mamlkit.

mamlkit's own evaluation (results.json of the run) loads images through its cached loader, samples
tasks with its episode sampler and runs the network through ``torch.func.functional_call`` on the
``nn.Module`` it trained. A bug in any of them could flatter every number in the README. This
script checks the number from the other side, importing nothing from mamlkit:

  * images: read from the official zips (or unpacked folders) at --data, resized with PIL exactly
    as cbfinn/maml's ``resize_images.py`` does (``resize((28, 28), LANCZOS)`` on the 1-bit PNGs)
    and inverted as its data generator does (``1 - image / 255``);
  * split: cbfinn/maml's ``data_generator.py``: the 1,623 characters shuffled by ``random`` with
    seed 1, the first 1,100 meta-train, the next 100 validation, the last 423 test. The official
    code shuffles ``os.listdir`` order; the character order here is the one the run was trained
    with: images_background before images_evaluation, each sorted by alphabet and character;
  * tasks: the official test protocol: N distinct test characters, 2K of the 20 drawings each
    (the first K support, the other K query), each character rotated by its own random multiple
    of 90 degrees;
  * network: the 4-block conv net written out with torch.nn.functional from the checkpoint's
    tensors (3x3 conv stride 2 padding 1, BatchNorm with the batch's statistics, eps 1e-3, and a
    learned shift, ReLU, spatial mean, linear), and the inner loop as the official code takes
    it: SGD with step alpha on the cross-entropy summed over the support set and divided by K.

It reports the accuracy after 0..S inner steps twice: adapting every tensor (mamlkit's MAML
adapts the BatchNorm shifts too) and adapting all but the BatchNorm shifts (the official code's
``weights`` dict holds no BatchNorm variables, so its inner loop leaves them at their
meta-learned values), and exits non-zero unless the first agrees with results.json: the
difference of the two estimates must lie within the 95% interval of a difference of two
independent means, sqrt(ci_a^2 + ci_b^2).

    python benchmarks/independent_eval.py --tasks 2000 --out benchmarks/results/independent_eval.md
"""

import argparse
import contextlib
import datetime
import hashlib
import io
import json
import math
import random
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SETS = ("images_background", "images_evaluation")
CHARACTERS, TRAIN, VALIDATION = 1623, 1100, 100  # cbfinn/maml: num_train 1200 including num_val 100
DRAWINGS = 20
CHECKPOINT_HEADER = b"mamlkit-checkpoint sha256="


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=REPO / "benchmarks" / "results" / "omniglot-5w1s-long")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "omniglot")
    parser.add_argument("--tasks", type=int, default=600, help="test tasks to sample (the paper: 600)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the task sampler (independent of mamlkit's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="also write the markdown report here (and a .json beside it)")
    return parser.parse_args()


# -- data: the official zips, the official split ------------------------------------------------
def character_files(root: Path) -> list[tuple[str, list[str]]]:
    """Every character as (source, its 20 PNG paths), background first, each set sorted."""
    characters = []
    for name in SETS:
        archive = root / f"{name}.zip"
        if archive.is_file():
            with zipfile.ZipFile(archive) as z:
                members = [m for m in z.namelist() if m.endswith(".png")]
            source = str(archive)
        else:
            members = [p.relative_to(root).as_posix() for p in (root / name).glob("*/*/*.png")]
            source = str(root)
        by_character = {}
        for member in members:
            _, alphabet, character, _ = member.split("/")
            by_character.setdefault((alphabet, character), []).append(member)
        characters += [(source, sorted(by_character[key])) for key in sorted(by_character)]
    if len(characters) != CHARACTERS or any(len(files) != DRAWINGS for _, files in characters):
        sys.exit(f"expected {CHARACTERS} characters of {DRAWINGS} drawings under {root}")
    return characters


def test_characters() -> list[int]:
    """cbfinn/maml's split: shuffle with random.seed(1), the characters after the first 1,200."""
    order = list(range(CHARACTERS))
    random.Random(1).shuffle(order)
    return order[TRAIN + VALIDATION:]


def read_image(data: bytes) -> np.ndarray:
    """One PNG as the official pipeline sees it: 28x28 float, strokes 1, background 0."""
    with Image.open(io.BytesIO(data)) as image:
        small = image.resize((28, 28), resample=Image.LANCZOS)  # resize_images.py
        pixels = np.asarray(small.convert("L"), dtype=np.float32) / 255.0
    return 1.0 - pixels


def load_test_images(root: Path) -> dict[int, torch.Tensor]:
    """The test characters' drawings: {character: [20, 1, 28, 28]}."""
    characters = character_files(root)
    images = {}
    with contextlib.ExitStack() as stack:
        readers = {}
        for c in test_characters():
            source, files = characters[c]
            if source not in readers:
                readers[source] = (stack.enter_context(zipfile.ZipFile(source)).read if source.endswith(".zip")
                                   else lambda member, root=Path(source): (root / member).read_bytes())
            images[c] = torch.from_numpy(np.stack([read_image(readers[source](f)) for f in files]))[:, None]
    return images


def sample_task(rng: random.Random, images: dict[int, torch.Tensor], ways: int, shots: int, queries: int):
    """cbfinn/maml's test task: ``ways`` characters, each turned by k * 90 degrees, with ``shots``
    support and ``queries`` query drawings; labels are the characters' positions."""
    chosen = rng.sample(sorted(images), ways)
    support, query = [], []
    for label, c in enumerate(chosen):
        drawings = images[c][rng.sample(range(DRAWINGS), shots + queries)]
        drawings = torch.rot90(drawings, rng.randrange(4), dims=(2, 3))
        support.append(drawings[:shots])
        query.append(drawings[shots:])
    labels = lambda n: torch.arange(ways).repeat_interleave(n)  # noqa: E731
    return torch.cat(support), labels(shots), torch.cat(query), labels(queries)


# -- the network and its inner loop, from the checkpoint's tensors --------------------------------
def load_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The model tensors of a mamlkit checkpoint: one header line with the body's sha256, then a
    torch.save archive whose "model" entry is the state dict."""
    header, body = checkpoint.read_bytes().split(b"\n", 1)
    if not header.startswith(CHECKPOINT_HEADER) or hashlib.sha256(body).hexdigest() != \
            header[len(CHECKPOINT_HEADER):].decode():
        sys.exit(f"{checkpoint} is not an intact mamlkit checkpoint")
    return {k: v.double() for k, v in torch.load(io.BytesIO(body), weights_only=True)["model"].items()}


def forward(w: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Four blocks of conv (stride 2) -> transductive BatchNorm + shift -> ReLU, mean, linear."""
    for block in range(4):
        x = F.conv2d(x, w[f"{block}.0.weight"], w[f"{block}.0.bias"], stride=2, padding=1)
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        x = F.relu((x - mean) / torch.sqrt(var + 1e-3) + w[f"{block}.1.bias"][None, :, None, None])
    return F.linear(x.mean(dim=(2, 3)), w["5.weight"], w["5.bias"])


def adaptation_accuracy(w, task, lr: float, steps: int, shots: int, adapt_shift: bool) -> list[float]:
    """Query accuracy after 0..steps SGD steps on sum(cross-entropy over the support set) / K."""
    sx, sy, qx, qy = task
    adapted = [n for n in w if adapt_shift or not n.endswith(".1.bias")]
    accuracies = []
    for step in range(steps + 1):
        accuracies.append((forward(w, qx).argmax(1) == qy).double().mean().item())
        if step < steps:
            leaves = {n: w[n].detach().requires_grad_() for n in adapted}
            loss = F.cross_entropy(forward({**w, **leaves}, sx), sy, reduction="sum") / shots
            grads = torch.autograd.grad(loss, list(leaves.values()))
            w = {**w, **{n: leaves[n].detach() - lr * g for n, g in zip(adapted, grads)}}
    return accuracies


# -- comparison ----------------------------------------------------------------------------------
def mean_ci(rows: list[list[float]]) -> tuple[list[float], list[float]]:
    """Mean and 1.96 std / sqrt(n) per column, in percent (the paper's interval)."""
    values = 100 * np.array(rows)
    return values.mean(0).tolist(), (1.96 * values.std(0) / math.sqrt(len(values))).tolist()


def main(args) -> int:
    torch.set_num_threads(args.threads)
    config = json.loads((args.run / "config.json").read_text())
    reference = json.loads((args.run / "results.json").read_text())
    expected = {"dataset": "omniglot", "model": "conv", "split": "paper", "loss_scale": "official", "algo": "maml"}
    if any(config.get(k) != v for k, v in expected.items()):
        sys.exit(f"this check covers runs with {expected}; {args.run} has "
                 f"{ {k: config.get(k) for k in expected} }")
    checkpoints = sorted((args.run / "best").glob("ckpt-*.pt"))
    if not checkpoints:
        sys.exit(f"{args.run}/best holds no checkpoint")
    weights = load_weights(checkpoints[-1])
    ways, shots, queries = config["ways"], config["shots"], config["queries"]
    steps = len(reference["accuracy"]) - 1

    start = time.perf_counter()
    images = {c: x.double() for c, x in load_test_images(args.data).items()}
    load_s = time.perf_counter() - start
    rng, rows = random.Random(args.seed), {True: [], False: []}
    for _ in range(args.tasks):
        task = sample_task(rng, images, ways, shots, queries)
        for adapt_shift in rows:
            rows[adapt_shift].append(adaptation_accuracy(weights, task, config["inner_lr"], steps, shots, adapt_shift))
    eval_s = time.perf_counter() - start - load_s

    results = {adapt_shift: mean_ci(r) for adapt_shift, r in rows.items()}
    ours, ours_ci = results[True]
    tolerance = [math.hypot(a, b) for a, b in zip(ours_ci, reference["ci95"])]
    agree = [abs(a - b) <= t for a, b, t in zip(ours, reference["accuracy"], tolerance)]
    cell = lambda m, c: f"{m:.2f} ± {c:.2f}"  # noqa: E731
    lines = [f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}; "
             f"{args.run.relative_to(REPO) if args.run.is_relative_to(REPO) else args.run}, checkpoint "
             f"{checkpoints[-1].name}; {ways}-way {shots}-shot, {queries} query per class, alpha "
             f"{config['inner_lr']}; {args.tasks} independent test tasks (seed {args.seed}) against the run's "
             f"{reference['eval_tasks']}; test images read in {load_s:.0f} s, evaluated in {eval_s:.0f} s (float64)",
             "", "| accuracy % after inner steps | " + " | ".join(str(s) for s in range(steps + 1)) + " |",
             "|---|" + "---|" * (steps + 1),
             "| mamlkit (results.json) | " + " | ".join(cell(m, c) for m, c in zip(reference["accuracy"],
                                                                                   reference["ci95"])) + " |",
             "| independent, BatchNorm shift adapted (as mamlkit) | "
             + " | ".join(cell(m, c) for m, c in zip(ours, ours_ci)) + " |",
             "| independent, BatchNorm shift fixed (as cbfinn/maml) | "
             + " | ".join(cell(m, c) for m, c in zip(*results[False])) + " |",
             "| agreement: abs(difference) <= sqrt(ci_a^2 + ci_b^2) | "
             + " | ".join(f"{'yes' if ok else 'NO'} ({abs(a - b):.2f} <= {t:.2f})"
                          for ok, a, b, t in zip(agree, ours, reference["accuracy"], tolerance)) + " |"]
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(
            {"args": {k: str(v) for k, v in vars(args).items()}, "reference": reference,
             "independent_shift_adapted": {"accuracy": ours, "ci95": ours_ci},
             "independent_shift_fixed": {"accuracy": results[False][0], "ci95": results[False][1]},
             "agree": agree}, indent=1))
    return 0 if all(agree) else 1


if __name__ == "__main__":
    sys.exit(main(parse_args()))
