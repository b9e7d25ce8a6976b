"""Kickstarting: the annealing schedule, the distillation term in SB3's updates, the job's outputs and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import run_cli
from stable_baselines3 import DQN, PPO
from test_errors import expect_error

from policy_kd.buffer import Buffer
from policy_kd.kickstart import Kickstart, distill_weight
from policy_kd.losses import LossConfig
from policy_kd.students import load_student
from policy_kd.teacher import load_teacher

# A small, quick DQN preset: 16 gradient steps every 64 env steps from step 200.
TINY_DQN = {
    "policy": "MlpPolicy",
    "n_timesteps": 1000,
    "learning_starts": 200,
    "train_freq": 64,
    "gradient_steps": 16,
    "batch_size": 32,
    "learning_rate": 0.003,
    "target_update_interval": 10,
}


@pytest.fixture(scope="module")
def tiny_preset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("preset") / "dqn.yml"
    path.write_text(yaml.safe_dump({"CartPole-v1": TINY_DQN}))
    return path


def test_distill_weight_schedules() -> None:
    lin = {"weight": 2.0, "anneal": "linear", "horizon": 100}
    assert [distill_weight(t, **lin) for t in (0, 25, 50, 75, 99, 100, 10**6)] == [
        2.0,
        1.5,
        1.0,
        0.5,
        2.0 * (1 - 99 / 100),
        0.0,
        0.0,
    ]
    step = {"weight": 2.0, "anneal": "step", "horizon": 100}
    assert [distill_weight(t, **step) for t in (0, 99, 100, 101)] == [2.0, 2.0, 0.0, 0.0]
    assert distill_weight(10**6, weight=3.0, anneal="constant", horizon=1) == 3.0
    with pytest.raises(ValueError, match="unknown anneal"):
        distill_weight(0, weight=1.0, anneal="cosine", horizon=1)


def _student(algo: str = "dqn") -> DQN | PPO:
    if algo == "ppo":
        return PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_epochs=2, seed=0)
    return DQN(
        "MlpPolicy",
        "CartPole-v1",
        learning_starts=100,
        train_freq=50,
        gradient_steps=5,
        batch_size=32,
        policy_kwargs={"net_arch": [16]},
        seed=0,
    )


def test_weight_follows_the_schedule_at_every_update(artifacts) -> None:
    teacher = load_teacher(artifacts["teacher"])
    model = _student()
    cb = Kickstart(teacher, LossConfig(), weight=2.0, anneal="linear", horizon=600)
    model.learn(1000, callback=cb)
    steps = [t for t, _ in cb.weights]
    # one entry per train() call: every 50 env steps from the first one past learning_starts
    assert steps == list(range(150, 1001, 50))
    assert all(w == distill_weight(t, weight=2.0, anneal="linear", horizon=600) for t, w in cb.weights)
    assert cb.weights[0][1] == 2.0 * (1 - 150 / 600) and cb.weights[-1][1] == 0.0
    # a distillation term in each of the 5 gradient steps of every train() whose weight was not 0
    assert cb.distill_steps == 5 * sum(w > 0 for _, w in cb.weights)
    assert cb.log and all(entry["distill_loss"] >= 0 for entry in cb.log)
    # the hook is gone after training: further updates are plain SB3
    assert not model.policy.optimizer._optimizer_step_pre_hooks


def test_ppo_minibatch_updates_get_the_term(artifacts) -> None:
    teacher = load_teacher(artifacts["teacher"])
    model = _student("ppo")
    cb = Kickstart(teacher, LossConfig(), weight=1.0, anneal="constant", horizon=1)
    model.learn(128, callback=cb)
    # 2 rollouts x 2 epochs x (64 states / 32 per minibatch) optimizer steps, each with the term
    assert cb.distill_steps == 2 * 2 * 2


def _agreement(run: Path, artifacts) -> float:
    """How often the run's final student takes the teacher's greedy action on the teacher's own states."""
    obs = Buffer.open(artifacts["buffer"]).field("obs")[:2000]
    teacher = load_teacher(artifacts["teacher"])
    student = load_teacher(run / "model" / "last_model.zip", "CartPole-v1")
    return float((student.predict(obs) == teacher.predict(obs)).mean())


