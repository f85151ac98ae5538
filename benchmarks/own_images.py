"""Omniglot as a generic image folder: does `mamlkit train images` match the `omniglot-5w1s` preset?

The real Omniglot zips are unpacked once (into --work) and laid out as one folder per character,
``<work>/folder/<Alphabet>/<characterNN>`` (symlinks to the unpacked folders), which the image-folder
loader reads like any user's data: grayscale, LANCZOS-resized to 28x28, not binarised or inverted
(the Omniglot preset binarises and inverts as the official code does). Split files name the
preset's classes (the paper split: 1,100 train / 100 val / 423 test characters), and `--rotations`
turns classes as the preset does, so the two runs differ only in how the images are read. Both
train for the same (modest: the CPU is shared) number of iterations with the same seed, select
their checkpoint on validation and are tested on 600 tasks; the table shows accuracy ± 95% CI.

    python benchmarks/own_images.py --iterations 500     # ~15-25 min on one shared CPU thread
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mamlkit.tasks.omniglot import SETS, load_omniglot, omniglot_split  # noqa: E402


def lay_out(omniglot: Path, work: Path) -> tuple[Path, Path]:
    """The character folders as ``work/folder/<Alphabet>/<character>`` and the paper split as files."""
    unpacked, folder, splits = work / "unpacked", work / "folder", work / "splits"
    for name in SETS:
        if not (unpacked / name).is_dir():
            with zipfile.ZipFile(omniglot / f"{name}.zip") as archive:
                archive.extractall(unpacked)
    names = load_omniglot(omniglot).names  # "<Alphabet>/characterNN", the preset's class order
    for name in names:
        link = folder / name
        if not link.exists():
            alphabet, character = name.split("/")
            source = next(unpacked / s / alphabet / character for s in SETS if (unpacked / s / alphabet).is_dir())
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(source, target_is_directory=True)
    splits.mkdir(parents=True, exist_ok=True)
    for split, classes in zip(("train", "val", "test"), omniglot_split(len(names), kind="paper")):
        (splits / f"{split}.txt").write_text("".join(f"{names[c]}\n" for c in classes))
    return folder, splits


def train(preset: str, out: Path, args, extra: list[str]) -> dict:
    if not (out / "results.json").exists():
        command = [sys.executable, "-m", "mamlkit", "train", preset, "--out", str(out), "--iterations",
                   str(args.iterations), "--validate-every", str(args.validate_every), "--threads", "1",
                   "--seed", "0", *extra]
        subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    return json.loads((out / "results.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--omniglot", type=Path, default=ROOT.parent / "shared" / "data" / "omniglot")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "mamlkit-own-images")
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--validate-every", type=int, default=250)
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    folder, splits = lay_out(args.omniglot, args.work)
    rows = {
        "omniglot-5w1s (Omniglot loader)": train("omniglot-5w1s", args.work / "run-omniglot", args,
                                                 ["--data", str(args.omniglot)]),
        "images (generic image folder)": train("images", args.work / "run-images", args,
                                               ["--data", str(folder), "--split-files", str(splits), "--rotations"]),
    }
    steps = len(next(iter(rows.values()))["accuracy"])
    lines = [f"# Omniglot as a generic image folder ({args.iterations} iterations, seed 0, 1 thread, "
             f"{datetime.date.today()})", "",
             "| run | " + " | ".join(f"{s} steps" for s in range(steps)) + " | selected it. |",
             "|---|" + "---|" * (steps + 1)]
    for name, r in rows.items():
        cells = " | ".join(f"{a:.2f} ± {c:.2f}" for a, c in zip(r["accuracy"], r["ci95"]))
        lines.append(f"| {name} | {cells} | {r['checkpoint_iteration']} |")
    report = "\n".join(lines)
    print(report)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "own_images.md").write_text(report + "\n")
    (args.results / "own_images.json").write_text(json.dumps({"iterations": args.iterations, "runs": rows},
                                                             indent=2) + "\n")


if __name__ == "__main__":
    main()
