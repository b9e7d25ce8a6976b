"""Vectorised envs for teachers: a faster DummyVecEnv, frame stacking, train-teacher's evaluation env."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    VecEnv,
    VecFrameStack,
)
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn
from stable_baselines3.common.vec_env.util import dict_to_obs

from policy_kd.envs import ensure_registered, make_env
from policy_kd.envs.atari import is_atari


class _DummyVecEnv(DummyVecEnv):
    """SB3's DummyVecEnv, minus the deepcopies of every step's info dicts and observation buffer.

    Each ``env.step`` returns a fresh info dict and nothing downstream mutates it, so a shallow copy of
    the list is as safe; the deepcopy cost about as much as a CartPole step. The observation buffer holds
    plain arrays, so ``ndarray.copy`` gives the same independent copy as SB3's ``deepcopy`` at a fifth of
    the cost. Same semantics as SB3 2.x's ``step_wait`` otherwise (auto-reset, ``terminal_observation``,
    ``TimeLimit.truncated``).
    """

    def _obs_from_buf(self) -> Any:
        return dict_to_obs(self.observation_space, {k: v.copy() for k, v in self.buf_obs.items()})

    def step_wait(self) -> VecEnvStepReturn:
        for i in range(self.num_envs):
            obs, self.buf_rews[i], terminated, truncated, self.buf_infos[i] = self.envs[i].step(
                self.actions[i]
            )
            self.buf_dones[i] = terminated or truncated
            self.buf_infos[i]["TimeLimit.truncated"] = truncated and not terminated
            if self.buf_dones[i]:
                self.buf_infos[i]["terminal_observation"] = obs
                obs, self.reset_infos[i] = self.envs[i].reset()
            self._save_obs(i, obs)
        return self._obs_from_buf(), np.copy(self.buf_rews), np.copy(self.buf_dones), list(self.buf_infos)


def _vec_env(make: Callable[[], gym.Env], n_envs: int, seed: int | None, frame_stack: int | None) -> VecEnv:
    env = make_vec_env(lambda **_: make(), n_envs=n_envs, seed=seed, vec_env_cls=_DummyVecEnv)
    if frame_stack:
        env = VecFrameStack(env, frame_stack)
    return env


def _make_env_stack(
    env_id: str, n_envs: int, seed: int, frame_stack: int | None, *, training: bool = False
) -> VecEnv:
    ensure_registered(env_id)
    return _vec_env(lambda: make_env(env_id, training=training), n_envs, seed, frame_stack)


def _make_eval_env_stack(env_id: str, seed: int, frame_stack: int | None) -> VecEnv:
    """train-teacher's evaluation env. Atari: the training env (a lost life ends an episode, the frame stack
    restarts, FIRE is pressed) with no Monitor above its ``GameMonitor``, as the zoo's eval env: SB3's
    ``EvalCallback`` then scores whole games with their real score while the teacher sees its training
    observations."""
    if not is_atari(env_id):
        return _make_env_stack(env_id, 1, seed, frame_stack)
    ensure_registered(env_id)
    env: VecEnv = _DummyVecEnv([lambda: make_env(env_id, training=True)])
    env.seed(seed)
    return VecFrameStack(env, frame_stack) if frame_stack else env
