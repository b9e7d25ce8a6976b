"""Off-policy continuous teachers (SAC, TQC, TD3, DDPG) end to end: what is recorded, distilled, evaluated
and exported.

Four tiny teachers trained for a few hundred steps on Pendulum-v1 (shapes, arithmetic and plumbing, not
skill) in one session fixture, each with a buffer recorded with ``--record-q`` and a student distilled
from it: squashed Gaussian students (gaussian_kl) for SAC/TQC, deterministic ones (mse) for TD3/DDPG.
Every recorded figure is recomputed here through SB3's own API (``predict``, ``scale_action``, the
critics), not through the adapter under test.
"""

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
from policy_kd.export import load_exported
from policy_kd.students import load_student
from policy_kd.teacher import load_teacher

ENV = "Pendulum-v1"
LOW, HIGH = -2.0, 2.0  # Pendulum's torque bounds
ALGOS = ("sac", "tqc", "td3", "ddpg")
SQUASHED, DETERMINISTIC = ("sac", "tqc"), ("td3", "ddpg")
KIND = {
    "sac": "squashed_gaussian",
    "tqc": "squashed_gaussian",
    "td3": "deterministic",
    "ddpg": "deterministic",
}
LOSS = {"sac": "gaussian_kl", "tqc": "gaussian_kl", "td3": "mse", "ddpg": "mse"}
# Small and quick: 300 steps, learning from step 100, 32x32 networks (zoo presets would not learn a thing
# in 300 steps: TD3's starts learning at 10,000).
PRESETS = {
    "sac": {},
    "tqc": {"policy_kwargs": {"net_arch": [32, 32], "n_quantiles": 5}},
    "td3": {"noise_type": "normal", "noise_std": 0.1},
    "ddpg": {"noise_type": "ornstein-uhlenbeck", "noise_std": 0.3},
}


def _preset(root: Path, algo: str) -> Path:
    entry = {"policy": "MlpPolicy", "n_timesteps": 300, "learning_starts": 100, "batch_size": 64,
             "policy_kwargs": {"net_arch": [32, 32]}, **PRESETS[algo]}  # fmt: skip
    path = root / f"{algo}.yml"
    path.write_text(yaml.safe_dump({ENV: entry}))
    return path


@pytest.fixture(scope="session")
def offpolicy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """Per algorithm: a teacher run folder, a buffer recorded with --record-q, a distilled student."""
    root = tmp_path_factory.mktemp("offpolicy")
    out: dict[str, dict[str, Path]] = {}
    for algo in ALGOS:
        p = {k: root / f"{algo}-{k}" for k in ("teacher", "buffer", "student")}
        assert run_cli("train-teacher", "--algo", algo, "--env", ENV, "--preset", _preset(root, algo),
                       "--out", p["teacher"], "--eval-freq", "300", "--eval-episodes", "1",
                       "--no-progress") == 0  # fmt: skip
        assert run_cli("record", "--teacher", p["teacher"], "--out", p["buffer"], "--steps", "400",
                       "--behaviour", "teacher", "--record-q", "--no-progress") == 0  # fmt: skip
        assert run_cli("distill", "--buffer", p["buffer"], "--out", p["student"], "--loss", LOSS[algo],
                       "--hidden", "16", "--steps", "150", "--eval-every", "0", "--no-progress") == 0  # fmt: skip
        out[algo] = p
    return out


def _sb3_q(model, algo: str, obs: np.ndarray, action: np.ndarray) -> np.ndarray:
    """The critic's value at env actions, through SB3's own scaling and critics."""
    policy = model.policy
    scaled = torch.as_tensor(policy.scale_action(action))
    obs_t = torch.as_tensor(obs)
    with torch.no_grad():
        if algo in DETERMINISTIC:
            return policy.critic.q1_forward(obs_t, scaled).squeeze(-1).numpy()
        if algo == "tqc":
            return policy.critic(obs_t, scaled).mean(dim=(1, 2)).numpy()
        return torch.min(*policy.critic(obs_t, scaled)).squeeze(-1).numpy()


