"""Back-propagating a meta-batch a chunk of tasks at a time, to bound memory.

The meta-objective is a mean over tasks, so its gradient is the sum over chunks of
``(chunk tasks / all tasks) × ∇(mean over the chunk)``: exact, with only one chunk's graph alive at
a time. Under vmap the graph of a whole meta-batch can hold a few times the task loop's memory;
chunks of a fraction of the tasks bring it back down while each call still batches many tasks.
"""

from typing import Callable

from torch import Tensor


def backward_in_chunks(mean_loss: Callable[..., Tensor], tensors: tuple[Tensor, ...], chunk_size: int) -> Tensor:
    """Accumulate ∇ of ``mean_loss(*tensors)`` (a mean over dimension 0, the tasks) into ``.grad`` by
    running ``chunk_size`` tasks at a time; return the (detached) mean loss."""
    tasks = tensors[0].shape[0]
    total = 0.0
    for start in range(0, tasks, chunk_size):
        chunk = tuple(t[start:start + chunk_size] for t in tensors)
        loss = mean_loss(*chunk) * (chunk[0].shape[0] / tasks)
        loss.backward()
        total = total + loss.detach()
    return total
