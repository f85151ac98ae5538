"""Your own image folder end to end: train with `mamlkit train images`, adapt and predict, load the
adapted weights into a plain nn.Module in a process without mamlkit, and the one-line errors."""

import csv
import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mamlkit.cli import main
from mamlkit.deploy import adapt_run, predict_run
from mamlkit.errors import MamlkitError
from mamlkit.tasks.episodes import EpisodeSampler
from mamlkit.tasks.image_folder import class_folders, load_image_folder
from mamlkit.tasks.splits import split_names

CLASSES = 10


def draw(path, c: int, i: int, size: int = 24, mode: str = "L") -> None:
    """Class c is a bar at a class-specific place; image i moves it a little."""
    image = Image.new(mode, (size, size), "white")
    ImageDraw.Draw(image).rectangle([c * size // 12, 2 + i, c * size // 12 + 3, size - 3 - i], fill="black")
    image.save(path)


def make_tree(root, classes=CLASSES, per_class=5, grouped=True):
    """classes class folders (under two groups), per_class images each; class 3 has one extra JPEG."""
    for c in range(classes):
        folder = root / (f"group{c % 2}/class{c:02d}" if grouped else f"class{c:02d}")
        folder.mkdir(parents=True)
        for i in range(per_class):
            draw(folder / f"{i}.png", c, i)
    draw(root / ("group1/class03" if grouped else "class03") / "extra.jpg", 3, 1, mode="RGB")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny 3-way 1-shot run on a 10-class tree: (tree, run folder)."""
    base = tmp_path_factory.mktemp("own-images")
    tree = make_tree(base / "tree")
    run = base / "run"
    argv = ["train", "images", "--data", str(tree), "--ways", "3", "--split-fractions", "0.4", "0.3", "0.3",
            "--image-size", "16", "--meta-batch", "2", "--iterations", "4", "--validate-every", "2",
            "--validation-tasks", "4", "--eval-tasks", "6", "--threads", "1", "--out", str(run)]
    assert main(argv) == 0
    return tree, run


def task_folders(tree, target, classes, images):
    """A support or query folder: the given images of the given classes of the tree."""
    for c in classes:
        source = next(tree.glob(f"**/class{c:02d}"))
        (target / source.name).mkdir(parents=True)
        for i in images:
            shutil.copy(source / f"{i}.png", target / source.name / f"{i}.png")
    return target


def test_images_run_has_the_fewshot_outputs(trained):
    tree, run = trained
    results = json.loads((run / "results.json").read_text())
    assert len(results["accuracy"]) == 4 and results["eval_tasks"] == 6
    assert results["checkpoint_iteration"] in (2, 4)
    assert (run / "learning_curve.png").stat().st_size > 0
    assert list((tree / ".mamlkit-cache").glob("images-16-1-*.npz"))  # decoded once, cached


def test_folder_loader_reads_groups_counts_and_the_cache(tmp_path, capsys):
    tree = make_tree(tmp_path / "tree", classes=4, per_class=3, grouped=False)
    data = load_image_folder(tree, size=8, channels=3)
    assert data.names == ["class00", "class01", "class02", "class03"]
    assert data.images.shape == (4, 4, 3, 8, 8) and data.counts.tolist() == [3, 3, 3, 4]
    assert not data.images[0, 3].any()  # padding
    assert not capsys.readouterr().err  # one size: nothing to say
    (tree / "class00" / "0.png").unlink()
    draw(tree / "class00" / "0.png", 0, 0, size=30)
    again = load_image_folder(tree, size=8, channels=3)
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 1 and "mixed sizes (24x24, 30x30); each is resized to 8x8" in said[0]
    load_image_folder(tree, size=8, channels=3)
    assert not capsys.readouterr().err  # decoded once: the cache says nothing again
    assert not torch.equal(again.images[0, 0], data.images[0, 0])  # a changed file rebuilds the cache
    grouped = class_folders(make_tree(tmp_path / "grouped", classes=4, per_class=3))
    assert list(grouped) == ["group0/class00", "group0/class02", "group1/class01", "group1/class03"]


def test_classes_of_different_sizes_never_draw_padding(tmp_path):
    images = torch.zeros(3, 6, 1, 2, 2, dtype=torch.uint8)
    for c, count in enumerate((2, 6, 3)):
        images[c, :count] = torch.arange(1, count + 1, dtype=torch.uint8)[:, None, None, None]
    sampler = EpisodeSampler(images, [0, 1, 2], ways=3, shots=1, queries=1, counts=[2, 6, 3])
    support_x, _, query_x, _ = sampler.sample(200, torch.Generator().manual_seed(0))
    assert (torch.cat([support_x, query_x], 1) > 0).all()


def test_split_by_fractions_and_by_files(tmp_path):
    names = [f"c{i}" for i in range(10)]
    train, val, test = split_names(names, (0.6, 0.2, 0.2), seed=3)
    assert (len(train), len(val), len(test)) == (6, 2, 2) and sorted(train + val + test) == list(range(10))
    assert split_names(names, (0.6, 0.2, 0.2), seed=3) == (train, val, test)
    assert split_names(names, (0.6, 0.2, 0.2), seed=4) != (train, val, test)
    for split, listed in (("train", "c0\nc1\n"), ("val", "c2\n"), ("test", "c9\n")):
        (tmp_path / f"{split}.txt").write_text(listed)
    assert split_names(names, files=tmp_path) == ([0, 1], [2], [9])
    (tmp_path / "test.txt").write_text("c10\n")
    with pytest.raises(MamlkitError, match="names 'c10'"):
        split_names(names, files=tmp_path)


def test_adapted_weights_load_into_a_plain_module_without_mamlkit(trained, tmp_path):
    tree, run = trained
    support = task_folders(tree, tmp_path / "support", (0, 4, 8), images=(0,))
    query = task_folders(tree, tmp_path / "query", (0, 4, 8), images=(1, 2, 3))
    outcome = predict_run(run, support, query, out=tmp_path / "predictions.csv")
    rows = list(csv.DictReader(open(outcome["path"])))
    assert outcome["items"] == len(rows) == 9 and set(rows[0]) == {"item", "prediction", "probability", "label"}
    assert outcome["accuracy"] == sum(r["prediction"] == r["label"] for r in rows) / 9
    assert {r["label"] for r in rows} == {"class00", "class04", "class08"}
    for suffix in (".pt", ".safetensors"):
        weights = adapt_run(run, support, out=tmp_path / f"adapted{suffix}")
        assert json.loads((tmp_path / f"adapted{suffix}.json").read_text())["classes"] == sorted(
            {r["label"] for r in rows})
        # The query images as the run reads them (decoded by mamlkit here, in this process).
        from mamlkit.experiments.fewshot import FewShotConfig, image_decoder
        decode = image_decoder(FewShotConfig(dataset="images", image_size=16))
        x = torch.stack([torch.from_numpy(decode(query / r["item"])) for r in rows]).float() / 255
        torch.save(x, tmp_path / "x.pt")
        probabilities = plain_torch(PLAIN_CONV, weights, tmp_path / "x.pt")
        assert probabilities.max(dim=1).values.numpy() == pytest.approx(
            [float(r["probability"]) for r in rows], abs=2e-6)


def test_adapt_and_predict_from_the_command_line(trained, tmp_path, capsys):
    """`mamlkit adapt` / `mamlkit predict` write what adapt_run / predict_run write, and say where."""
    tree, run = trained
    support = task_folders(tree, tmp_path / "support", (0, 4, 8), images=(0,))
    query = task_folders(tree, tmp_path / "query", (0, 4, 8), images=(1, 2, 3))
    assert main(["adapt", str(run), "--support", str(support), "--steps", "2", "--out", str(tmp_path / "cli.pt")]) == 0
    assert capsys.readouterr().out == f"adapted weights -> {tmp_path / 'cli.pt'}\n"
    api = torch.load(adapt_run(run, support, steps=2, out=tmp_path / "api.pt"), weights_only=True)
    cli = torch.load(tmp_path / "cli.pt", weights_only=True)
    assert api.keys() == cli.keys() and all(torch.equal(api[k], cli[k]) for k in api)
    assert main(["predict", str(run), "--support", str(support), "--query", str(query),
                 "--out", str(tmp_path / "cli.csv")]) == 0
    outcome = predict_run(run, support, query, out=tmp_path / "api.csv")
    assert capsys.readouterr().out == f"9 predictions -> {tmp_path / 'cli.csv'}, accuracy {outcome['accuracy']:.2%}\n"
    assert (tmp_path / "cli.csv").read_text() == (tmp_path / "api.csv").read_text()
    assert main(["adapt", str(run), "--support", str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err.startswith("mamlkit: error: ")


PLAIN_CONV = """
class TransductiveBatchNorm(nn.Module):  # batch statistics always, a learned shift only
    def __init__(self, channels):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
    def forward(self, x):
        return F.batch_norm(x, None, None, training=True, eps=1e-3) + self.bias[None, :, None, None]
class GlobalMean(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))
block = lambda cin: nn.Sequential(nn.Conv2d(cin, 64, 3, stride=2, padding=1), TransductiveBatchNorm(64), nn.ReLU())
model = nn.Sequential(block(1), block(64), block(64), block(64), GlobalMean(), nn.Linear(64, 3))
"""


def plain_torch(model_code: str, weights, inputs, activation: str = "softmax") -> torch.Tensor:
    """Softmax (or, with activation="none", raw) outputs of a model defined in plain torch, loaded
    from ``weights``, in a process where importing mamlkit fails."""
    script = textwrap.dedent("""
        import sys
        sys.modules["mamlkit"] = None  # any import of mamlkit now raises
        import torch, torch.nn.functional as F
        from torch import nn
        {model}
        path = sys.argv[1]
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(path)
        else:
            state = torch.load(path, weights_only=True)
        model.load_state_dict(state)  # strict: every name and shape must match
        with torch.no_grad():
            output = model(torch.load(sys.argv[2], weights_only=True))
            print((output.softmax(-1) if sys.argv[3] == "softmax" else output).tolist())
    """).format(model=model_code)
    done = subprocess.run([sys.executable, "-c", script, str(weights), str(inputs), activation], capture_output=True,
                          text=True, check=True)
    return torch.tensor(json.loads(done.stdout))


def test_bad_support_and_query_sets_get_one_line_errors(trained, tmp_path):
    tree, run = trained
    two = task_folders(tree, tmp_path / "two", (0, 4), images=(0,))
    with pytest.raises(MamlkitError, match="has 2 class folders but the run classifies 3 ways"):
        adapt_run(run, two)
    support = task_folders(tree, tmp_path / "support", (0, 4, 8), images=(0,))
    other = task_folders(tree, tmp_path / "other", (1,), images=(1,))
    with pytest.raises(MamlkitError, match=r"classes \['class01'\] that the support set lacks"):
        predict_run(run, support, other)
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(support / "class00" / "0.png", flat / "a.png")
    shutil.copy(support / "class04" / "0.png", flat / "b.png")
    with pytest.raises(MamlkitError, match="has no class folders but the run classifies 3 ways"):
        adapt_run(run, flat)
    assert "label" not in next(csv.DictReader(open(predict_run(run, support, flat)["path"])))
    (flat / "b.png").unlink()
    with pytest.raises(MamlkitError, match="holds one image, but this model normalises over the images"):
        predict_run(run, support, flat)


def test_bad_image_folders_get_one_line_errors(tmp_path, capsys):
    tree = make_tree(tmp_path / "tree", classes=6, per_class=2, grouped=False)
    argv = ["train", "images", "--data", str(tree), "--shots", "2", "--queries", "1", "--ways", "2",
            "--split-fractions", "0.34", "0.33", "0.33", "--iterations", "1", "--out", str(tmp_path / "run")]
    assert main(argv) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "class class0" in err[0] and "has 2 images, fewer than 2 shots + 1 queries" in err[0]
    (tree / "class01" / "0.png").write_bytes(b"not a png")
    with pytest.raises(MamlkitError, match=r"image .*class01/0.png is unreadable"):
        load_image_folder(tree, size=8)
    (tree / "class01" / "0.png").unlink()
    (tree / "class01" / "1.png").unlink()
    with pytest.raises(MamlkitError, match=r"class folder .*class01 has no images"):
        load_image_folder(tree, size=8)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MamlkitError, match="has no class folders"):
        load_image_folder(empty)
    with pytest.raises(MamlkitError, match="does not exist"):
        load_image_folder(tmp_path / "missing")


@pytest.mark.parametrize("model", ["conv", "mlp"])
def test_rgb_images_train_either_network(tmp_path, model):
    tree = make_tree(tmp_path / "tree", classes=6, per_class=3, grouped=False)
    run = tmp_path / "run"
    assert main(["train", "images", "--data", str(tree), "--ways", "2", "--channels", "3", "--image-size", "12",
                 "--model", model, "--rotations", "--split-fractions", "0.34", "0.33", "0.33", "--meta-batch", "2",
                 "--iterations", "2", "--validate-every", "2", "--validation-tasks", "2", "--eval-tasks", "2",
                 "--threads", "1", "--out", str(run)]) == 0
    support = task_folders(tree, tmp_path / "support", (0, 1), images=(0,))
    state = torch.load(adapt_run(run, support, out=tmp_path / "w.pt"), weights_only=True)
    first = state["0.0.weight"] if model == "conv" else state["1.0.weight"]
    assert first.shape[1] == (3 if model == "conv" else 3 * 12 * 12)  # RGB input
