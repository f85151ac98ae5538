"""MiniImagenet (Ravi & Larochelle split: 64/16/20 classes x 600 images, 84x84 RGB) from the files
people actually have, as one uint8 tensor per split that episode samplers index directly.

Supported layouts of ``root`` (detected per split, first match wins):

- ``mini-imagenet-cache-{split}.pkl``: dicts with ``image_data`` (uint8 [N, 84, 84, 3]) and
  ``class_dict`` (class name -> row indices), the pickles that learn2learn and many repos share.
- ``miniImageNet_category_split_{train_phase_train,val,test}.pickle``: the MetaOptNet/FEAT
  pickles, dicts with ``data`` (uint8 [N, 84, 84, 3]), ``labels`` and ``catname2label``.
- ``{split}.csv`` (header ``filename,label``) plus ``images/`` holding the ImageNet JPEGs. Images
  not already 84x84 are resized with PIL's LANCZOS filter, as cbfinn/maml's ``proc_images.py``
  does. Decoding 38,400 JPEGs takes a minute or more, so the result is cached as ``.npy`` in
  ``root/.mamlkit-cache`` (or ``$XDG_CACHE_HOME/mamlkit``, default ``~/.cache/mamlkit``, when
  ``root`` is read-only), keyed by the CSV's contents; delete the cache if you replace images.

Pickles are read with an unpickler that only builds numpy arrays and plain containers, so a
tampered download cannot run code.
"""

import csv
import hashlib
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mamlkit.errors import MamlkitError
from mamlkit.tasks.image_classes import ImageClasses, user_cache_dir, write_cache

SPLITS = ("train", "val", "test")
SIZE = 84
_CATEGORY_SPLIT = {"train": "train_phase_train", "val": "val", "test": "test"}
_WHERE = ("{split}.csv with images/ (the Ravi & Larochelle split CSVs and ImageNet JPEGs) or "
          "mini-imagenet-cache-{split}.pkl (the widely shared MiniImagenet pickles)")


def load_miniimagenet(root: str | os.PathLike, split: str) -> ImageClasses:
    """Load one split (``"train"``, ``"val"`` or ``"test"``) from whichever layout ``root`` has.

    Every class must have the same number of images (600 in the real data); a split where counts
    differ is rejected rather than truncated, since that means files went missing.
    """
    if split not in SPLITS:
        raise MamlkitError(f"unknown MiniImagenet split {split!r}: use one of {', '.join(SPLITS)}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MamlkitError(f"MiniImagenet folder {root} does not exist: download "
                           f"{_WHERE.format(split=split)} and pass that folder")
    cache_pkl = root / f"mini-imagenet-cache-{split}.pkl"
    category_pkl = root / f"miniImageNet_category_split_{_CATEGORY_SPLIT[split]}.pickle"
    if cache_pkl.is_file():
        data = _unpickle(cache_pkl)
        return _group(_field(data, "image_data", cache_pkl), _field(data, "class_dict", cache_pkl),
                      cache_pkl)
    if category_pkl.is_file():
        data = _unpickle(category_pkl)
        pixels, labels = _field(data, "data", category_pkl), _field(data, "labels", category_pkl)
        label_names = {v: str(k) for k, v in data.get("catname2label", {}).items()}
        class_rows: dict[str, list[int]] = {}
        for row, label in enumerate(labels):
            class_rows.setdefault(label_names.get(label, str(label)), []).append(row)
        return _group(pixels, class_rows, category_pkl)
    if (root / f"{split}.csv").is_file():
        return _load_csv(root, split)
    raise MamlkitError(f"no MiniImagenet {split!r} split in {root}: expected "
                       f"{_WHERE.format(split=split)}")


class _ArrayUnpickler(pickle.Unpickler):
    """Refuses every global except those numpy needs to rebuild arrays."""

    _ALLOWED = {(f"numpy.{core}.{module}", name) for core in ("core", "_core")
                for module, name in [("multiarray", "_reconstruct"), ("multiarray", "scalar"),
                                     ("numeric", "_frombuffer")]}
    _ALLOWED |= {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
                 ("collections", "OrderedDict")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"it references {module}.{name}, which a MiniImagenet "
                                         "pickle never needs")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = _ArrayUnpickler(f, encoding="latin1").load()  # latin1 reads Python 2 pickles
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
            KeyError, IndexError) as e:  # what truncated or foreign pickles raise
        raise MamlkitError(f"cannot read {path} ({e}): download it again") from None
    if not isinstance(data, dict):
        raise MamlkitError(f"{path} holds a {type(data).__name__}, not a dict: download it again")
    return data


