"""The four jobs end to end, in-process, on tiny budgets: outputs, contents and reproducibility."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import run_cli

from policy_kd.buffer import Buffer
from policy_kd.evaluate import run_episodes
from policy_kd.students import count_params, load_student
from policy_kd.teacher import load_teacher


def test_teacher_run_folder(artifacts: dict[str, Path]) -> None:
    t = artifacts["teacher"]
    for name in (
        "teacher.json",
        "best_model.zip",
        "last_model.zip",
        "config.yaml",
        "command.txt",
        "versions.json",
    ):
        assert (t / name).is_file(), name
    meta = json.loads((t / "teacher.json").read_text())
    assert meta["algo"] == "dqn" and meta["env_id"] == "CartPole-v1" and meta["seed"] == 0
    # zoo preset: 256x256 Q-network on 4 inputs, 2 actions
    assert meta["policy_params"] == 4 * 256 + 256 + 256 * 256 + 256 + 256 * 2 + 2
    assert yaml.safe_load((t / "config.yaml").read_text())["n_timesteps"] == 2000
    assert "train-teacher" in (t / "command.txt").read_text()
    ver = json.loads((t / "versions.json").read_text())
    # packages and the machine: a retrain is only promised to match on the same CPU build
    assert {"torch", "stable-baselines3", "gymnasium", "numpy", "cpu", "torch_cpu_capability"} <= set(ver)
    assert any((t / "tb").rglob("events.out.tfevents.*"))


def test_buffer_records_teacher_outputs_from_the_acting_pass(artifacts: dict[str, Path]) -> None:
    buf = Buffer.open(artifacts["buffer"])
    assert buf.complete and buf.rows == 3000 and len(buf.segments[0]["chunks"]) == 3
    obs, q, action = buf.field("obs"), buf.field("teacher"), buf.field("action")
    assert obs.shape == (3000, 4) and q.shape == (3000, 2)
    teacher = load_teacher(artifacts["teacher"])
    np.testing.assert_allclose(teacher.outputs(obs), q, rtol=1e-5, atol=1e-5)
    # epsilon = 0.05 by default: the taken action is the teacher's argmax except on random steps
    greedy = (action == q.argmax(-1)).mean()
    assert 0.9 < greedy < 1.0
    meta = buf.meta
    assert meta["teacher"]["kind"] == "q_values" and meta["action_space"] == {"type": "Discrete", "n": 2}
    returns = buf.episode_returns()
    source = buf.sources[0]
    assert len(returns) == source["episodes"] and np.isclose(returns.mean(), source["episode_return_mean"])
    assert (buf.field("source") == 0).all() and buf.field("first")[0]
    # CartPole pays 1 per step, so an episode's return is its length
    done = buf.field("terminated") | buf.field("truncated")
    assert returns.sum() == np.flatnonzero(done)[-1] + 1


def test_greedy_behaviour_acts_with_teacher_argmax(artifacts: dict[str, Path], tmp_path: Path) -> None:
    assert (
        run_cli(
            "record",
            "--teacher",
            artifacts["teacher"],
            "--out",
            tmp_path / "b",
            "--steps",
            "600",
            "--behaviour",
            "teacher",
            "--n-envs",
            "3",
            "--no-progress",
        )
        == 0
    )
    buf = Buffer.open(tmp_path / "b")
    assert buf.rows == 600 and (buf.field("action") == buf.field("teacher").argmax(-1)).all()
    assert set(np.unique(buf.field("env"))) == {0, 1, 2}


def test_student_size_and_files(artifacts: dict[str, Path]) -> None:
    s = artifacts["student"]
    info = json.loads((s / "student.json").read_text())
    student = load_student(s)
    assert count_params(student.net) == info["params"] <= 0.01 * info["teacher_params"]
    assert info["env_id"] == "CartPole-v1" and info["spec"]["hidden"] == [22, 22]
    metrics = json.loads((s / "metrics.json").read_text())
    assert [h["step"] for h in metrics["history"]] == [150, 300]
    assert (s / "best.pt").is_file() and (s / "last.pt").is_file()


def test_distill_is_reproducible_and_learns(artifacts: dict[str, Path], tmp_path: Path) -> None:
    args = [
        "distill",
        "--buffer",
        artifacts["buffer"],
        "--steps",
        "1500",
        "--eval-every",
        "0",
        "--no-progress",
        "--params-fraction",
        "0.01",
        "--seed",
        "3",
    ]
    assert run_cli(*args, "--out", tmp_path / "a") == 0
    assert run_cli(*args, "--out", tmp_path / "b") == 0
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    buf = Buffer.open(artifacts["buffer"])
    student = load_student(tmp_path / "a")
    agree = (student.predict(buf.field("obs")) == buf.field("teacher").argmax(-1)).mean()
    assert agree > 0.9, agree


def test_evaluate_writes_comparison(
    artifacts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    assert (
        run_cli(
            "evaluate",
            "--teacher",
            artifacts["teacher"],
            "--student",
            artifacts["student"],
            "--buffer",
            artifacts["buffer"],
            "--episodes",
            "6",
            "--out",
            out,
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "student/teacher return ratio" in table and "teacher" in table
    r = json.loads((out / "eval.json").read_text())
    assert r["episodes"] == 6 and r["seeds"] == list(range(6))
    assert len(r["teacher"]["returns"]) == len(r["student"]["returns"]) == 6
    assert r["return_ratio"] == pytest.approx(r["student"]["mean_return"] / r["teacher"]["mean_return"])
    assert r["params_ratio"] == pytest.approx(r["student"]["params"] / r["teacher"]["params"])
    assert 0.0 <= r["student"]["agreement"] <= 1.0 and 0.0 <= r["student"]["agreement_teacher_states"] <= 1.0
    lo, hi = r["teacher"]["ci95"]
    assert lo <= r["teacher"]["mean_return"] <= hi


def test_same_seeds_same_returns_whatever_the_parallelism(artifacts: dict[str, Path]) -> None:
    teacher = load_teacher(artifacts["teacher"])
    seeds = [5, 6, 7, 8, 9]
    one = run_episodes(teacher, "CartPole-v1", seeds, n_parallel=1)
    many = run_episodes(teacher, "CartPole-v1", seeds, n_parallel=4)
    np.testing.assert_array_equal(one.returns, many.returns)
    # different initial states give different episodes (the seeds are really used)
    assert len(set(one.lengths.tolist())) > 1


def test_config_file_and_cli_override(artifacts: dict[str, Path], tmp_path: Path) -> None:
    cfg = tmp_path / "distill.yml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "buffer": str(artifacts["buffer"]),
                "steps": 20,
                "eval_every": 0,
                "hidden": [8, 8],
                "loss": "nll",
                "progress": False,
            }
        )
    )
    assert run_cli("distill", "--config", cfg, "--out", tmp_path / "s", "--loss", "mse") == 0
    saved = yaml.safe_load((tmp_path / "s" / "config.yaml").read_text())
    assert saved["loss"] == "mse" and saved["steps"] == 20 and saved["hidden"] == [8, 8]
    assert json.loads((tmp_path / "s" / "student.json").read_text())["spec"]["hidden"] == [8, 8]


@pytest.mark.parametrize("command", ["train-teacher", "record", "distill", "evaluate", "demo"])
def test_help_comes_from_field_docstrings(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run_cli(command, "--help")
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--config FILE" in text and "--force" in text
    if command == "distill":
        assert "Teacher temperature for kl" in text


def test_python_m_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "policy_kd", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "train-teacher" in proc.stdout
