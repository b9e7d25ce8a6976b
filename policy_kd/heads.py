"""Action heads: from a network's outputs to the actions taken, in numpy alone (no torch import).

One place for what the teacher adapter, the students and the numpy runtime all do with outputs, as SB3
keeps its distributions in ``common/distributions.py``:

- ``discrete``: outputs are logits (or Q-values); the greedy action is the argmax, a sample is drawn by
  inverse-CDF from ``softmax(outputs)`` (:func:`sample_logits`).
- ``gaussian``: outputs are the action mean; a sample adds ``exp(log_std) * N(0, 1)``
  (:func:`sample_gaussian`); the action is clipped into the bounds (:func:`to_bounds`).
- ``squashed_gaussian``: the same pre-squash mean and noise, squashed into the bounds with tanh, as SAC
  and SB3's ``squash_output`` do.
- ``multi_discrete``: outputs are the logits of several categorical components side by side (a MultiDiscrete
  action space, or a MultiBinary one as 2-way choices per bit), ``nvec`` choices each; every component is
  argmaxed or sampled on its own (:func:`split_components`), as SB3's ``MultiCategoricalDistribution``.
- ``deterministic``: outputs are the action already squashed into ``[-1, 1]`` by tanh (what a TD3/DDPG
  actor outputs and its critic takes); the action rescales them linearly to the bounds
  (:func:`rescale_to_bounds`). A deterministic policy has nothing to sample: a "sample" is the action.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

HEADS = ("discrete", "gaussian", "squashed_gaussian", "multi_discrete", "deterministic")

GAUSSIAN_HEADS = ("gaussian", "squashed_gaussian")
"""Heads with a Gaussian's spread: a student with one has a ``log_std`` parameter per action dimension."""

DISCRETE_HEADS = ("discrete", "multi_discrete")
"""Heads whose outputs are logits and whose actions are choices: no action bounds, and a sample is already
an action (a Gaussian draw still has to be clipped or squashed)."""

__all__ = [
    "DISCRETE_HEADS",
    "GAUSSIAN_HEADS",
    "HEADS",
    "actions_from_outputs",
    "head_for_teacher",
    "rescale_to_bounds",
    "sample_actions",
    "sample_gaussian",
    "sample_logits",
    "sample_outputs",
    "split_components",
    "to_bounds",
]


def to_bounds(pre_squash: np.ndarray, low: np.ndarray, high: np.ndarray, *, squash: bool) -> np.ndarray:
    """A Gaussian mean or sample ``(batch, *action_shape)`` -> the action inside ``[low, high]``: squashed
    with tanh and scaled to the bounds (``squash``), else clipped to them."""
    if squash:
        return low + (np.tanh(pre_squash) + 1.0) * 0.5 * (high - low)
    return np.clip(pre_squash, low, high)


def head_for_teacher(kind: str, *, continuous: bool, nvec: Sequence[int] | None) -> str:
    """The head that acts as a teacher does: a Box teacher's ``kind`` names it (``gaussian``,
    ``squashed_gaussian`` for SAC/TQC, ``deterministic`` for TD3/DDPG; an action-only teacher's actions are in
    the bounds, so a clipped Gaussian mean regresses them); else one logit block per component
    (``multi_discrete``, a MultiDiscrete/MultiBinary teacher with ``nvec``) or logits (``discrete``)."""
    if continuous:
        return "gaussian" if kind == "actions" else kind
    return "multi_discrete" if nvec else "discrete"


