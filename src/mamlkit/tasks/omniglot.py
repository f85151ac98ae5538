"""Omniglot (1,623 characters x 20 drawers) as one uint8 tensor [1623, 20, 1, 28, 28], and the
character splits MAML papers use.

``root`` holds ``images_background`` and ``images_evaluation``, each as the official zip or as
the unpacked folder (``<set>/<Alphabet>/characterNN/*.png``). Images are processed as the
official MAML code does: its ``resize_images.py`` calls PIL's ``resize((28, 28), LANCZOS)`` on
the 1-bit 105x105 PNGs, which Pillow silently performs with NEAREST for mode "1" images, so the
28x28 images stay binary; the data generator then inverts them (``1 - image``). Here strokes are
255 and background 0; :class:`~mamlkit.tasks.episodes.EpisodeSampler` scales to [0, 1].

Decoding the 32,460 PNGs takes a few seconds, so the tensor is cached as ``.npz`` in
``root/.mamlkit-cache`` (or ``$XDG_CACHE_HOME/mamlkit/<hash of root>``, default ``~/.cache``,
when ``root`` is read-only), keyed by the sources' sizes and modification times, so replacing a
file rebuilds it.
"""

import contextlib
import functools
import hashlib
import json
import os
import random
import urllib.request
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mamlkit.errors import MamlkitError
from mamlkit.tasks.image_classes import ImageClasses, cache_folders, cached_classes

SETS = ("images_background", "images_evaluation")
EXPECTED_CHARACTERS = {"images_background": 964, "images_evaluation": 659}
DRAWERS = 20
RAW_SIZE = 105
SIZE = 28
URL = "https://github.com/brendenlake/omniglot/raw/master/python/{}.zip"
_CACHE_VERSION = 1

# The "Vinyals" split as published with Prototypical Networks (jakesnell/prototypical-networks,
# data/omniglot/splits/vinyals), by alphabet: 1028 train / 172 val / 423 test characters.
VINYALS_VAL_ALPHABETS = frozenset({
    "Armenian", "Bengali", "Early_Aramaic", "Hebrew", "Mkhedruli_(Georgian)"})
VINYALS_TEST_ALPHABETS = frozenset({
    "Kannada", "Keble", "Malayalam", "Manipuri", "Mongolian", "Old_Church_Slavonic_(Cyrillic)",
    "Oriya", "Sylheti", "Syriac_(Serto)", "Tengwar", "Tibetan", "ULOG"})
VINYALS_TEST_CHARACTERS = frozenset(f"Gurmukhi/character{i}" for i in range(42, 46))

_MISSING_HINT = "pass --data PATH or --download"


