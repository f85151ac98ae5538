"""Any folder of class folders as a few-shot data set: ``DIR/<class>/*.png|jpg|...``, or with one
grouping level above the classes (as Omniglot's alphabets), ``DIR/<group>/<class>/*``.

Images become grayscale (1 channel) or RGB (3), resized to ``size`` x ``size`` with PIL's LANCZOS
filter, in one uint8 tensor [classes, most images per class, C, H, W]; classes may hold different
numbers of images (``counts``; the rest is padding that episodes never draw). Decoding is done once
and cached as ``.npz`` in ``DIR/.mamlkit-cache`` (or the user's cache when DIR is read-only), keyed
by the files' sizes and modification times, ``size`` and ``channels``.
"""

import hashlib
import json
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mamlkit.errors import MamlkitError
from mamlkit.tasks.image_classes import ImageClasses, cache_folders, cached_classes

SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
MODES = {1: "L", 3: "RGB"}
_CACHE_VERSION = 1
_LAYOUT = "DIR/<class>/*.png (or DIR/<group>/<class>/*.png)"

Decode = Callable[[Path], np.ndarray]  # an image file -> uint8 [C, H, W]


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    return [p for p in _visible(folder) if p.is_file() and p.suffix.lower() in SUFFIXES]


def class_folders(root: str | os.PathLike) -> dict[str, list[Path]]:
    """Maps each class name (``"<class>"`` or ``"<group>/<class>"``), sorted, to its sorted image files."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MamlkitError(f"image folder {root} does not exist: pass a folder laid out as {_LAYOUT}")
    top = [p for p in _visible(root) if p.is_dir()]
    if not top:
        raise MamlkitError(f"{root} has no class folders: lay the images out as {_LAYOUT}")
    grouped = not _images_in(top[0]) and any(p.is_dir() for p in _visible(top[0]))
    classes: dict[str, list[Path]] = {}
    for folder in top:
        members = [p for p in _visible(folder) if p.is_dir()] if grouped else [folder]
        if grouped and _images_in(folder):
            raise MamlkitError(f"{folder} holds images but {top[0]} holds class folders: use one layout, "
                               f"{_LAYOUT}")
        for member in members:
            files = _images_in(member)
            if not files:
                raise MamlkitError(f"class folder {member} has no images ({', '.join(sorted(SUFFIXES))}): "
                                   "add images or delete the folder")
            classes[member.relative_to(root).as_posix()] = files
    return classes


def image_decoder(size: int, channels: int) -> Decode:
    """Reads any image PIL opens as ``channels`` (1: grayscale, 3: RGB) at ``size`` x ``size``."""
    if channels not in MODES:
        raise MamlkitError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")

    def decode(path: Path) -> np.ndarray:
        image = open_image(path).convert(MODES[channels])
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.LANCZOS)
        return np.array(image, dtype=np.uint8).reshape(size, size, channels).transpose(2, 0, 1)

    return decode


def open_image(path: Path) -> Image.Image:
    """The loaded image, or one line naming the file that cannot be read."""
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise MamlkitError(f"image {path} is unreadable ({e}): replace it or delete it") from None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError) as e:
        raise MamlkitError(f"image {path} is unreadable ({e}): replace it or delete it") from None


def decode_all(files: list[Path], decode: Decode, workers: int | None = None,
               target: str = "the model's input size") -> np.ndarray:
    """Every file decoded, in order, [n, C, H, W]; says once (on stderr) when the originals differ in
    size, since each is then resized to ``target``."""
    sizes = sorted({image_size(path) for path in files})
    if len(sizes) > 1:
        shown = ", ".join(f"{w}x{h}" for w, h in sizes[:4]) + (", ..." if len(sizes) > 4 else "")
        print(f"mamlkit: note: the images under {Path(os.path.commonpath(files))} have mixed sizes ({shown}); "
              f"each is resized to {target}", file=sys.stderr)
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        return np.stack(list(pool.map(decode, files)))


def load_image_folder(root: str | os.PathLike, size: int = 28, channels: int = 1, *,
                      cache_dir: str | os.PathLike | None = None, workers: int | None = None) -> ImageClasses:
    """Every class of ``root`` (see the module's docstring), with ``counts`` of images per class."""
    root = Path(root).expanduser()
    classes = class_folders(root)
    files = [path for paths in classes.values() for path in paths]
    stamp = [_CACHE_VERSION, size, channels, [[p.relative_to(root).as_posix(), s.st_size, s.st_mtime_ns]
                                              for p in files for s in [p.stat()]]]
    cache_name = f"images-{size}-{channels}-{hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]}.npz"

    def build() -> ImageClasses:
        decoded = decode_all(files, image_decoder(size, channels), workers, target=f"{size}x{size}")
        counts = np.array([len(paths) for paths in classes.values()])
        images = np.zeros((len(classes), counts.max(), channels, size, size), dtype=np.uint8)
        starts = np.concatenate([[0], np.cumsum(counts)])
        for c in range(len(classes)):
            images[c, :counts[c]] = decoded[starts[c]:starts[c + 1]]
        return ImageClasses(torch.from_numpy(images), list(classes), torch.from_numpy(counts))

    return cached_classes(cache_folders(root, cache_dir), cache_name, build)


def read_images(root: str | os.PathLike, decode: Decode) -> tuple[torch.Tensor, list[str] | None, list[str]]:
    """A labelled folder (class subfolders) or a flat folder of images, for adapting and predicting:
    (uint8 images [n, C, H, W], each image's class name or None when unlabelled, each image's path
    relative to ``root``)."""
    root = Path(root).expanduser()
    flat = _images_in(root) if root.is_dir() else []
    if flat:
        labels, files = None, flat
    else:
        classes = class_folders(root)
        labels = [name for name, paths in classes.items() for _ in paths]
        files = [path for paths in classes.values() for path in paths]
    images = torch.from_numpy(decode_all(files, decode))
    return images, labels, [path.relative_to(root).as_posix() for path in files]
