"""MultiDiscrete and MultiBinary actions end to end: a tiny PPO teacher on each of the tests' own envs
(``multi_envs``), its per-component logits in the buffer, a ``multi_discrete`` student distilled from them,
evaluated per component and as a whole action, and exported (numpy, ONNX, C) with the same actions."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import gymnasium as gym
import multi_envs
import numpy as np
import pytest
import torch
from conftest import run_cli

from policy_kd.buffer import Buffer
from policy_kd.errors import PolicyKDError
from policy_kd.export import load_exported
from policy_kd.fidelity import component_agreement
from policy_kd.heads import actions_from_outputs, sample_outputs
from policy_kd.spaces import action_nvec, random_actions, space_json
from policy_kd.students import load_student
from policy_kd.teacher import load_teacher

PRESET = """\
default:
  policy: MlpPolicy
  n_timesteps: 4000
  n_envs: 4
  normalize: false
  learning_rate: 3.0e-3
  n_steps: 64
  batch_size: 64
  n_epochs: 4
  policy_kwargs: {net_arch: [32, 32]}
"""

ENVS = {"TargetMatch-v0": multi_envs.NVEC, "BitMatch-v0": (2,) * multi_envs.BITS}


@pytest.fixture(scope="module", params=list(ENVS))
def pipeline(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A PPO teacher (4000 steps, a few seconds), a buffer it recorded and a student distilled from it."""
    env_id = request.param
    root = tmp_path_factory.mktemp(env_id.split("-")[0])
    (root / "preset.yml").write_text(PRESET)
    p = {k: root / k for k in ("teacher", "buffer", "student")}
    common = ("--no-progress",)
    assert run_cli("train-teacher", "--algo", "ppo", "--env", env_id, "--out", p["teacher"],
                   "--preset", root / "preset.yml", "--eval-freq", "2000", "--eval-episodes", "3", *common) == 0  # fmt: skip
    assert run_cli("record", "--teacher", p["teacher"], "--out", p["buffer"], "--steps", "4000", *common) == 0
    assert run_cli("distill", "--buffer", p["buffer"], "--out", p["student"], "--steps", "1500",
                   "--eval-every", "500", "--eval-episodes", "3", "--params-fraction", "0.3", *common) == 0  # fmt: skip
    return {"env_id": env_id, "root": root, **p}  # type: ignore[dict-item]


def test_spaces_describe_components() -> None:
    md, mb = gym.spaces.MultiDiscrete([3, 4, 2]), gym.spaces.MultiBinary(4)
    assert action_nvec(md) == (3, 4, 2) and action_nvec(mb) == (2, 2, 2, 2)
    assert action_nvec(space_json(md)) == (3, 4, 2) and action_nvec(space_json(mb)) == (2, 2, 2, 2)
    assert "n" not in space_json(mb)  # "n" is a Discrete's action count, which check_compatible compares
    assert action_nvec(gym.spaces.Discrete(3)) is None
    with pytest.raises(PolicyKDError, match="nested action shape"):
        action_nvec(gym.spaces.MultiDiscrete([[2, 3], [4, 5]]))
    draws = random_actions(md, 500, np.random.default_rng(0))
    assert draws.shape == (500, 3) and all(md.contains(a) for a in draws)
    assert {tuple(np.unique(draws[:, i])) for i in range(3)} == {(0, 1, 2), (0, 1, 2, 3), (0, 1)}


def test_heads_act_per_component() -> None:
    out = np.array([[0.0, 2.0, 1.0, 5.0, 0.0], [3.0, 0.0, 0.0, -1.0, 1.0]], dtype=np.float32)
    assert actions_from_outputs(out, "multi_discrete", nvec=(3, 2)).tolist() == [[1, 0], [0, 1]]
    sharp = np.array([[0.0, 50.0, 0.0, 0.0, 50.0]] * 100, dtype=np.float32)
    drawn = sample_outputs(sharp, "multi_discrete", None, np.random.default_rng(0), nvec=(3, 2))
    assert drawn.shape == (100, 2) and (drawn == [1, 1]).all()
    whole, per = component_agreement(np.array([[1, 0], [2, 1]]), np.array([[1, 1], [2, 1]]))
    assert whole.tolist() == [False, True] and per.tolist() == [1.0, 0.5]


def test_teacher_labels_match_sb3(pipeline: dict[str, Path]) -> None:
    """The recorded logits give SB3's own action probabilities, and the greedy action is SB3's predict."""
    teacher = load_teacher(str(pipeline["teacher"]))
    nvec = ENVS[str(pipeline["env_id"])]
    assert teacher.nvec == nvec and teacher.n_outputs == sum(nvec)
    obs = np.stack([teacher.observation_space.sample() for _ in range(64)])
    labels = teacher.label(obs)
    want, _ = teacher.model.predict(obs, deterministic=True)
    assert np.array_equal(labels.greedy, want)
    dist = teacher.model.policy.get_distribution(teacher.model.policy.obs_to_tensor(obs)[0])
    if isinstance(teacher.action_space, gym.spaces.MultiBinary):  # sigmoid(l) = softmax([0, l])[1]
        p_sb3 = dist.distribution.probs.detach().numpy()
        two = labels.outputs["teacher"].reshape(64, -1, 2)
        p_ours = torch.softmax(torch.from_numpy(two), -1)[..., 1].numpy()
    else:
        p_sb3 = np.concatenate([d.probs.detach().numpy() for d in dist.distribution], axis=-1)
        parts = np.split(labels.outputs["teacher"], np.cumsum(nvec)[:-1], axis=-1)
        p_ours = np.concatenate([torch.softmax(torch.from_numpy(x), -1).numpy() for x in parts], axis=-1)
    np.testing.assert_allclose(p_ours, p_sb3, atol=1e-5)
    sampled = teacher.sample(labels, np.random.default_rng(0))
    assert sampled.shape == labels.greedy.shape and all(teacher.action_space.contains(a) for a in sampled)


