"""Atari for SB3: the standard ``AtariWrapper`` preprocessing (84x84 grayscale, frame skip 4, no-op reset).

Frame stacking (4 frames) is a vectorised wrapper applied by the teacher's env stack (preset
``frame_stack: 4``), not here. Needs ``ale-py`` and OpenCV (the ``atari`` extra).
"""

from __future__ import annotations

import gymnasium as gym

from policy_kd.errors import PolicyKDError

INSTALL_HINT = "pip install 'policy-kd[atari]'"


def is_atari(env_id: str) -> bool:
    """``ALE/<Game>-v5`` ids, and the ``<Game>NoFrameskip-v4`` ids rl-baselines3-zoo trains on."""
    return env_id.startswith("ALE/") or "NoFrameskip" in env_id


def make_atari(env_id: str, *, training: bool = False, render_mode: str | None = None, **kwargs) -> gym.Env:
    """``gym.make`` plus SB3's ``AtariWrapper``.

    ``training=True`` gives the learning signal DQN-style training uses (episode ends at a life lost,
    rewards clipped to their sign); otherwise episodes are whole games with their real scores, which is
    what recording and evaluation report. The observations are the same either way.
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
    env = gym.make(env_id, render_mode=render_mode, **kwargs)
    return AtariWrapper(env, terminal_on_life_loss=training, clip_reward=training)