def rescale_to_bounds(scaled: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Actions scaled to ``[-1, 1]`` ``(batch, *action_shape)`` -> the action in ``[low, high]``, as SB3's
    ``unscale_action`` (clipped first: a float32 tanh can round to a hair past 1)."""
    return low + (np.clip(scaled, -1.0, 1.0) + 1.0) * 0.5 * (high - low)


def sample_logits(logits: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """One action per row of ``logits`` ``(batch, n_actions)``, drawn from their softmax by inverse CDF
    (one uniform per row, so a seeded ``rng`` gives the same actions whatever the logits' scale)."""
    rng = rng or np.random.default_rng()
    z = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    u = rng.random((p.shape[0], 1))
    # clip: rounding can leave the last cumulative probability a hair below u
    return (p.cumsum(axis=-1) < u).sum(axis=-1).clip(max=p.shape[-1] - 1)


def sample_gaussian(
    mean: np.ndarray,
    log_std: np.ndarray | None,
    rng: np.random.Generator,
    *,
    noise_dtype: type[np.floating] = np.float64,
) -> np.ndarray:
    """``mean + exp(log_std) * N(0, 1)`` (``log_std`` None: unit std), still to be clipped or squashed
    by :func:`to_bounds`.

    ``noise_dtype`` is the dtype of the standard normal draw: a loaded teacher draws float32 noise, a
    student float64 (the generator's streams differ), kept apart so seeded recordings and evaluations
    reproduce the ones made before the two shared this function.
    """
    std = np.exp(log_std) if log_std is not None else np.ones(mean.shape[-1], dtype=np.float32)
    return mean + std * rng.standard_normal(mean.shape, dtype=noise_dtype)


def split_components(out: np.ndarray, nvec: Sequence[int]) -> list[np.ndarray]:
    """Outputs ``(batch, sum(nvec))`` -> one ``(batch, nvec[i])`` block of logits per component."""
    if out.shape[-1] != sum(nvec):
        raise ValueError(
            f"outputs have {out.shape[-1]} columns, not sum(nvec) = {sum(nvec)} for nvec {list(nvec)}"
        )
    return np.split(out, np.cumsum(nvec)[:-1], axis=-1)


def actions_from_outputs(
    out: np.ndarray,
    head: str,
    bounds: Sequence[Sequence[float]] | None = None,
    *,
    nvec: Sequence[int] | None = None,
) -> np.ndarray:
    """Deterministic actions from outputs ``(batch, n_outputs)``: argmax for a ``discrete`` head, one argmax
    per component for ``multi_discrete`` (``(batch, len(nvec))``); for a Gaussian head the mean clipped into
    ``bounds = [low, high]`` (``gaussian``) or squashed into them with tanh (``squashed_gaussian``), or the
    ``[-1, 1]``-scaled action rescaled to them (``deterministic``), as
    ``Student.predict`` does; no bounds: ``[-1, 1]``."""
    if head == "discrete":
        return out.argmax(axis=-1)
    if head == "multi_discrete":
        if nvec is None:
            raise ValueError("a multi_discrete head needs nvec")
        return np.stack([c.argmax(axis=-1) for c in split_components(out, nvec)], axis=-1)
    low, high = (np.asarray(b, dtype=np.float32) for b in bounds) if bounds else (-1.0, 1.0)
    if head == "deterministic":
        return rescale_to_bounds(out, low, high).astype(np.float32)  # type: ignore[arg-type]
    return to_bounds(out, low, high, squash=head == "squashed_gaussian").astype(np.float32)  # type: ignore[arg-type]


def sample_outputs(
    out: np.ndarray,
    head: str,
    log_std: np.ndarray | None,
    rng: np.random.Generator,
    *,
    nvec: Sequence[int] | None = None,
) -> np.ndarray:
    """One sample per row: a discrete action from ``softmax(out)`` (one per component for a
    ``multi_discrete`` head: already actions), or a Gaussian draw (float32, still to be clipped or squashed
    by :func:`actions_from_outputs`); a deterministic head's outputs unchanged."""
    if head == "discrete":
        return sample_logits(out, rng)
    if head == "deterministic":
        return out
    if head == "multi_discrete":
        if nvec is None:
            raise ValueError("a multi_discrete head needs nvec")
        return np.stack([sample_logits(c, rng) for c in split_components(out, nvec)], axis=-1)
    return sample_gaussian(out, log_std, rng).astype(np.float32)


def sample_actions(
    out: np.ndarray,
    head: str,
    log_std: np.ndarray | None,
    rng: np.random.Generator,
    bounds: Sequence[Sequence[float]] | None = None,
    *,
    nvec: Sequence[int] | None = None,
) -> np.ndarray:
    """Sampled actions: :func:`sample_outputs`, then (a Gaussian or deterministic head) into the bounds by
    :func:`actions_from_outputs`; a discrete head's draws are already actions."""
    drawn = sample_outputs(out, head, log_std, rng, nvec=nvec)
    return drawn if head in DISCRETE_HEADS else actions_from_outputs(drawn, head, bounds)
