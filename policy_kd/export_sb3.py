"""The sb3 export: a discrete-action MLP student written as an SB3 ``DQN`` ``.zip`` whose Q-network computes
the student's outputs (see :mod:`policy_kd.export` for what it is and is not good for)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from policy_kd.errors import PolicyKDError
from policy_kd.export_numpy import _numpy_program
from policy_kd.runtime import ACTIVATIONS as NUMPY_ACTIVATIONS
from policy_kd.runtime import obs_dtype


def _sb3_layers(program: list[dict[str, Any]], arrays: dict[str, np.ndarray]) -> tuple[list[int], str]:
    """Hidden widths and activation of a folded MLP program, or a refusal."""
    body = [o for o in program if o["op"] not in ("float", "flatten")]
    kinds = [o["op"] for o in body]
    acts = set(kinds[1::2])
    ok = (
        len(kinds) % 2 == 1
        and all(k == "linear" for k in kinds[::2])
        and len(acts) <= 1
        and acts <= set(NUMPY_ACTIVATIONS)
        and all(o.get("approximate", "none") == "none" for o in body)
        and not any(o["op"] == "flatten" for o in program[program.index(body[0]) + 1 :])
    )
    if not ok:
        raise PolicyKDError(
            "sb3 export needs an MLP student (Linear layers with one activation); use --format onnx or numpy"
        )
    widths = [int(arrays[o["weight"]].shape[1]) for o in body[::2]][:-1]
    return widths, acts.pop() if acts else "relu"


def _export_sb3(student: Any, path: Path) -> None:
    import gymnasium as gym
    import torch
    from stable_baselines3 import DQN
    from torch import nn

    from policy_kd.students import ACTIVATIONS

    info = student.info
    space = info.get("action_space") or {}
    if space.get("type") != "Discrete":
        raise PolicyKDError(
            f"sb3 export writes a DQN policy, which needs discrete actions; this student acts in {space.get('type')}"
        )
    if obs_dtype(info) == np.uint8:
        raise PolicyKDError(
            "sb3 export supports students with float observations (SB3 rescales uint8 images itself); use --format onnx"
        )
    program, arrays = _numpy_program(student.net, tuple(info["spec"]["obs_shape"]))
    widths, act = _sb3_layers(program, arrays)
    obs_shape = tuple(info["spec"]["obs_shape"])
    obs_space = gym.spaces.Box(-np.inf, np.inf, shape=obs_shape, dtype=obs_dtype(info))

    class _Spaces(gym.Env):  # only the spaces: DQN needs them to build the policy
        observation_space = obs_space
        action_space = gym.spaces.Discrete(int(space["n"]))

        def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
            return np.zeros(obs_shape, dtype=obs_space.dtype), {}

        def step(self, action: Any) -> Any:
            return np.zeros(obs_shape, dtype=obs_space.dtype), 0.0, True, False, {}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DQN(
            "MlpPolicy",
            _Spaces(),
            policy_kwargs={"net_arch": widths, "activation_fn": ACTIVATIONS[act]},
            buffer_size=1,
            learning_starts=0,
            device="cpu",
            seed=0,
        )
    linears = [m for m in model.policy.q_net.q_net if isinstance(m, nn.Linear)]
    body = [o for o in program if o["op"] == "linear"]
    with torch.no_grad():
        for lin, op in zip(linears, body, strict=True):
            lin.weight.copy_(torch.from_numpy(arrays[op["weight"]].T.copy()))
            lin.bias.copy_(
                torch.from_numpy(arrays[op["bias"]]) if op.get("bias") else torch.zeros_like(lin.bias)
            )
        model.policy.q_net_target.load_state_dict(model.policy.q_net.state_dict())
    model.save(str(path))
