"""The sb3 export: an MLP student written as a full SB3 algorithm ``.zip`` that acts as the student does and
that ``model.learn()`` continues from (see :mod:`policy_kd.export` for what it is and is not good for).

``--algo dqn`` (the default): a ``DQN`` whose Q-network computes the student's outputs. ``--algo ppo`` or
``a2c``: an actor-critic whose actor (``mlp_extractor.policy_net`` + ``action_net``, ``net_arch`` pi = the
student's hidden widths) computes the student's outputs, and whose critic (same widths, started as a copy of
the actor's body) is fitted to value targets from the student's buffer: the teacher's V(s) recorded with
``record --values`` (``--value-target teacher``) or the discounted returns of the recorded rewards
(``--value-target returns``). A fine-tuning run then starts from a policy that already acts well and a
critic that already knows roughly what its states are worth, as sb3_distill's students do.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from policy_kd.errors import PolicyKDError
from policy_kd.export_numpy import _numpy_program
from policy_kd.runtime import ACTIVATIONS as NUMPY_ACTIVATIONS
from policy_kd.runtime import obs_dtype

SB3_ALGOS = ("dqn", "ppo", "a2c")
"""What ``--format sb3 --algo`` writes."""
VALUE_TARGETS = ("teacher", "returns")
"""What a PPO/A2C export's critic is fitted to (``--value-target``)."""
VALUE_BATCH = 256
VALUE_LR = 1e-3
HOLDOUT = 0.1
"""Fraction of the value-target rows kept out of the critic's fit to measure its loss on."""


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


def _spaces(info: dict[str, Any], obs_shape: tuple[int, ...]) -> tuple[Any, Any]:
    """The student env's observation and action spaces: the env's own when it can be made (``load(env=...)``
    and ``learn()`` check that they are equal), else rebuilt from ``student.json``."""
    import gymnasium as gym

    try:
        from policy_kd.envs import make_env_from_spec

        env = make_env_from_spec(info.get("env_spec") or {"env_id": info["env_id"]})
        obs_space, act_space = env.observation_space, env.action_space
        env.close()
        return obs_space, act_space
    except Exception:  # an env this process cannot make: the spaces student.json describes
        pass
    space = info.get("action_space") or {}
    obs_space = gym.spaces.Box(-np.inf, np.inf, shape=obs_shape, dtype=obs_dtype(info))
    kind = space.get("type")
    if kind == "Discrete":
        return obs_space, gym.spaces.Discrete(int(space["n"]))
    if kind == "MultiDiscrete":
        return obs_space, gym.spaces.MultiDiscrete(space["nvec"])
    if kind == "MultiBinary":
        return obs_space, gym.spaces.MultiBinary(space["shape"])
    if kind == "Box" and "low" in space:
        low, high = np.asarray(space["low"], np.float32), np.asarray(space["high"], np.float32)
        return obs_space, gym.spaces.Box(low.reshape(space["shape"]), high.reshape(space["shape"]))
    raise PolicyKDError(f"sb3 export cannot rebuild the action space {kind}; make its env importable")


def _spaces_env(obs_space: Any, act_space: Any) -> Any:
    """An env with only the spaces: SB3 needs one to build a model."""
    import gymnasium as gym

    class _Spaces(gym.Env):
        observation_space = obs_space
        action_space = act_space

        def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
            return obs_space.sample(), {}

        def step(self, action: Any) -> Any:
            return obs_space.sample(), 0.0, True, False, {}

    return _Spaces()


def _copy_linears(linears: list[Any], program: list[dict[str, Any]], arrays: dict[str, np.ndarray]) -> None:
    import torch

    body = [o for o in program if o["op"] == "linear"]
    with torch.no_grad():
        for lin, op in zip(linears, body, strict=True):
            lin.weight.copy_(torch.from_numpy(arrays[op["weight"]].T.copy()))
            lin.bias.copy_(
                torch.from_numpy(arrays[op["bias"]]) if op.get("bias") else torch.zeros_like(lin.bias)
            )


