"""Meta-World's meta-RL benchmarks (ML1 and ML10) as batched task environments.

A task is a row ``(split, index)``: the index-th of Meta-World's own training (0) or test (1)
tasks. ML1: 50 training and 50 held-out goal positions of one task family; ML10: 50 goals of each
of 10 training families, and 5 held-out families. ``sample_tasks`` draws training tasks,
``sample_test_tasks`` held-out ones. The copies are Meta-World's gymnasium envs stepped by
``GymTasks`` (in worker processes if asked), each an env of its task's family from a per-family
pool, with the env's own reward and ``info["success"]`` recorded per episode.

The benchmark objects are the ones ``gym.make("Meta-World/ML1-train", env_name=...)`` and
``ML10-train``/``-test`` build, used directly: their vector envs fix one task per copy and step
every copy with one policy, where MAML needs N trajectories of each of T tasks under T adapted
policies. The goal sampling is seeded (``BENCHMARK_SEED``), so every run sees the same split.
"""

from functools import lru_cache, partial

import torch
from torch import Tensor

from mamlkit.errors import MamlkitError
from mamlkit.rl.mujoco_tasks import GymTasks

BENCHMARKS = ("ml1", "ml10")
BENCHMARK_SEED = 0
MAX_HORIZON = 500  # Meta-World's episode length; its envs refuse to step further
TRAIN, TEST = 0, 1


def import_metaworld():
    try:
        import metaworld
    except ImportError:
        raise MamlkitError("Meta-World tasks need the metaworld extra; pip install 'mamlkit[metaworld]'") from None
    return metaworld


def family_names() -> list[str]:
    """Meta-World's 50 task families (``reach-v3``, ``push-v3``, ...), valid for ML1."""
    return sorted(import_metaworld().ML1.ENV_NAMES)


@lru_cache(maxsize=4)
def benchmark_tasks(benchmark: str, family: str = "reach-v3") -> tuple[list, list]:
    """(training tasks, test tasks) of ML1 for ``family``, or of ML10 (``family`` unused); built
    once per process (ML10's 750 goals take ~15 s)."""
    metaworld = import_metaworld()
    if benchmark == "ml1":
        if family not in metaworld.ML1.ENV_NAMES:
            raise MamlkitError(f"unknown Meta-World task {family!r}; choose one of {', '.join(family_names())}")
        tasks = metaworld.ML1(family, seed=BENCHMARK_SEED)
    elif benchmark == "ml10":
        tasks = metaworld.ML10(seed=BENCHMARK_SEED)
    else:
        raise MamlkitError(f"unknown Meta-World benchmark {benchmark!r}; choose one of {', '.join(BENCHMARKS)}")
    return tasks.train_tasks, tasks.test_tasks


def make_family_env(family: str, **kwargs):
    """One Meta-World env of ``family`` (``render_mode`` etc. pass through); its task is set later."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS
    return ALL_V3_ENVIRONMENTS[family](**kwargs)


class MetaWorldTasks(GymTasks):
    records_success = True

    def __init__(self, train: list, test: list, horizon: int):
        if not 1 <= horizon <= MAX_HORIZON:
            raise MamlkitError(f"Meta-World episodes last at most {MAX_HORIZON} steps; set --horizon to 1..{MAX_HORIZON}")
        self.splits = (train, test)
        self.pool: dict[str, list] = {}  # family -> its envs, reused across resets
        super().__init__(partial(make_family_env, train[0].env_name), None, horizon, set_task=self.configure)

    def sample_tasks(self, n: int, generator: torch.Generator) -> Tensor:
        return self.draw(TRAIN, n, generator)

    def sample_test_tasks(self, n: int, generator: torch.Generator) -> Tensor:
        return self.draw(TEST, n, generator)

    def draw(self, split: int, n: int, generator: torch.Generator) -> Tensor:
        """``n`` distinct tasks of ``split`` (with repeats only when it has fewer than ``n``)."""
        count = len(self.splits[split])
        index = (torch.randperm(count, generator=generator)[:n] if n <= count
                 else torch.randint(count, (n,), generator=generator))
        return torch.stack([torch.full_like(index, split), index], dim=1)

    def task(self, row):
        """Meta-World's ``Task`` for a row ``(split, index)``."""
        return self.splits[int(row[0])][int(row[1])]

    def family(self, row) -> str:
        return self.task(row).env_name

    def configure(self, env, row) -> None:
        env.set_task(self.task(row))

    def reset_with_seeds(self, tasks: Tensor, per_task: int, seeds: list[int]) -> Tensor:
        """Give each copy an env of its task's family, then reset as ``GymTasks`` does (Meta-World's
        reset ignores the seed: a task fixes the initial state)."""
        taken: dict[str, int] = {}
        self.envs = []
        for row in tasks.repeat_interleave(per_task, dim=0).tolist():
            family = self.family(row)
            envs, used = self.pool.setdefault(family, []), taken.get(family, 0)
            if used == len(envs):
                envs.append(make_family_env(family))
            self.envs.append(envs[used])
            taken[family] = used + 1
        return super().reset_with_seeds(tasks, per_task, seeds)


def make_metaworld_tasks(benchmark: str, family: str, horizon: int, workers: int = 0):
    """ML1 on ``family`` or ML10, stepped here or in ``workers`` processes."""
    train, test = benchmark_tasks(benchmark, family)
    make_tasks = partial(MetaWorldTasks, train, test, horizon)  # pickles: workers get the tasks, not a rebuild
    if workers:
        from mamlkit.rl.workers import WorkerTasks
        return WorkerTasks(make_tasks, workers)
    return make_tasks()


def render_gif(config, batched: MetaWorldTasks, policy, tasks: Tensor, path, frames_every: int = 5,
               size: int = 160) -> None:
    """A GIF of the policy after one policy-gradient step on two held-out tasks (side by side):
    the first of ``tasks`` and the first of another family if there is one (ML10), else the
    second (another goal). ``batched`` (or its worker processes) samples the trajectories of the step."""
    from mamlkit.rl import rendering
    rendering.offscreen()
    lookup = getattr(batched, "local", batched)  # WorkerTasks keeps a local copy for the tasks
    families = [lookup.family(row) for row in tasks.tolist()]
    other = next((i for i, f in enumerate(families) if f != families[0]), min(1, len(tasks) - 1))
    chosen = tasks[[0, other]]
    adapted = rendering.adapted_params(config, policy, batched, chosen)
    videos = []
    for index, row in enumerate(chosen.tolist()):
        env = make_family_env(lookup.family(row), render_mode="rgb_array", width=size, height=size,
                              camera_name="corner")
        env.set_task(lookup.task(row))
        videos.append(rendering.record(env, policy, {n: p[index] for n, p in adapted.items()}, config.horizon,
                                       frames_every, seed=index))
    rendering.save_side_by_side(videos, path)
