"""GIFs of adapted policies: one policy-gradient step on a few tasks from the policy's own
trajectories, then the adapted mean action rolled out in render-mode copies of the env, the tasks'
videos side by side. Offscreen: MUJOCO_GL defaults to egl."""

import os
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from mamlkit.functional import Params


def adapted_params(config, policy, batched, tasks: Tensor) -> Params:
    """Task-stacked parameters after one step (α = ``config.inner_lr``) on ``config.trajectories``
    trajectories per task sampled from ``batched``."""
    from mamlkit.rl.advantages import advantages
    from mamlkit.rl.algorithms import adapt_tasks
    from mamlkit.rl.sampler import per_task, sample

    params = per_task({n: p.detach() for n, p in policy.params().items()}, len(tasks))
    episodes = sample(batched, policy, params, tasks, config.trajectories, torch.Generator().manual_seed(0))
    adv = advantages(episodes, config.gamma, config.gae_lambda)
    adapted = adapt_tasks(policy, params, episodes, adv, config.inner_lr, first_order=True, stacked=True)
    return {n: p.detach() for n, p in adapted.items()}


class Video(NamedTuple):
    frames: list[np.ndarray]
    seconds_per_frame: float  # the env's control step times the frames skipped: the GIF plays in real time


def record(env, policy, params: Params, horizon: int, frames_every: int, seed: int) -> Video:
    """Frames of one episode of the mean action under ``params`` (every ``frames_every``-th step)."""
    obs, _ = env.reset(seed=seed)
    frames = []
    for t in range(horizon):
        with torch.no_grad():
            mean, _ = policy.distribution(params, torch.as_tensor(obs, dtype=torch.float32))
        obs, _, terminated, _, _ = env.step(np.clip(mean.numpy(), env.action_space.low, env.action_space.high))
        if t % frames_every == 0:
            frames.append(env.render())
        if terminated:
            break
    env.close()
    return Video(frames, env.unwrapped.dt * frames_every)


def save_side_by_side(videos: list[Video], path) -> None:
    """One GIF of the videos side by side, as long as the shortest, at the first one's frame rate."""
    import imageio
    length = min(len(v.frames) for v in videos)
    imageio.mimsave(path, [np.concatenate([v.frames[i] for v in videos], axis=1) for i in range(length)],
                    duration=1000 * videos[0].seconds_per_frame, loop=0)  # imageio's GIF duration is in ms


def offscreen() -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
