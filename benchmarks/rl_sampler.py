"""RL sampling speed and the cost of one MAML-RL meta-iteration, split into sampling and optimisation.

Stepping rows: ``--envs`` half-cheetahs (HalfCheetah-v5, frame skip 5) stepped ``--steps`` policy
steps with random actions by (a) a plain Python loop over unwrapped envs (what ``GymTasks`` does),
(b) gymnasium's SyncVectorEnv, (c) AsyncVectorEnv with 2 worker processes, (d) ``mujoco.rollout``
(one batched C call per policy step, 1 and 2 threads; observations read back from the state).
Sampler rows: the full batched sampler (policy forward + env) for 2D navigation, the half-cheetah
and the ant (both backends; the gym loop also in 2 worker processes), in steps per wall-clock second
and per CPU second of the process (the latter stays meaningful on a shared machine; the 1-minute
load average is recorded beside each row).
Meta-iteration rows: one MAML meta-iteration (pre-update sampling, inner step, post-update sampling,
TRPO with 10 CG iterations) at the given scales, wall clock and CPU seconds of the process (the CPU
seconds stay meaningful on a shared machine). Each row runs in a fresh interpreter with 1 thread.

    python benchmarks/rl_sampler.py            # prints a markdown table; --json PATH saves it
    python benchmarks/rl_sampler.py --only ant # just the rows whose description contains "ant"
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from harness import cpu_seconds, run_row, version  # noqa: E402

ENV_ID = "HalfCheetah-v5"


def actions(n, nu, steps, seed=0):
    import numpy as np
    return np.random.default_rng(seed).uniform(-1, 1, size=(steps, n, nu))


def step_raw(n, steps):
    from mamlkit.rl.mujoco_tasks import make_gym_env
    envs = [make_gym_env(ENV_ID) for _ in range(n)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    acts = actions(n, envs[0].action_space.shape[0], steps)
    start = time.perf_counter()
    for t in range(steps):
        for env, a in zip(envs, acts[t]):
            env.step(a)
    return time.perf_counter() - start


def step_vector(n, steps, asynchronous):
    import gymnasium
    from mamlkit.rl.mujoco_tasks import ENV_KWARGS
    kind = gymnasium.vector.AsyncVectorEnv if asynchronous else gymnasium.vector.SyncVectorEnv
    make = lambda: gymnasium.make(ENV_ID, disable_env_checker=True, **ENV_KWARGS[ENV_ID])  # noqa: E731
    env = kind([make] * n, **({"shared_memory": True} if asynchronous else {}))
    env.reset(seed=0)
    acts = actions(n, env.single_action_space.shape[0], steps)
    start = time.perf_counter()
    for t in range(steps):
        env.step(acts[t])
    elapsed = time.perf_counter() - start
    env.close()
    return elapsed


def step_rollout(n, steps, threads):
    import mujoco
    import numpy as np
    from mujoco import rollout
    from mamlkit.rl.mujoco_tasks import make_gym_env
    env = make_gym_env(ENV_ID)
    env.reset(seed=0)
    model, skip = env.model, env.frame_skip
    datas = [mujoco.MjData(model) for _ in range(threads)]
    spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
    state = np.zeros((n, mujoco.mj_stateSize(model, spec)))
    mujoco.mj_getState(model, env.data, state[0], spec)
    state[:] = state[0]
    acts = actions(n, model.nu, steps)
    start = time.perf_counter()
    for t in range(steps):
        control = np.repeat(acts[t][:, None, :], skip, axis=1)
        states, _ = rollout.rollout(model, datas, state, control, nstep=skip, persistent_pool=True)
        state = states[:, -1]
        obs = np.concatenate([state[:, 2:1 + model.nq], state[:, 1 + model.nq:1 + model.nq + model.nv]], 1)  # noqa: F841
    return time.perf_counter() - start


def sampler(env_name, tasks, trajectories, horizon, backend, workers):
    import torch
    from mamlkit.experiments.rl import RLConfig, make_env
    from mamlkit.rl.policy import GaussianPolicy
    from mamlkit.rl.sampler import per_task, sample
    env = make_env(RLConfig(env=env_name, horizon=horizon, backend=backend, env_workers=workers))
    policy = GaussianPolicy(env.obs_dim, env.act_dim)
    generator = torch.Generator().manual_seed(0)
    goals = env.sample_tasks(tasks, generator)
    sample(env, policy, per_task(policy.params(), tasks), goals, trajectories, generator)  # builds the env pool
    start, cpu_start = time.perf_counter(), cpu_seconds()[1]
    episodes = sample(env, policy, per_task(policy.params(), tasks), goals, trajectories, generator)
    return time.perf_counter() - start, cpu_seconds()[1] - cpu_start, int(episodes.mask.sum())


def meta_iteration(env_name, tasks, trajectories, horizon):
    import torch
    from mamlkit.experiments.rl import RLConfig, make_env, trpo_settings
    from mamlkit.rl.learner import MetaRLLearner
    from mamlkit.rl.policy import GaussianPolicy
    config = RLConfig(env=env_name, horizon=horizon)
    env = make_env(config)
    torch.manual_seed(0)
    learner = MetaRLLearner(env, GaussianPolicy(env.obs_dim, env.act_dim), trajectories, config.inner_lr,
                            False, trpo_settings(config), config.gamma, config.gae_lambda, 0)
    goals = env.sample_tasks(tasks, torch.Generator().manual_seed(0))
    return learner.step((goals, 0))


def child(args):
    import torch
    torch.set_num_threads(1)
    kind, *rest = args.child
    if kind in ("raw", "sync", "async") or kind.startswith("rollout"):
        n, steps = int(rest[0]), int(rest[1])
        if kind == "raw":
            seconds = step_raw(n, steps)
        elif kind in ("sync", "async"):
            seconds = step_vector(n, steps, kind == "async")
        else:
            seconds = step_rollout(n, steps, int(kind.split("-")[1]))
        return {"steps_per_s": n * steps / seconds}
    env_name, tasks, trajectories, horizon = rest[0], *map(int, rest[1:4])
    if kind == "sampler":
        seconds, cpu, steps = sampler(env_name, tasks, trajectories, horizon, rest[4], int(rest[5]))
        own_cpu = {} if int(rest[5]) else {"steps_per_cpu_s": steps / cpu}  # workers' CPU is not this process's
        return {"steps_per_s": steps / seconds, **own_cpu, "load": os.getloadavg()[0]}
    info = meta_iteration(env_name, tasks, trajectories, horizon)
    return {key: info[key] for key in ("sample_s", "optimize_s", "sample_cpu_s", "optimize_cpu_s")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--envs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", default="", help="run only the rows whose description contains this")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    script = [str(Path(__file__).resolve())]
    n, steps = str(args.envs), str(args.steps)
    planned = []  # (description, child arguments)
    for kind, label in (("raw", "python loop over unwrapped envs"), ("sync", "gymnasium SyncVectorEnv"),
                        ("async", "gymnasium AsyncVectorEnv, 2 workers"), ("rollout-1", "mujoco.rollout, 1 thread"),
                        ("rollout-2", "mujoco.rollout, 2 threads")):
        planned.append((f"step {args.envs} half-cheetahs: {label}", [kind, n, steps]))
    for env_name, tasks, trajectories, horizon, backend, workers in (
            ("2dnav", 20, 20, 100, "auto", 0), ("cheetah-dir", 10, 10, 200, "gym", 0),
            ("cheetah-dir", 10, 10, 200, "gym", 2), ("cheetah-dir", 10, 10, 200, "rollout", 0),
            ("ant-dir", 10, 10, 200, "gym", 0), ("ant-dir", 10, 10, 200, "gym", 2),
            ("ant-dir", 10, 10, 200, "rollout", 0)):
        how = f"{backend}, {workers} worker processes" if workers else backend
        planned.append((f"sampler with policy: {env_name} ({how}), {tasks} tasks × {trajectories} traj × {horizon}",
                        ["sampler", env_name, str(tasks), str(trajectories), str(horizon), backend, str(workers)]))
    for env_name, tasks, trajectories, horizon in (("2dnav", 20, 20, 100), ("cheetah-dir", 10, 10, 200)):
        planned.append((f"meta-iteration: {env_name}, {tasks} tasks × {trajectories} traj × {horizon}",
                        ["iteration", env_name, str(tasks), str(trajectories), str(horizon)]))
    rows = [run_row({"what": what}, script + ["--child", *child_args]) for what, child_args in planned if args.only in what]
    print(f"torch {version('torch')}, gymnasium {version('gymnasium')}, mujoco {version('mujoco')}, 1 thread per row\n")
    print("| what | steps/s | steps per CPU s | load | sampling s | optimisation s | sampling CPU s | optimisation CPU s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        cells = [f"{row[k]:,.0f}" if k.startswith("steps_per") and k in row else f"{row[k]:.2f}" if k in row else "—"
                 for k in ("steps_per_s", "steps_per_cpu_s", "load", "sample_s", "optimize_s", "sample_cpu_s",
                           "optimize_cpu_s")]
        print(f"| {row['what']} | " + " | ".join(cells) + (f" ({row['status']})" if row["status"] != "ok" else "") + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
