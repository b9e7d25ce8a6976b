"""Students that keep learning (issue 27): ``record --values`` stores the teacher's V(s), ``Buffer.discounted_returns``
the recorded returns, and ``export --format sb3 --algo dqn|ppo|a2c`` writes a full SB3 algorithm that acts
exactly as the student does, whose critic is fitted to those targets, and that ``learn()`` continues from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.env_util import make_vec_env

from policy_kd.buffer import Buffer
from policy_kd.students import load_student
from policy_kd.teacher import load_teacher


@pytest.fixture(scope="module")
def ppo_pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny PPO CartPole teacher, a buffer recorded with its values, and a student distilled from it."""
    root = tmp_path_factory.mktemp("finetune")
    p = {k: root / k for k in ("teacher", "buffer", "student")}
    assert run_cli("train-teacher", "--algo", "ppo", "--env", "CartPole-v1", "--out", p["teacher"],
                   "--n-timesteps", "3000", "--eval-freq", "1500", "--eval-episodes", "2", "--no-progress") == 0  # fmt: skip
    assert run_cli("record", "--teacher", p["teacher"], "--out", p["buffer"], "--steps", "3000", "--values",
                   "--behaviour", "teacher", "--n-envs", "2", "--no-progress") == 0  # fmt: skip
    assert run_cli("distill", "--buffer", p["buffer"], "--out", p["student"], "--steps", "300", "--loss", "kl",
                   "--tau", "1.0", "--eval-every", "0", "--hidden", "16", "16", "--no-progress") == 0  # fmt: skip
    return {"root": root, **p}


def test_record_values_are_the_teachers_critic(ppo_pipeline: dict[str, Path]) -> None:
    buf = Buffer.open(ppo_pipeline["buffer"])
    assert buf.fields["teacher_value"].shape == ()
    obs, values = buf.spaced("obs", 200), buf.spaced("teacher_value", 200)
    model = load_teacher(str(ppo_pipeline["teacher"])).model
    want = model.policy.predict_values(torch.as_tensor(obs)).detach().numpy().reshape(-1)
    np.testing.assert_allclose(values, want, rtol=1e-5, atol=1e-5)


def test_record_values_refuses_a_teacher_without_critic(
    artifacts: dict[str, Path], tmp_path: Path, capsys
) -> None:
    assert run_cli("record", "--teacher", artifacts["teacher"], "--out", tmp_path / "b", "--steps", "10",
                   "--values", "--no-progress") == 2  # fmt: skip
    assert "a dqn teacher has none" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_discounted_returns_follow_the_recorded_episodes(ppo_pipeline: dict[str, Path]) -> None:
    buf = Buffer.open(ppo_pipeline["buffer"])
    undiscounted, complete = buf.discounted_returns(1.0)
    first = buf.field("first")
    # at an episode's first step, the undiscounted return is the whole episode's return
    np.testing.assert_allclose(np.sort(undiscounted[first & complete]), np.sort(buf.episode_returns()))
    # brute force for one env at gamma 0.9: sum of gamma^k r_{t+k} up to the episode's end
    g, _ = buf.discounted_returns(0.9)
    env, reward = buf.field("env"), buf.field("reward")
    done = buf.field("terminated") | buf.field("truncated")
    rows = np.flatnonzero(env == 1)
    for i in range(0, len(rows), 97):
        total = 0.0
        for k, r in enumerate(rows[i:]):
            total += 0.9**k * reward[r]
            if done[r]:
                break
        if complete[rows[i]]:
            assert g[rows[i]] == pytest.approx(total)
    assert not complete[rows[-1]] or done[rows[-1]]  # the cut-off last episode is marked incomplete
    with pytest.raises(Exception, match="gamma"):
        buf.discounted_returns(1.5)


def _export(pipeline: dict[str, Path], name: str, *args: str) -> tuple[Path, dict]:
    out = pipeline["root"] / name
    assert run_cli("export", pipeline["student"], "--format", "sb3", "--out", out, *args) == 0
    return out / "policy.zip", json.loads((out / "export.json").read_text())


@pytest.mark.parametrize(("algo", "target"), [("ppo", "teacher"), ("a2c", "returns")])
def test_actor_critic_export_acts_as_the_student_and_keeps_learning(
    ppo_pipeline: dict[str, Path], algo: str, target: str
) -> None:
    zip_path, meta = _export(ppo_pipeline, f"{algo}_{target}", "--algo", algo, "--value-target", target,
                             "--value-steps", "300")  # fmt: skip
    critic = meta["details"]["critic"]
    assert meta["details"]["algo"] == algo and meta["details"]["value_target"] == target
    if target == "teacher":  # V(s) is a function of the state: the fit must beat predicting the mean
        assert critic["held_out_mse_after"] < 0.5 * critic["held_out_mse_before"]
    cls = {"ppo": PPO, "a2c": A2C}[algo]
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    model = cls.load(zip_path, env=env, device="cpu", n_steps=32)
    obs = Buffer.open(ppo_pipeline["buffer"]).spaced("obs", 1000)
    student = load_student(ppo_pipeline["student"])
    assert np.array_equal(model.predict(obs, deterministic=True)[0], student.predict(obs))
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(128)
    assert model.num_timesteps >= 128
    assert any(not torch.equal(a, b) for a, b in zip(before, model.policy.parameters(), strict=True))


def test_dqn_export_keeps_learning(ppo_pipeline: dict[str, Path]) -> None:
    zip_path, _ = _export(ppo_pipeline, "dqn", "--algo", "dqn")
    model = DQN.load(zip_path, env=make_vec_env("CartPole-v1", n_envs=1, seed=0), device="cpu")
    obs = Buffer.open(ppo_pipeline["buffer"]).spaced("obs", 500)
    assert np.array_equal(
        model.predict(obs, deterministic=True)[0], load_student(ppo_pipeline["student"]).predict(obs)
    )
    model.learn(100)
    assert model.num_timesteps >= 100


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--algo", "ppo"), "pass --value-target teacher"),
        (("--value-target", "teacher"), "a DQN has no critic"),
        (("--format", "numpy", "--algo", "ppo"), "apply to --format sb3"),
        (("--algo", "ppo", "--value-target", "returns", "--gamma", "2"), "--gamma must lie in"),
    ],
)
def test_export_refuses_bad_sb3_options(
    ppo_pipeline: dict[str, Path], tmp_path: Path, capsys, args: tuple[str, ...], message: str
) -> None:
    fmt = () if "--format" in args else ("--format", "sb3")
    assert run_cli("export", ppo_pipeline["student"], *fmt, *args, "--out", tmp_path / "e") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_teacher_value_target_needs_recorded_values(
    artifacts: dict[str, Path], tmp_path: Path, capsys
) -> None:
    """The session's student was distilled from a buffer recorded without --values."""
    assert run_cli("export", artifacts["student"], "--format", "sb3", "--algo", "ppo", "--value-target",
                   "teacher", "--out", tmp_path / "e") == 2  # fmt: skip
    assert "record --values" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
