"""Environment factories, installed as ``policy_kd.envs``.

One place knows how to make every environment the toolkit supports: Gymnasium's classic control and
Box2D tasks (``gymnasium[box2d]``, the ``box2d`` extra), MinAtar (``MinAtar/<Game>-v1``, the ``minatar``
extra) and Atari (``ALE/<Game>-v5``, the ``atari`` extra). Optional suites are registered lazily, so the
core install never imports them.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from gymnasium.error import Error as GymError

from policy_kd.errors import PolicyKDError

__all__ = ["ensure_registered", "make_env"]


def ensure_registered(env_id: str) -> None:
    """Register the optional suite ``env_id`` belongs to; a missing extra gets an install hint."""
    if env_id in gym.registry:
        return
    if env_id.startswith("MinAtar/"):
        try:
            import minatar.gym  # type: ignore[import-not-found]
        except ImportError:
            raise PolicyKDError(
                f"{env_id} needs MinAtar; install it with: pip install 'policy-kd[minatar]'"
            ) from None
        minatar.gym.register_envs()
    elif env_id.startswith("ALE/"):
        try:
            import ale_py  # type: ignore[import-not-found]
        except ImportError:
            raise PolicyKDError(
                f"{env_id} needs ale-py; install it with: pip install 'policy-kd[atari]'"
            ) from None
        gym.register_envs(ale_py)
    if env_id not in gym.registry:
        close = [k for k in gym.registry if k.lower().split("-")[0] == env_id.lower().split("-")[0]]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise PolicyKDError(
            f"unknown environment {env_id!r}{hint}; pass a registered Gymnasium id such as CartPole-v1"
        )


def make_env(env_id: str, *, render_mode: str | None = None, **kwargs: Any) -> gym.Env:
    """``gym.make`` with the optional suites registered and install hints for missing extras."""
    ensure_registered(env_id)
    try:
        return gym.make(env_id, render_mode=render_mode, **kwargs)
    except gym.error.DependencyNotInstalled as exc:
        extra = "box2d" if "box2d" in str(exc).lower() else None
        fix = f"pip install 'policy-kd[{extra}]'" if extra else str(exc).splitlines()[0]
        raise PolicyKDError(f"{env_id} needs an optional dependency; install it with: {fix}") from None
    except GymError as exc:
        raise PolicyKDError(f"could not make environment {env_id!r}: {str(exc).splitlines()[0]}") from None
