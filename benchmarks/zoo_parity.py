"""policy-kd evaluate vs SB3's evaluate_policy on rl_zoo3's create_test_env, for the old-gym zoo teachers.

For each run folder under tests/data/old_gym/ (SB3 1.8 / gym 0.21 files, see tests/data/README.md):

- policy-kd: ``policy-kd evaluate --teacher FOLDER --episodes N`` with ``gym`` blocked, its mean return;
- SB3: what the zoo's ``enjoy`` does, in this venv: ``rl_zoo3.utils.create_test_env`` with the run's saved
  hyperparameters and statistics, the model loaded with enjoy's ``custom_objects``, then
  ``stable_baselines3.common.evaluation.evaluate_policy`` (deterministic) over N episodes. Neither the zoo
  nor SB3 can read the old pickles without ``gym``, so on this side only, ``gym`` and ``gym.spaces.*`` are
  aliased to Gymnasium's modules.

The two play different episode starts (per-episode seeds 0..N-1 vs one seeded env run on), so the means
agree within noise, not exactly; ``|Δ|/SE`` is the difference over its standard error.

Needs rl_zoo3 (not a dependency: ``pip install -c requirements-cpu.txt rl_zoo3``), sb3-contrib and Box2D
(the LunarLander-v2 teacher, run on LunarLander-v3). Usage::

    python benchmarks/zoo_parity.py [--episodes 50]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "old_gym"
# run folder -> env to run on (a retired version runs on the one Gymnasium has)
RUNS = {
    "dqn/CartPole-v1_1": "CartPole-v1",
    "qrdqn/CartPole-v1_1": "CartPole-v1",
    "a2c/CartPole-v1_1": "CartPole-v1",
    "a2c/Pendulum-v1_1": "Pendulum-v1",
    "ppo/Pendulum-v1_1": "Pendulum-v1",
    "dqn/LunarLander-v2_1": "LunarLander-v3",
}


def policy_kd_returns(folder: Path, env_id: str, episodes: int) -> np.ndarray:
    from policy_kd.cli import main

    sys.modules["gym"] = None  # type: ignore[assignment]  # as in a venv without gym
    try:
        with tempfile.TemporaryDirectory() as tmp:
            args = ["evaluate", "--teacher", str(folder), "--env", env_id, "--episodes", str(episodes)]
            with contextlib.redirect_stdout(None):  # the table; the returns are read from eval.json
                assert main([*args, "--out", f"{tmp}/eval"]) == 0
            result = json.loads(Path(tmp, "eval", "eval.json").read_text())
    finally:
        del sys.modules["gym"]
    return np.asarray(result["teacher"]["modes"]["deterministic"]["returns"], dtype=float)


@contextlib.contextmanager
def gym_as_gymnasium() -> Iterator[None]:
    names = ["", ".spaces", ".spaces.box", ".spaces.discrete", ".spaces.space"]
    for name in names:
        sys.modules[f"gym{name}"] = importlib.import_module(f"gymnasium{name}")
    try:
        yield
    finally:
        for name in names:
            del sys.modules[f"gym{name}"]


def sb3_returns(folder: Path, env_id: str, episodes: int) -> np.ndarray:
    from rl_zoo3.utils import ALGOS, create_test_env, get_saved_hyperparams
    from stable_baselines3.common.evaluation import evaluate_policy

    (params,) = [p for p in folder.iterdir() if p.is_dir()]
    algo = folder.parent.name
    with gym_as_gymnasium():
        hyperparams, stats_path = get_saved_hyperparams(str(params), norm_reward=False, test_mode=True)
        env = create_test_env(
            env_id, n_envs=1, stats_path=stats_path, seed=0, should_render=False, hyperparams=hyperparams
        )
        # rl_zoo3 enjoy's custom_objects for models saved on another Python version
        custom = {"learning_rate": 0.0, "lr_schedule": lambda _: 0.0, "clip_range": lambda _: 0.0}
        kwargs = {"buffer_size": 1} if algo in ("dqn", "qrdqn") else {}
        model = ALGOS[algo].load(folder / f"{params.name}.zip", custom_objects=custom, device="cpu", **kwargs)
    returns, _ = evaluate_policy(
        model, env, n_eval_episodes=episodes, deterministic=True, return_episode_rewards=True
    )
    env.close()
    return np.asarray(returns, dtype=float)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=50)
    n = parser.parse_args().episodes
    torch.set_num_threads(1)
    header = "| env | algo | teacher | policy-kd mean ± std | SB3 mean ± std | episodes | abs(Δ)/SE |"
    print(header)
    print("|---|---|---|---|---|---|---|")
    for run, env_id in RUNS.items():
        folder = DATA / run
        ours, theirs = policy_kd_returns(folder, env_id, n), sb3_returns(folder, env_id, n)
        se = np.sqrt(ours.var(ddof=1) / len(ours) + theirs.var(ddof=1) / len(theirs))
        z = abs(ours.mean() - theirs.mean()) / se if se > 0 else float(ours.mean() != theirs.mean()) * np.inf
        print(
            f"| {env_id} | {folder.parent.name} | {run} | {ours.mean():.1f} ± {ours.std():.1f} | "
            f"{theirs.mean():.1f} ± {theirs.std():.1f} | {n} | {z:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
