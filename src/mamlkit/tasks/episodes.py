"""N-way K-shot episodes drawn from a class-grouped uint8 image tensor by pure indexing.

A batch of T tasks is a handful of tensor ops (top-k of random keys, one gather, three masked
``rot90``s), about a millisecond for an Omniglot meta-batch, so worker processes are rarely
needed; :func:`mamlkit.tasks.stream.task_stream` still offers them.
"""

from collections.abc import Sequence

import torch

from mamlkit.errors import MamlkitError

Episode = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class EpisodeSampler:
    """Draws tasks over ``classes``, a subset of the first axis of ``images``.

    ``images`` is uint8 [num_classes, per_class, C, H, W]. Each task picks ``ways`` distinct
    classes in random order (so label ``i`` goes to a random class), and ``shots + queries``
    distinct images of each. With ``rotations=True`` each class of a task is turned by one random
    multiple of 90 degrees, as the official MAML code does to make 4x more Omniglot classes.
    Where classes differ in size, ``counts[c]`` says how many of ``images[c]`` are real (the rest
    is padding, never drawn); ``names`` name classes in errors.
    """

    def __init__(self, images: torch.Tensor, classes: Sequence[int] | torch.Tensor, ways: int,
                 shots: int, queries: int, rotations: bool = False,
                 counts: Sequence[int] | torch.Tensor | None = None, names: Sequence[str] | None = None):
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 5:
            raise MamlkitError("episode images must be a uint8 tensor [classes, per_class, C, H, W]"
                               ": load them with a mamlkit.tasks loader")
        for name, value in (("ways", ways), ("shots", shots), ("queries", queries)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MamlkitError(f"{name} must be a positive integer, got {value!r}: "
                                   f"pass --{name} 1 or more")
        classes = torch.as_tensor(classes, dtype=torch.int64).flatten()
        total, per_class, _, height, width = images.shape
        if classes.numel() and (classes.min() < 0 or classes.max() >= total):
            raise MamlkitError(f"class indices must lie in [0, {total}), got "
                               f"[{classes.min()}, {classes.max()}]: use a split of this data set")
        if classes.unique().numel() != classes.numel():
            raise MamlkitError("the class list repeats a class: pass each class index once")
        if ways > classes.numel():
            raise MamlkitError(f"{ways}-way tasks need at least {ways} classes but this split has "
                               f"{classes.numel()}: lower --ways or use a larger split")
        if counts is not None:
            counts = torch.as_tensor(counts, dtype=torch.int64)
            for c in classes.tolist():
                if counts[c] < shots + queries:
                    name = names[c] if names is not None else f"index {c}"
                    raise MamlkitError(f"class {name} has {counts[c]} images, fewer than {shots} shots + "
                                       f"{queries} queries: add images to it, remove it, or lower --shots "
                                       "or --queries")
        elif shots + queries > per_class:
            raise MamlkitError(f"{shots} shots + {queries} queries need {shots + queries} images "
                               f"per class but each class has {per_class}: lower --shots or "
                               "--queries")
        if rotations and height != width:
            raise MamlkitError(f"rotations need square images, got {height}x{width}: "
                               "turn rotations off for this data set")
        self.images, self.classes = images, classes
        self.ways, self.shots, self.queries, self.rotations = ways, shots, queries, rotations
        self.counts = counts

    def sample(self, num_tasks: int, generator: torch.Generator) -> Episode:
        """Returns support_x [T, N*K, C, H, W] float32 in [0, 1], support_y [T, N*K] int64,
        query_x [T, N*Q, C, H, W] and query_y [T, N*Q]; examples are grouped by label."""
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise MamlkitError(f"the number of tasks must be a positive integer, got "
                               f"{num_tasks!r}: pass --meta-batch 1 or more")
        ways, shots, per_task = self.ways, self.shots, self.shots + self.queries
        # The top-k of i.i.d. keys is a uniformly random ordered subset; float64 keys make ties,
        # whose order could depend on the thread count, practically impossible.
        keys = torch.rand(num_tasks, self.classes.numel(), generator=generator, dtype=torch.float64)
        classes = self.classes[keys.topk(ways, dim=1).indices]  # [T, N]; label i is column i
        keys = torch.rand(num_tasks, ways, self.images.shape[1], generator=generator,
                          dtype=torch.float64)
        if self.counts is not None:  # padding gets key -1, below every real image's
            keys.masked_fill_(torch.arange(keys.shape[2]) >= self.counts[classes][..., None], -1.0)
        which = keys.topk(per_task, dim=2).indices  # [T, N, K+Q], distinct within a class
        x = self.images[classes[:, :, None], which]  # [T, N, K+Q, C, H, W]
        if self.rotations:
            turns = torch.randint(0, 4, (num_tasks, ways), generator=generator)
            for k in (1, 2, 3):
                mask = turns == k
                x[mask] = torch.rot90(x[mask], k, dims=(-2, -1))
        x = x.to(torch.float32).div_(255)
        labels = torch.arange(ways).repeat_interleave(per_task).view(ways, per_task)
        labels = labels.expand(num_tasks, ways, per_task)
        image_shape = x.shape[3:]
        return (x[:, :, :shots].reshape(num_tasks, -1, *image_shape),
                labels[:, :, :shots].reshape(num_tasks, -1),
                x[:, :, shots:].reshape(num_tasks, -1, *image_shape),
                labels[:, :, shots:].reshape(num_tasks, -1))