def test_buffer_and_student_carry_components(pipeline: dict[str, Path]) -> None:
    nvec = ENVS[str(pipeline["env_id"])]
    buf = Buffer.open(pipeline["buffer"])
    assert action_nvec(buf.meta["action_space"]) == nvec
    assert buf.fields["teacher"].shape == (sum(nvec),) and buf.fields["action"].shape == (len(nvec),)
    st = load_student(pipeline["student"])
    assert st.info["spec"]["head"] == "multi_discrete" and tuple(st.info["spec"]["nvec"]) == nvec
    obs = buf.spaced("obs", 256)
    assert st.predict(obs).shape == (256, len(nvec))
    assert st.predict(obs, deterministic=False).shape == (256, len(nvec))
    metrics = json.loads((pipeline["student"] / "metrics.json").read_text())
    assert 0.0 <= metrics["final"]["fidelity/agreement"] <= metrics["final"]["fidelity/component_agreement"]


def test_evaluate_reports_whole_and_component_agreement(pipeline: dict[str, Path], capsys) -> None:
    out = pipeline["root"] / "eval"
    assert run_cli("evaluate", "--teacher", pipeline["teacher"], "--student", pipeline["student"],
                   "--buffer", pipeline["buffer"], "--episodes", "10", "--out", out) == 0  # fmt: skip
    result = json.loads((out / "eval.json").read_text())
    text = json.dumps(result)
    assert '"component_agreement"' in text and '"mean_component_agreement"' in text
    assert "agreement per action component on the student's own states: " in capsys.readouterr().out
    # the student learnt the task: it earns most of what the teacher earns above a random policy
    assert result["teacher"]["mean_return"] > result["random"]["mean_return"] + 2.0
    assert result["normalized_score"]["value"] > 0.8


@pytest.mark.parametrize("fmt", ["numpy", "onnx", "c"])
def test_exports_take_the_students_actions(pipeline: dict[str, Path], fmt: str) -> None:
    if fmt == "c" and not any(shutil.which(c) for c in ("cc", "gcc", "clang")):
        pytest.skip("no C compiler on PATH")
    out = pipeline["root"] / f"export_{fmt}"
    assert run_cli("export", pipeline["student"], "--format", fmt, "--out", out) == 0
    st, ex = load_student(pipeline["student"]), load_exported(out)
    obs = Buffer.open(pipeline["buffer"]).spaced("obs", 512)
    assert np.array_equal(ex.predict(obs), st.predict(obs))
    if fmt == "c":  # the C entry point policy_act writes one choice per component
        from policy_kd.c_runtime import find_compiler
        from policy_kd.export_c import STRICT_FLAGS

        app = out / "act.c"
        app.write_text(
            '#include <stdio.h>\n#include "student.h"\n'
            "int main(void) { float obs[POLICY_OBS_SIZE]; int a[POLICY_N_COMPONENTS], c;\n"
            "  while (fread(obs, sizeof(float), POLICY_OBS_SIZE, stdin) == POLICY_OBS_SIZE) {\n"
            '    policy_act(obs, a); for (c = 0; c < POLICY_N_COMPONENTS; c++) printf("%d ", a[c]); printf("\\n"); }\n'
            "  return 0; }\n"
        )
        exe = out / "act"
        subprocess.run([*find_compiler().split(), *STRICT_FLAGS, "-o", str(exe), str(app), str(out / "student.c"),
                        "-I", str(out), "-lm"], check=True)  # fmt: skip
        run = subprocess.run(
            [str(exe)], input=obs.astype(np.float32).tobytes(), capture_output=True, check=True
        )
        got = np.array([[int(x) for x in line.split()] for line in run.stdout.decode().splitlines()])
        assert np.array_equal(got, st.predict(obs))
        # and through the Python extension module evaluate uses: act() gives a tuple of choices
        from policy_kd.c_runtime import CPolicy

        spec = st.info["spec"]
        policy = CPolicy(out / "student.c", tuple(spec["obs_shape"]), int(spec["n_outputs"]),
                         head="multi_discrete", binding="extension")  # fmt: skip
        acts = np.array([policy.act(o.astype(np.float32)) for o in obs[:64]])
        assert np.array_equal(acts, st.predict(obs[:64]))


def test_sb3_export_is_a_ppo_with_the_students_actions(pipeline: dict[str, Path]) -> None:
    """--format sb3 --algo ppo: SB3's own MultiCategorical (or Bernoulli, one logit b - a per bit) policy
    takes the student's actions, and learn() continues on the env."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    out = pipeline["root"] / "export_sb3"
    assert run_cli("export", pipeline["student"], "--format", "sb3", "--algo", "ppo", "--value-target", "returns",
                   "--value-steps", "50", "--out", out) == 0  # fmt: skip
    model = PPO.load(
        out / "policy.zip", env=make_vec_env(str(pipeline["env_id"]), n_envs=2), device="cpu", n_steps=32
    )
    obs = Buffer.open(pipeline["buffer"]).spaced("obs", 512)
    assert np.array_equal(
        model.predict(obs, deterministic=True)[0], load_student(pipeline["student"]).predict(obs)
    )
    model.learn(64)
    # DQN needs Discrete actions: refused with a one-line error (exit 2), nothing written
    assert run_cli("export", pipeline["student"], "--format", "sb3", "--out", out.with_name("dqn")) == 2
    assert not out.with_name("dqn").exists()
