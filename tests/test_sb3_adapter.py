"""The SB3 adapter (policy_kd.teachers.sb3) is the one place that reads SB3 policies' per-algorithm modules."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from stable_baselines3 import DQN, PPO

from policy_kd.teachers import Teacher, sb3

PACKAGE = Path(__file__).resolve().parents[1] / "policy_kd"
# The attributes of SB3 policies that differ per algorithm (DQN's q_net, QR-DQN's quantile_net, the
# actor-critic's actor modules): reading them elsewhere scatters SB3 knowledge again.
POLICY_INTERNALS = re.compile(r"\.(q_net|quantile_net|action_net|mlp_extractor|pi_features_extractor)\b")
# The sb3 export format writes (export_sb3.py) and reads (runtime.py) a student *as* an SB3 DQN: a file format,
# not a teacher access.
ALLOWED = {"teachers/sb3.py", "export_sb3.py", "runtime.py"}


def _models() -> dict[str, tuple[Any, str, str]]:
    """Untrained, tiny models of each supported kind: name -> (model, algo, env id)."""
    kw: dict[str, Any] = {"seed": 0, "device": "cpu"}
    models = {
        "dqn": (DQN("MlpPolicy", "CartPole-v1", policy_kwargs={"net_arch": [8]}, **kw), "dqn", "CartPole-v1"),
        "ppo": (
            PPO("MlpPolicy", "CartPole-v1", n_steps=16, policy_kwargs={"net_arch": [8]}, **kw),
            "ppo",
            "CartPole-v1",
        ),
        "ppo_box": (
            PPO("MlpPolicy", "Pendulum-v1", n_steps=16, policy_kwargs={"net_arch": [8]}, **kw),
            "ppo",
            "Pendulum-v1",
        ),
    }
    if importlib.util.find_spec("sb3_contrib") is not None:
        from sb3_contrib import QRDQN

        model = QRDQN("MlpPolicy", "CartPole-v1", policy_kwargs={"net_arch": [8], "n_quantiles": 5}, **kw)
        models["qrdqn"] = (model, "qrdqn", "CartPole-v1")
    return models


def test_only_the_adapter_reads_per_algorithm_policy_modules() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE).as_posix()}:{n}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).as_posix() not in ALLOWED
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if POLICY_INTERNALS.search(line)
    ]
    assert not offenders, "move these accesses into policy_kd/teachers/sb3.py:\n" + "\n".join(offenders)


@pytest.mark.parametrize("name", ["dqn", "ppo", "ppo_box", "qrdqn"])
def test_actor_module_and_head_agree_with_label(name: str) -> None:
    torch.set_num_threads(1)
    models = _models()
    if name not in models:
        pytest.skip("sb3-contrib not installed (contrib extra)")
    model, algo, env_id = models[name]
    teacher = Teacher(model=model, algo=algo, path="unsaved", env_id=env_id)
    obs = np.stack([model.observation_space.sample() for _ in range(6)]).astype(np.float32)
    labels = teacher.label(obs)
    # cost.teacher_module (timed and FLOP-counted as the teacher) computes what the buffer records
    with torch.no_grad():
        net_out = sb3.actor_module(model, algo)(torch.as_tensor(obs)).numpy()
    np.testing.assert_allclose(net_out, labels.outputs["teacher"], rtol=1e-6, atol=1e-6)
    assert set(labels.outputs) == set(teacher.output_fields())
    for field, (_, shape) in teacher.output_fields().items():
        assert labels.outputs[field].shape == (len(obs), *shape)
    # the head's input is the feature layer: its width, and the head maps it to the recorded output
    features = teacher.features(obs)
    head = sb3.head_module(model, algo)
    assert features.shape == (len(obs), teacher.feature_dim)
    with torch.no_grad():
        head_out = head(torch.as_tensor(features)).numpy()
    if algo == "qrdqn":  # the quantile head outputs n_quantiles * n_actions, averaged over quantiles
        head_out = head_out.reshape(len(obs), -1, teacher.n_outputs).mean(axis=1)
    np.testing.assert_allclose(head_out, labels.outputs["teacher"], rtol=1e-5, atol=1e-5)
