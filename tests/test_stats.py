"""policy_kd.stats against values known by hand or by construction."""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from policy_kd import stats


def test_iqm_of_a_known_list() -> None:
    # 8 values: the middle 50% are 3, 4, 5, 6
    assert stats.iqm([1, 2, 3, 4, 5, 6, 7, 8]) == pytest.approx(4.5)
    # outliers in the outer quartiles do not move it
    assert stats.iqm([-1000, 2, 3, 4, 5, 6, 7, 1e6]) == pytest.approx(4.5)


def test_ci_on_a_constant_sample_is_degenerate_at_the_constant() -> None:
    s = stats.summarize(np.full(50, 500.0))
    assert s["mean_ci"] == [500.0, 500.0] and s["iqm_ci"] == [500.0, 500.0]
    assert s["std"] == 0.0 and s["median"] == 500.0 and s["iqm"] == 500.0
    assert stats.bootstrap_ci([7.0]) == (7.0, 7.0)


def test_summary_values_and_ci_covers_the_mean() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    s = stats.summarize(x)
    assert s["mean"] == 4.0 and s["median"] == 3.0 and s["std"] == pytest.approx(np.std(x))
    lo, hi = s["mean_ci"]
    assert lo < 4.0 < hi and lo >= 1.0 and hi <= 10.0


def test_bootstrap_ci_matches_normal_theory_and_is_seeded() -> None:
    x = np.random.default_rng(0).normal(10.0, 2.0, 400)
    lo, hi = stats.bootstrap_ci(x)
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    assert lo == pytest.approx(x.mean() - half, abs=0.05) and hi == pytest.approx(x.mean() + half, abs=0.05)
    assert stats.bootstrap_ci(x) == (lo, hi)  # same seed, same interval


def test_paired_difference_removes_shared_variance() -> None:
    rng = np.random.default_rng(1)
    teacher = rng.normal(100.0, 30.0, 100)  # episodes vary a lot from seed to seed...
    student = teacher - 2.0 + rng.normal(0.0, 0.1, 100)  # ...but the student is 2 below on each
    d = stats.paired_difference(student, teacher)
    assert d["mean"] == pytest.approx(-2.0, abs=0.05)
    assert d["ci"][1] < 0 and d["ci"][1] - d["ci"][0] < 0.1  # paired: a tight interval excluding 0
    assert d["losses"] == 100 and d["wins"] == d["ties"] == 0
    with pytest.raises(ValueError, match="same non-zero length"):
        stats.paired_difference([1.0, 2.0], [1.0])


def test_return_ratio() -> None:
    t = np.array([100.0, 200.0, 300.0, 400.0])
    r = stats.return_ratio(t * 0.5, t)
    assert r is not None and r["value"] == pytest.approx(0.5) and r["ci"] == pytest.approx([0.5, 0.5])
    assert stats.return_ratio(np.full(3, 500.0), np.full(3, 500.0)) == {"value": 1.0, "ci": [1.0, 1.0]}
    assert stats.return_ratio([1.0, 2.0], [0.0, 0.0]) is None


def test_aggregate_runs_iqm_and_stratified_ci() -> None:
    a = stats.aggregate_runs([1, 2, 3, 4, 5, 6, 7, 8])
    assert a["value"] == pytest.approx(4.5) and a["n_runs"] == 8 and a["n_tasks"] == 1
    assert a["ci"][0] < 4.5 < a["ci"][1]
    # two tasks, runs resampled within each: the pooled IQM of identical runs has a degenerate CI
    same = stats.aggregate_runs(np.tile([[1.0, 3.0]], (5, 1)))
    assert same["value"] == pytest.approx(2.0) and same["n_tasks"] == 2
    one = stats.aggregate_runs([[0.9, 1.1]])
    assert one["ci"] == [one["value"], one["value"]]
    with pytest.raises(ValueError, match="n_runs"):
        stats.aggregate_runs(np.zeros((2, 2, 2)))


# ------------------------------------------------------------------------------ normalized score

SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def _episodes(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(student, teacher, random) returns on the same seeds, the teacher better than random on every seed."""
    n = draw(st.integers(2, 25))
    floats = lambda lo, hi: st.floats(lo, hi, allow_nan=False, allow_infinity=False)  # noqa: E731
    r = draw(hnp.arrays(np.float64, n, elements=floats(-1000, 1000)))
    t = r + draw(hnp.arrays(np.float64, n, elements=floats(1, 200)))
    s = draw(hnp.arrays(np.float64, n, elements=floats(-2000, 2000)))
    return s, t, r


@SETTINGS
@given(_episodes(), st.floats(0.01, 100), st.floats(-1e4, 1e4))
def test_normalized_score_ignores_the_scale_and_sign_of_returns(
    ep: tuple[np.ndarray, np.ndarray, np.ndarray], a: float, b: float
) -> None:
    s, t, r = ep
    ns = stats.normalized_score(s, t, r)
    assert ns["value"] == pytest.approx((s.mean() - r.mean()) / (t.mean() - r.mean()))
    # the same episodes in other units, or shifted until every return is negative: the same score and CI
    moved = stats.normalized_score(a * s + b, a * t + b, a * r + b)
    assert moved["value"] == pytest.approx(ns["value"], rel=1e-6, abs=1e-9)
    assert moved["ci"] == pytest.approx(ns["ci"], rel=1e-6, abs=1e-9)


@SETTINGS
@given(_episodes())
def test_normalized_score_sign_identity_and_ci(ep: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    s, t, r = ep
    ns = stats.normalized_score(s, t, r)
    lo, hi = ns["ci"]
    assert lo <= ns["value"] <= hi
    assert (ns["value"] > 1) == (s.mean() > t.mean()) or s.mean() == pytest.approx(t.mean())
    assert (ns["value"] < 0) == (s.mean() < r.mean()) or s.mean() == pytest.approx(r.mean())
    assert stats.normalized_score(t, t, r) == {"value": 1.0, "ci": [1.0, 1.0]}  # student == teacher
    same_as_random = stats.normalized_score(r, t, r)
    assert same_as_random["value"] == 0.0 and same_as_random["ci"] == [0.0, 0.0]


def test_normalized_score_reads_right_where_the_ratio_reads_backwards() -> None:
    # Pendulum-like: every return negative, the student ~6 better than the teacher on each seed
    rng = np.random.default_rng(0)
    teacher = rng.normal(-170.0, 40.0, 50)
    student = teacher + 6.0 + rng.normal(0.0, 3.0, 50)
    random = rng.normal(-1200.0, 250.0, 50)
    assert stats.return_ratio(student, teacher)["value"] < 1  # "worse" by the ratio
    ns = stats.normalized_score(student, teacher, random)
    assert ns["value"] > 1 and ns["ci"][0] > 1  # better by the normalized score, CI on the right side
    worse = stats.normalized_score(teacher - 6.0, teacher, random)
    assert worse["value"] < 1 and worse["ci"][1] < 1


def test_normalized_score_is_undefined_when_the_teacher_does_not_beat_random() -> None:
    rng = np.random.default_rng(1)
    random = rng.normal(-500.0, 50.0, 30)
    for teacher in (random + rng.normal(0.0, 50.0, 30), random - 20.0, random.copy()):
        ns = stats.normalized_score(teacher + 10.0, teacher, random)
        assert ns["value"] is None and ns["ci"] is None and "does not beat the random policy" in ns["note"]
    with pytest.raises(ValueError, match="same non-zero length"):
        stats.normalized_score([1.0, 2.0], [3.0, 4.0], [0.0])
