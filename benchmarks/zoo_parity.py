"""policy-kd evaluate vs SB3's evaluate_policy on rl_zoo3's create_test_env, for the old-gym zoo teachers.

For each run folder under tests/data/old_gym/ (SB3 1.8 / gym 0.21 files, see tests/data/README.md):

- policy-kd: ``policy-kd evaluate --teacher FOLDER --episodes N`` with ``gym`` blocked, its mean return;
- SB3: what the zoo's ``enjoy`` does, in this venv: ``rl_zoo3.utils.create_test_env`` with the run's saved
  hyperparameters and statistics, the model loaded with enjoy's ``custom_objects``, then
  ``stable_baselines3.common.evaluation.evaluate_policy`` (deterministic) over N episodes. Neither the zoo
  nor SB3 can read the old pickles without ``gym``, so on this side only, ``gym`` and ``gym.spaces.*`` are
  aliased to Gymnasium's modules.

Both play episode ``i`` from ``reset(seed=i)`` (SB3: a fresh ``create_test_env(seed=i)`` per episode), so
with deterministic teachers the per-episode returns should agree exactly, not only within noise; the last
column counts the seeds on which they do.

Atari (``a2c/BreakoutNoFrameskip-v4_1``, random-init weights): both sides score whole games (SB3: the
Monitor create_test_env puts under AtariWrapper), played deterministically here although the zoo's
``enjoy`` samples Atari actions by default, so that seeds pair exactly.

Needs rl_zoo3 (not a dependency: ``pip install -c requirements-cpu.txt rl_zoo3``), sb3-contrib, Box2D
(the LunarLander-v2 teacher, run on LunarLander-v3) and the atari extra (ale-py, OpenCV). Usage::

    python benchmarks/zoo_parity.py [--episodes 50] [--runs a2c/BreakoutNoFrameskip-v4_1 ...]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
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
    # the zoo's atari config (AtariWrapper, frame stack 4); rl_zoo3 registers ALE's envs on import
    "a2c/BreakoutNoFrameskip-v4_1": "BreakoutNoFrameskip-v4",
}


def policy_kd_returns(folder: Path, env_id: str, episodes: int) -> tuple[list[int], np.ndarray]:
    """``policy-kd evaluate``'s seeds and deterministic returns, with ``gym`` blocked."""
    from policy_kd.cli import main

    sys.modules["gym"] = None  # type: ignore[assignment]  # as in a venv without gym
    try:
        with tempfile.TemporaryDirectory() as tmp:
            args = ["evaluate", "--teacher", str(folder), "--env", env_id, "--episodes", str(episodes)]
            with contextlib.redirect_stdout(io.StringIO()):  # the table; returns are read from eval.json
                assert main([*args, "--out", f"{tmp}/eval"]) == 0
            result = json.loads(Path(tmp, "eval", "eval.json").read_text())
    finally:
        del sys.modules["gym"]
    returns = result["teacher"]["modes"]["deterministic"]["returns"]
    return result["seeds"], np.asarray(returns, dtype=float)


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


def sb3_returns(folder: Path, env_id: str, seeds: list[int]) -> np.ndarray:
    """SB3's evaluate_policy, one episode on ``create_test_env(seed=s)`` per seed (its first reset is
    ``reset(seed=s)``, as policy-kd's episode on seed ``s``)."""
    from rl_zoo3.utils import ALGOS, create_test_env, get_saved_hyperparams
    from stable_baselines3.common.evaluation import evaluate_policy

    (params,) = [p for p in folder.iterdir() if p.is_dir()]
    algo = folder.parent.name
    returns = []
    with gym_as_gymnasium():
        hyperparams, stats_path = get_saved_hyperparams(str(params), norm_reward=False, test_mode=True)
        # rl_zoo3 enjoy's custom_objects for models saved on another Python version
        custom = {"learning_rate": 0.0, "lr_schedule": lambda _: 0.0, "clip_range": lambda _: 0.0}
        kwargs = {"buffer_size": 1} if algo in ("dqn", "qrdqn") else {}
        model = ALGOS[algo].load(folder / f"{params.name}.zip", custom_objects=custom, device="cpu", **kwargs)
        for seed in seeds:
            with contextlib.redirect_stdout(io.StringIO()):  # "Stacking 4 frames", once per episode
                env = create_test_env(
                    env_id,
                    n_envs=1,
                    stats_path=stats_path,
                    seed=seed,
                    should_render=False,
                    hyperparams=dict(hyperparams),
                )
            (ret,), _ = evaluate_policy(
                model, env, n_eval_episodes=1, deterministic=True, return_episode_rewards=True
            )
            returns.append(ret)
            env.close()
    return np.asarray(returns, dtype=float)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument(
        "--runs", nargs="+", choices=list(RUNS), default=list(RUNS), help="rows (default: all)"
    )
    args = parser.parse_args()
    n = args.episodes
    torch.set_num_threads(1)
    header = (
        "| env | algo | teacher | policy-kd mean ± std | SB3 mean ± std | episodes | same return, same seed |"
    )
    print(header)
    print("|---|---|---|---|---|---|---|")
    for run in args.runs:
        env_id = RUNS[run]
        folder = DATA / run
        seeds, ours = policy_kd_returns(folder, env_id, n)
        theirs = sb3_returns(folder, env_id, seeds)
        same = int(np.isclose(ours, theirs, rtol=1e-5, atol=1e-3).sum())
        print(
            f"| {env_id} | {folder.parent.name} | {run} | {ours.mean():.2f} ± {ours.std():.1f} | "
            f"{theirs.mean():.2f} ± {theirs.std():.1f} | {n} | {same}/{n} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
