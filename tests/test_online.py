"""Online distillation: the callback's step counting, its learning, the distill-online job and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from stable_baselines3 import DQN, PPO
from test_errors import expect_error

from policy_kd.online import DistillOnlineConfig, OnlineDistillation, sample_states
from policy_kd.students import load_student
from policy_kd.teacher import load_teacher


def _config(**kw: object) -> DistillOnlineConfig:
    base: dict[str, object] = {
        "env": "CartPole-v1",
        "hidden": (8,),
        "batch_size": 32,
        "eval_episodes": 1,
        "student_eval_every": 100_000,
    }
    return DistillOnlineConfig(**{**base, **kw})  # type: ignore[arg-type]


def _dqn(**kw: object) -> DQN:
    args: dict[str, object] = {
        "learning_starts": 200,
        "train_freq": 16,
        "gradient_steps": 4,
        "batch_size": 32,
        "policy_kwargs": {"net_arch": [32]},
        "seed": 0,
    }
    return DQN("MlpPolicy", "CartPole-v1", **{**args, **kw})  # type: ignore[arg-type]


def test_m_steps_every_k_updates(tmp_path: Path) -> None:
    model = _dqn()
    cb = OnlineDistillation(_config(every=8, distill_steps=3), tmp_path)
    model.learn(1000, callback=cb)
    updates = model._n_updates
    assert updates > 8
    assert cb.student_steps == 3 * (updates // 8)
    assert sum(p["student_steps"] for p in cb.phases) == cb.student_steps
    assert len(cb.phases) > 5  # distilled as the teacher went, not all at the end
    # every phase was taken once the teacher had done at least that many updates
    taken = np.cumsum([p["student_steps"] for p in cb.phases]) // 3
    assert all(b * 8 <= p["teacher_updates"] for b, p in zip(taken, cb.phases, strict=True))


def test_every_k_env_steps_from_the_rollout_buffer(tmp_path: Path) -> None:
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, n_epochs=2, seed=0)
    cb = OnlineDistillation(_config(algo="ppo", unit="steps", every=100, distill_steps=2), tmp_path)
    model.learn(512, callback=cb)
    assert model.num_timesteps == 512
    assert cb.student_steps == 2 * (512 // 100)
    states = sample_states(model, 16, np.random.default_rng(0))
    assert states.shape == (16, 4) and np.abs(states).sum() > 0  # real rollout states, not the zeroed buffer


def test_student_loss_toward_the_teacher_decreases(tmp_path: Path) -> None:
    # learning_starts beyond the budget: the teacher's network stays fixed, the student has one target
    model = _dqn(learning_starts=10_000)
    cb = OnlineDistillation(_config(unit="steps", every=200, distill_steps=25, hidden=(16,)), tmp_path)
    model.learn(2000, callback=cb)
    losses = [p["loss"] for p in cb.phases]
    assert len(losses) == 10
    assert losses[-1] < 0.5 * losses[0], losses
    assert cb.phases[-1]["agreement"] > 0.8


def test_distill_online_job_writes_teacher_and_student_side_by_side(
    tmp_path: Path, capsys, artifacts
) -> None:
    out = tmp_path / "online"
    # the teacher's options are those of the session's teacher fixture (tests/conftest.py)
    args = ["distill-online", "--env", "CartPole-v1", "--out", out, "--n-timesteps", "2000"]
    args += ["--eval-freq", "1000", "--eval-episodes", "3", "--every", "64", "--distill-steps", "8"]
    args += ["--hidden", "8", "--no-progress"]
    assert run_cli(*args) == 0
    assert (out / "teacher" / "teacher.json").is_file() and (out / "config.yaml").is_file()
    metrics = json.loads((out / "student" / "metrics.json").read_text())
    # the preset trains 128 gradient steps per 256 env steps once past step 1000
    assert metrics["teacher_updates"] >= 128
    assert metrics["student_steps"] == 8 * (metrics["teacher_updates"] // 64)
    assert metrics["history"][-1]["teacher_steps"] == metrics["teacher_steps"] >= 2000
    assert {"student_return", "teacher_return"} <= set(metrics["history"][-1])
    assert any((out / "student" / "tb").iterdir())
    student = load_student(out / "student")
    assert student.info["teacher"]["path"] == str((out / "teacher").resolve())
    assert student.predict(np.zeros((3, 4), np.float32)).shape == (3,)
    # the online student leaves the teacher's training untouched: the same teacher as train-teacher's
    ours, plain = (load_teacher(d).model.policy.state_dict() for d in (out / "teacher", artifacts["teacher"]))
    assert all(torch.equal(ours[k], plain[k]) for k in plain)
    # evaluate compares them like any teacher and student
    assert (
        run_cli("evaluate", "--teacher", out / "teacher", "--student", out / "student", "--episodes", "2")
        == 0
    )
    capsys.readouterr()
    # --force semantics: an existing run is kept unless --force
    expect_error(capsys, args, "already exists", "--force")
    assert (out / "student" / "student.json").is_file()
    assert run_cli(*args, "--force") == 0


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--unit", "episodes"], "unknown --unit"),
        (["--loss", "gaussian_kl"], "unknown loss"),
        (["--every", "0"], "--every must be > 0"),
        (["--algo", "trpo"], "unknown algo"),
        (["--algo", "td3", "--loss", "gaussian_kl"], "unknown loss"),
        (["--tau", "0"], "--tau must be > 0"),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, capsys, extra: list[str], fragment: str) -> None:
    expect_error(capsys, ["distill-online", "--out", tmp_path / "o", *extra], fragment)
    assert not (tmp_path / "o").exists()


def test_no_out(capsys) -> None:
    expect_error(capsys, ["distill-online", "--n-timesteps", "10"], "--out")


def test_algo_name_is_the_exact_class_name() -> None:
    from sb3_contrib import QRDQN
    from stable_baselines3 import A2C

    from policy_kd.online import algo_name

    class KickstartDQN(DQN):  # a subclass is named by its nearest supported base
        pass

    small = {"policy_kwargs": {"net_arch": [4]}, "device": "cpu"}
    models = {
        "qrdqn": QRDQN("MlpPolicy", "CartPole-v1", **small),  # was "dqn": QRDQN ends with "dqn"
        "dqn": KickstartDQN("MlpPolicy", "CartPole-v1", **small),
        "ppo": PPO("MlpPolicy", "CartPole-v1", n_steps=8, batch_size=8, **small),
        "a2c": A2C("MlpPolicy", "CartPole-v1", **small),
    }
    assert {name: algo_name(m) for name, m in models.items()} == {n: n for n in models}


def test_sigterm_says_start_over_not_train_teacher_resume(tmp_path: Path) -> None:
    """An online run does not resume: a teacher checkpoint would invite ``train-teacher --resume``, which
    trains on without the student."""
    from test_guarantees import _one_line, _running, _terminate, _wait_for

    out = tmp_path / "online"
    args = ("distill-online", "--env", "CartPole-v1", "--out", out, "--n-timesteps", 10**6, "--eval-freq", 500,
            "--eval-episodes", 1, "--every", 64, "--distill-steps", 2, "--hidden", 8, "--no-progress")  # fmt: skip
    with _running(*args) as proc:
        _wait_for(lambda: (out / "teacher" / "evaluations.npz").is_file(), proc)
        code, err = _terminate(proc)
    line = _one_line(err, "interrupted by SIGTERM", "cannot be resumed", "--force")
    assert code == 143 and "train-teacher --resume" not in line, line
    assert "cannot be resumed; start over with --force" in line and "--checkpoint-freq" not in line, line
    assert not (out / "teacher" / "checkpoint").exists()
