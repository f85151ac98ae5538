"""Data-parallel meta-training under torchrun: shard the meta-batch, average the meta-gradients.

Every rank draws the same global batch i from (seed, i) and keeps its slice of the tasks (the
first ranks one task more when the batch does not divide); the meta-objective is a mean over
tasks, so the ranks' shard means weighted by their task counts are the mean over the whole batch,
and the weighted all-reduce gives every rank the single-process meta-gradient. Each rank then takes the same optimizer step, so parameters stay in sync without
ever being broadcast. Outside torchrun (no ``WORLD_SIZE`` in the environment) everything here is
a no-op for one process.
"""

import os
import time
import typing
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mamlkit.errors import MamlkitError

Device = typing.Literal["auto", "cpu", "cuda"]  # auto: CUDA when present
DEVICES = typing.get_args(Device)


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Only rank 0 writes logs, metrics, checkpoints and results."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def restart_count() -> int:
    """How often torchrun has restarted this worker group (0 on the first start)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def resolve_device(choice: str) -> torch.device:
    """``auto``: CUDA when present; under torchrun each process takes the GPU of its local rank."""
    if choice not in DEVICES:
        raise MamlkitError(f"device must be one of {', '.join(DEVICES)}, got {choice!r}")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise MamlkitError("--device cuda but no CUDA device is visible; use --device cpu or --device auto")
    index = int(os.environ.get("LOCAL_RANK", "0"))
    if index >= torch.cuda.device_count():
        raise MamlkitError(f"local rank {index} has no GPU ({torch.cuda.device_count()} visible); "
                           f"lower torchrun's --nproc-per-node to the number of GPUs")
    return torch.device("cuda", index)


@contextmanager
def process_group(device_choice: str):
    """Join torchrun's process group (gloo on CPU, NCCL on CUDA) for the block; no-op without torchrun."""
    if not launched_by_torchrun() or dist.is_initialized():
        yield
        return
    device = resolve_device(device_choice)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # torchrun keeps one store across restarts: a fresh key space per attempt stops a restarted
    # group from reading the addresses of the killed one.
    store, rank_, world = next(dist.rendezvous("env://"))
    store = dist.PrefixStore(f"mamlkit/attempt-{restart_count()}", store)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=rank_, world_size=world,
                            device_id=device if device.type == "cuda" else None)
    try:
        yield
        dist.barrier()  # a clean exit: no rank tears its connections down while a peer still uses them
    finally:
        dist.destroy_process_group()


def shard_size(total: int, name: str = "meta_batch") -> int:
    """This rank's number of tasks of a meta-batch of ``total``: every rank needs at least one."""
    world = world_size()
    if total < world:
        raise MamlkitError(f"{name} {total} cannot be shared by {world} processes; use at least {world} tasks "
                           f"(--{name.replace('_', '-')}) or fewer processes (--nproc-per-node)")
    part = span(total)
    return part.stop - part.start


def _like(batch, items: list):
    """A task batch of the same type (tuple, list or NamedTuple) holding ``items``."""
    return type(batch)(*items) if hasattr(batch, "_fields") else type(batch)(items)


def select(batch, index: slice):
    """The tasks ``index`` of every tensor of a task batch."""
    return _like(batch, [t[index] for t in batch])


def shard(batch, total: int):
    """This rank's slice along the task dimension of a task batch of ``total`` tasks."""
    if world_size() == 1:
        return batch
    shard_size(total)
    return select(batch, span(total))


def span(count: int) -> slice:
    """This rank's contiguous part of ``count`` tasks (the first parts may be one longer)."""
    world = world_size()
    if count < world:
        raise MamlkitError(f"{count} evaluation tasks cannot be shared by {world} processes; "
                           f"evaluate at least {world} tasks or use fewer processes")
    size, extra = divmod(count, world)
    start = rank() * size + min(rank(), extra)
    return slice(start, start + size + (rank() < extra))


def to_device(batch, device: torch.device):
    """Move every tensor of a task batch to ``device``, keeping its type."""
    return _like(batch, [t.to(device, non_blocking=True) for t in batch])


@dataclass
class CommunicationTimer:
    """Time and bytes spent in gradient all-reduces (read by the scaling benchmark)."""
    seconds: float = 0.0
    bytes: int = 0
    calls: int = 0

    def reset(self) -> None:
        self.seconds, self.bytes, self.calls = 0.0, 0, 0


COMMUNICATION = CommunicationTimer()


def average_gradients(parameters, loss: torch.Tensor, tasks: int = 1) -> float:
    """Average ``.grad`` of ``parameters`` and ``loss``, each a mean over this rank's ``tasks``,
    over all ranks' tasks in one flat all-reduce (weighted by ``tasks``: shards may differ by one).

    Returns the global mean loss, so every rank logs and NaN-checks the same value. Parameters
    without a gradient are skipped (the same ones on every rank, since every rank runs the same code).
    """
    if world_size() == 1:
        return loss.item()
    grads = [p.grad for p in parameters if p.grad is not None]
    like = grads[0] if grads else loss
    weight = torch.tensor([float(tasks)], dtype=like.dtype, device=like.device)
    bucket = torch.cat([g.reshape(-1) * weight for g in grads] + [loss.detach().reshape(1).to(like) * weight, weight])
    start = time.perf_counter()
    dist.all_reduce(bucket)
    COMMUNICATION.seconds += time.perf_counter() - start
    COMMUNICATION.bytes += bucket.numel() * bucket.element_size()
    COMMUNICATION.calls += 1
    bucket = bucket[:-1] / bucket[-1]
    offset = 0
    for g in grads:
        g.copy_(bucket[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
    return bucket[-1].item()


def gather_tasks(values: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's per-task results (rank order = task order) on every rank."""
    if world_size() == 1:
        return values
    parts = [None] * world_size()
    dist.all_gather_object(parts, values.cpu())
    return torch.cat(parts).to(values.device)


def broadcast(value):
    """Rank 0's ``value`` (any picklable object) on every rank."""
    if world_size() == 1:
        return value
    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def from_main(compute):
    """``compute()`` run on rank 0 only (it alone holds the run folder), its result on every rank.

    A MamlkitError on rank 0 is raised on every rank, so no rank waits forever for the others.
    """
    if world_size() == 1:
        return compute()
    outcome = None
    if is_main():
        try:
            outcome = ("ok", compute())
        except MamlkitError as error:
            outcome = ("error", str(error))
    kind, value = broadcast(outcome)
    if kind == "error":
        raise MamlkitError(value)
    return value


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on some rank (keeps ranks stopping together)."""
    if world_size() == 1:
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