def _field(data: dict, key: str, path: Path):
    if key not in data:
        raise MamlkitError(f"{path} has no {key!r} entry (keys: {', '.join(map(str, data))}): "
                           "it is not a MiniImagenet pickle, download it again")
    return data[key]


def _group(pixels, class_rows: dict, path: Path) -> ImageClasses:
    """Gathers [N, 84, 84, 3] rows into [classes, per_class, 3, 84, 84], classes sorted by name."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (SIZE, SIZE, 3):
        raise MamlkitError(f"{path} holds images of shape {list(pixels.shape)} and dtype "
                           f"{pixels.dtype}, expected uint8 [N, {SIZE}, {SIZE}, 3]: "
                           "download it again")
    names = sorted(class_rows)
    _check_counts({name: len(class_rows[name]) for name in names}, path)
    rows = np.asarray([class_rows[name] for name in names], dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= len(pixels)):
        raise MamlkitError(f"{path} lists image rows outside its {len(pixels)} images: "
                           "download it again")
    images = np.ascontiguousarray(pixels[rows].transpose(0, 1, 4, 2, 3))
    return ImageClasses(torch.from_numpy(images), names)


def _check_counts(counts: dict[str, int], path: Path) -> None:
    if not counts:
        raise MamlkitError(f"{path} lists no images: download it again")
    if len(set(counts.values())) > 1:
        low, high = min(counts, key=counts.get), max(counts, key=counts.get)
        raise MamlkitError(f"classes in {path} have different image counts ({low}: {counts[low]}, "
                           f"{high}: {counts[high]}): restore the missing images or use the "
                           "original split files")


def _load_csv(root: Path, split: str) -> ImageClasses:
    """Decodes the split's JPEGs once; later calls read the .npy cache keyed by the CSV's bytes."""
    csv_path = root / f"{split}.csv"
    text = csv_path.read_bytes()
    lines = list(csv.reader(text.decode("utf-8-sig").splitlines()))
    if not lines or [c.strip() for c in lines[0]] != ["filename", "label"]:
        raise MamlkitError(f"{csv_path} must start with the header 'filename,label': "
                           "use the Ravi & Larochelle split CSVs")
    class_files: dict[str, list[str]] = {}
    for line_no, fields in enumerate(lines[1:], start=2):
        if not fields:
            continue
        if len(fields) != 2:
            raise MamlkitError(f"{csv_path} line {line_no} has {len(fields)} fields, expected "
                               "'filename,label': fix or re-download the CSV")
        class_files.setdefault(fields[1].strip(), []).append(fields[0].strip())
    names = sorted(class_files)
    _check_counts({name: len(class_files[name]) for name in names}, csv_path)
    shape = (len(names), len(class_files[names[0]]), 3, SIZE, SIZE)
    cache_name = f"miniimagenet-{split}-{SIZE}-{hashlib.sha256(text).hexdigest()[:16]}.npy"
    cache_dirs = [root / ".mamlkit-cache", user_cache_dir(root)]
    for cache_dir in cache_dirs:
        try:
            cached = np.load(cache_dir / cache_name)
        except (OSError, ValueError):
            continue
        if cached.shape == shape and cached.dtype == np.uint8:
            return ImageClasses(torch.from_numpy(cached), names)

    images_dir = root / "images"
    if not images_dir.is_dir():
        raise MamlkitError(f"{images_dir} does not exist: put the MiniImagenet JPEGs named in "
                           f"{csv_path.name} there")
    images = np.empty(shape, dtype=np.uint8)
    flat = images.reshape(-1, 3, SIZE, SIZE)  # a view: decoded images land in place
    files = [images_dir / f for name in names for f in class_files[name]]
    with ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:  # PIL releases the GIL
        for flat_index, pixels in enumerate(pool.map(_decode, files)):
            flat[flat_index] = pixels.transpose(2, 0, 1)
    for cache_dir in cache_dirs:
        if write_cache(cache_dir / cache_name, lambda handle: np.save(handle, images)):
            break
    return ImageClasses(torch.from_numpy(images), names)


def _decode(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")  # a few ImageNet JPEGs are greyscale or CMYK
    except OSError as e:  # missing, truncated or not an image
        raise MamlkitError(f"cannot read image {path} ({type(e).__name__}): restore the file "
                           "from the MiniImagenet images") from None
    if image.size != (SIZE, SIZE):
        image = image.resize((SIZE, SIZE), resample=Image.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


