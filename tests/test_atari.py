"""Atari teachers are scored per game, as rl-baselines3-zoo and SB3's ``evaluate_policy`` score them.

The teacher: a zoo-config DQN (``CnnPolicy``, NatureCNN) with random-init weights on
BreakoutNoFrameskip-v4 (5 lives, FIRE to launch the ball), saved as a zoo run folder (``env_wrapper:
AtariWrapper``, ``frame_stack: 4``). Random weights are enough to test the mechanics: its greedy policy is
deterministic, loses a life in ~25 steps and a game in 115-338 steps, and scores 0 or 5 depending on the
seed, so a mispaired seed shows. ``max_num_frames_per_episode`` guards against an endless game. Breakout's
bricks pay 1 point, so the game's own score against the clipped reward is tested on Space Invaders.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

pytest.importorskip("ale_py", reason="ale-py not installed (atari extra)")
pytest.importorskip("cv2", reason="OpenCV not installed (atari extra)")

from conftest import run_cli
from stable_baselines3 import A2C, DQN
from stable_baselines3.common.atari_wrappers import AtariWrapper
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecFrameStack, VecTransposeImage

from policy_kd import envs
from policy_kd.buffer import Buffer
from policy_kd.evaluate import EvaluateConfig, evaluate, run_episodes
from policy_kd.teacher import load_teacher

ENV = "BreakoutNoFrameskip-v4"
GUARD = {"max_num_frames_per_episode": 8_000}  # emulator frames; the games below last 530-1410
SEEDS = [0, 1, 2]
OLD_GYM_BREAKOUT = Path(__file__).parent / "data" / "old_gym" / "a2c" / f"{ENV}_1"


def _sb3_env(seed: int, env_id: str = ENV, env_kwargs: dict[str, Any] = GUARD) -> Any:
    """The zoo's env: gym.make, Monitor, AtariWrapper (make_vec_env's order), then VecFrameStack(4)."""
    return VecFrameStack(
        make_vec_env(env_id, n_envs=1, seed=seed, wrapper_class=AtariWrapper, env_kwargs=env_kwargs), 4
    )


def _zoo_run(root: Path, env_id: str) -> Path:
    """A zoo run folder (logs/dqn/<env>_1) holding a random-init DQN of the zoo's Atari architecture."""
    envs.ensure_registered(env_id)
    run = root / "dqn" / f"{env_id}_1"
    params = run / env_id
    params.mkdir(parents=True)
    DQN("CnnPolicy", _sb3_env(0, env_id), buffer_size=100, seed=0, device="cpu").save(run / f"{env_id}.zip")
    (params / "args.yml").write_text(
        yaml.safe_dump({"algo": "dqn", "env": env_id, "env_kwargs": GUARD, "seed": 0})
    )
    config = {
        "env_wrapper": ["stable_baselines3.common.atari_wrappers.AtariWrapper"],
        "frame_stack": 4,
        "policy": "CnnPolicy",
    }
    (params / "config.yml").write_text(yaml.safe_dump(config))
    return run


@pytest.fixture(scope="module")
def zoo_breakout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _zoo_run(tmp_path_factory.mktemp("zoo"), ENV)


def _sb3_games(
    model: Any, seeds: list[int], env_kwargs: dict[str, Any] = GUARD
) -> dict[int, tuple[float, int, list[int]]]:
    """seed -> (score, length, actions) of SB3's evaluate_policy, one env per seed (with n_envs > 1 it
    does not pair episodes with seeds): the env's first reset is reset(seed=seed), as policy_kd's."""
    games = {}
    for seed in seeds:
        actions: list[int] = []

        def log(local: dict[str, Any], _globals: dict[str, Any], actions: list[int] = actions) -> None:
            actions.append(int(local["actions"][local["i"]]))

        returns, lengths = evaluate_policy(
            model,
            _sb3_env(seed, env_kwargs=env_kwargs),
            n_eval_episodes=1,
            deterministic=True,
            return_episode_rewards=True,
            callback=log,
        )
        games[seed] = (float(returns[0]), int(lengths[0]), actions)
    return games


@pytest.fixture(scope="module")
def sb3_games(zoo_breakout: Path) -> dict[int, tuple[float, int, list[int]]]:
    return _sb3_games(DQN.load(zoo_breakout / f"{ENV}.zip", device="cpu"), SEEDS)


