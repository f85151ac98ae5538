"""Which classes (or table tasks) meta-train, validate and test: by seed and fractions, or by files."""

import random
from collections.abc import Sequence
from pathlib import Path

from mamlkit.errors import MamlkitError

SPLITS = ("train", "val", "test")


def split_names(names: Sequence[str], fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 1,
                files: str | Path = "") -> tuple[list[int], list[int], list[int]]:
    """Sorted (train, val, test) indices into ``names``.

    With ``files`` (a folder holding train.txt, val.txt and test.txt, one name a line) the split is
    exactly what they list; otherwise the names are shuffled with ``random.Random(seed)`` (as the
    Omniglot paper split is) and cut by ``fractions`` (train, val, test), rounding val and test.
    """
    if files:
        return _from_files(names, Path(files).expanduser())
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise MamlkitError(f"split fractions must be three numbers >= 0 summing to 1 (train val test), got "
                           f"{tuple(fractions)}: pass e.g. --split-fractions 0.7 0.1 0.2")
    order = list(range(len(names)))
    random.Random(seed).shuffle(order)
    val, test = round(fractions[1] * len(names)), round(fractions[2] * len(names))
    train = len(names) - val - test
    return sorted(order[:train]), sorted(order[train:train + val]), sorted(order[train + val:])


def _from_files(names: Sequence[str], folder: Path) -> tuple[list[int], list[int], list[int]]:
    index = {name: i for i, name in enumerate(names)}
    parts, seen = [], {}
    for split in SPLITS:
        path = folder / f"{split}.txt"
        if not path.is_file():
            raise MamlkitError(f"split file {path} is missing: write {', '.join(s + '.txt' for s in SPLITS)} "
                               f"in {folder}, one class name a line")
        listed = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        for name in listed:
            if name not in index:
                raise MamlkitError(f"{path} names {name!r}, which is not in the data (e.g. {names[0]!r}): "
                                   "fix the name or remove the line")
            if name in seen:
                raise MamlkitError(f"{name!r} is listed in both {seen[name]} and {path}: keep it in one split")
            seen[name] = path
        parts.append(sorted(index[name] for name in listed))
    return tuple(parts)
