"""Record throughput against a plain SB3 ``model.predict`` rollout, measured side by side in one run.

For each task a DQN teacher with the preset's network (randomly initialised: throughput does not depend
on what the weights know) is saved to a temporary .zip. The baseline steps one Gymnasium env with
``model.predict(obs, deterministic=True)``; ``policy-kd record`` then records the same number of steps
(writing included) with one env and with ``--n-envs 8``. Printed: steps/s and the two ratios
(goals: record(1 env) / predict >= 1.0, record(8 envs) / record(1 env) >= 4). Each is measured
``--repeats`` times, interleaved, and the best kept.

    python benchmarks/bench_record.py [--steps 20000] [--tasks CartPole-v1 MinAtar/Breakout-v1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from stable_baselines3 import DQN

from policy_kd.envs import make_env
from policy_kd.record import RecordConfig, record
from policy_kd.teachers import algo_kwargs, load_preset


def predict_rollout(model: DQN, env_id: str, steps: int) -> float:
    env = make_env(env_id)
    obs, _ = env.reset(seed=0)
    start = time.perf_counter()
    for _ in range(steps):
        action, _ = model.predict(obs, deterministic=True)
        obs, _, term, trunc, _ = env.step(action)
        if term or trunc:
            obs, _ = env.reset()
    return steps / (time.perf_counter() - start)


def record_rate(zip_path: Path, env_id: str, steps: int, n_envs: int, out: Path) -> float:
    record(
        RecordConfig(
            teacher=str(zip_path),
            env=env_id,
            out=str(out),
            steps=steps,
            n_envs=n_envs,
            behaviour="teacher",
            progress=False,
            force=True,
        )
    )
    return json.loads((out / "manifest.json").read_text())["sources"][0]["steps_per_second"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--tasks", nargs="+", default=["CartPole-v1", "MinAtar/Breakout-v1"])
    ap.add_argument("--repeats", type=int, default=3, help="best of N for each, interleaved")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(
        f"{'task':22s} {'params':>8s} {'predict/s':>10s} {'record/s':>10s} {'ratio':>6s} {'record x8/s':>12s} {'x8 ratio':>8s}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for env_id in args.tasks:
            try:
                preset = load_preset("dqn", env_id)
                kwargs = {k: v for k, v in algo_kwargs(preset).items() if k == "policy_kwargs"}
                model = DQN(
                    preset.get("policy", "MlpPolicy"), make_env(env_id), seed=0, device="cpu", **kwargs
                )
            except Exception as exc:  # a missing extra (minatar) skips the task, loudly
                print(f"{env_id:22s} skipped: {exc}")
                continue
            zip_path = Path(tmp) / f"{env_id.replace('/', '_')}.zip"
            model.save(zip_path)
            params = sum(p.numel() for p in model.q_net.parameters())
            # interleaved, best of --repeats: a noisy machine slows every contender alike, at random moments
            base = one = eight = 0.0
            for _ in range(args.repeats):
                base = max(base, predict_rollout(model, env_id, args.steps))
                one = max(one, record_rate(zip_path, env_id, args.steps, 1, Path(tmp) / "b1"))
                eight = max(eight, record_rate(zip_path, env_id, args.steps, 8, Path(tmp) / "b8"))
            print(
                f"{env_id:22s} {params:>8,d} {base:>10.0f} {one:>10.0f} {one / base:>6.2f} {eight:>12.0f} {eight / one:>8.2f}"
            )


if __name__ == "__main__":
    main()
