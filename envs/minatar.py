"""MinAtar for SB3: channel-first ``uint8`` observations and the small CNN of the MinAtar paper.

MinAtar's Gymnasium envs (``MinAtar/<Game>-v1``) give ``(10, 10, C)`` bool observations, one binary
channel per object type. SB3 wants a numeric Box, PyTorch wants channels first, and a buffer of teacher
states should stay small, so :class:`MinAtarObservation` turns them into ``(C, 10, 10)`` ``uint8`` arrays
holding 0 or 1 (one byte per cell, as the bools were). Nothing here imports MinAtar itself.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn


class MinAtarObservation(gym.ObservationWrapper):
    """``(H, W, C)`` bool observations -> ``(C, H, W)`` ``uint8`` in {0, 1}."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        h, w, c = env.observation_space.shape  # type: ignore[misc]
        # high=1, not 255: SB3 does not treat this as an image (no /255 scaling, no transposing).
        self.observation_space = gym.spaces.Box(0, 1, shape=(c, h, w), dtype=np.uint8)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        # transpose + astype, not np.moveaxis: moveaxis's axis bookkeeping cost 3x the copy itself
        return observation.transpose(2, 0, 1).astype(np.uint8, order="C")


class MinAtarCNN(BaseFeaturesExtractor):
    """The MinAtar paper's network body (Young & Tian 2019; MinAtar ``examples/dqn.py``).

    ``Conv2d(C, 16, 3, stride 1)`` -> ReLU -> flatten -> ``Linear(16 * 8 * 8, features_dim)`` -> ReLU, on
    ``(batch, C, 10, 10)`` observations in {0, 1}. SB3's ``preprocess_obs`` only casts them to float (the
    space is not an SB3 image, so nothing is divided by 255); the values are used as they are. The Q-value
    or action head comes after it (``net_arch: []`` gives the paper's single linear output layer).

    :param observation_space: channel-first Box ``(C, H, W)``, e.g. from :class:`MinAtarObservation`
    :param features_dim: width of the hidden linear layer (128 in the paper)
    """

    def __init__(self, observation_space: gym.spaces.Box, features_dim: int = 128):
        super().__init__(observation_space, features_dim)
        if len(observation_space.shape) != 3:
            raise ValueError(
                f"MinAtarCNN needs (channels, height, width) observations, got shape {observation_space.shape}"
            )
        c, h, w = observation_space.shape
        self.cnn = nn.Sequential(nn.Conv2d(c, 16, kernel_size=3, stride=1), nn.ReLU(), nn.Flatten())
        n_flat = 16 * (h - 2) * (w - 2)
        self.linear = nn.Sequential(nn.Linear(n_flat, features_dim), nn.ReLU())

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.linear(self.cnn(observations.float()))  # (batch, features_dim)