@pytest.mark.parametrize("algo", ALGOS)
def test_recorded_outputs_are_the_actors_and_critics(
    offpolicy: dict[str, dict[str, Path]], algo: str
) -> None:
    teacher = load_teacher(offpolicy[algo]["teacher"])
    buf = Buffer.open(offpolicy[algo]["buffer"])
    assert teacher.algo == algo and teacher.kind == KIND[algo] == buf.meta["teacher"]["kind"]
    obs, recorded = buf.field("obs"), buf.field("teacher")
    assert recorded.shape == (400, 1) and buf.field("teacher_q").shape == (400,)
    assert ("teacher_log_std" in buf.fields) == (algo in SQUASHED)
    # the action taken is SB3's own deterministic action, and the recorded output gives it back
    sb3_action = teacher.model.predict(obs, deterministic=True)[0]
    np.testing.assert_allclose(buf.field("action"), sb3_action, atol=1e-5)
    if algo in SQUASHED:  # pre-squash mean and the actor's own log-std
        np.testing.assert_allclose(LOW + (np.tanh(recorded) + 1) * (HIGH - LOW) / 2, sb3_action, atol=1e-5)
        with torch.no_grad():
            mean, log_std, _ = teacher.model.policy.actor.get_action_dist_params(torch.as_tensor(obs))
        np.testing.assert_allclose(recorded, mean.numpy(), atol=1e-6)
        np.testing.assert_allclose(buf.field("teacher_log_std"), log_std.numpy(), atol=1e-6)
    else:  # the action scaled to [-1, 1], as the critic takes it
        np.testing.assert_allclose(recorded, teacher.model.policy.scale_action(sb3_action), atol=1e-5)
    np.testing.assert_allclose(
        buf.field("teacher_q"), _sb3_q(teacher.model, algo, obs, sb3_action), rtol=1e-5, atol=1e-4
    )
    # policy parameters: the actor only (not the critics or the targets)
    assert teacher.policy_params == sum(p.numel() for p in teacher.model.policy.actor.parameters())


@pytest.mark.parametrize("algo", ALGOS)
def test_distilled_student_evaluated_with_teacher_state_fidelity(
    offpolicy: dict[str, dict[str, Path]], algo: str, tmp_path: Path
) -> None:
    p = offpolicy[algo]
    student = load_student(p["student"])
    assert student.net.spec.head == KIND[algo]
    assert hasattr(student.net, "log_std") == (algo in SQUASHED)
    out = tmp_path / "eval"
    assert run_cli("evaluate", "--teacher", p["teacher"], "--student", p["student"], "--buffer", p["buffer"],
                   "--episodes", "2", "--no-latency", "--no-random-baseline", "--out", out) == 0  # fmt: skip
    result = json.loads((out / "eval.json").read_text())
    s = result["students"][0]
    assert s["head"] == KIND[algo] and len(s["modes"]["deterministic"]["returns"]) == 2
    # the teacher-state action difference, recomputed from the buffer by hand
    buf = Buffer.open(p["buffer"])
    obs, t_out = buf.field("obs"), buf.field("teacher")
    if algo in SQUASHED:
        a_t = LOW + (np.tanh(t_out) + 1) * (HIGH - LOW) / 2
    else:
        a_t = LOW + (t_out + 1) * (HIGH - LOW) / 2
    a_s = student.predict(obs)
    assert a_s.min() >= LOW and a_s.max() <= HIGH
    fid = s["fidelity"]["teacher_states"]
    assert fid["mean_action_diff"] == pytest.approx(
        float((np.abs(a_t - a_s) / (HIGH - LOW)).mean()), rel=1e-5
    )
    assert (fid["kl"] is None) == (
        algo in DETERMINISTIC
    )  # no distribution to compare for a deterministic actor


