"""Continuous-action (Gaussian) students end to end: evaluate with --buffer and --mode sampled, and export.

One untrained PPO teacher on Pendulum-v1 (shapes and arithmetic, not skill), a buffer it recorded and a
Gaussian student distilled with gaussian_kl; every figure evaluate reports is recomputed here another way.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from stable_baselines3 import PPO

from policy_kd.buffer import Buffer
from policy_kd.export import load_exported
from policy_kd.students import load_student

ENV = "Pendulum-v1"
LOW, HIGH = -2.0, 2.0  # Pendulum's torque bounds


@pytest.fixture(scope="module")
def gaussian(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gaussian")
    teacher = root / "ppo.zip"
    PPO("MlpPolicy", ENV, policy_kwargs={"net_arch": [16]}, seed=0).save(teacher)
    paths = {"teacher": teacher, "buffer": root / "buffer", "student": root / "student"}
    assert run_cli("record", "--teacher", teacher, "--env", ENV, "--out", paths["buffer"], "--steps", "400",
                   "--no-progress") == 0  # fmt: skip
    assert run_cli("distill", "--buffer", paths["buffer"], "--out", paths["student"], "--loss", "gaussian_kl",
                   "--hidden", "8", "--steps", "100", "--eval-every", "0", "--no-progress") == 0  # fmt: skip
    return paths


def test_gaussian_student_evaluated_on_the_teacher_states_and_sampled(
    gaussian: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    assert run_cli("evaluate", "--teacher", gaussian["teacher"], "--env", ENV, "--student", gaussian["student"],
                   "--buffer", gaussian["buffer"], "--mode", "both", "--episodes", "2", "--no-latency",
                   "--no-random-baseline", "--out", out) == 0  # fmt: skip
    result = json.loads((out / "eval.json").read_text())
    student = result["students"][0]
    assert result["modes"] == ["deterministic", "sampled"] and student["head"] == "gaussian"
    greedy, sampled = (student["modes"][m]["returns"] for m in ("deterministic", "sampled"))
    assert len(greedy) == len(sampled) == 2 and greedy != sampled  # sampling really drew other actions

    # the teacher-state figures, recomputed: torch.distributions' KL and the clipped means compared by hand
    buf = Buffer.open(gaussian["buffer"])
    obs, mean_t, log_std_t = buf.field("obs"), buf.field("teacher"), buf.field("teacher_log_std")
    st = load_student(gaussian["student"])
    with torch.no_grad():
        mean_s = st.net(torch.as_tensor(obs))
        kl = torch.distributions.kl_divergence(
            torch.distributions.Normal(
                torch.as_tensor(mean_t, dtype=torch.float64),
                torch.as_tensor(log_std_t, dtype=torch.float64).exp(),
            ),
            torch.distributions.Normal(mean_s.double(), st.net.log_std.double().exp()),
        ).sum(-1)
    a_t = np.clip(mean_t, LOW, HIGH)
    a_s = st.predict(obs)
    frac = np.abs(a_t - a_s) / (HIGH - LOW)
    fid = student["fidelity"]["teacher_states"]
    assert fid["rows"] == buf.rows == 400
    assert fid["kl"] == pytest.approx(float(kl.mean()), rel=1e-5)
    assert fid["mean_action_diff"] == pytest.approx(float(frac.mean()), rel=1e-5)
    assert fid["agreement"] == pytest.approx(float(np.mean(np.all(frac <= fid["tolerance"], axis=-1))))
    assert fid["kl"] > 0 and 0 <= fid["agreement"] <= 1


@pytest.mark.parametrize("fmt", ["numpy", "onnx"])
def test_gaussian_student_exports_with_its_std_and_bounds(
    gaussian: dict[str, Path], tmp_path: Path, fmt: str
) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    folder = tmp_path / fmt
    assert run_cli("export", gaussian["student"], "--format", fmt, "--out", folder) == 0
    st, ex = load_student(gaussian["student"]), load_exported(folder)
    obs = Buffer.open(gaussian["buffer"]).field("obs")
    with torch.no_grad():
        ref = st.net(torch.as_tensor(obs)).numpy()
    assert np.abs(ex.outputs(obs) - ref).max() <= 1e-5
    np.testing.assert_allclose(ex.log_std, st.net.log_std.detach().numpy().reshape(-1), rtol=0, atol=0)
    assert ex.meta["action_bounds"] == [[LOW], [HIGH]]
    np.testing.assert_allclose(ex.predict(obs), st.predict(obs), atol=1e-5)  # clipped into the bounds alike
    assert ex.predict(obs).min() >= LOW and ex.predict(obs).max() <= HIGH
    # sampled actions: mean + std * noise, inside the bounds, and not the greedy ones
    drawn = ex.predict(obs, deterministic=False)
    assert drawn.shape == ref.shape and drawn.min() >= LOW and drawn.max() <= HIGH
    assert not np.allclose(drawn, ex.predict(obs))
    # evaluate plays the export like the eager student, sampled mode included
    assert run_cli("evaluate", "--teacher", gaussian["teacher"], "--env", ENV, "--student", folder,
                   "--mode", "sampled", "--episodes", "2", "--no-latency", "--no-random-baseline") == 0  # fmt: skip
