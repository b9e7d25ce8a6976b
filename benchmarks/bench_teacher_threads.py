"""Teacher-training throughput by torch thread count, on a preset with many gradient steps per env step.

SB3's off-policy presets for continuous control take one gradient step per env step on [400, 300] nets
(the zoo's SAC BipedalWalker-v3: 64 gradient steps every 64 env steps, batch 256), so a teacher run is
bound by those updates, and `train-teacher --threads` decides how long a multi-hour CPU run takes. This
times the preset from ``agents/<algo>.yml`` (``learning_starts`` cut so every timed step trains) at each
thread count in one run, and prints env steps/s and the ratio to one thread.

    python benchmarks/bench_teacher_threads.py [--algo sac] [--env BipedalWalker-v3] [--steps 1920] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import torch

from policy_kd.teachers.presets import algo_kwargs, load_preset
from policy_kd.teachers.sb3 import algo_class


def steps_per_second(algo: str, env_id: str, threads: int, steps: int) -> float:
    torch.set_num_threads(threads)
    preset = load_preset(algo, env_id)
    kwargs = {**algo_kwargs(preset), "learning_starts": 256}
    model = algo_class(algo)(preset["policy"], gym.make(env_id), seed=0, device="cpu", **kwargs)
    model.learn(640)  # past learning_starts, and the first updates' allocations
    start = time.perf_counter()
    model.learn(steps, reset_num_timesteps=False)
    return steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algo", default="sac")
    p.add_argument("--env", default="BipedalWalker-v3")
    p.add_argument("--steps", type=int, default=1920)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    a = p.parse_args()
    rates = {t: steps_per_second(a.algo, a.env, t, a.steps) for t in a.threads}
    base = rates[a.threads[0]]
    print(f"{a.algo} on {a.env}, zoo preset, {a.steps} timed env steps")
    for t, r in rates.items():
        print(f"  threads={t}: {r:7.1f} env steps/s  ({r / base:.2f}x of threads={a.threads[0]})")


if __name__ == "__main__":
    main()
