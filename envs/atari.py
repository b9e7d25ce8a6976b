"""Atari for SB3: the standard ``AtariWrapper`` preprocessing (84x84 grayscale, frame skip 4, no-op reset),
and :class:`GameMonitor`, which keeps the score of whole games underneath it.

Frame stacking (4 frames) is a vectorised wrapper applied by the teacher's env stack (preset
``frame_stack: 4``), not here. Needs ``ale-py`` and OpenCV (the ``atari`` extra).

Why a game monitor: a teacher trained with ``AtariWrapper`` sees a life lost as the end of an episode
(its frame stack restarts, ``FireResetEnv`` presses FIRE) and clipped rewards. Evaluation must show it
exactly those observations, yet score what rl-baselines3-zoo and SB3's ``evaluate_policy`` report through
a ``Monitor`` placed under the wrappers: whole games and the game's own score. :class:`GameMonitor` is
that ``Monitor``, where the zoo puts it (right above ``gym.make``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
from stable_baselines3.common.monitor import Monitor

from policy_kd.errors import PolicyKDError

INSTALL_HINT = "pip install 'policy-kd[atari]'"


def is_atari(env_id: str) -> bool:
    """``ALE/<Game>-v5`` ids, and the ``<Game>NoFrameskip-v4`` ids rl-baselines3-zoo trains on."""
    return env_id.startswith("ALE/") or "NoFrameskip" in env_id


class GameMonitor(Monitor):
    """SB3's ``Monitor`` where the zoo puts it, right above ``gym.make``: it keeps the games as played.

    It counts every emulator step (no-ops and FIRE presses of the wrappers' resets included), and a game
    ends when the emulator says so (game over, or its frame/time limit), not at a lost life; at that step
    ``info["episode"]`` holds its score and length, which SB3's ``evaluate_policy`` (and so
    ``EvalCallback``) reads when no other ``Monitor`` sits above. Observations, rewards and episode ends
    pass through untouched: the wrappers above still see the game exactly as in training. On top of
    ``Monitor`` it says how many games ended (:attr:`games_finished`, to compare before and after a step)
    and hands out the raw reward step by step (:meth:`take_reward`, for a buffer).
    """

    def __init__(self, env: gym.Env):
        super().__init__(env, allow_early_resets=True)
        self._unread = 0.0  # raw reward of the current game not yet taken by take_reward
        self._unread_ended: float | None = None  # the same for a game that ended since

    @property
    def games_finished(self) -> int:
        return len(self.episode_returns)

    @property
    def last_game(self) -> tuple[float, int]:
        """``(score, emulator steps)`` of the last game that ended."""
        return self.episode_returns[-1], self.episode_lengths[-1]

    @property
    def in_game(self) -> bool:
        """A game is under way (reset, not ended)."""
        return not self.needs_reset

    @property
    def length(self) -> int:
        """Emulator steps of the current game so far (of the last one, once it ended)."""
        return len(self.rewards)

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        if self.in_game:  # reset mid-game (an evaluation cut short): that game is abandoned
            self._close_unread()
        return super().reset(**kwargs)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = super().step(action)
        self._unread += float(reward)
        if terminated or truncated:
            self._close_unread()
        return obs, reward, terminated, truncated, info

    def _close_unread(self) -> None:
        self._unread_ended = (self._unread_ended or 0.0) + self._unread
        self._unread = 0.0

    def take_reward(self) -> float:
        """Raw reward paid since the last call, up to the end of the game if one ended since (what is paid
        after it, e.g. during the next game's no-op reset, belongs to the next call): summed per game, the
        values give each game's score exactly."""
        if self._unread_ended is not None:
            reward, self._unread_ended = self._unread_ended, None
        else:
            reward, self._unread = self._unread, 0.0
        return reward


def game_monitor(env: Any) -> GameMonitor | None:
    """The :class:`GameMonitor` inside ``env``'s wrappers, or None (an env whose episodes are its games)."""
    while isinstance(env, gym.Wrapper):
        if isinstance(env, GameMonitor):
            return env
        env = env.env
    return None


def wrap_game(env: gym.Env, wrapper: Callable[[gym.Env], gym.Env]) -> gym.Env:
    """``env`` with ``wrapper`` applied to the game itself: under an Atari env's :class:`GameMonitor` (it
    sees whole games and every emulator frame, e.g. to film them), else around ``env``."""
    monitor = game_monitor(env)
    if monitor is None:
        return wrapper(env)
    monitor.env = wrapper(monitor.env)
    return env


def make_atari(env_id: str, *, training: bool = False, render_mode: str | None = None, **kwargs) -> gym.Env:
    """``gym.make``, a :class:`GameMonitor`, then SB3's ``AtariWrapper``.

    ``training=True`` is the env a teacher learns (and is later evaluated and recorded) in: an episode ends
    at a lost life (the frame stack restarts, FIRE is pressed) and rewards are clipped to their sign; the
    ``GameMonitor`` keeps the whole games' real scores. ``training=False`` plays whole games with real
    rewards and no life-loss resets.
    """
    try:
        import cv2  # noqa: F401  (SB3's WarpFrame resizes with OpenCV)
    except ImportError:
        raise PolicyKDError(
            f"{env_id} needs OpenCV for frame resizing; install it with: {INSTALL_HINT}"
        ) from None
    from stable_baselines3.common.atari_wrappers import AtariWrapper

    if env_id.startswith("ALE/"):
        # v5 envs skip 4 frames themselves; AtariWrapper does the skipping (with max-pooling) instead.
        kwargs.setdefault("frameskip", 1)
    env = GameMonitor(gym.make(env_id, render_mode=render_mode, **kwargs))
    return AtariWrapper(env, terminal_on_life_loss=training, clip_reward=training)
