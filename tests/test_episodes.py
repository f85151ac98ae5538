"""EpisodeSampler: shapes, which class each label is, rotations, seeding, errors and workers."""

import itertools
from functools import partial

import pytest
import torch

from mamlkit.errors import MamlkitError
from mamlkit.tasks.episodes import EpisodeSampler
from mamlkit.tasks.stream import batch_generator, task_stream

CLASSES, PER_CLASS, SIDE = 12, 6, 4


def coded_images() -> torch.Tensor:
    """Channel 0 is the image's id (class * PER_CLASS + index) everywhere, so rotations keep it;
    channel 1 marks the top-left pixel, so a rotation shows as the corner the mark moved to."""
    images = torch.zeros(CLASSES, PER_CLASS, 2, SIDE, SIDE, dtype=torch.uint8)
    ids = torch.arange(CLASSES * PER_CLASS, dtype=torch.uint8).view(CLASSES, PER_CLASS, 1, 1)
    images[:, :, 0] = ids
    images[:, :, 1, 0, 0] = 255
    return images


def decode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Image ids [T, M] and marked corners [T, M] (0..3) of a sampled x [T, M, 2, H, W]."""
    ids = (x[:, :, 0, 0, 0] * 255).round().long()
    mark = x[:, :, 1]
    corners = torch.stack([mark[..., 0, 0], mark[..., 0, -1], mark[..., -1, -1],
                           mark[..., -1, 0]], dim=-1)
    return ids, corners.argmax(dim=-1)


def test_shapes_dtypes_and_label_counts():
    sampler = EpisodeSampler(coded_images(), range(CLASSES), ways=5, shots=2, queries=3)
    sx, sy, qx, qy = sampler.sample(4, torch.Generator().manual_seed(0))
    assert sx.shape == (4, 10, 2, SIDE, SIDE) and qx.shape == (4, 15, 2, SIDE, SIDE)
    assert sy.shape == (4, 10) and qy.shape == (4, 15)
    assert sx.dtype == qx.dtype == torch.float32 and sy.dtype == qy.dtype == torch.int64
    assert 0 <= sx.min() and sx.max() <= 1
    for labels, per_label in ((sy, 2), (qy, 3)):
        counts = torch.stack([torch.bincount(row, minlength=5) for row in labels])
        assert (counts == per_label).all()


def test_each_label_is_one_class_of_the_split_with_distinct_images():
    split = [1, 3, 4, 6, 8, 9, 11]
    sampler = EpisodeSampler(coded_images(), split, ways=4, shots=2, queries=2)
    sx, sy, qx, qy = sampler.sample(64, torch.Generator().manual_seed(1))
    ids = torch.cat([decode(sx)[0], decode(qx)[0]], dim=1)
    labels = torch.cat([sy, qy], dim=1)
    for task_ids, task_labels in zip(ids, labels):
        assert task_ids.unique().numel() == task_ids.numel()  # no image in support and query
        classes = [set((task_ids[task_labels == label] // PER_CLASS).tolist())
                   for label in range(4)]
        assert all(len(c) == 1 for c in classes)
        flat = [c.pop() for c in classes]
        assert len(set(flat)) == 4 and set(flat) <= set(split)


def test_labels_go_to_random_classes():
    sampler = EpisodeSampler(coded_images(), range(CLASSES), ways=3, shots=1, queries=1)
    sx, sy, _, _ = sampler.sample(200, torch.Generator().manual_seed(2))
    label0_class = decode(sx)[0][sy == 0] // PER_CLASS
    assert label0_class.unique().numel() == CLASSES  # every class gets label 0 sometimes
    classes = (decode(sx)[0] // PER_CLASS).view(200, 3)
    assert not (classes.diff(dim=1) > 0).all()  # not sorted by class index


@pytest.mark.parametrize("rotations", [False, True])
def test_one_rotation_per_class_and_task(rotations):
    sampler = EpisodeSampler(coded_images(), range(CLASSES), ways=5, shots=2, queries=2,
                             rotations=rotations)
    sx, sy, qx, qy = sampler.sample(64, torch.Generator().manual_seed(3))
    corners = torch.cat([decode(sx)[1], decode(qx)[1]], dim=1)
    labels = torch.cat([sy, qy], dim=1)
    for task_corners, task_labels in zip(corners, labels):
        for label in range(5):
            assert task_corners[task_labels == label].unique().numel() == 1
    assert set(corners.unique().tolist()) == ({0, 1, 2, 3} if rotations else {0})


def test_seeded_batches_repeat():
    sampler = EpisodeSampler(coded_images(), range(CLASSES), ways=5, shots=1, queries=1,
                             rotations=True)
    first = sampler.sample(8, batch_generator(7, 3))
    again = sampler.sample(8, batch_generator(7, 3))
    other = sampler.sample(8, batch_generator(7, 4))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])


@pytest.mark.parametrize("workers", [0, 2])
def test_prefetch_yields_the_single_process_batches(workers):
    sampler = EpisodeSampler(coded_images(), range(CLASSES), ways=5, shots=1, queries=2,
                             rotations=True)
    expected = [sampler.sample(4, batch_generator(5, i)) for i in range(2, 6)]
    torch.manual_seed(0)
    got = list(task_stream(partial(sampler.sample, 4), seed=5, workers=workers, start=2, stop=6))
    global_draw = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(global_draw, torch.rand(1))  # the global RNG (model init) is untouched
    assert len(got) == 4
    for batch, reference in zip(got, expected):
        assert all(torch.equal(a, b) for a, b in zip(batch, reference))
    endless = itertools.islice(task_stream(partial(sampler.sample, 4), seed=5, start=2), 2)
    assert all(torch.equal(a, b) for batch, reference in zip(endless, expected)
               for a, b in zip(batch, reference))


@pytest.mark.parametrize("kwargs, message", [
    (dict(ways=13), "13-way tasks need at least 13 classes"),
    (dict(shots=4, queries=3), "need 7 images per class but each class has 6"),
    (dict(ways=0), "ways must be a positive integer"),
    (dict(shots=-1), "shots must be a positive integer"),
    (dict(queries=0), "queries must be a positive integer"),
    (dict(classes=[0, 0, 1, 2, 3]), "repeats a class"),
    (dict(classes=[0, 12]), "must lie in [0, 12)"),
    (dict(images=coded_images().float()), "uint8 tensor"),
    (dict(images=coded_images()[:, :, :, :, :3], rotations=True), "square images"),
])
def test_bad_settings_are_one_line_errors(kwargs, message):
    settings = dict(images=coded_images(), classes=range(CLASSES), ways=5, shots=1, queries=1)
    with pytest.raises(MamlkitError) as error:
        EpisodeSampler(**{**settings, **kwargs})
    assert message in str(error.value) and "\n" not in str(error.value)


def test_bad_task_and_worker_counts_are_errors():
    sampler = EpisodeSampler(coded_images(), range(CLASSES), ways=5, shots=1, queries=1)
    with pytest.raises(MamlkitError, match="number of tasks"):
        sampler.sample(0, torch.Generator())
    with pytest.raises(MamlkitError, match="workers must be 0 or more"):
        task_stream(partial(sampler.sample, 4), seed=0, workers=-1)