def load_omniglot(root: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                  workers: int | None = None,
                  expected: Mapping[str, int] = EXPECTED_CHARACTERS) -> ImageClasses:
    """Loads all characters, background alphabets first, each set sorted by alphabet and
    character; ``names[c]`` is ``"<Alphabet>/characterNN"`` and images[c, d] is drawer d.

    ``cache_dir`` overrides where the decoded tensor is cached; ``workers`` processes decode the
    PNGs the first time (default: all cores). ``expected`` is the number of characters each set
    must hold, so a partial download is reported instead of silently training on less.
    """
    root = Path(root).expanduser()
    if not any((root / f"{s}.zip").is_file() or (root / s).is_dir() for s in SETS):
        raise MamlkitError(f"Omniglot not found at {root}: expected images_background/ and "
                           f"images_evaluation/ (folders or .zip); {_MISSING_HINT}")
    sources = [_source(root, name) for name in SETS]
    stamp = json.dumps([_CACHE_VERSION, SIZE, dict(expected), [s for _, s in sources]])
    cache_name = f"omniglot-{SIZE}-{hashlib.sha256(stamp.encode()).hexdigest()[:16]}.npz"

    def build() -> ImageClasses:
        names, jobs = [], []
        count = (os.cpu_count() or 1) if workers is None else max(1, workers)
        for name, (location, _) in zip(SETS, sources):
            characters = _characters(root, name, location, expected[name])
            members = [member for files in characters.values() for member in files]
            step = -(-len(members) // count)  # one job per worker and set: each opens the zip once
            jobs += [(str(location), members[i:i + step]) for i in range(0, len(members), step)]
            names += characters
        if count > 1:
            with ProcessPoolExecutor(min(count, len(jobs))) as pool:
                chunks = list(pool.map(_decode_job, jobs))
        else:
            chunks = [_decode_job(job) for job in jobs]
        images = np.concatenate(chunks).reshape(len(names), DRAWERS, 1, SIZE, SIZE)
        return ImageClasses(torch.from_numpy(images), names)

    return cached_classes(cache_folders(root, cache_dir), cache_name, build)


def _source(root: Path, name: str) -> tuple[Path, list]:
    """One set's zip (preferred) or folder, and a stamp of its files' sizes and mtimes."""
    archive, folder = root / f"{name}.zip", root / name
    if archive.is_file():
        info = archive.stat()
        return archive, [archive.name, info.st_size, info.st_mtime_ns]
    if folder.is_dir():
        stats = ((rel, os.stat(os.path.join(root, rel))) for rel in _files(root, name))
        return root, sorted([rel, info.st_size, info.st_mtime_ns] for rel, info in stats)
    raise MamlkitError(f"Omniglot at {root} lacks {name} (expected {name}.zip or {name}/); "
                       f"{_MISSING_HINT}")


def _characters(root: Path, name: str, location: Path, expected: int) -> dict[str, list[str]]:
    """Maps each "<Alphabet>/characterNN" of a set, sorted, to its sorted PNG members."""
    if location.is_file():
        try:
            with zipfile.ZipFile(location) as archive:
                members = archive.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise MamlkitError(f"{location} is not a readable zip ({e}): download it again with "
                               "--download") from None
    else:
        members = _files(root, name)
    characters: dict[str, list[str]] = {}
    for member in sorted(members, key=lambda member: member.split("/")):
        parts = member.split("/")
        if (len(parts) == 4 and parts[0] == name and parts[3].endswith(".png")
                and not any(part.startswith(".") for part in parts)):
            characters.setdefault(f"{parts[1]}/{parts[2]}", []).append(member)
    where = f"{name} in {root}"
    if len(characters) != expected:
        raise MamlkitError(f"{where} has {len(characters)} characters, expected {expected} "
                           f"({name}/<Alphabet>/characterNN/*.png): the data is incomplete, "
                           "download it again with --download")
    for character, files in characters.items():
        if len(files) != DRAWERS:
            raise MamlkitError(f"character {character} of {where} has {len(files)} images, "
                               f"expected {DRAWERS}: download the data again with --download")
    return characters


def _files(root: Path, name: str) -> list[str]:
    """Every file under root/name as a root-relative "a/b/c" path (os.walk: 3x faster than
    pathlib for the 32,460 files)."""
    return [f"{prefix}/{file}" for folder, _, files in os.walk(root / name)
            for prefix in [Path(folder).relative_to(root).as_posix()] for file in files]


def _decode_job(job: tuple[str, list[str]]) -> np.ndarray:
    """Decodes members of one zip (or of the root folder): top level, so processes can run it."""
    location, members = job
    out = np.empty((len(members), SIZE, SIZE), dtype=np.uint8)
    with contextlib.ExitStack() as stack:
        if os.path.isfile(location):
            read, sep = stack.enter_context(zipfile.ZipFile(location)).read, ":"
        else:
            read, sep = functools.partial(_read_file, location), "/"
        for i, member in enumerate(members):
            try:
                data = read(member)
            except (zipfile.BadZipFile, zlib.error, OSError) as e:
                raise MamlkitError(f"cannot read Omniglot image {location}{sep}{member} ({e}): "
                                   "download the data again with --download") from None
            out[i] = _decode_png(data, f"{location}{sep}{member}")
    return out


def _read_file(folder: str, member: str) -> bytes:
    with open(os.path.join(folder, member), "rb") as f:
        return f.read()


def _decode_png(data: bytes, where: str) -> np.ndarray:
    """One 105x105 PNG -> 28x28 uint8 with strokes 255, as the official MAML preprocessing."""
    try:
        with Image.open(BytesIO(data)) as image:
            image.load()
    except (OSError, SyntaxError, ValueError) as e:  # what truncated or foreign files raise
        raise MamlkitError(f"Omniglot image {where} is unreadable ({e}): download the data "
                           "again with --download") from None
    if image.size != (RAW_SIZE, RAW_SIZE):
        raise MamlkitError(f"Omniglot image {where} is {image.size[0]}x{image.size[1]}, expected "
                           f"{RAW_SIZE}x{RAW_SIZE}: use the original Omniglot PNGs")
    if image.mode != "1":
        image = image.convert("L").convert("1", dither=Image.Dither.NONE)
    small = np.asarray(image.resize((SIZE, SIZE), Image.Resampling.NEAREST))
    return np.where(small, 0, 255).astype(np.uint8)  # ink is black (False) in the PNGs


def decode_file(path: Path) -> np.ndarray:
    """One original 105x105 Omniglot PNG as the loader reads it, uint8 [1, 28, 28] (for new tasks)."""
    return _decode_png(Path(path).read_bytes(), str(path))[None]


def download_omniglot(dest: str | os.PathLike) -> Path:
    """Fetches the official images_background.zip and images_evaluation.zip into ``dest``
    (skipping ones already there) and returns ``dest``, ready for :func:`load_omniglot`."""
    dest = Path(dest).expanduser()
    for name in SETS:
        target, url = dest / f"{name}.zip", URL.format(name)
        if target.is_file():
            continue
        part = target.with_name(f"{target.name}.part")
        try:
            dest.mkdir(parents=True, exist_ok=True)
            urllib.request.urlretrieve(url, part)
        except OSError as e:  # URLError and HTTPError are OSErrors
            with contextlib.suppress(OSError):
                part.unlink(missing_ok=True)
            raise MamlkitError(f"could not download {url} into {dest} ({e}): check the network, "
                               f"or fetch the zip by hand and pass --data {dest}") from None
        if not zipfile.is_zipfile(part):
            part.unlink()
            raise MamlkitError(f"{url} did not return a zip file: try again later, or fetch it "
                               f"by hand and pass --data {dest}")
        os.replace(part, target)
    return dest


def omniglot_split(characters: int | Sequence[str] = 1623, kind: str = "paper", seed: int = 1,
                   num_train: int = 1200, num_val: int = 100,
                   ) -> tuple[list[int], list[int], list[int]]:
    """Returns sorted (train, val, test) character indices into :func:`load_omniglot`'s order.

    ``"paper"`` (MAML, Santoro et al.): shuffles all character indices with Python's
    ``random.Random(seed).shuffle`` and takes the first ``num_train - num_val`` (1100) for
    meta-training, the next ``num_val`` (100) for validation and the rest (423) for testing,
    which is what cbfinn/maml's data_generator.py does (``random.seed(1)``, 1200 "training"
    characters of which the last 100 validate). The official code shuffles ``os.listdir`` order,
    which is filesystem-dependent, so its exact characters cannot be reproduced; ours are fixed
    by ``seed``. Beware that the official code, with ``--test_set``, reports accuracy on those
    100 validation characters, and validates on the 423 others during training; here val is
    for checkpoint selection and test is the 423, the paper's protocol. ``characters`` may be
    a count or the loader's names. Pass ``num_val=0`` to meta-train on all 1200.

    ``"vinyals"`` (Matching/Prototypical Networks): 1028 train / 172 val / 423 test, the same
    characters as Prototypical Networks' published split files: 5 validation alphabets, 12 test
    alphabets plus Gurmukhi's characters 42-45 (its 1-41 train). Needs the names
    (``load_omniglot(...).names``). Those papers add each rotation as a new class; the
    sampler's ``rotations=True`` instead turns each class of a task at random, as MAML does.
    """
    if kind == "paper":
        count = characters if isinstance(characters, int) else len(characters)
        if not 0 <= num_val < num_train <= count:
            raise MamlkitError(f"the paper split needs 0 <= num_val ({num_val}) < num_train "
                               f"({num_train}) <= characters ({count}): lower num_train")
        order = list(range(count))
        random.Random(seed).shuffle(order)
        parts = (order[:num_train - num_val], order[num_train - num_val:num_train],
                 order[num_train:])
        return tuple(sorted(part) for part in parts)
    if kind == "vinyals":
        if isinstance(characters, int):
            raise MamlkitError("the vinyals split is defined by alphabet: pass the character "
                               "names (load_omniglot(...).names), not a count")
        train, val, test = [], [], []
        for index, name in enumerate(characters):
            alphabet = name.split("/")[0]
            if alphabet in VINYALS_VAL_ALPHABETS:
                val.append(index)
            elif alphabet in VINYALS_TEST_ALPHABETS or name in VINYALS_TEST_CHARACTERS:
                test.append(index)
            else:
                train.append(index)
        return train, val, test
    raise MamlkitError(f"unknown Omniglot split {kind!r}: use 'paper' or 'vinyals'")
