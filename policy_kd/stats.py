"""Statistics for comparing policies: pure functions of return arrays, bootstrap CIs from SciPy.

Every interval here is a two-sided bootstrap interval from :func:`scipy.stats.bootstrap` (nothing is
hand-rolled), seeded so the same returns always give the same interval. The default method is the
percentile bootstrap, the one rliable uses; a sample whose values are all equal gets the degenerate
interval ``(c, c)`` (SciPy would warn and return NaN there).

Paired comparisons (the difference and the ratio of student and teacher returns) resample *episodes*,
keeping each seed's teacher and student returns together (``paired=True``): both played from the same
initial state, so the pairing removes the variance the two share.

Several runs (training seeds) of one configuration aggregate as Agarwal et al. (2021, *Deep RL at the Edge
of the Statistical Precipice*) recommend and their ``rliable`` library implements: the interquartile mean
(IQM) of the per-run scores, with a *stratified* bootstrap CI (runs resampled with replacement separately
for each task). ``rliable`` itself is not a dependency: its current release fails to import with recent
pandas/statsmodels (through ``arch``), and the computation is a few lines on top of
:func:`scipy.stats.bootstrap`: passing each task's runs as a separate sample makes SciPy resample each
independently, which is exactly the stratified bootstrap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import stats as sps

CONFIDENCE = 0.95
N_RESAMPLES = 5_000
SEED = 0
METHOD = "percentile"

__all__ = [
    "aggregate_runs",
    "bootstrap_ci",
    "iqm",
    "normalized_score",
    "paired_difference",
    "return_ratio",
    "summarize",
]


def iqm(x: Any, axis: int | None = None) -> Any:
    """Interquartile mean: the mean of the middle 50% (``scipy.stats.trim_mean(x, 0.25)``)."""
    return sps.trim_mean(np.asarray(x, dtype=np.float64), 0.25, axis=axis)


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def _iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return sps.trim_mean(x, 0.25, axis=axis)


STATISTICS: dict[str, Callable[..., Any]] = {"mean": _mean, "iqm": _iqm}


def bootstrap_ci(
    x: Any,
    statistic: str | Callable[..., Any] = "mean",
    *,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    method: str = METHOD,
) -> tuple[float, float]:
    """Bootstrap confidence interval of ``statistic`` (``"mean"``, ``"iqm"`` or a vectorised callable
    ``f(x, axis)``) of the 1-d sample ``x``.

    A sample of one value, or of identical values, has the degenerate interval at that value.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    fn = STATISTICS[statistic] if isinstance(statistic, str) else statistic
    if x.size == 1 or np.ptp(x) == 0.0:
        c = float(fn(x, axis=-1))
        return (c, c)
    res = sps.bootstrap(
        (x,),
        fn,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method=method,
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def summarize(x: Any, *, confidence: float = CONFIDENCE, seed: int = SEED) -> dict[str, Any]:
    """Mean, std (population, ``ddof=0``), median, IQM, and bootstrap CIs of the mean and the IQM."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    return {
        "n": int(x.size),
        "mean": float(np.mean(x)),
        "std": float(np.std(x)),
        "median": float(np.median(x)),
        "iqm": float(iqm(x)),
        "mean_ci": list(bootstrap_ci(x, "mean", confidence=confidence, seed=seed)),
        "iqm_ci": list(bootstrap_ci(x, "iqm", confidence=confidence, seed=seed)),
    }


def _check_paired(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(
            f"paired samples need the same non-zero length (one value per seed), got {a.size} and {b.size}"
        )
    return a, b


def paired_difference(
    student: Any, teacher: Any, *, confidence: float = CONFIDENCE, seed: int = SEED
) -> dict[str, Any]:
    """Mean of ``student - teacher`` over episodes played from the same seeds, with its bootstrap CI.

    A CI that excludes 0 says the student's return differs from the teacher's on these seeds.
    """
    s, t = _check_paired(student, teacher)
    d = s - t
    return {
        "mean": float(d.mean()),
        "ci": list(bootstrap_ci(d, "mean", confidence=confidence, seed=seed)),
        "wins": int((d > 0).sum()),
        "ties": int((d == 0).sum()),
        "losses": int((d < 0).sum()),
    }


def return_ratio(
    student: Any, teacher: Any, *, confidence: float = CONFIDENCE, seed: int = SEED
) -> dict[str, Any] | None:
    """``mean(student) / mean(teacher)`` with a paired bootstrap CI; ``None`` when the teacher's mean is 0.

    Meaningful for positive returns (CartPole, a solved LunarLander); with negative teacher returns a
    ratio above 1 means *worse*: read :func:`normalized_score` (or the paired difference) instead.
    """
    s, t = _check_paired(student, teacher)
    if t.mean() == 0.0:
        return None

    def ratio(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        mb = np.mean(b, axis=axis)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.mean(a, axis=axis) / mb

    return _paired_estimate((s, t), ratio, confidence, seed)


def _paired_estimate(
    samples: tuple[np.ndarray, ...], statistic: Callable[..., Any], confidence: float, seed: int
) -> dict[str, Any]:
    """``{"value", "ci"}``: ``statistic`` of same-seed samples with its paired bootstrap CI (episodes resampled
    with all their returns together); the degenerate interval for one episode or constant samples."""
    value = float(statistic(*samples))
    if samples[0].size == 1 or all(np.ptp(x) == 0.0 for x in samples):
        return {"value": value, "ci": [value, value]}
    res = sps.bootstrap(
        samples,
        statistic,
        paired=True,
        confidence_level=confidence,
        n_resamples=N_RESAMPLES,
        method=METHOD,
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    ci = res.confidence_interval
    return {"value": value, "ci": [float(ci.low), float(ci.high)]}


def normalized_score(
    student: Any,
    teacher: Any,
    random: Any,
    *,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> dict[str, Any]:
    """The Atari literature's normalized score ``(mean(student) - mean(random)) / (mean(teacher) - mean(random))``
    with a paired bootstrap CI (episode ``i`` of all three policies from the same seed, resampled together).

    0 is random play, 1 the teacher, above 1 better than the teacher, whatever the sign of the returns
    (unlike :func:`return_ratio`): it is unchanged by any increasing affine map of the returns.

    The score is only defined when the teacher is better than random on these seeds: when the paired CI
    of ``teacher - random`` reaches 0 (the denominator's sign is uncertain, so the ratio's CI is unbounded),
    ``value`` and ``ci`` are ``None`` and ``note`` says why, instead of a huge or sign-flipped number.
    """
    s, t = _check_paired(student, teacher)
    _, r = _check_paired(student, random)
    gap = paired_difference(t, r, confidence=confidence, seed=seed)
    if not gap["ci"][0] > 0.0:
        return {
            "value": None,
            "ci": None,
            "note": (
                f"undefined: the teacher does not beat the random policy on these seeds (teacher - random = "
                f"{gap['mean']:+.3g}, {int(confidence * 100)}% CI [{gap['ci'][0]:.3g}, {gap['ci'][1]:.3g}])"
            ),
        }

    def score(a: np.ndarray, b: np.ndarray, c: np.ndarray, axis: int = -1) -> np.ndarray:
        mc = np.mean(c, axis=axis)
        with np.errstate(divide="ignore", invalid="ignore"):
            return (np.mean(a, axis=axis) - mc) / (np.mean(b, axis=axis) - mc)

    return _paired_estimate((s, t, r), score, confidence, seed)


def aggregate_runs(
    scores: Any,
    *,
    statistic: str = "iqm",
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> dict[str, Any]:
    """Aggregate per-run scores as rliable does: ``statistic`` (IQM by default) over all runs × tasks, with a
    stratified bootstrap CI.

    :param scores: ``(n_runs,)`` for one task or ``(n_runs, n_tasks)``; a run's score is typically its mean
        return over evaluation episodes (or that divided by the teacher's: the return ratio).
    :return: ``{"value", "ci", "n_runs", "n_tasks", "statistic"}``. Runs are resampled with replacement
        within each task (each task's column is a separate bootstrap sample), the statistic taken over the
        pooled resample; this is ``rliable.library.get_interval_estimates`` with its default percentile
        interval.
    """
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"scores must be (n_runs,) or (n_runs, n_tasks), got shape {np.shape(scores)}")
    fn = STATISTICS[statistic]
    value = float(fn(x.reshape(-1), axis=-1))
    out = {"statistic": statistic, "value": value, "n_runs": int(x.shape[0]), "n_tasks": int(x.shape[1])}
    if x.shape[0] == 1 or np.ptp(x) == 0.0:
        return {**out, "ci": [value, value]}

    def pooled(*cols: np.ndarray, axis: int = -1) -> np.ndarray:
        return fn(np.concatenate(cols, axis=axis), axis=axis)

    res = sps.bootstrap(
        tuple(x[:, j] for j in range(x.shape[1])),
        pooled,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method=METHOD,
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    ci = res.confidence_interval
    return {**out, "ci": [float(ci.low), float(ci.high)]}