def _export_sb3(
    student: Any,
    path: Path,
    *,
    algo: str = "dqn",
    value_target: str | None = None,
    gamma: float = 0.99,
    value_steps: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``student`` as an SB3 ``algo`` ``.zip`` at ``path``; return export details (the critic's fit)."""
    info = student.info
    head = info["spec"].get("head", "discrete")
    if obs_dtype(info) == np.uint8:
        raise PolicyKDError(
            "sb3 export supports students with float observations (SB3 rescales uint8 images itself); use --format onnx"
        )
    if algo == "dqn" and head != "discrete":
        raise PolicyKDError(
            f"sb3 export --algo dqn writes a DQN policy, which needs Discrete actions; this student's head is "
            f"{head} ({(info.get('action_space') or {}).get('type')} actions): use --algo ppo or a2c"
        )
    if head == "squashed_gaussian":
        raise PolicyKDError(
            "sb3 export of a squashed_gaussian student is not supported (SB3's PPO clips); use --format onnx"
        )
    obs_shape = tuple(info["spec"]["obs_shape"])
    program, arrays = _numpy_program(student.net, obs_shape)
    widths, act = _sb3_layers(program, arrays)
    obs_space, act_space = _spaces(info, obs_shape)
    if algo == "dqn":
        _write_dqn(program, arrays, widths, act, _spaces_env(obs_space, act_space), path, gamma)
        return {"algo": "dqn", "gamma": gamma}
    return _write_actor_critic(
        student, program, arrays, widths, act, _spaces_env(obs_space, act_space), path,
        algo=algo, value_target=value_target, gamma=gamma, value_steps=value_steps, seed=seed,
    )  # fmt: skip


def _write_dqn(
    program: Any, arrays: Any, widths: list[int], act: str, env: Any, path: Path, gamma: float
) -> None:
    from stable_baselines3 import DQN
    from torch import nn

    from policy_kd.students import ACTIVATIONS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DQN(
            "MlpPolicy",
            env,
            policy_kwargs={"net_arch": widths, "activation_fn": ACTIVATIONS[act]},
            buffer_size=1,
            learning_starts=0,
            gamma=gamma,
            device="cpu",
            seed=0,
        )
    _copy_linears([m for m in model.policy.q_net.q_net if isinstance(m, nn.Linear)], program, arrays)
    model.policy.q_net_target.load_state_dict(model.policy.q_net.state_dict())
    model.save(str(path))


def _write_actor_critic(
    student: Any,
    program: list[dict[str, Any]],
    arrays: dict[str, np.ndarray],
    widths: list[int],
    act: str,
    env: Any,
    path: Path,
    *,
    algo: str,
    value_target: str | None,
    gamma: float,
    value_steps: int,
    seed: int,
) -> dict[str, Any]:
    import gymnasium as gym
    import torch
    from torch import nn

    from policy_kd.students import ACTIVATIONS
    from policy_kd.teachers.sb3 import algo_class

    obs, targets = _value_data(student, value_target, gamma)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = algo_class(algo)(
            "MlpPolicy",
            env,
            policy_kwargs={"net_arch": {"pi": widths, "vf": widths}, "activation_fn": ACTIVATIONS[act]},
            gamma=gamma,
            device="cpu",
            seed=seed,
        )
    policy = model.policy
    pi = [m for m in policy.mlp_extractor.policy_net if isinstance(m, nn.Linear)]
    linears = [o for o in program if o["op"] == "linear"]
    _copy_linears(pi, linears[:-1], arrays)
    if not isinstance(env.action_space, gym.spaces.MultiBinary):
        _copy_linears([policy.action_net], linears[-1:], arrays)
    else:
        # the student has 2-way logits [a, b] per bit; SB3's Bernoulli takes one logit, b - a (same probability)
        two_w = arrays[linears[-1]["weight"]].T  # (2 * bits, hidden)
        two_b = arrays[linears[-1]["bias"]] if linears[-1].get("bias") else np.zeros(len(two_w), np.float32)
        with torch.no_grad():
            policy.action_net.weight.copy_(torch.from_numpy(two_w[1::2] - two_w[0::2]))
            policy.action_net.bias.copy_(torch.from_numpy(two_b[1::2] - two_b[0::2]))
    log_std = getattr(student.net, "log_std", None)
    if log_std is not None:  # a Gaussian student: its state-independent spread, as SB3's PPO has one
        with torch.no_grad():
            policy.log_std.copy_(log_std.detach().reshape(policy.log_std.shape))
    # the critic starts from the actor's body (its features already tell the states apart) and a head that
    # predicts the targets' mean, then is regressed on the targets
    vf = [m for m in policy.mlp_extractor.value_net if isinstance(m, nn.Linear)]
    _copy_linears(vf, linears[:-1], arrays)
    with torch.no_grad():
        policy.value_net.weight.zero_()
        policy.value_net.bias.fill_(float(targets.mean()))
    fit = _fit_critic(policy, obs, targets, value_steps, seed)
    model.save(str(path))
    return {"algo": algo, "gamma": gamma, "value_target": value_target, "critic": fit}


def _value_data(student: Any, value_target: str | None, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """Observations and value targets from the student's buffer (see the module docstring)."""
    from policy_kd.buffer import Buffer

    if value_target not in VALUE_TARGETS:
        raise PolicyKDError(
            "sb3 export --algo ppo/a2c fits a critic: pass --value-target teacher (the teacher's V(s), recorded "
            "with record --values) or --value-target returns (the recorded rewards' discounted returns)"
        )
    buf_path = student.info.get("buffer")
    if not buf_path or not Path(buf_path).is_dir():
        raise PolicyKDError(
            f"the student's buffer {buf_path} is gone; the critic is fitted on it: restore it, or distil again"
        )
    buffer = Buffer.open(buf_path)
    if value_target == "teacher":
        if "teacher_value" not in buffer.fields:
            raise PolicyKDError(
                f"buffer {buf_path} holds no teacher values; record it with policy-kd record --values "
                "(a PPO/A2C teacher), or pass --value-target returns"
            )
        idx = np.arange(buffer.rows)
        targets = np.asarray(buffer.field("teacher_value"), dtype=np.float64)
    else:
        returns, complete = buffer.discounted_returns(gamma)
        idx = np.flatnonzero(complete)
        if len(idx) == 0:
            raise PolicyKDError(
                f"buffer {buf_path} holds no finished episode to take returns from; record more steps"
            )
        targets = returns[idx]
    if not np.isfinite(targets).all():
        raise PolicyKDError(f"buffer {buf_path} holds non-finite value targets; re-record it")
    return np.asarray(buffer.take("obs", idx), dtype=np.float32), targets.astype(np.float32)


def _fit_critic(policy: Any, obs: np.ndarray, targets: np.ndarray, steps: int, seed: int) -> dict[str, Any]:
    """Regress the critic (value body and head; the actor is untouched) on ``targets`` with Adam; the mean
    squared error on held-out rows before and after."""
    import torch

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(obs))
    n_hold = max(1, int(len(obs) * HOLDOUT)) if len(obs) > 1 else 0
    hold, train = order[:n_hold], order[n_hold:] if len(obs) > 1 else order
    obs_t, y_t = torch.from_numpy(obs), torch.from_numpy(targets)

    def held_out_loss() -> float:
        rows = hold if len(hold) else train
        with torch.no_grad():
            v = policy.predict_values(obs_t[rows]).reshape(-1)
            return float(((v - y_t[rows]) ** 2).mean())

    before = held_out_loss()
    params = [*policy.mlp_extractor.value_net.parameters(), *policy.value_net.parameters()]
    opt = torch.optim.Adam(params, lr=VALUE_LR)
    gen = torch.Generator().manual_seed(seed)
    policy.set_training_mode(True)
    for _ in range(steps):
        rows = torch.from_numpy(train)[torch.randint(len(train), (VALUE_BATCH,), generator=gen)]
        loss = ((policy.predict_values(obs_t[rows]).reshape(-1) - y_t[rows]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    policy.set_training_mode(False)
    after = held_out_loss()
    if not math.isfinite(after):
        raise PolicyKDError(
            "the critic's fit diverged (its loss is not finite); lower --value-steps or check the targets"
        )
    return {
        "rows": len(obs),
        "held_out_rows": len(hold),
        "steps": steps,
        "target_mean": float(targets.mean()),
        "target_std": float(targets.std()),
        "held_out_mse_before": before,
        "held_out_mse_after": after,
    }