def test_distillation_term_makes_the_student_act_like_the_teacher(tmp_path, artifacts, tiny_preset) -> None:
    common = ["--teacher", artifacts["teacher"], "--preset", tiny_preset, "--student-hidden", "16", "16"]
    common += ["--eval-freq", "500", "--eval-episodes", "2", "--no-progress"]
    assert (
        run_cli("kickstart", *common, "--out", tmp_path / "ks", "--weight", "100", "--anneal", "constant")
        == 0
    )
    assert run_cli("kickstart", *common, "--out", tmp_path / "scratch", "--weight", "0") == 0
    kick, scratch = _agreement(tmp_path / "ks", artifacts), _agreement(tmp_path / "scratch", artifacts)
    assert kick > 0.9 and kick > scratch + 0.2, (kick, scratch)
    info = json.loads((tmp_path / "ks" / "kickstart.json").read_text())
    assert info["distill_updates"] > 0 and info["student_hidden"] == [16, 16]
    assert json.loads((tmp_path / "scratch" / "kickstart.json").read_text())["distill_updates"] == 0


def test_outputs_load_as_teacher_and_as_student(tmp_path, artifacts, tiny_preset, capsys) -> None:
    out = tmp_path / "ks"
    args = ["kickstart", "--teacher", artifacts["teacher"], "--preset", tiny_preset, "--out", out]
    args += ["--params-fraction", "0.02", "--n-timesteps", "400", "--eval-freq", "200", "--no-progress"]
    assert run_cli(*args) == 0
    sb3 = load_teacher(out / "model")  # the SB3 zip, as any teacher
    student = load_student(out / "student")  # the same network, as a policy_kd student
    obs = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    q = sb3.label(obs).outputs["teacher"]
    with torch.no_grad():
        np.testing.assert_allclose(student.net(torch.from_numpy(obs)).numpy(), q, rtol=1e-5, atol=1e-5)
    info = json.loads((out / "kickstart.json").read_text())
    assert info["params_ratio"] <= 0.02 and info["student_params"] == student.info["params"]
    assert (
        run_cli(
            "evaluate", "--teacher", artifacts["teacher"], "--student", out / "student", "--episodes", "2"
        )
        == 0
    )
    capsys.readouterr()
    expect_error(capsys, args, "already exists", "--force")
    assert run_cli(*args, "--force") == 0


def test_ppo_student_folder_matches_its_policy(tmp_path, artifacts) -> None:
    out = tmp_path / "ppo"
    args = [
        "kickstart",
        "--teacher",
        artifacts["teacher"],
        "--algo",
        "ppo",
        "--out",
        out,
        "--student-hidden",
        "8",
        "--critic-hidden",
        "24",
        "24",
    ]
    assert (
        run_cli(*args, "--n-timesteps", "256", "--eval-freq", "256", "--eval-episodes", "1", "--no-progress")
        == 0
    )
    sb3 = load_teacher(out / "model")
    student = load_student(out / "student")
    obs = np.random.default_rng(1).normal(size=(32, 4)).astype(np.float32)
    assert student.info["spec"]["activation"] == "tanh"  # PPO's default activation
    assert student.info["spec"]["hidden"] == [8]  # the actor: a larger critic is not the student
    np.testing.assert_array_equal(student.predict(obs), sb3.predict(obs))
    model = PPO.load(out / "model" / "best_model.zip", device="cpu")
    vf = [m.out_features for m in model.policy.mlp_extractor.value_net if isinstance(m, torch.nn.Linear)]
    pi = [m.out_features for m in model.policy.mlp_extractor.policy_net if isinstance(m, torch.nn.Linear)]
    assert vf == [24, 24] and pi == [8]
    info = json.loads((out / "kickstart.json").read_text())
    assert info["student_params"] == student.info["params"] == 4 * 8 + 8 + 8 * 2 + 2  # the actor only


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--algo", "trpo"], "unknown algo"),
        (["--algo", "sac"], "kickstarts a student of the same kind of policy"),
        (["--loss", "gaussian_kl"], "does not apply to a q_values teacher"),
        (["--loss", "cosine"], "unknown loss"),
        (["--weight", "-1"], "--weight must be >= 0"),
        (["--anneal", "cosine"], "unknown --anneal"),
        (["--anneal-fraction", "0"], "--anneal-fraction"),
        (["--student-hidden", "0"], "--student-hidden"),
        (["--critic-hidden", "0"], "--critic-hidden needs positive widths"),
        (["--critic-hidden", "32"], "--critic-hidden sizes a PPO/A2C student's critic; --algo dqn"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, artifacts, extra: list[str], fragment: str) -> None:
    expect_error(
        capsys, ["kickstart", "--teacher", artifacts["teacher"], "--out", tmp_path / "o", *extra], fragment
    )
    assert not (tmp_path / "o").exists()