@pytest.mark.parametrize("fmt", ["numpy", "onnx", "c"])
@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_squashed_and_deterministic_students_export_and_evaluate(
    offpolicy: dict[str, dict[str, Path]], algo: str, fmt: str, tmp_path: Path
) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    if fmt == "c":
        from policy_kd.c_runtime import find_compiler

        if find_compiler() is None:
            pytest.skip("no C compiler")
    p = offpolicy[algo]
    folder = tmp_path / fmt
    assert run_cli("export", p["student"], "--format", fmt, "--out", folder) == 0
    st, ex = load_student(p["student"]), load_exported(folder)
    obs = Buffer.open(p["buffer"]).field("obs")
    with torch.no_grad():
        ref = st.net(torch.as_tensor(obs)).numpy()
    assert np.abs(ex.outputs(obs) - ref).max() <= 1e-5
    np.testing.assert_allclose(ex.predict(obs), st.predict(obs), atol=1e-5)
    assert ex.meta["action_bounds"] == [[LOW], [HIGH]]
    if algo in DETERMINISTIC:  # outputs in [-1, 1] (the tanh is in the exported program); nothing to sample
        assert np.abs(ref).max() <= 1 and ex.log_std is None
        np.testing.assert_array_equal(ex.predict(obs, deterministic=False), ex.predict(obs))
    else:
        np.testing.assert_array_equal(ex.log_std, st.net.log_std.detach().numpy().reshape(-1))
    # each export is evaluated as exported
    assert run_cli("evaluate", "--teacher", p["teacher"], "--student", folder, "--episodes", "1",
                   "--no-latency", "--no-random-baseline") == 0  # fmt: skip


def _mean_q_at_student_actions(p: dict[str, Path], student_dir: Path, algo: str) -> float:
    teacher, student = load_teacher(p["teacher"]), load_student(student_dir)
    obs = Buffer.open(p["buffer"]).field("obs")
    return float(_sb3_q(teacher.model, algo, obs, student.predict(obs)).mean())


@pytest.mark.parametrize("algo", ["td3", "sac"])
def test_critic_guidance_raises_the_critics_value_of_the_students_actions(
    offpolicy: dict[str, dict[str, Path]], algo: str, tmp_path: Path
) -> None:
    p = offpolicy[algo]
    common = ["--buffer", p["buffer"], "--loss", LOSS[algo], "--hidden", "4", "--steps", "300",
              "--eval-every", "0", "--no-progress"]  # fmt: skip
    assert run_cli("distill", *common, "--out", tmp_path / "plain") == 0
    assert run_cli("distill", *common, "--out", tmp_path / "guided", "--teacher", p["teacher"],
                   "--critic-weight", "1") == 0  # fmt: skip
    metrics = json.loads((tmp_path / "guided" / "metrics.json").read_text())
    assert "loss/critic" in metrics["final"]
    plain = _mean_q_at_student_actions(p, tmp_path / "plain", algo)
    guided = _mean_q_at_student_actions(p, tmp_path / "guided", algo)
    assert guided > plain


def test_plain_zips_load_and_ddpg_is_told_from_td3(offpolicy: dict[str, dict[str, Path]]) -> None:
    for algo in ALGOS:
        zip_path = offpolicy[algo]["teacher"] / "best_model.zip"
        teacher = load_teacher(zip_path, ENV)
        assert teacher.algo == algo and teacher.kind == KIND[algo]


