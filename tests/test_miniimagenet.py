"""MiniImagenet loading from tiny synthetic copies of each on-disk layout people distribute."""

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from mamlkit.errors import MamlkitError
from mamlkit.tasks import miniimagenet
from mamlkit.tasks.miniimagenet import ImageClasses, load_miniimagenet

CLASSES = {"train": ["n02", "n01", "n03"], "val": ["n11", "n12", "n10"],
           "test": ["n21", "n20", "n22"]}
PER_CLASS = 4
SIZES = [(84, 84), (100, 60), (50, 120), (84, 84)]  # originals need not be 84x84


def write_csv_root(root, per_class=PER_CLASS):
    """Writes split CSVs and solid-colour JPEGs; returns {split: {class: [rgb per image]}}."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    colours = {}
    for split, names in CLASSES.items():
        rows, colours[split] = ["filename,label"], {}
        for name in names:
            colours[split][name] = []
            for i in range(per_class):
                rgb = tuple(int(c) for c in rng.integers(0, 256, 3))
                filename = f"{name}{i:08d}.jpg"
                image = Image.new("RGB", SIZES[i % len(SIZES)], rgb)
                image.save(root / "images" / filename, quality=95)
                rows.append(f"{filename},{name}")
                colours[split][name].append(rgb)
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return colours


def assert_one_line_error(match, root, split):
    with pytest.raises(MamlkitError, match=match) as info:
        load_miniimagenet(root, split)
    assert "\n" not in str(info.value)


def test_csv_layout_shapes_names_and_colours(tmp_path):
    colours = write_csv_root(tmp_path)
    for split, names in CLASSES.items():
        data = load_miniimagenet(tmp_path, split)
        assert isinstance(data, ImageClasses)
        assert data.images.shape == (3, PER_CLASS, 3, 84, 84) and data.images.dtype == torch.uint8
        assert data.names == sorted(names)
        for c, name in enumerate(data.names):
            means = data.images[c].float().mean(dim=(2, 3))  # [per_class, 3]
            expected = torch.tensor(colours[split][name], dtype=torch.float)
            assert torch.allclose(means, expected, atol=4)


def test_greyscale_jpeg_becomes_rgb(tmp_path):
    write_csv_root(tmp_path)
    Image.new("L", (90, 90), 200).save(tmp_path / "images" / "n0100000000.jpg")
    image = load_miniimagenet(tmp_path, "train").images[0, 0]
    assert (image.float() - 200).abs().max() <= 2


def test_decoded_csv_split_is_cached_and_reused(tmp_path, monkeypatch):
    write_csv_root(tmp_path)
    first = load_miniimagenet(tmp_path, "val")
    assert len(list((tmp_path / ".mamlkit-cache").glob("miniimagenet-val-*.npy"))) == 1

    def no_decoding(path):
        raise AssertionError(f"decoded {path} despite the cache")

    monkeypatch.setattr(miniimagenet, "_decode", no_decoding)
    assert torch.equal(load_miniimagenet(tmp_path, "val").images, first.images)
    # A changed CSV is a different split: the stale cache must not be used.
    csv = tmp_path / "val.csv"
    header, *rows = csv.read_text().splitlines()
    csv.write_text("\n".join([header, *reversed(rows)]) + "\n")
    with pytest.raises(AssertionError, match="despite the cache"):
        load_miniimagenet(tmp_path, "val")


def test_cache_falls_back_to_user_cache_when_root_is_not_writable(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_csv_root(root)
    (root / ".mamlkit-cache").write_text("a file, so the cache folder cannot be created here")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    first = load_miniimagenet(root, "test")
    assert len(list((tmp_path / "xdg" / "mamlkit").glob("*/miniimagenet-test-*.npy"))) == 1
    monkeypatch.setattr(miniimagenet, "_decode", lambda path: 1 / 0)
    assert torch.equal(load_miniimagenet(root, "test").images, first.images)


def write_cache_pickles(root, protocol=4):
    """Writes mini-imagenet-cache-*.pkl with shuffled rows; returns the arrays written."""
    rng = np.random.default_rng(1)
    written = {}
    for split, names in CLASSES.items():
        image_data = rng.integers(0, 256, (len(names) * PER_CLASS, 84, 84, 3), dtype=np.uint8)
        order = rng.permutation(len(image_data))
        class_dict = {name: order[i * PER_CLASS:(i + 1) * PER_CLASS].tolist()
                      for i, name in enumerate(names)}
        with open(root / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump({"image_data": image_data, "class_dict": class_dict}, f, protocol=protocol)
        written[split] = (image_data, class_dict)
    return written


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cache_pickle_layout_is_exact(tmp_path, protocol):
    written = write_cache_pickles(tmp_path, protocol)
    for split, (image_data, class_dict) in written.items():
        data = load_miniimagenet(tmp_path, split)
        assert data.names == sorted(class_dict)
        assert data.images.shape == (3, PER_CLASS, 3, 84, 84) and data.images.dtype == torch.uint8
        for c, name in enumerate(data.names):
            expected = image_data[class_dict[name]].transpose(0, 3, 1, 2)
            assert np.array_equal(data.images[c].numpy(), expected)


def test_category_split_pickle_layout(tmp_path):
    rng = np.random.default_rng(2)
    image_data = rng.integers(0, 256, (12, 84, 84, 3), dtype=np.uint8)
    labels = [64 + (i % 3) for i in range(12)]
    catname2label = {"n30": 65, "n31": 64, "n32": 66}
    with open(tmp_path / "miniImageNet_category_split_val.pickle", "wb") as f:
        pickle.dump({"data": image_data, "labels": labels, "catname2label": catname2label}, f)
    data = load_miniimagenet(tmp_path, "val")
    assert data.names == ["n30", "n31", "n32"]
    n31 = image_data[0::3].transpose(0, 3, 1, 2)  # label 64: rows 0, 3, 6, 9
    assert np.array_equal(data.images[1].numpy(), n31)


def test_missing_data_errors(tmp_path):
    assert_one_line_error("does not exist", tmp_path / "nowhere", "train")
    assert_one_line_error(r"expected train\.csv .*mini-imagenet-cache-train\.pkl",
                          tmp_path, "train")
    assert_one_line_error("unknown MiniImagenet split", tmp_path, "validation")
    write_csv_root(tmp_path)
    os.remove(tmp_path / "val.csv")
    assert load_miniimagenet(tmp_path, "train").images.shape[0] == 3
    assert_one_line_error(r"no MiniImagenet 'val' split .*val\.csv", tmp_path, "val")
    os.remove(tmp_path / "images" / "n1000000000.jpg")
    (tmp_path / "val.csv").write_text("filename,label\nn1000000000.jpg,n10\n")
    assert_one_line_error(r"cannot read image .*n1000000000\.jpg", tmp_path, "val")
    (tmp_path / "images").rename(tmp_path / "elsewhere")
    assert_one_line_error(r"images does not exist", tmp_path, "test")


def test_unreadable_image_and_bad_csv_errors(tmp_path):
    write_csv_root(tmp_path)
    images = tmp_path / "images"
    (images / "n0200000001.jpg").write_bytes(b"not a jpeg")
    assert_one_line_error(r"cannot read image .*n0200000001\.jpg", tmp_path, "train")
    (images / "n0200000001.jpg").write_bytes((images / "n0200000000.jpg").read_bytes())
    jpeg = (images / "n0300000000.jpg").read_bytes()
    (images / "n0300000000.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # an interrupted download
    assert_one_line_error(r"cannot read image .*n0300000000\.jpg", tmp_path, "train")
    (tmp_path / "test.csv").write_text("file,class\nx.jpg,n20\n")
    assert_one_line_error("header 'filename,label'", tmp_path, "test")


def test_mismatched_counts_are_rejected(tmp_path):
    write_csv_root(tmp_path)
    csv = tmp_path / "train.csv"
    csv.write_text("\n".join(csv.read_text().splitlines()[:-1]) + "\n")  # drop one image of a class
    assert_one_line_error(r"different image counts \(n03: 3, n01: 4\)", tmp_path, "train")

    written = write_cache_pickles(tmp_path)
    image_data, class_dict = written["val"]
    class_dict["n10"] = class_dict["n10"][:-1]
    with open(tmp_path / "mini-imagenet-cache-val.pkl", "wb") as f:
        pickle.dump({"image_data": image_data, "class_dict": class_dict}, f)
    assert_one_line_error("different image counts", tmp_path, "val")


def test_bad_pickles_are_rejected(tmp_path):
    path = tmp_path / "mini-imagenet-cache-train.pkl"
    small = {"image_data": np.zeros((3, 32, 32, 3), np.uint8), "class_dict": {"a": [0, 1, 2]}}
    path.write_bytes(pickle.dumps(small))
    assert_one_line_error(r"shape \[3, 32, 32, 3\].*expected uint8 \[N, 84, 84, 3\]",
                          tmp_path, "train")
    one = np.zeros((1, 84, 84, 3), np.uint8)
    path.write_bytes(pickle.dumps({"image_data": one, "class_dict": {"a": [5]}}))
    assert_one_line_error("rows outside", tmp_path, "train")
    path.write_bytes(pickle.dumps({"images": 1}))
    assert_one_line_error("no 'image_data' entry", tmp_path, "train")
    path.write_bytes(pickle.dumps({"image_data": np.zeros(1)})[:20])
    assert_one_line_error("cannot read", tmp_path, "train")
    path.write_bytes(pickle.dumps({"image_data": os.getcwd}))  # code, not data: never executed
    assert_one_line_error(r"references posix\.getcwd", tmp_path, "train")
