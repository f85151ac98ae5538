"""Omniglot loading (zips, folders, cache, broken data), download errors and splits.

Most tests use a tiny synthetic Omniglot (3 alphabets, 7 characters, 1-bit 105x105 PNGs); one
loads the real data when ../shared/data/omniglot is present.
"""

import shutil
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mamlkit.errors import MamlkitError
from mamlkit.tasks import omniglot
from mamlkit.tasks.omniglot import download_omniglot, load_omniglot, omniglot_split

LAYOUT = {"images_background": {"Alpha": 3, "Beta": 2}, "images_evaluation": {"Gamma": 2}}
EXPECTED = {"images_background": 5, "images_evaluation": 2}
NAMES = ["Alpha/character01", "Alpha/character02", "Alpha/character03", "Beta/character01",
         "Beta/character02", "Gamma/character01", "Gamma/character02"]
from conftest import REAL_OMNIGLOT as REAL  # noqa: E402


def draw(character: int, drawer: int, size: int = 105) -> Image.Image:
    """A white 1-bit image with a black box whose shape depends on character and drawer."""
    image = Image.new("1", (size, size), 1)
    ImageDraw.Draw(image).rectangle([8, 12, 20 + 3 * drawer, 20 + 9 * character], fill=0)
    return image


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """The synthetic data as folders (template/folders) and as zips (template/zips); character
    NAMES[i] is drawn by draw(i + 1, drawer)."""
    base = tmp_path_factory.mktemp("omniglot")
    folders, zips = base / "folders", base / "zips"
    zips.mkdir()
    index = 0
    for set_name, alphabets in LAYOUT.items():
        for alphabet, count in alphabets.items():
            for character in range(1, count + 1):
                index += 1
                folder = folders / set_name / alphabet / f"character{character:02d}"
                folder.mkdir(parents=True)
                for drawer in range(1, 21):
                    draw(index, drawer).save(folder / f"{index:04d}_{drawer:02d}.png")
        with zipfile.ZipFile(zips / f"{set_name}.zip", "w") as archive:
            for png in sorted((folders / set_name).rglob("*.png")):
                archive.write(png, png.relative_to(folders).as_posix())
    return base


@pytest.fixture(params=["zips", "folders"])
def root(request, template, tmp_path) -> Path:
    """A writable copy of the synthetic data in one layout."""
    return Path(shutil.copytree(template / request.param, tmp_path / "data"))


def refuse_decoding(*args):
    raise AssertionError("PNGs decoded although a cache exists")


def one_line_error(match: str, call, *args, **kwargs) -> str:
    with pytest.raises(MamlkitError, match=match) as error:
        call(*args, **kwargs)
    assert "\n" not in str(error.value)
    return str(error.value)


def test_loads_like_the_official_preprocessing(root):
    data = load_omniglot(root, expected=EXPECTED, workers=1)
    assert data.names == NAMES
    assert data.images.shape == (7, 20, 1, 28, 28) and data.images.dtype == torch.uint8
    for character, drawer in [(0, 1), (2, 20), (4, 7), (6, 13)]:
        # cbfinn/maml: PIL resize((28, 28), LANCZOS) of the 1-bit PNG, then 1 - image.
        official = np.asarray(draw(character + 1, drawer).resize((28, 28), Image.LANCZOS))
        np.testing.assert_array_equal(data.images[character, drawer - 1, 0].numpy(),
                                      (1 - official.astype(np.float32)) * 255)


def test_zips_and_folders_and_workers_agree(template, tmp_path):
    zipped = load_omniglot(template / "zips", expected=EXPECTED, workers=1, cache_dir=tmp_path)
    unpacked = load_omniglot(template / "folders", expected=EXPECTED, workers=2,
                             cache_dir=tmp_path)
    assert zipped.names == unpacked.names == NAMES
    assert (zipped.images == unpacked.images).all()
    assert set(zipped.images.unique().tolist()) == {0, 255}


def test_second_load_reads_the_cache(root, monkeypatch):
    first = load_omniglot(root, expected=EXPECTED, workers=1)
    assert len(list((root / ".mamlkit-cache").glob("omniglot-28-*.npz"))) == 1
    monkeypatch.setattr(omniglot, "_decode_png", refuse_decoding)
    second = load_omniglot(root, expected=EXPECTED, workers=1)
    assert second.names == first.names and (second.images == first.images).all()


def test_changed_sources_rebuild_the_cache(template, tmp_path):
    root = Path(shutil.copytree(template / "folders", tmp_path / "data"))
    before = load_omniglot(root, expected=EXPECTED, workers=1)
    draw(1, 1).save(root / "images_evaluation/Gamma/character02/0007_20.png")
    after = load_omniglot(root, expected=EXPECTED, workers=1)
    assert not (after.images[6, 19] == before.images[6, 19]).all()
    assert (after.images[:6] == before.images[:6]).all()


def test_read_only_root_caches_in_the_user_cache(root, tmp_path, monkeypatch):
    (root / ".mamlkit-cache").write_text("a file, so no cache folder can be made here")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    first = load_omniglot(root, expected=EXPECTED, workers=1)
    assert len(list((tmp_path / "xdg" / "mamlkit").glob("*/omniglot-28-*.npz"))) == 1
    monkeypatch.setattr(omniglot, "_decode_png", refuse_decoding)
    assert (load_omniglot(root, expected=EXPECTED, workers=1).images == first.images).all()