@pytest.mark.slow
@pytest.mark.parametrize("algo", ALGOS)
def test_zoo_run_folders(algo: str, tmp_path: Path) -> None:
    pytest.importorskip("rl_zoo3")
    cmd = [sys.executable, "-m", "rl_zoo3.train", "--algo", algo, "--env", ENV, "-n", "200", "--seed", "0",
           "-f", str(tmp_path), "--num-threads", "1", "--eval-freq", "-1", "--verbose", "0",
           "-params", "learning_starts:50", "policy_kwargs:dict(net_arch=[16])"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    run = tmp_path / algo / f"{ENV}_1"
    teacher = load_teacher(run)
    assert teacher.algo == algo and teacher.kind == KIND[algo]
    buf = tmp_path / "buffer"
    assert run_cli("record", "--teacher", run, "--out", buf, "--steps", "200", "--behaviour", "teacher",
                   "--no-progress") == 0  # fmt: skip
    obs = Buffer.open(buf).field("obs")
    np.testing.assert_allclose(
        Buffer.open(buf).field("action"), teacher.model.predict(obs, deterministic=True)[0], atol=1e-5
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--loss", "gaussian_kl"], "does not apply to a deterministic teacher"),
        (["--loss", "mse", "--critic-weight", "1"], "--critic-weight needs the teacher"),
    ],
)
def test_distill_refusals(
    offpolicy: dict[str, dict[str, Path]], tmp_path: Path, capsys, args, message
) -> None:
    assert run_cli("distill", "--buffer", offpolicy["td3"]["buffer"], "--out", tmp_path / "s", *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # refused before the student folder is made


def test_record_q_and_critic_weight_refused_without_a_critic(
    offpolicy: dict[str, dict[str, Path]], tmp_path: Path, capsys
) -> None:
    from stable_baselines3 import PPO

    ppo = tmp_path / "ppo.zip"
    PPO("MlpPolicy", ENV, policy_kwargs={"net_arch": [8]}, seed=0).save(ppo)
    assert run_cli("record", "--teacher", ppo, "--env", ENV, "--out", tmp_path / "b", "--record-q",
                   "--no-progress") == 2  # fmt: skip
    assert "--record-q needs a teacher with a critic" in capsys.readouterr().err
    assert run_cli("record", "--teacher", ppo, "--env", ENV, "--out", tmp_path / "b", "--steps", "50",
                   "--no-progress") == 0  # fmt: skip
    assert run_cli("distill", "--buffer", tmp_path / "b", "--teacher", ppo, "--env", ENV, "--out", tmp_path / "s",
                   "--loss", "mse", "--critic-weight", "1") == 2  # fmt: skip
    assert "--critic-weight needs a TD3/DDPG/SAC/TQC teacher's critic" in capsys.readouterr().err


def test_preset_action_noise(tmp_path: Path, capsys) -> None:
    import gymnasium as gym
    from stable_baselines3.common.noise import NormalActionNoise

    from policy_kd.teachers.presets import action_noise

    box = gym.spaces.Box(-1, 1, (3,))
    noise = action_noise({"noise_type": "normal", "noise_std": 0.2}, box)
    assert isinstance(noise, NormalActionNoise) and noise._sigma.tolist() == [0.2] * 3
    assert action_noise({}, box) is None
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump({ENV: {"n_timesteps": 10, "noise_type": "pink"}}))
    assert run_cli("train-teacher", "--algo", "td3", "--env", ENV, "--preset", bad, "--out", tmp_path / "t",
                   "--no-progress") == 2  # fmt: skip
    assert "noise_type 'pink' is not one of normal, ornstein-uhlenbeck" in capsys.readouterr().err


def test_packaged_presets_cover_the_continuous_tasks() -> None:
    from policy_kd.teachers.presets import algo_kwargs, load_preset

    for algo in ALGOS:
        for env in (
            "Pendulum-v1",
            "LunarLanderContinuous-v3",
            "BipedalWalker-v3",
            "MountainCarContinuous-v0",
        ):
            preset = load_preset(algo, env)
            assert preset != load_preset(algo, "NoSuchEnv-v0")  # an entry of its own, not the default: one
            assert preset["n_timesteps"] > 0 and isinstance(algo_kwargs(preset), dict)


# ------------------------------------------------------------------ kickstart and distill-online, continuous


@pytest.mark.parametrize("algo", ["td3", "sac"])
def test_kickstart_continuous_student(
    offpolicy: dict[str, dict[str, Path]], algo: str, tmp_path: Path
) -> None:
    out = tmp_path / "ks"
    assert run_cli("kickstart", "--teacher", offpolicy[algo]["teacher"], "--algo", algo, "--loss", LOSS[algo],
                   "--preset", _preset(tmp_path, algo), "--student-hidden", "8", "--out", out,
                   "--eval-freq", "300", "--eval-episodes", "1", "--no-progress") == 0  # fmt: skip
    summary = json.loads((out / "kickstart.json").read_text())
    assert summary["distill_updates"] > 0 and summary["log"]
    assert all(np.isfinite(e["distill_loss"]) and 0 <= e["agreement"] <= 1 for e in summary["log"])
    model = load_teacher(out / "model")
    assert model.algo == algo and next(iter(model.model.policy.actor.parameters())).shape[0] == 8
    if algo in SQUASHED:  # a state-dependent std: no policy_kd student folder, and it says why
        assert summary["student_folder"] is None and "state" in summary["student_folder_skipped"]
        return
    student = load_student(out / "student")  # the same network as a policy_kd student: the same actions
    obs = Buffer.open(offpolicy[algo]["buffer"]).field("obs")
    assert student.net.spec.head == "deterministic"
    np.testing.assert_allclose(
        student.predict(obs), model.model.predict(obs, deterministic=True)[0], atol=1e-5
    )


