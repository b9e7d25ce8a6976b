"""Environment factories, installed as ``policy_kd.envs``.

One place knows how to make every environment the toolkit supports: Gymnasium's classic control and
Box2D tasks (``gymnasium[box2d]``, the ``box2d`` extra), MinAtar (``MinAtar/<Game>-v1``, the ``minatar``
extra) and Atari (``ALE/<Game>-v5``, the ``atari`` extra). Optional suites are registered lazily, so the
core install never imports them.

:func:`make_env` applies the observation processing a suite needs for SB3 (MinAtar: channel-first
``uint8``; Atari: SB3's ``AtariWrapper``), so train-teacher, record and evaluate all see the same
observations. Every Atari env also gets a :class:`GameMonitor` right above ``gym.make``: the teacher's
episodes end at a lost life, as in training, while record and evaluate read whole games' real scores
from it (see ``policy_kd.envs.atari``).

It also holds the two name registries presets and rl-baselines3-zoo runs may refer to: features
extractors (``FEATURES_EXTRACTORS``) and environment wrappers (``ZOO_WRAPPERS``). Names are looked up
there and nothing else is ever imported or evaluated from a config file.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.error import Error as GymError
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env.stacked_observations import StackedObservations

from policy_kd.errors import PolicyKDError

from .atari import INSTALL_HINT as ATARI_HINT
from .atari import GameMonitor, game_monitor, is_atari, make_atari, wrap_game
from .minatar import MinAtarCNN, MinAtarObservation

__all__ = [
    "FEATURES_EXTRACTORS",
    "ZOO_WRAPPERS",
    "FrameStack",
    "GameMonitor",
    "MinAtarCNN",
    "MinAtarObservation",
    "ensure_registered",
    "features_extractor",
    "game_monitor",
    "make_env",
    "make_env_from_spec",
    "wrap_game",
    "zoo_wrapper",
]

# Preset name -> SB3 features extractor class (preset: policy_kwargs: {features_extractor: minatar_cnn}).
FEATURES_EXTRACTORS: dict[str, type[BaseFeaturesExtractor]] = {"minatar_cnn": MinAtarCNN}

# Wrappers an rl-baselines3-zoo run may name as env_wrapper in its config.yml, by import path -> (module,
# class, extra that provides it). Only these are imported: a config file must not choose what code runs.
ZOO_WRAPPERS: dict[str, tuple[str, str, str]] = {
    "sb3_contrib.common.wrappers.TimeFeatureWrapper": (
        "sb3_contrib.common.wrappers",
        "TimeFeatureWrapper",
        "contrib",
    ),
    "stable_baselines3.common.atari_wrappers.AtariWrapper": (
        "stable_baselines3.common.atari_wrappers",
        "AtariWrapper",
        "atari",
    ),
    "gymnasium.wrappers.TimeLimit": ("gymnasium.wrappers", "TimeLimit", ""),
    "gymnasium.wrappers.time_limit.TimeLimit": ("gymnasium.wrappers", "TimeLimit", ""),
    "rl_zoo3.wrappers.HistoryWrapper": ("rl_zoo3.wrappers", "HistoryWrapper", "zoo"),
    "rl_zoo3.wrappers.FrameSkip": ("rl_zoo3.wrappers", "FrameSkip", "zoo"),
}


def ensure_registered(env_id: str) -> None:
    """Register the optional suite ``env_id`` belongs to; a missing extra gets an install hint."""
    if env_id in gym.registry:
        return
    if env_id.startswith("MinAtar/"):
        logging.disable(
            logging.WARNING
        )  # minatar.gym warns on import that seaborn (rendering only) is missing
        try:
            import minatar.gym  # type: ignore[import-not-found]
        except ImportError:
            raise PolicyKDError(
                f"{env_id} needs MinAtar; install it with: pip install 'policy-kd[minatar]'"
            ) from None
        finally:
            logging.disable(logging.NOTSET)
        minatar.gym.register_envs()
    elif is_atari(env_id):
        try:
            import ale_py  # type: ignore[import-not-found]
        except ImportError:
            raise PolicyKDError(f"{env_id} needs ale-py; install it with: {ATARI_HINT}") from None
        gym.register_envs(ale_py)
    if env_id not in gym.registry:
        close = [k for k in gym.registry if k.lower().split("-")[0] == env_id.lower().split("-")[0]]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise PolicyKDError(
            f"unknown environment {env_id!r}{hint}; pass a registered Gymnasium id such as CartPole-v1"
        )


def make_env(
    env_id: str, *, render_mode: str | None = None, raw: bool = False, training: bool = False, **kwargs: Any
) -> gym.Env:
    """``gym.make`` with the optional suites registered, their SB3 observation processing, and install hints.

    :param env_id: Gymnasium id
    :param render_mode: passed to ``gym.make``
    :param raw: skip the suite's observation processing (``gym.make`` as it is, plus an Atari game's
        :class:`GameMonitor`, e.g. for an rl-baselines3-zoo teacher, which names its own wrappers)
    :param training: for Atari, end episodes at a lost life (frame stack restarted, FIRE pressed, as
        the teacher learnt) and clip rewards; else whole games with real rewards
    :param kwargs: passed to ``gym.make``
    """
    ensure_registered(env_id)
    try:
        if raw:
            env = gym.make(env_id, render_mode=render_mode, **kwargs)
            # where the zoo's Monitor sits, under its env_wrapper (AtariWrapper): scores whole games
            return GameMonitor(env) if is_atari(env_id) else env
        if is_atari(env_id):
            return make_atari(env_id, training=training, render_mode=render_mode, **kwargs)
        env = gym.make(env_id, render_mode=render_mode, **kwargs)
        if env_id.startswith("MinAtar/"):
            env = MinAtarObservation(env)
        return env
    except gym.error.DependencyNotInstalled as exc:
        extra = "box2d" if "box2d" in str(exc).lower() else None
        fix = f"pip install 'policy-kd[{extra}]'" if extra else str(exc).splitlines()[0]
        raise PolicyKDError(f"{env_id} needs an optional dependency; install it with: {fix}") from None
    except GymError as exc:
        raise PolicyKDError(f"could not make environment {env_id!r}: {str(exc).splitlines()[0]}") from None


def features_extractor(name: str) -> type[BaseFeaturesExtractor]:
    """The features extractor class a preset names (``policy_kwargs: {features_extractor: NAME}``)."""
    try:
        return FEATURES_EXTRACTORS[name]
    except (KeyError, TypeError):
        raise PolicyKDError(
            f"unknown features_extractor {name!r}; choose one of {', '.join(FEATURES_EXTRACTORS)}"
        ) from None


def zoo_wrapper(name: str, kwargs: dict[str, Any] | None = None) -> Callable[[gym.Env], gym.Env]:
    """A callable that applies the allow-listed wrapper ``name`` (an import path) with plain ``kwargs``."""
    if name not in ZOO_WRAPPERS:
        raise PolicyKDError(
            f"env_wrapper {name!r} is not one policy_kd will import; supported: {', '.join(ZOO_WRAPPERS)}"
        )
    kwargs = dict(kwargs or {})
    for key, value in kwargs.items():
        if not isinstance(value, (bool, int, float, str, type(None))):
            raise PolicyKDError(f"env_wrapper {name} argument {key}={value!r} is not a plain value")
    module, cls_name, extra = ZOO_WRAPPERS[name]
    try:
        cls = getattr(importlib.import_module(module), cls_name)
    except ImportError:
        fix = f"pip install 'policy-kd[{extra}]'" if extra else f"pip install {module.split('.')[0]}"
        raise PolicyKDError(
            f"env_wrapper {name} needs {module.split('.')[0]}; install it with: {fix}"
        ) from None

    def wrap(env: gym.Env) -> gym.Env:
        return cls(env, **kwargs)

    return wrap


class FrameStack(gym.Wrapper):
    """Stack the last ``n_stack`` observations of one env exactly as SB3's ``VecFrameStack`` does.

    Same axis (channels for images, else the last axis), same zero padding after ``reset``, so a policy
    trained behind ``VecFrameStack`` can act in a plain, single env (e.g. episode by episode, each from
    its own seed). Built on SB3's ``StackedObservations`` with one env.
    """

    def __init__(self, env: gym.Env, n_stack: int):
        super().__init__(env)
        self._stack = StackedObservations(1, n_stack, env.observation_space)  # type: ignore[arg-type]
        self.observation_space = self._stack.stacked_observation_space

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        return self._stack.reset(np.asarray(obs)[None])[0].copy(), info

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        stacked, _ = self._stack.update(np.asarray(obs)[None], np.zeros(1, dtype=bool), [{}])
        return stacked[0].copy(), reward, terminated, truncated, info


def make_env_from_spec(spec: dict[str, Any], *, stacked: bool = True) -> gym.Env:
    """One env rebuilt from a JSON-able description (``Teacher.env_spec``), raw observations: the env as the
    teacher saw it in training (for Atari, episodes end at a lost life; its ``GameMonitor`` scores games).

    ``spec``: ``env_id``; optional ``raw`` (skip the suite's processing), ``env_kwargs`` (for ``gym.make``),
    ``wrappers`` (``[[import path, kwargs], ...]``, allow-listed in ``ZOO_WRAPPERS``) and ``frame_stack``
    (applied as ``VecFrameStack`` would, unless ``stacked=False``).
    """
    env = make_env(spec["env_id"], raw=bool(spec.get("raw")), training=True, **(spec.get("env_kwargs") or {}))
    for name, kwargs in spec.get("wrappers") or ():
        env = zoo_wrapper(name, kwargs)(env)
    if stacked and spec.get("frame_stack"):
        env = FrameStack(env, int(spec["frame_stack"]))
    return env