def test_evaluate_scores_whole_games_as_sb3_evaluate_policy(
    zoo_breakout: Path, sb3_games: dict[int, tuple[float, int, list[int]]]
) -> None:
    """Per seed, policy-kd evaluate gives SB3's full-game score and length, whatever --n-parallel."""
    scores = [sb3_games[s][0] for s in SEEDS]
    lengths = [sb3_games[s][1] for s in SEEDS]
    # the comparison means something: games of several lives (a life takes ~100 frames), different
    # lengths per seed (a mispairing shows), and a nonzero score
    assert min(lengths) > 400 and len(set(lengths)) == len(SEEDS) and max(scores) > 0
    # n_parallel 1 plays every game in one env, one after another; 8 gives each seed its own env
    for n_parallel in (1, 8):
        result = evaluate(
            EvaluateConfig(
                teacher=str(zoo_breakout), episodes=len(SEEDS), n_parallel=n_parallel, latency=False
            )
        )
        t = result["teacher"]
        assert result["seeds"] == SEEDS
        assert t["returns"] == scores, n_parallel
        assert t["modes"]["deterministic"]["lengths"] == lengths, n_parallel


def test_teacher_acts_on_its_training_observations(
    zoo_breakout: Path, sb3_games: dict[int, tuple[float, int, list[int]]]
) -> None:
    """Every action of every game equals the one SB3's model took behind SB3's own VecEnv + AtariWrapper
    + VecFrameStack (frame stack restarted and FIRE pressed after each lost life), so the teacher saw the
    same observations; steps are the policy's actions, lengths the emulator's frames."""
    teacher = load_teacher(zoo_breakout)
    taken: dict[int, list[int]] = {i: [] for i in range(len(SEEDS))}

    def log(_obs: np.ndarray, actions: np.ndarray, eps: np.ndarray, steps: np.ndarray) -> None:
        for a, e, t in zip(actions, eps, steps, strict=True):
            assert t == len(taken[e])
            taken[e].append(int(a))

    # 2 envs for 3 seeds: one env starts a new seeded game after a game over, while the other plays on
    eps = run_episodes(teacher, ENV, SEEDS, n_parallel=2, env_factory=teacher.make_env, step_observer=log)
    for i, seed in enumerate(SEEDS):
        assert taken[i] == sb3_games[seed][2], seed
    assert eps.extra["steps"].tolist() == [len(sb3_games[s][2]) for s in SEEDS]
    assert eps.lengths.tolist() == [sb3_games[s][1] for s in SEEDS]


def test_train_teacher_atari_folder_plays_as_trained(
    zoo_breakout: Path, sb3_games: dict[int, tuple[float, int, list[int]]], tmp_path: Path
) -> None:
    """A train-teacher run folder (teacher.json, frame_stack 4) is rebuilt with make_atari(training=True)
    over a GameMonitor: the same games as SB3's zoo layout for the same weights."""
    run = tmp_path / "teacher"
    run.mkdir()
    (run / "best_model.zip").write_bytes((zoo_breakout / f"{ENV}.zip").read_bytes())
    meta = {"format": "policy_kd.teacher", "version": 1, "algo": "dqn", "env_id": ENV}
    (run / "teacher.json").write_text(json.dumps({**meta, "model": "best_model.zip", "frame_stack": 4}))
    teacher = load_teacher(run)
    assert teacher.env_spec["raw"] is False and teacher.frame_stack == 4
    seeds = [0, 2]  # the two short games (no env_kwargs here: ALE's own 108k-frame limit applies)
    eps = run_episodes(teacher, ENV, seeds, n_parallel=1, env_factory=teacher.make_env)
    assert eps.returns.tolist() == [sb3_games[s][0] for s in seeds]
    assert eps.lengths.tolist() == [sb3_games[s][1] for s in seeds]