def test_explicit_cache_dir(template, tmp_path):
    load_omniglot(template / "zips", expected=EXPECTED, workers=1, cache_dir=tmp_path / "c")
    assert len(list((tmp_path / "c").glob("omniglot-28-*.npz"))) == 1


def test_missing_data(tmp_path, root):
    message = one_line_error("Omniglot not found", load_omniglot, tmp_path / "nowhere")
    assert "--download" in message and "images_background" in message
    shutil.rmtree(root / "images_evaluation", ignore_errors=True)
    (root / "images_evaluation.zip").unlink(missing_ok=True)
    one_line_error("lacks images_evaluation", load_omniglot, root, expected=EXPECTED)


def test_wrong_character_count(root):
    one_line_error("has 5 characters, expected 964", load_omniglot, root)


def test_missing_image(template, tmp_path):
    root = Path(shutil.copytree(template / "folders", tmp_path / "data"))
    (root / "images_background/Beta/character01/0004_05.png").unlink()
    one_line_error("Beta/character01 .* has 19 images, expected 20", load_omniglot, root,
                   expected=EXPECTED)


def test_corrupt_and_wrong_size_pngs(template, tmp_path):
    root = Path(shutil.copytree(template / "folders", tmp_path / "data"))
    png = root / "images_background/Alpha/character02/0002_03.png"  # NAMES[1]
    png.write_bytes(b"not a png")
    message = one_line_error("unreadable", load_omniglot, root, expected=EXPECTED, workers=1)
    assert "Alpha/character02/0002_03.png" in message
    draw(2, 3, size=100).save(png)
    one_line_error("is 100x100, expected 105x105", load_omniglot, root, expected=EXPECTED,
                   workers=1)


def test_corrupt_zip(template, tmp_path):
    root = Path(shutil.copytree(template / "zips", tmp_path / "data"))
    (root / "images_background.zip").write_bytes(b"PK but not really a zip")
    one_line_error("not a readable zip", load_omniglot, root, expected=EXPECTED)


def test_download_failure_is_one_line(tmp_path, monkeypatch):
    def offline(url, filename):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(omniglot.urllib.request, "urlretrieve", offline)
    message = one_line_error("could not download", download_omniglot, tmp_path / "dl")
    assert "images_background.zip" in message
    assert not list((tmp_path / "dl").iterdir())  # no partial files left behind


def test_download_writes_loadable_zips(template, tmp_path, monkeypatch):
    def fake(url, filename):  # stands in for the network: serves the synthetic zips
        shutil.copy(template / "zips" / url.rsplit("/", 1)[1], filename)

    monkeypatch.setattr(omniglot.urllib.request, "urlretrieve", fake)
    root = download_omniglot(tmp_path / "dl")
    assert sorted(p.name for p in root.iterdir()) == ["images_background.zip",
                                                      "images_evaluation.zip"]
    assert load_omniglot(root, expected=EXPECTED, workers=1).names == NAMES


def test_paper_split():
    train, val, test = omniglot_split(1623, "paper", seed=1)
    assert (len(train), len(val), len(test)) == (1100, 100, 423)
    assert sorted(train + val + test) == list(range(1623))
    assert omniglot_split(1623, "paper", seed=1) == (train, val, test)
    assert omniglot_split(1623, "paper", seed=2)[2] != test
    assert [len(part) for part in omniglot_split(NAMES, "paper", num_train=5, num_val=1)] == \
        [4, 1, 2]
    assert [len(part) for part in omniglot_split(1623, num_val=0)] == [1200, 0, 423]
    one_line_error("lower num_train", omniglot_split, 100)


def test_vinyals_split_by_alphabet():
    names = ["Latin/character01", "Hebrew/character01", "Gurmukhi/character41",
             "Gurmukhi/character42", "Kannada/character07", "Angelic/character01"]
    assert omniglot_split(names, "vinyals") == ([0, 2, 5], [1], [3, 4])
    one_line_error("pass the character names", omniglot_split, 1623, "vinyals")
    one_line_error("unknown Omniglot split", omniglot_split, 1623, "random")


@pytest.mark.skipif(not (REAL / "images_background.zip").is_file(), reason="no real Omniglot")
def test_real_omniglot(request, tmp_path):
    pytest_cache = getattr(request.config, "cache", None)  # absent with -p no:cacheprovider
    cache = pytest_cache.mkdir("mamlkit-omniglot") if pytest_cache else tmp_path  # decode once
    data = load_omniglot(REAL, cache_dir=cache)
    assert data.images.shape == (1623, 20, 1, 28, 28)
    assert data.names[0] == "Alphabet_of_the_Magi/character01"
    assert data.names[964] == "Angelic/character01" and data.names[-1] == "ULOG/character26"
    assert 0.02 < data.images.float().mean() / 255 < 0.2  # inverted: strokes are the minority
    assert [len(part) for part in omniglot_split(data.names, "vinyals")] == [1028, 172, 423]
