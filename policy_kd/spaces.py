"""Spaces and compatibility: what record, distill and evaluate need to know about an env's spaces.

A buffer, a student and an export describe the spaces they were made for with :func:`space_json`;
:func:`check_compatible` refuses to pair them with a teacher of another environment or action space.
Kept apart from record and evaluate so that neither imports the other for these.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from policy_kd.errors import PolicyKDError

__all__ = ["action_nvec", "action_range", "check_compatible", "random_actions", "space_json"]


def space_json(space: gym.Space, *, all_bounds: bool = False) -> dict[str, Any]:
    """A JSON description of a Gymnasium space (enough to check compatibility and rebuild shapes).

    A Box keeps its bounds (``low``, ``high``) up to 64 values, or at any size with ``all_bounds``: pass it
    for an action space, whose bounds students clip into (an image observation's would be thousands).
    """
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n)}
    if isinstance(space, gym.spaces.Box):
        out: dict[str, Any] = {"type": "Box", "shape": list(space.shape), "dtype": str(space.dtype)}
        if all_bounds or space.low.size <= 64:
            out["low"], out["high"] = space.low.reshape(-1).tolist(), space.high.reshape(-1).tolist()
        return out
    if isinstance(space, gym.spaces.MultiDiscrete | gym.spaces.MultiBinary):
        # nvec: choices per component (2 per bit of a MultiBinary); no "n", which means a Discrete's count
        return {
            "type": type(space).__name__,
            "shape": list(space.shape),
            "nvec": list(action_nvec(space) or ()),
        }
    return {"type": type(space).__name__, "repr": repr(space)}


def action_nvec(space: Any) -> tuple[int, ...] | None:
    """Choices per component of a MultiDiscrete or MultiBinary action space (a gym space or its
    :func:`space_json`): ``nvec`` flattened, ``2`` per bit of a MultiBinary; ``None`` for any other space.

    A MultiBinary bit is treated as a 2-way choice so that one per-component softmax serves both spaces.
    """
    if isinstance(space, dict):
        nvec = space.get("nvec") if space.get("type") in ("MultiDiscrete", "MultiBinary") else None
        return tuple(int(n) for n in nvec) if nvec else None
    if isinstance(space, gym.spaces.MultiBinary | gym.spaces.MultiDiscrete) and len(space.shape) != 1:
        # a student acts with (batch, n_components); a nested action shape would need reshaping everywhere
        raise PolicyKDError(
            f"{space} has a nested action shape {space.shape}; one-dimensional ones are supported"
        )
    if isinstance(space, gym.spaces.MultiBinary):
        return (2,) * int(space.shape[0])
    if isinstance(space, gym.spaces.MultiDiscrete):
        if np.any(np.asarray(space.start) != 0):
            raise PolicyKDError(f"MultiDiscrete spaces with a non-zero start are not supported: {space}")
        return tuple(int(n) for n in np.asarray(space.nvec).reshape(-1))
    return None


def random_actions(space: gym.Space, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` actions drawn uniformly from ``space`` (the random policy, epsilon-greedy exploration)."""
    if isinstance(space, gym.spaces.Discrete):
        return rng.integers(int(space.n), size=n) + int(space.start)
    nvec = action_nvec(space)
    if nvec is not None:  # one uniform choice per component
        return rng.integers(np.asarray(nvec), size=(n, len(nvec))).reshape(n, *space.shape)
    assert isinstance(space, gym.spaces.Box)
    if space.is_bounded():
        return rng.uniform(space.low, space.high, size=(n, *space.shape)).astype(np.float32)
    # Unbounded dimensions have no uniform distribution; Gymnasium's own sampler (normal/exponential
    # there), seeded from our generator, keeps the recording reproducible.
    space.seed(int(rng.integers(2**31)))
    return np.stack([space.sample() for _ in range(n)]).astype(np.float32)


def action_range(space: Any) -> np.ndarray | None:
    """Per dimension ``high - low`` of a Box action space (1 where unbounded); ``None`` for a discrete one."""
    low = getattr(space, "low", None)
    if low is None:
        return None
    width = (np.asarray(space.high, np.float64) - np.asarray(low, np.float64)).reshape(-1)
    return np.where(np.isfinite(width) & (width > 0), width, 1.0)


def check_compatible(info: dict[str, Any], env_id: str, n_actions: int, where: str) -> None:
    """Refuse a student or buffer made for another environment or action space."""
    their_env = info.get("env_id")
    their_n = (info.get("action_space") or {}).get("n")
    if their_env is not None and their_env != env_id:
        raise PolicyKDError(
            f"{where} was made for {their_env}, not {env_id}; pass a matching teacher or student"
        )
    if their_n is not None and int(their_n) != n_actions:
        raise PolicyKDError(
            f"{where} has {their_n} actions but the teacher has {n_actions}; pass a matching pair"
        )