def test_record_keeps_lives_and_stores_games(
    zoo_breakout: Path, sb3_games: dict[int, tuple[float, int, list[int]]], tmp_path: Path
) -> None:
    """record: the teacher's per-life episodes stay (frame stacks rebuild exactly what it saw) and the
    games are stored beside them; the first game of env i (seeded seed + i) is the evaluation's game."""
    out = tmp_path / "buffer"
    n_envs, per_env = 2, 360  # env 0 plays seed 0 (115 steps), then more; env 1 seed 1 (338)
    args = ["--teacher", zoo_breakout, "--out", out, "--behaviour", "teacher", "--n-envs", str(n_envs)]
    assert run_cli("record", *args, "--steps", str(n_envs * per_env), "--seed", "0", "--no-progress") == 0
    buf = Buffer.open(out)
    env = buf.field("env")
    for i in range(n_envs):
        rows = env == i
        over = np.flatnonzero(buf.field("game_over")[rows])
        assert len(over), f"env {i} finished no game in {per_env} steps"
        end = over[0] + 1
        score, _, actions = sb3_games[SEEDS[i]]
        assert buf.field("game_reward")[rows][:end].sum() == score
        assert buf.field("action")[rows][:end].tolist() == actions
        assert (
            buf.field("game_first")[rows][[0, end]].all() and buf.field("game_first")[rows][1:end].sum() == 0
        )
        # Breakout has 5 lives: the teacher's episodes are the game's 5 lives, not the game
        assert buf.field("first")[rows][:end].sum() == 5
        assert (buf.field("terminated")[rows][:end] | buf.field("truncated")[rows][:end]).sum() == 5
    # the stacks rebuilt across life boundaries are what the teacher labelled
    teacher = load_teacher(zoo_breakout)
    np.testing.assert_allclose(teacher.outputs(buf.field("obs")), buf.field("teacher"), rtol=1e-5, atol=1e-5)
    games = buf.game_returns()
    assert len(games) == int(buf.field("game_over").sum())
    assert games[0] == sb3_games[SEEDS[0]][0]  # env 0's games come first
    assert buf.sources[0]["games"] == len(games)


def test_a_game_ending_inside_a_life_reset_still_starts_the_next_seed(zoo_breakout: Path) -> None:
    """When the frame limit falls in the no-op/FIRE steps of a life-loss reset, the game ends inside
    ``reset()`` and AtariWrapper begins an unseeded game; the next seed must still get its own game."""
    teacher = load_teacher(zoo_breakout)

    def factory(limit: int) -> Any:
        spec = {**teacher.env_spec, "env_kwargs": {"max_num_frames_per_episode": limit}}
        return lambda: envs.make_env_from_spec(spec)

    def first_life_reset(limit: int) -> tuple[Any, int]:
        """Play seed 0 to its first lost life and reset into the next; return the monitor, frames then."""
        env = factory(limit)()
        monitor = envs.game_monitor(env)
        obs, _ = env.reset(seed=0)
        done = False
        while not done:
            obs, _, term, trunc, _ = env.step(int(teacher.predict(obs[None])[0]))
            done = term or trunc
        frames = monitor.length
        env.reset()
        return monitor, frames

    _, lost_at = first_life_reset(8_000)
    limit = next(
        (n for n in range(lost_at + 1, lost_at + 12) if first_life_reset(n)[0].games_finished == 1), None
    )
    assert limit is not None, "no frame limit ends the game inside the life-loss reset"

    def seed_1_observations(seeds: list[int]) -> np.ndarray:
        seen: list[np.ndarray] = []

        def keep(obs: np.ndarray, _a: np.ndarray, eps: np.ndarray, _s: np.ndarray) -> None:
            seen.extend(o for o, e in zip(obs, eps, strict=True) if seeds[e] == 1)

        eps = run_episodes(teacher, ENV, seeds, n_parallel=1, env_factory=factory(limit), step_observer=keep)
        assert eps.lengths[-1] == limit  # every game is cut by the limit: the observations tell them apart
        return np.stack(seen)

    np.testing.assert_array_equal(seed_1_observations([0, 1]), seed_1_observations([1]))


def test_train_teacher_evaluates_whole_games_in_the_training_env(tmp_path: Path) -> None:
    """train-teacher's EvalCallback plays the training env (life-loss resets with FIRE) and scores whole
    games, as the zoo's does: its recorded evaluation equals policy-kd's on the same seed. The weights never
    change (learning_starts beyond the budget), so the evaluated model is the saved teacher."""
    preset = tmp_path / "preset.yml"
    entry = {"policy": "CnnPolicy", "frame_stack": 4, "buffer_size": 500, "learning_starts": 100_000}
    preset.write_text(yaml.safe_dump({ENV: entry}))
    out = tmp_path / "teacher"
    args = ["--algo", "dqn", "--env", ENV, "--preset", preset, "--out", out, "--seed", "0", "--no-progress"]
    assert (
        run_cli("train-teacher", *args, "--n-timesteps", "200", "--eval-freq", "200", "--eval-episodes", "1")
        == 0
    )
    logged = np.load(out / "evaluations.npz")
    teacher = load_teacher(out)
    eps = run_episodes(
        teacher, ENV, [10_000], n_parallel=1, env_factory=teacher.make_env
    )  # eval seed: seed + 10k
    assert (eps.returns[0], eps.lengths[0]) == (logged["results"][0][0], logged["ep_lengths"][0][0])
    assert eps.lengths[0] >= 4 * eps.extra["steps"][0]  # emulator frames (4 per action), a whole game


