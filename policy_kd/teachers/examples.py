"""Ready-made non-SB3 teachers: a scripted CartPole controller and CleanRL-style DQN checkpoints.

They show the two ends of :mod:`policy_kd.teachers.custom` and are factories ``--teacher py:...`` accepts::

    policy-kd record --teacher py:policy_kd.teachers.examples:cartpole_controller --out buf --steps 20000
    policy-kd distill --buffer buf --loss nll --out student        # behaviour cloning (kind: actions)

:func:`train_cleanrl_dqn` is CleanRL's ``dqn.py`` loop (its ``QNetwork``, epsilon schedule, replay, target
network and ``.cleanrl_model`` state dict), shortened to a function; :func:`from_cleanrl_dqn` loads what it,
or CleanRL itself, saved.
"""

from __future__ import annotations

import random
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from policy_kd.errors import PolicyKDError
from policy_kd.teachers.custom import CustomTeacher, from_callable, from_module

__all__ = ["QNetwork", "cartpole_controller", "from_cleanrl_dqn", "train_cleanrl_dqn"]


def _pole_policy(obs: np.ndarray) -> np.ndarray:
    """Push the cart toward where the pole falls: the sign of angle + 0.5 angular velocity + small cart
    terms (a hand-tuned linear controller; it balances CartPole-v1 for the full 500 steps)."""
    x, x_dot, theta, theta_dot = obs[:, 0], obs[:, 1], obs[:, 2], obs[:, 3]
    return (theta + 0.5 * theta_dot + 0.01 * x + 0.1 * x_dot > 0).astype(np.int64)  # (batch,) 0 left, 1 right


def cartpole_controller() -> CustomTeacher:
    """A scripted CartPole-v1 controller that exposes only its actions (``kind: actions``)."""
    return from_callable(_pole_policy, kind="actions", env_id="CartPole-v1", name="cartpole-controller")


class QNetwork(nn.Module):
    """CleanRL's ``dqn.py`` Q-network: obs -> 120 -> 84 -> n_actions with ReLU (its state dict keys
    ``network.0``, ``network.2``, ``network.4``)."""

    def __init__(self, obs_dim: int, n_actions: int):
        super().__init__()
        self.network = nn.Sequential(
            nn.Linear(obs_dim, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, n_actions),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)  # (batch, n_actions)


def from_cleanrl_dqn(path: str | Path, env_id: str = "CartPole-v1") -> CustomTeacher:
    """A CleanRL DQN checkpoint (``torch.save(q_network.state_dict(), ...)``) as a ``q_values`` teacher.

    Read with ``torch.load(weights_only=True)``: tensors only, nothing is unpickled as code.
    """
    env = gym.make(env_id)
    obs_dim = int(np.prod(env.observation_space.shape))
    n_actions = int(env.action_space.n)  # type: ignore[attr-defined]
    env.close()
    net = QNetwork(obs_dim, n_actions)
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except (OSError, RuntimeError, KeyError) as exc:
        why = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise PolicyKDError(
            f"could not load CleanRL Q-network {path} ({why}); pass a dqn.py state dict"
        ) from None
    return from_module(net, kind="q_values", env_id=env_id, name=f"cleanrl-dqn:{Path(path).name}")


def _linear_schedule(start_e: float, end_e: float, duration: int, t: int) -> float:
    slope = (end_e - start_e) / duration
    return max(slope * t + start_e, end_e)


def train_cleanrl_dqn(
    out: str | Path,
    *,
    env_id: str = "CartPole-v1",
    total_timesteps: int = 100_000,
    seed: int = 1,
    learning_rate: float = 2.5e-4,
    buffer_size: int = 10_000,
    gamma: float = 0.99,
    target_network_frequency: int = 500,
    batch_size: int = 128,
    start_e: float = 1.0,
    end_e: float = 0.05,
    exploration_fraction: float = 0.5,
    learning_starts: int = 10_000,
    train_frequency: int = 10,
) -> Path:
    """Train a DQN as CleanRL's ``dqn.py`` does (its defaults, one env) and save the Q-network's state dict
    to ``out`` (refused if it exists); return ``out``. A short budget gives a weak teacher, which is fine
    for tests."""
    out = Path(out)
    if out.exists():
        raise PolicyKDError(f"{out} exists; remove it or choose another path")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    env = gym.wrappers.RecordEpisodeStatistics(gym.make(env_id))
    n_actions = int(env.action_space.n)  # type: ignore[attr-defined]
    obs_dim = int(np.prod(env.observation_space.shape))
    q_network, target_network = QNetwork(obs_dim, n_actions), QNetwork(obs_dim, n_actions)
    target_network.load_state_dict(q_network.state_dict())
    optimizer = torch.optim.Adam(q_network.parameters(), lr=learning_rate)
    rng = np.random.default_rng(seed)
    # the replay buffer as plain arrays (CleanRL uses SB3's ReplayBuffer; same contents)
    obs_buf = np.zeros((buffer_size, obs_dim), np.float32)
    next_buf = np.zeros((buffer_size, obs_dim), np.float32)
    act_buf = np.zeros(buffer_size, np.int64)
    rew_buf = np.zeros(buffer_size, np.float32)
    done_buf = np.zeros(buffer_size, np.float32)
    size = pos = 0
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    for global_step in range(total_timesteps):
        epsilon = _linear_schedule(start_e, end_e, int(exploration_fraction * total_timesteps), global_step)
        if rng.random() < epsilon:
            action = int(env.action_space.sample())
        else:
            with torch.no_grad():
                action = int(q_network(torch.as_tensor(obs[None], dtype=torch.float32)).argmax(dim=1)[0])
        next_obs, reward, terminated, truncated, _ = env.step(action)
        # as CleanRL: the final observation is stored on truncation, and only termination ends bootstrapping
        obs_buf[pos], next_buf[pos], act_buf[pos] = obs, next_obs, action
        rew_buf[pos], done_buf[pos] = reward, float(terminated)
        pos, size = (pos + 1) % buffer_size, min(size + 1, buffer_size)
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
        if global_step > learning_starts and global_step % train_frequency == 0:
            idx = rng.integers(0, size, batch_size)
            with torch.no_grad():
                target_max = target_network(torch.from_numpy(next_buf[idx])).max(dim=1).values
                td_target = torch.from_numpy(rew_buf[idx]) + gamma * target_max * (
                    1 - torch.from_numpy(done_buf[idx])
                )
            old_val = q_network(torch.from_numpy(obs_buf[idx])).gather(
                1, torch.from_numpy(act_buf[idx])[:, None]
            )
            loss = F.mse_loss(td_target, old_val.squeeze(1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if global_step % target_network_frequency == 0:  # tau = 1: a hard copy
                target_network.load_state_dict(q_network.state_dict())
    env.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(q_network.state_dict(), out)
    return out
