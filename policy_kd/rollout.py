"""Play a policy for one episode per seed: the episode player evaluate, distill and the report share.

Anything with ``predict(obs_batch, deterministic) -> actions`` is a :class:`Policy`: a loaded teacher and
a loaded student alike. Episode ``i`` always starts from ``env.reset(seed=seeds[i])``, so teacher and
student face the same initial states, and a deterministic policy gives the same returns however many
episodes run side by side.

An Atari episode is a whole game, scored as rl-baselines3-zoo and SB3's ``evaluate_policy`` score it
(through a ``Monitor`` under ``AtariWrapper``): the game's own score and its length in emulator steps. The
policy still plays the episodes it was trained on: at a lost life the env is reset into the next life
(frame stack restarted, FIRE pressed), as SB3's VecEnv does, and the game goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from policy_kd.envs import game_monitor, make_env

__all__ = ["Episodes", "Policy", "run_episodes"]


class Policy(Protocol):
    """Anything that acts: a loaded teacher, a student, an export (as SB3's ``PolicyPredictor``)."""

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray: ...


@dataclass
class Episodes:
    """Per-episode results, in seed order. For Atari an episode is a game: ``returns`` its real score,
    ``lengths`` its emulator steps (as SB3's ``Monitor`` counts); ``extra["steps"]`` always holds the
    number of actions the policy took."""

    seeds: list[int]
    returns: np.ndarray
    lengths: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)


def run_episodes(
    policy: Policy,
    env_id: str,
    seeds: Sequence[int],
    *,
    n_parallel: int = 8,
    deterministic: bool = True,
    observer: Callable[[np.ndarray, np.ndarray], None] | None = None,
    wrap: Callable[[Any], Any] | None = None,
    env_factory: Callable[[], Any] | None = None,
    step_observer: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
) -> Episodes:
    """Play one episode per seed, up to ``n_parallel`` at once with one batched ``predict`` per step.

    ``observer(obs_batch, actions)`` sees every state the policy acts in (e.g. to ask the teacher what it
    would have done there); ``step_observer(obs_batch, actions, episodes, steps)`` also gets each row's
    episode index (into ``seeds``) and step (action) within its episode.

    An env with a ``GameMonitor`` (Atari) plays whole games: an episode the env ends at a lost life is
    followed by ``reset()`` into the next life, and the game's score and length come from the monitor.
    """
    seeds = list(seeds)
    n_par = max(1, min(n_parallel, len(seeds)))
    # env_factory builds the env exactly as the teacher saw it (frame stacking, zoo wrappers)
    envs = [(env_factory or (lambda: make_env(env_id)))() for _ in range(n_par)]
    if wrap is not None:
        envs = [wrap(e) for e in envs]
    monitors = [game_monitor(e) for e in envs]
    returns = np.zeros(len(seeds))
    lengths = np.zeros(len(seeds), dtype=np.int64)
    steps = np.zeros(len(seeds), dtype=np.int64)
    slot_ep = [-1] * n_par
    slot_obs: list[Any] = [None] * n_par
    next_ep = 0

    def start(slot: int) -> None:
        nonlocal next_ep
        if next_ep < len(seeds):
            slot_ep[slot] = next_ep
            mon = monitors[slot]
            if mon is not None and mon.in_game:
                # The last game ended inside a life-loss reset, which began an unseeded game: make
                # EpisodicLifeEnv (AtariWrapper) reset the emulator for real, so each seed is its own game.
                envs[slot].set_wrapper_attr("was_real_done", True, force=False)
            slot_obs[slot], _ = envs[slot].reset(seed=seeds[next_ep])
            next_ep += 1
        else:
            slot_ep[slot] = -1

    for s in range(n_par):
        start(s)
    while True:
        active = [s for s in range(n_par) if slot_ep[s] >= 0]
        if not active:
            break
        obs = np.stack([slot_obs[s] for s in active])
        actions = np.asarray(policy.predict(obs, deterministic))
        if observer is not None:
            observer(obs, actions)
        if step_observer is not None:
            eps = np.asarray([slot_ep[s] for s in active])
            step_observer(obs, actions, eps, steps[eps].copy())
        for a, s in zip(actions, active, strict=True):
            ep = slot_ep[s]
            slot_obs[s], over = _step_slot(envs[s], monitors[s], a, ep, returns, lengths)
            steps[ep] += 1
            if over:
                start(s)
    for e in envs:
        e.close()
    return Episodes(seeds=seeds, returns=returns, lengths=lengths, extra={"steps": steps})


def _step_slot(
    env: Any, mon: Any, a: np.ndarray, ep: int, returns: np.ndarray, lengths: np.ndarray
) -> tuple[Any, bool]:
    """One action in one env, counted into episode ``ep``'s return and length: (next obs, episode over)."""
    games_before = mon.games_finished if mon is not None else 0
    obs, r, term, trunc, _ = env.step(a.item() if np.ndim(a) == 0 else a)
    if mon is None:
        returns[ep] += float(r)
        lengths[ep] += 1
        return obs, bool(term or trunc)
    if (term or trunc) and mon.games_finished == games_before:
        obs, _ = env.reset()  # a life lost: the next one, as SB3's VecEnv resets
    over = mon.games_finished > games_before
    if over:
        returns[ep], lengths[ep] = mon.last_game  # type: ignore[misc]
    return obs, over
