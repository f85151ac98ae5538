"""One meta-iteration of MAML-RL (or of the pretrained baseline) as a TrainLoop learner: sample
pre-update trajectories, adapt, sample post-update trajectories, take a TRPO step. Times the
sampling and the optimisation separately, in wall-clock and in this process's CPU seconds (the
latter stays meaningful on a machine shared with other jobs)."""

import time

import numpy as np
import torch
from torch import Tensor

from mamlkit.rl.advantages import advantages
from mamlkit.rl.algorithms import MetaBatch, MetaObjective, TRPOSettings, trpo_step
from mamlkit.rl.envs import TaskEnv
from mamlkit.rl.policy import GaussianPolicy
from mamlkit.rl.sampler import per_task, sample


class MetaRLLearner:
    """``step((tasks, seed))``: one meta-update. ``inner_lr`` None trains the pretrained baseline
    (TRPO on the pre-update trajectories of all tasks, no adaptation in the objective)."""

    def __init__(self, env: TaskEnv, policy: GaussianPolicy, trajectories: int, inner_lr: float | None,
                 first_order: bool, trpo: TRPOSettings, gamma: float, gae_lambda: float, stream: int):
        self.env, self.policy, self.trajectories = env, policy, trajectories
        self.objective = MetaObjective(policy, inner_lr, first_order)
        self.trpo, self.gamma, self.gae_lambda, self.stream = trpo, gamma, gae_lambda, stream

    def advantages(self, episodes) -> Tensor:
        return advantages(episodes, self.gamma, self.gae_lambda)

    def collect(self, tasks: Tensor, generator: torch.Generator) -> MetaBatch:
        params = self.policy.params()
        pre = sample(self.env, self.policy, per_task(params, len(tasks)), tasks, self.trajectories, generator)
        if self.objective.inner_lr is None:
            return MetaBatch(None, None, pre, self.advantages(pre), None, None, None)
        pre_adv = self.advantages(pre)
        adapted = self.objective.adapted(params, MetaBatch(pre, pre_adv, pre, pre_adv, None, None, None))
        post = sample(self.env, self.policy, adapted, tasks, self.trajectories, generator)
        return MetaBatch(pre, pre_adv, post, self.advantages(post), None, None, None)

    def step(self, batch) -> dict[str, float]:
        tasks, seed = batch
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, self.stream]).generate_state(1)[0]))
        start, cpu_start = time.perf_counter(), time.process_time()
        meta_batch = self.collect(tasks, generator)
        sampled, cpu_sampled = time.perf_counter(), time.process_time()
        info = trpo_step(self.policy.params(), lambda p: self.objective(p, meta_batch),
                         lambda p: self.objective.linearise(p, meta_batch), self.trpo)
        done, cpu_done = time.perf_counter(), time.process_time()
        returns = {"return_post": meta_batch.post.returns().mean().item()}
        if meta_batch.pre is not None:
            returns["return_pre"] = meta_batch.pre.returns().mean().item()
        for when, episodes in (("pre", meta_batch.pre), ("post", meta_batch.post)):
            if episodes is not None and episodes.success is not None:  # Meta-World
                returns[f"success_{when}"] = episodes.success.double().mean().item()
        return {**returns, "kl": info["kl"], "backtracks": info["backtracks"],
                "surrogate_gain": info["surrogate_before"] - info["surrogate_after"],
                "sample_s": sampled - start, "optimize_s": done - sampled,  # wall clock
                "sample_cpu_s": cpu_sampled - cpu_start, "optimize_cpu_s": cpu_done - cpu_sampled}  # this process

    def state_dict(self) -> dict:
        return {"model": self.policy.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["model"])