def test_kickstart_gaussian_ppo_student(tmp_path: Path) -> None:
    from stable_baselines3 import PPO

    teacher = tmp_path / "ppo.zip"
    PPO("MlpPolicy", ENV, policy_kwargs={"net_arch": [16]}, seed=0).save(teacher)
    preset = tmp_path / "ppo.yml"
    preset.write_text(yaml.safe_dump({ENV: {"policy": "MlpPolicy", "n_steps": 128, "batch_size": 64,
                                            "n_epochs": 2}}))  # fmt: skip
    out = tmp_path / "ks"
    assert run_cli("kickstart", "--teacher", teacher, "--env", ENV, "--algo", "ppo", "--loss", "gaussian_kl",
                   "--preset", preset, "--student-hidden", "8", "--n-timesteps", "256", "--anneal", "constant", "--out", out,
                   "--eval-freq", "256", "--eval-episodes", "1", "--no-progress") == 0  # fmt: skip
    assert json.loads((out / "kickstart.json").read_text())["distill_updates"] > 0
    sb3_student, student = load_teacher(out / "model"), load_student(out / "student")
    obs = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    assert student.net.spec.head == "gaussian"
    np.testing.assert_allclose(
        student.predict(obs), sb3_student.model.predict(obs, deterministic=True)[0], atol=1e-5
    )
    np.testing.assert_array_equal(
        student.net.log_std.detach().numpy(), sb3_student.model.policy.log_std.detach().numpy()
    )


@pytest.mark.parametrize("algo", ["td3", "sac"])
def test_distill_online_continuous(algo: str, tmp_path: Path) -> None:
    out = tmp_path / "online"
    assert run_cli("distill-online", "--algo", algo, "--env", ENV, "--preset", _preset(tmp_path, algo),
                   "--loss", LOSS[algo], "--out", out, "--every", "50", "--unit", "steps", "--distill-steps", "5",
                   "--eval-freq", "150", "--eval-episodes", "1", "--no-progress") == 0  # fmt: skip
    metrics = json.loads((out / "student" / "metrics.json").read_text())
    assert metrics["student_steps"] == 5 * (300 // 50)
    assert all(np.isfinite(p["loss"]) and 0 <= p["agreement"] <= 1 for p in metrics["phases"])
    student = load_student(out / "student")
    assert student.net.spec.head == KIND[algo]
    assert student.info["action_space"]["low"] == [LOW]
    assert run_cli("evaluate", "--teacher", out / "teacher", "--student", out / "student", "--episodes", "1",
                   "--no-latency", "--no-random-baseline") == 0  # fmt: skip


def test_vecnormalize_preset_normalises_inside_the_teacher_and_its_critic(tmp_path: Path) -> None:
    preset = tmp_path / "sac.yml"
    preset.write_text(yaml.safe_dump({ENV: {"policy": "MlpPolicy", "n_timesteps": 200, "learning_starts": 50,
                                            "batch_size": 32, "normalize": True,
                                            "policy_kwargs": {"net_arch": [16]}}}))  # fmt: skip
    run, buf = tmp_path / "sac", tmp_path / "buffer"
    assert run_cli("train-teacher", "--algo", "sac", "--env", ENV, "--preset", preset, "--out", run,
                   "--eval-freq", "200", "--eval-episodes", "1", "--no-progress") == 0  # fmt: skip
    assert run_cli("record", "--teacher", run, "--out", buf, "--steps", "100", "--behaviour", "teacher",
                   "--record-q", "--no-progress") == 0  # fmt: skip
    teacher, b = load_teacher(run), Buffer.open(buf)
    assert teacher.vec_normalize is not None
    raw = b.field("obs")
    normalized = teacher.vec_normalize.normalize_obs(raw)
    assert not np.allclose(normalized, raw)  # the buffer keeps raw observations
    np.testing.assert_allclose(
        b.field("action"), teacher.model.predict(normalized, deterministic=True)[0], atol=1e-5
    )
    np.testing.assert_allclose(b.field("teacher_q"), _sb3_q(teacher.model, "sac", normalized, b.field("action")),
                               rtol=1e-5, atol=1e-4)  # fmt: skip
