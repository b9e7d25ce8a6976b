"""The SB3 adapter: every access that depends on the algorithm (DQN, QR-DQN, PPO, A2C) in one place.

Which algorithm saved a file, which class loads it, which modules choose actions and what they output.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import torch
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm

from policy_kd.errors import PolicyKDError

ALGOS: tuple[str, ...] = ("dqn", "qrdqn", "ppo", "a2c")
"""Teacher algorithms. ``qrdqn`` comes from sb3-contrib (the ``contrib`` extra), imported only when used."""
CONTRIB_HINT = "pip install 'policy-kd[contrib]'"


def algo_class(algo: str) -> type[BaseAlgorithm]:
    """The SB3 algorithm class for ``algo``; sb3-contrib's QR-DQN is imported only here, on demand."""
    if algo == "qrdqn":
        try:
            from sb3_contrib import QRDQN
        except ImportError:
            raise PolicyKDError(f"qrdqn teachers need sb3-contrib; install it with: {CONTRIB_HINT}") from None
        return QRDQN
    classes: dict[str, type[BaseAlgorithm]] = {"dqn": DQN, "ppo": PPO, "a2c": A2C}
    if algo not in classes:
        raise PolicyKDError(f"unknown algo {algo!r}; choose one of {', '.join(ALGOS)}")
    return classes[algo]


def _zip_data(zip_path: Path) -> dict[str, Any]:
    """The JSON ``data`` entry of an SB3 ``.zip``, read without unpickling anything."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            data = json.loads(archive.read("data"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise PolicyKDError(
            f"could not read SB3 model {zip_path} ({type(exc).__name__}: {exc})".splitlines()[0]
        ) from None
    if not isinstance(data, dict):
        raise PolicyKDError(f"could not read SB3 model {zip_path} (its data entry is not a mapping)")
    return data


def _detect_algo(zip_path: Path) -> str:
    """Which algorithm saved ``zip_path``, from its policy class's module (nothing is unpickled)."""
    data = _zip_data(zip_path)
    policy_class = data.get("policy_class")
    module = policy_class.get("__module__", "") if isinstance(policy_class, dict) else ""
    if module.startswith("stable_baselines3.dqn."):
        return "dqn"
    if module.startswith("sb3_contrib.qrdqn."):
        return "qrdqn"
    if module == "stable_baselines3.common.policies":  # ActorCriticPolicy and its Cnn/MultiInput variants
        if "cg_max_steps" in data:
            algo = "trpo"  # sb3-contrib's TRPO shares the policy class
        else:
            return "ppo" if "clip_range" in data else "a2c"
    else:
        # e.g. stable_baselines3.sac.policies -> sac, sb3_contrib.common.recurrent.policies -> recurrent
        parts = module.split(".")
        algo = (parts[2] if parts[1:2] == ["common"] else parts[1]) if len(parts) > 2 else "unknown"
    raise PolicyKDError(
        f"{zip_path} was saved by {algo!r} (policy class from {module or 'an unknown module'}); "
        f"supported teachers are {', '.join(ALGOS)}"
    )


def policy_param_count(model: BaseAlgorithm, algo: str) -> int:
    """Parameters of the modules that choose actions: DQN's q_net and QR-DQN's quantile_net (not their
    targets), PPO/A2C's actor (features extractor, policy MLP, action head, and log_std for Gaussian
    policies; not the value head)."""
    policy = model.policy
    extra: list[torch.nn.Parameter] = []
    if algo == "dqn":
        modules: list[torch.nn.Module] = [policy.q_net]
    elif algo == "qrdqn":
        modules = [policy.quantile_net]
    else:
        modules = [policy.pi_features_extractor, policy.mlp_extractor.policy_net, policy.action_net]
        extra = [policy.log_std] if isinstance(getattr(policy, "log_std", None), torch.nn.Parameter) else []
    params = {id(p): p for m in modules for p in m.parameters()} | {id(p): p for p in extra}
    return sum(p.numel() for p in params.values())
