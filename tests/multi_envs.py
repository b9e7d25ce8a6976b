"""Tiny MultiDiscrete and MultiBinary environments for the tests (registered on import).

``TargetMatch-v0``: each step shows one target per component (one-hot, side by side) and pays the fraction
of components the action matches; 16 steps an episode, so a return of 16 is perfect and a random policy
earns about 16 * mean(1 / nvec). ``BitMatch-v0``: the same with a MultiBinary action that should copy the
observed bits. Both are linear in the observation, so a tiny PPO teacher learns them in a few thousand steps.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

NVEC = (3, 4, 2)
BITS = 4
HORIZON = 16


class TargetMatch(gym.Env):
    """Match a target per component: MultiDiscrete(``nvec``), or MultiBinary(``bits``) when ``bits`` > 0."""

    def __init__(self, nvec: tuple[int, ...] = NVEC, bits: int = 0, render_mode: str | None = None):
        self.nvec, self.bits = tuple(nvec), bits
        if bits:
            self.action_space: gym.Space = gym.spaces.MultiBinary(bits)
            size = bits
        else:
            self.action_space = gym.spaces.MultiDiscrete(list(nvec))
            size = sum(nvec)
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(size,), dtype=np.float32)
        self.t = 0
        self.target = np.zeros(bits if bits else len(nvec), dtype=np.int64)

    def _obs(self) -> np.ndarray:
        if self.bits:
            return self.target.astype(np.float32)
        obs = np.zeros(sum(self.nvec), dtype=np.float32)
        obs[np.cumsum((0, *self.nvec[:-1])) + self.target] = 1.0
        return obs

    def _draw(self) -> None:
        high = np.full(self.bits, 2) if self.bits else np.asarray(self.nvec)
        self.target = self.np_random.integers(high)

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        self._draw()
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        reward = float(np.mean(np.asarray(action).reshape(-1) == self.target))
        self.t += 1
        self._draw()
        return self._obs(), reward, False, self.t >= HORIZON, {}


if "TargetMatch-v0" not in gym.registry:
    gym.register("TargetMatch-v0", entry_point=TargetMatch)
    gym.register("BitMatch-v0", entry_point=TargetMatch, kwargs={"bits": BITS})
