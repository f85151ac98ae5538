"""Meta-World sampling speed: steps per second of mamlkit's batched sampler against Meta-World's own
gymnasium vector envs, and one MAML-RL meta-iteration of the -small presets.

Env rows step random actions: (a) one env in a plain Python loop, (b) ``gym.make("Meta-World/
ML1-train", vector_strategy="sync")``: the gymnasium loop a user writes first, (c) the same with
``"async"`` (one process per env). Sampler rows: mamlkit's sampler with a Gaussian policy (one
batched policy call per step for all T × N copies), in this process and in 2 worker processes.
Iteration rows: one meta-iteration of MAML and one of the pretrained baseline at a preset's scale,
which gives the iterations an hour of training. Each row runs in a fresh interpreter with 1 torch
thread; steps per CPU second (of the row's processes, workers included) and the 1-minute load
average are recorded beside wall-clock steps/s, since the machine is shared.

    python benchmarks/metaworld_sampler.py            # markdown table; --json PATH saves it
    python benchmarks/metaworld_sampler.py --only iteration
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from harness import run_row, version  # noqa: E402


def all_cpu_seconds(pids=()) -> float:
    """CPU seconds of this process and of the running processes ``pids`` (worker processes)."""
    own = os.times()
    total = own.user + own.system
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            utime, stime = f.read().rsplit(")", 1)[1].split()[11:13]
        total += (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")
    return total


def step_plain(family, steps):
    import numpy as np
    from mamlkit.rl.metaworld_tasks import benchmark_tasks, make_family_env
    env = make_family_env(family)
    env.set_task(benchmark_tasks("ml1", family)[0][0])
    env.reset()
    acts = np.random.default_rng(0).uniform(-1, 1, (steps, 4))
    start, cpu = time.perf_counter(), all_cpu_seconds()
    for action in acts:
        env.step(action)
    return steps, time.perf_counter() - start, all_cpu_seconds() - cpu


def step_vector(family, envs, steps, strategy):
    import gymnasium
    import metaworld  # noqa: F401  (registers the Meta-World/ ids)
    import numpy as np
    env = gymnasium.make_vec("Meta-World/ML1-train", env_name=family, seed=0, meta_batch_size=envs,
                             vector_strategy=strategy)
    env.call("sample_tasks")  # gives each copy its task and resets it (a plain reset has no task yet)
    acts = np.random.default_rng(0).uniform(-1, 1, (steps, envs, 4))
    pids = [process.pid for process in getattr(env, "processes", [])]  # async: one process per env
    start, cpu = time.perf_counter(), all_cpu_seconds(pids)
    for action in acts:
        env.step(action)
    elapsed, cpu = time.perf_counter() - start, all_cpu_seconds(pids) - cpu
    env.close()
    return envs * steps, elapsed, cpu


def step_sampler(benchmark, family, tasks, trajectories, horizon, workers):
    import torch
    from mamlkit.rl.metaworld_tasks import make_metaworld_tasks
    from mamlkit.rl.policy import GaussianPolicy
    from mamlkit.rl.sampler import per_task, sample
    env = make_metaworld_tasks(benchmark, family, horizon, workers)
    policy = GaussianPolicy(env.obs_dim, env.act_dim)
    generator = torch.Generator().manual_seed(0)
    goals = env.sample_tasks(tasks, generator)
    sample(env, policy, per_task(policy.params(), tasks), goals, trajectories, generator)  # builds the env pool
    pids = [process.pid for process in getattr(env, "processes", [])]
    start, cpu = time.perf_counter(), all_cpu_seconds(pids)
    episodes = sample(env, policy, per_task(policy.params(), tasks), goals, trajectories, generator)
    elapsed, cpu = time.perf_counter() - start, all_cpu_seconds(pids) - cpu
    if workers:
        env.close()
    return int(episodes.mask.sum()), elapsed, cpu


def meta_iteration(preset):
    """Seconds of one MAML and one pretrained meta-iteration of ``preset`` (after a first one that
    builds the env pool), sampling and optimisation apart."""
    import torch
    from mamlkit.experiments.rl import make_env, trpo_settings
    from mamlkit.presets import get_preset
    from mamlkit.rl.learner import MetaRLLearner
    from mamlkit.rl.policy import GaussianPolicy
    from mamlkit.rl.sampler import per_task, sample
    config = get_preset(preset).config
    env = make_env(config)
    tasks = env.sample_tasks(config.meta_batch, torch.Generator().manual_seed(0))
    out = {}
    for name, inner_lr in (("maml", config.inner_lr), ("pretrained", None)):
        torch.manual_seed(0)
        policy = GaussianPolicy(env.obs_dim, env.act_dim, config.hidden)
        if name == "maml":  # builds the env pool
            sample(env, policy, per_task(policy.params(), len(tasks)), tasks, config.trajectories, torch.Generator())
        learner = MetaRLLearner(env, policy, config.trajectories, inner_lr, config.first_order, trpo_settings(config),
                                config.gamma, config.gae_lambda, stream=0)
        info = learner.step((tasks, 1))
        out.update({f"{name}_{key}": info[key] for key in ("sample_s", "optimize_s", "sample_cpu_s", "optimize_cpu_s")})
    return out


def child(args):
    import torch
    torch.set_num_threads(1)
    kind, *rest = args
    if kind == "iteration":
        return {**meta_iteration(rest[0]), "load": os.getloadavg()[0]}
    if kind == "plain":
        steps, seconds, cpu = step_plain(rest[0], int(rest[1]))
    elif kind in ("sync", "async"):
        steps, seconds, cpu = step_vector(rest[0], int(rest[1]), int(rest[2]), kind)
    else:
        benchmark, family, *sizes = rest
        steps, seconds, cpu = step_sampler(benchmark, family, *map(int, sizes))
    return {"steps_per_s": steps / seconds, "steps_per_cpu_s": steps / cpu, "load": os.getloadavg()[0]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", type=int, default=10, help="copies stepped by the vector envs (a divisor of 50)")
    parser.add_argument("--steps", type=int, default=100, help="steps of each env row")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", default="", help="run only the rows whose description contains this")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    n, steps = str(args.envs), str(args.steps)
    planned = []  # (description, child arguments)
    planned += [(f"{family}: one env, plain Python loop", ["plain", family, str(args.steps * 5)])
                for family in ("reach-v3", "push-v3")]
    planned += [(f"reach-v3: {n} envs, gym.make_vec Meta-World/ML1-train, {how}", [how, "reach-v3", n, steps])
                for how in ("sync", "async")]
    for benchmark, family, workers in (("ml1", "reach-v3", 0), ("ml1", "reach-v3", 2), ("ml1", "push-v3", 0),
                                       ("ml10", "-", 0)):
        what = "ML1 " + family if benchmark == "ml1" else "ML10"
        how = f"{workers} worker processes" if workers else "this process"
        planned.append((f"sampler with policy: {what} ({how}), 10 tasks × 10 traj × 50 steps",
                        ["sampler", benchmark, family, "10", "10", "50", str(workers)]))
    for preset in ("ml1-reach-small", "ml10-small"):
        planned.append((f"meta-iteration: {preset} (10 tasks × 10 traj × 150 steps)", ["iteration", preset]))
    script = [str(Path(__file__).resolve())]
    print(f"torch {version('torch')}, metaworld {version('metaworld')}, mujoco {version('mujoco')}, "
          f"gymnasium {version('gymnasium')}, 1 torch thread per row, {os.cpu_count()} CPUs\n")
    print("| what | steps/s | steps per CPU s | load | MAML sampling s (CPU s) | MAML optimisation s (CPU s) "
          "| pretrained s (CPU s) | iterations/hour (per CPU-hour) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    rows = []
    for what, child_args in planned:
        if args.only not in what:
            continue
        row = run_row({"what": what}, script + ["--child", *child_args])
        rows.append(row)
        cells = [f"{row[k]:,.0f}" if k in row else "—" for k in ("steps_per_s", "steps_per_cpu_s")]
        cells.append(f"{row['load']:.1f}" if "load" in row else "—")
        if "maml_sample_s" in row:  # wall clock (this process's CPU seconds)
            times = {kind: (row[f"{kind}_s"], row[f"{kind}_cpu_s"]) for kind in ("maml_sample", "maml_optimize")}
            times["pretrained"] = (row["pretrained_sample_s"] + row["pretrained_optimize_s"],
                                   row["pretrained_sample_cpu_s"] + row["pretrained_optimize_cpu_s"])
            total = [sum(t[i] for t in times.values()) for i in (0, 1)]
            cells += [f"{wall:.1f} ({cpu:.1f})" for wall, cpu in times.values()]
            cells.append(f"{3600 / total[0]:.0f} ({3600 / total[1]:.0f})")
        else:
            cells += ["—"] * 4
        print(f"| {row['what']} | " + " | ".join(cells) + (f" ({row['status']})" if row["status"] != "ok" else "") + " |",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
