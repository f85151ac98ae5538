"""``GymTasks`` stepped in worker processes: each worker owns the env copies of a contiguous share
of the tasks and steps them with its own ``GymTasks``, so envs whose physics dominates (the ant,
~400 steps/s in one process here) scale with the cores. Episodes equal the single-process ones
step for step: the parent draws every reset seed and the task order is kept.
"""

import multiprocessing
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from mamlkit.errors import MamlkitError
from mamlkit.rl.mujoco_tasks import GymTasks


def _serve(make_tasks: Callable[[], GymTasks], connection) -> None:
    """A worker's loop: ("reset", tasks, per_task, seeds) | ("step", actions) | ("successes",) | ("close",)."""
    tasks_env = make_tasks()
    while True:
        command, *args = connection.recv()
        if command == "close":
            return
        if command == "reset":
            connection.send(tasks_env.reset_with_seeds(*args).numpy())
        elif command == "successes":
            connection.send(tasks_env.successes().numpy())
        else:
            connection.send(tuple(t.numpy() for t in tasks_env.step(args[0])))


class WorkerTasks:
    """A ``TaskEnv`` over ``workers`` processes. ``make_tasks()`` builds the ``GymTasks`` (in each
    worker, so it must pickle: a module-level function or ``functools.partial``, not a lambda)."""

    def __init__(self, make_tasks: Callable[[], GymTasks], workers: int):
        if workers < 1:
            raise MamlkitError(f"workers must be at least 1, got {workers}")
        self.local = make_tasks()  # task sampling and the spaces; it steps nothing
        self.obs_dim, self.act_dim, self.horizon = self.local.obs_dim, self.local.act_dim, self.local.horizon
        self.records_success = self.local.records_success
        if hasattr(self.local, "sample_test_tasks"):  # a benchmark's own held-out tasks (Meta-World)
            self.sample_test_tasks = self.local.sample_test_tasks
        context = multiprocessing.get_context("spawn")  # no fork of a process that runs torch threads
        self.connections, self.processes = [], []
        for _ in range(workers):
            parent, child = context.Pipe()
            process = context.Process(target=_serve, args=(make_tasks, child), daemon=True)
            process.start()
            self.connections.append(parent)
            self.processes.append(process)

    def sample_tasks(self, n: int, generator: torch.Generator) -> Tensor:
        return self.local.sample_tasks(n, generator)

    def reset(self, tasks: Tensor, per_task: int, generator: torch.Generator) -> Tensor:
        seeds = self.local.draw_seeds(tasks.shape[0] * per_task, generator)
        shares = np.array_split(np.arange(tasks.shape[0]), len(self.connections))
        self.busy = [(c, share) for c, share in zip(self.connections, shares) if len(share)]  # workers with tasks
        for connection, share in self.busy:
            connection.send(("reset", tasks[share], per_task, seeds[share[0] * per_task:(share[-1] + 1) * per_task]))
        return torch.cat([torch.from_numpy(connection.recv()) for connection, _ in self.busy])

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        for connection, share in self.busy:
            connection.send(("step", actions[share].detach()))
        parts = [connection.recv() for connection, _ in self.busy]
        return tuple(torch.cat([torch.from_numpy(part[i]) for part in parts]) for i in range(3))

    def successes(self) -> Tensor:
        for connection, _ in self.busy:
            connection.send(("successes",))
        return torch.cat([torch.from_numpy(connection.recv()) for connection, _ in self.busy])

    def close(self) -> None:
        for connection, process in zip(self.connections, self.processes):
            connection.send(("close",))
            process.join(timeout=5)