class _AlwaysFire:
    """A policy for both APIs (policy_kd's predict(obs, deterministic), SB3's predict(obs, state, ...)):
    always FIRE, which scores 5-30 points per invader in Space Invaders."""

    def predict(self, obs: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        actions = np.ones(len(obs), dtype=np.int64)
        return (actions, None) if "state" in kwargs else actions  # SB3 passes state=...


def test_scores_are_the_games_own_not_clipped(tmp_path: Path) -> None:
    """Space Invaders pays 5-30 per invader: the game score (SB3 Monitor under AtariWrapper) is far above
    the clipped per-step rewards the teacher learns from; evaluate and record report the former."""
    env_id = "SpaceInvadersNoFrameskip-v4"
    run = _zoo_run(tmp_path, env_id)
    teacher = load_teacher(run)
    ours = run_episodes(_AlwaysFire(), env_id, [5], n_parallel=1, env_factory=teacher.make_env)
    clipped: list[float] = []
    venv = _sb3_env(5, env_id)
    returns, lengths = evaluate_policy(
        _AlwaysFire(),  # type: ignore[arg-type]
        venv,
        n_eval_episodes=1,
        return_episode_rewards=True,
        callback=lambda local, _g: clipped.append(float(local["reward"])),
    )
    assert (ours.returns[0], ours.lengths[0]) == (returns[0], lengths[0])
    assert ours.returns[0] > 2 * sum(clipped) > 0
    # record (random actions): `reward` is the teacher's clipped training reward, `game_reward` the score
    out = tmp_path / "buffer"
    args = ["--teacher", run, "--out", out, "--behaviour", "epsilon", "--epsilon", "1", "--steps", "300"]
    assert run_cli("record", *args, "--no-progress") == 0
    buf = Buffer.open(out)
    game_reward = buf.field("game_reward")
    assert game_reward.max() > 1 and (buf.field("reward") == np.sign(game_reward)).all()


# SB3 2.x unpickling the old (numpy 1.x) arrays in the zip warns; policy_kd's loader does the same quietly
@pytest.mark.filterwarnings("ignore:numpy.core.numeric is deprecated:DeprecationWarning")
def test_old_gym_zoo_atari_teacher_scores_games_as_sb3(monkeypatch: pytest.MonkeyPatch) -> None:
    """The zoo's Atari config (AtariWrapper, frame stack 4, CnnPolicy A2C) saved by SB3 1.8 with gym 0.21
    (tests/data/old_gym, random-init weights), loaded with ``gym`` blocked: evaluate's per-seed games equal
    SB3's evaluate_policy with Monitor, for --n-parallel 1 and 2. (That it acts as saved on the old stack's
    own states is test_zoo_published's.)"""
    monkeypatch.setitem(sys.modules, "gym", None)
    seeds = [0, 1]
    # SB3 2.x cannot unpickle gym spaces either: given them as rl_zoo3's enjoy gives old models'
    # schedules; the network's space is the channel-first one VecTransposeImage makes
    spaces = VecTransposeImage(_sb3_env(0))
    custom = {"observation_space": spaces.observation_space, "action_space": spaces.action_space}
    spaces.close()
    custom |= {"learning_rate": 0.0, "lr_schedule": lambda _: 0.0}
    model = A2C.load(OLD_GYM_BREAKOUT / f"{ENV}.zip", custom_objects=custom, device="cpu")
    games = _sb3_games(model, seeds, env_kwargs={})  # the run has no env_kwargs: ALE's own frame limit
    scores, lengths = [games[s][0] for s in seeds], [games[s][1] for s in seeds]
    # whole games of several lives, told apart by seed, one scoring
    assert min(lengths) > 400 and lengths[0] != lengths[1] and max(scores) > 0
    for n_parallel in (1, 2):
        config = EvaluateConfig(
            teacher=str(OLD_GYM_BREAKOUT), episodes=2, n_parallel=n_parallel, latency=False
        )
        result = evaluate(config)
        assert result["seeds"] == seeds and result["env_id"] == ENV
        assert result["teacher"]["returns"] == scores, n_parallel
        assert result["teacher"]["modes"]["deterministic"]["lengths"] == lengths, n_parallel
