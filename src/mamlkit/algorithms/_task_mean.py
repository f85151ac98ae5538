"""Running per-task functions whose results are not one tensor, shared by Reptile and iMAML.

``MAML._map_tasks`` maps a per-task function returning one tensor (vmap or a task loop), so each
task's parameter-shaped result (Reptile's θ − φ, iMAML's implicit gradient) and its query loss
travel as one flat vector and are split again after the mean over tasks.
"""

import torch
from torch import Tensor

from mamlkit import functional as fn


def mean_over_tasks(learner, per_task, tensors: tuple[Tensor, ...], like: fn.Params) -> tuple[fn.Params, Tensor]:
    """``per_task(gradient, *task_tensors) -> (dict like like, scalar)`` for every task; the task means."""
    names = list(like)

    def flat_task(gradient, *task):
        result, scalar = per_task(gradient, *task)
        return torch.cat([result[n].reshape(-1) for n in names] + [scalar.reshape(1)])

    flat = learner._map_tasks(flat_task, tensors).mean(dim=0)
    pieces = flat[:-1].split([like[n].numel() for n in names])
    return {n: piece.view_as(like[n]) for n, piece in zip(names, pieces)}, flat[-1]
