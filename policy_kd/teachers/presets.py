"""Presets: the tuned hyperparameters in ``agents/<algo>.yml`` (env id -> settings, ``default:`` fallback),
read safely and turned into SB3 constructor arguments."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from stable_baselines3.common.utils import LinearSchedule

from policy_kd.config import load_yaml_mapping
from policy_kd.envs import features_extractor
from policy_kd.envs.atari import is_atari
from policy_kd.errors import PolicyKDError

_ACTIVATIONS = {"ReLU", "Tanh", "ELU", "LeakyReLU", "GELU", "SiLU", "Sigmoid"}
_OPTIMIZERS = {"Adam", "AdamW", "RMSprop", "SGD"}
# Keys a preset may hold that are not constructor arguments of the SB3 algorithm.
_PRESET_EXTRAS = ("n_timesteps", "policy", "n_envs", "normalize", "frame_stack", "noise_type", "noise_std")
NOISE_TYPES = ("normal", "ornstein-uhlenbeck")
"""Action noise a preset may name for an off-policy actor (rl-baselines3-zoo's ``noise_type``)."""


def load_preset(algo: str, env_id: str, path: str | Path | None = None) -> dict[str, Any]:
    """The preset for ``env_id``, else the file's ``atari:`` (Atari ids) or ``default:`` entry."""
    if path is None:
        text = resources.files("policy_kd.agents").joinpath(f"{algo}.yml").read_text()
        presets = yaml.safe_load(text)
        source = f"agents/{algo}.yml"
    else:
        presets = load_yaml_mapping(path, what="preset file")
        source = str(path)
    entry = presets.get(env_id)
    if entry is None and is_atari(env_id):
        # An MLP default on 84x84 frames would train, slowly and badly: Atari needs its own entry.
        entry = presets.get("atari")
        if entry is None:
            raise PolicyKDError(
                f"{source} has no entry for {env_id} and no atari: entry; pass --preset FILE with one"
            )
    if entry is None:
        entry = presets.get("default")
    if entry is None:
        raise PolicyKDError(f"{source} has no entry for {env_id} and no default: entry; add one")
    if not isinstance(entry, dict):
        raise PolicyKDError(f"{source}: entry for {env_id} must be a mapping of hyperparameters")
    return dict(entry)


def _schedule(value: Any) -> Any:
    # rl-zoo writes linear schedules as "lin_<initial value>", decaying to 0 over training.
    if isinstance(value, str) and value.startswith("lin_"):
        try:
            start = float(value[4:])
        except ValueError:
            raise PolicyKDError(f"bad schedule {value!r}; write lin_<float>, e.g. lin_0.001") from None
        return LinearSchedule(start, 0.0, 1.0)
    return value


def algo_kwargs(preset: dict[str, Any]) -> dict[str, Any]:
    """Turn a preset's YAML values into SB3 constructor keyword arguments (no eval of strings).

    In ``policy_kwargs``, classes are named, never written as code: ``activation_fn`` and
    ``optimizer_class`` by their ``torch.nn`` / ``torch.optim`` class name, and ``features_extractor`` by
    its name in ``policy_kd.envs.FEATURES_EXTRACTORS`` (its ``features_dim`` beside it).
    """
    kwargs = {k: v for k, v in preset.items() if k not in _PRESET_EXTRAS}
    for key in ("learning_rate", "clip_range"):
        if key in kwargs:
            kwargs[key] = _schedule(kwargs[key])
    if isinstance(kwargs.get("train_freq"), list):
        kwargs["train_freq"] = tuple(kwargs["train_freq"])
    if not isinstance(kwargs.get("policy_kwargs") or {}, dict):
        raise PolicyKDError(
            f"preset policy_kwargs must be a YAML mapping such as {{net_arch: [64, 64]}}, got "
            f"{kwargs['policy_kwargs']!r} (python expressions are never evaluated)"
        )
    pk = dict(kwargs.get("policy_kwargs") or {})
    if "activation_fn" in pk:
        name = pk["activation_fn"]
        if name not in _ACTIVATIONS:
            raise PolicyKDError(f"activation_fn {name!r} is not one of {', '.join(sorted(_ACTIVATIONS))}")
        pk["activation_fn"] = getattr(torch.nn, name)
    if "optimizer_class" in pk:
        name = pk["optimizer_class"]
        if name not in _OPTIMIZERS:
            raise PolicyKDError(f"optimizer_class {name!r} is not one of {', '.join(sorted(_OPTIMIZERS))}")
        pk["optimizer_class"] = getattr(torch.optim, name)
    if "features_extractor" in pk:
        pk["features_extractor_class"] = features_extractor(pk.pop("features_extractor"))
        extractor_kwargs = dict(pk.get("features_extractor_kwargs") or {})
        if "features_dim" in pk:
            extractor_kwargs["features_dim"] = pk.pop("features_dim")
        if extractor_kwargs:
            pk["features_extractor_kwargs"] = extractor_kwargs
    elif "features_dim" in pk:
        raise PolicyKDError("policy_kwargs features_dim needs a features_extractor beside it; name one")
    if pk:
        kwargs["policy_kwargs"] = pk
    return kwargs


def _normalize_kwargs(value: Any) -> dict[str, Any] | None:
    if value in (None, False):
        return None
    if value is True:
        return {}
    if isinstance(value, dict):
        return dict(value)
    raise PolicyKDError(f"preset normalize must be true/false or a mapping, got {value!r}")


def action_noise(preset: dict[str, Any], action_space: Any) -> Any:
    """The exploration noise a preset names for TD3/DDPG (rl-baselines3-zoo's ``noise_type`` and
    ``noise_std``), sized to ``action_space``: ``NormalActionNoise`` or ``OrnsteinUhlenbeckActionNoise``
    with zero mean and ``noise_std`` per dimension; ``None`` when the preset names none."""
    kind = preset.get("noise_type")
    if kind is None:
        if "noise_std" in preset:
            raise PolicyKDError(
                "preset noise_std needs a noise_type beside it (normal or ornstein-uhlenbeck)"
            )
        return None
    from stable_baselines3.common.noise import NormalActionNoise, OrnsteinUhlenbeckActionNoise

    if kind not in NOISE_TYPES:
        raise PolicyKDError(f"preset noise_type {kind!r} is not one of {', '.join(NOISE_TYPES)}")
    shape = getattr(action_space, "shape", None)
    if not shape:
        raise PolicyKDError(f"preset noise_type {kind} needs a Box action space, not {action_space}")
    std = preset.get("noise_std", 0.1)
    if not isinstance(std, (int, float)) or isinstance(std, bool) or not std > 0:
        raise PolicyKDError(f"preset noise_std must be a number > 0, got {std!r}")
    mean, sigma = np.zeros(shape[-1]), float(std) * np.ones(shape[-1])
    if kind == "normal":
        return NormalActionNoise(mean=mean, sigma=sigma)
    return OrnsteinUhlenbeckActionNoise(mean=mean, sigma=sigma)