def test_missing_teacher(tmp_path, capsys) -> None:
    expect_error(capsys, ["kickstart", "--out", tmp_path / "o"], "needs a teacher")
    expect_error(
        capsys, ["kickstart", "--teacher", tmp_path / "nope", "--out", tmp_path / "o"], "teacher not found"
    )


def test_out_inside_the_teacher_is_refused(capsys, artifacts) -> None:
    expect_error(
        capsys,
        ["kickstart", "--teacher", artifacts["teacher"], "--out", artifacts["teacher"] / "ks"],
        "overwrite",
    )


# ------------------------------------------------------------------------------------------------- resume


def test_sigterm_checkpoints_and_resume_continues_the_distillation_state(
    tmp_path, artifacts, tiny_preset, capsys
) -> None:
    from test_guarantees import _one_line, _running, _terminate, _wait_for

    out = tmp_path / "ks"
    args = ("kickstart", "--teacher", artifacts["teacher"], "--preset", tiny_preset, "--out", out,
            "--n-timesteps", 10**6, "--eval-freq", 500, "--eval-episodes", 2, "--no-progress")  # fmt: skip
    with _running(*args) as proc:
        _wait_for(lambda: (out / "model" / "evaluations.npz").is_file(), proc)  # past its first evaluation
        code, err = _terminate(proc)
    assert code == 143, err
    # the run resumes as a kickstart run, not as the train-teacher run it trains through
    _one_line(
        err, "interrupted by SIGTERM", "checkpoint at step", f"policy-kd kickstart --resume --out {out}"
    )
    state = json.loads((out / "model" / "checkpoint" / "state.json").read_text())
    stopped, saved = state["num_timesteps"], state["callbacks"]["Kickstart"]
    assert saved["distill_steps"] > 0 and saved["log"] and saved["horizon"] == 500_000
    budget = stopped + 500
    # train-teacher --resume would go on without the distillation term
    expect_error(capsys, ["train-teacher", "--resume", "--out", out / "model", "--n-timesteps", budget],
                 "checkpointed by another job", f"policy-kd kickstart --resume --out {out}")  # fmt: skip
    assert run_cli("kickstart", "--resume", "--out", out, "--n-timesteps", budget, "--no-progress") == 0
    info = json.loads((out / "kickstart.json").read_text())
    assert info["resumed"] and info["n_timesteps"] == budget
    assert info["horizon"] == 500_000  # the schedule of the run as started, not of the new budget
    assert info["log"][: len(saved["log"])] == saved["log"] and len(info["log"]) > len(saved["log"])
    assert info["distill_updates"] > saved["distill_steps"]
    assert json.loads((out / "model" / "teacher.json").read_text())["n_timesteps"] == budget
    load_student(out / "student")
    expect_error(
        capsys, ["kickstart", "--resume", "--out", out], "finished kickstart run", "nothing to resume"
    )
    expect_error(capsys, ["kickstart", "--resume", "--out", tmp_path / "nope"], "no kickstart run to resume")
    expect_error(capsys, ["kickstart", "--resume"], "--resume needs --out")
