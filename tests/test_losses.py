"""Property tests for ``policy_kd.losses``.

The losses compute in float32 whatever the input dtype, so comparisons against float64 references use
tolerances sized to float32 rounding of the (possibly very large) ``teacher / tau`` logits; every
tolerance is still orders of magnitude below the error a structurally wrong loss would make.
"""

from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings

from policy_kd import losses as L

torch.set_num_threads(1)

SETTINGS = settings(max_examples=50, deadline=None)

NAMES = ("kl", "nll", "mse", "hinton")
TAUS = (0.01, 0.05, 0.1, 1.0, 3.0)
F32_EPS = float(np.finfo(np.float32).eps)


# --------------------------------------------------------------------------------------------------
# strategies and helpers
# --------------------------------------------------------------------------------------------------


def _floats(bound: float) -> st.SearchStrategy[float]:
    return st.floats(-bound, bound, allow_nan=False, allow_infinity=False, allow_subnormal=False)


@st.composite
def shapes(draw) -> tuple[int, int]:
    return draw(st.integers(1, 16)), draw(st.integers(2, 6))


@st.composite
def pairs(draw, s_bound: float = 50.0, t_bound: float = 500.0, shape=None):
    """(student, teacher) float64 numpy arrays of one small (batch, n_actions) shape."""
    shape = shape or draw(shapes())
    s = draw(hnp.arrays(np.float64, shape, elements=_floats(s_bound)))
    t = draw(hnp.arrays(np.float64, shape, elements=_floats(t_bound)))
    return s, t


def _t(x: np.ndarray, dtype=torch.float64) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def _log_softmax_np(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    z = x - x.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def kl_ref(s: np.ndarray, t: np.ndarray, tau: float) -> float:
    """KL(softmax(t / tau) || softmax(s)), batch mean, float64 numpy."""
    log_p = _log_softmax_np(np.asarray(t, np.float64) / tau)
    log_q = _log_softmax_np(s)
    p = np.exp(log_p)
    return float((p * (log_p - log_q)).sum(axis=-1).mean())


def nll_ref(s: np.ndarray, t: np.ndarray) -> float:
    log_q = _log_softmax_np(s)
    a = np.argmax(t, axis=-1)
    return float(-log_q[np.arange(len(a)), a].mean())


def kl_tol(s: np.ndarray, t: np.ndarray, tau: float) -> float:
    """Float32 rounding budget for kl: the logits t / tau carry absolute error ~eps * |t| / tau, which
    moves the loss by at most that times (1 + spread of the log-ratio)."""
    logit_err = 4 * F32_EPS * (1.0 + np.abs(t).max() / tau)
    spread = 1.0 + np.ptp(s, axis=-1).max() + np.abs(s).max() * F32_EPS
    return 1e-5 + logit_err * (1.0 + spread) + 1e-5 * (np.abs(s).max() + 1.0)


def loss_fn(name: str):
    return {"kl": L.kl, "nll": L.nll, "mse": L.mse, "hinton": L.hinton}[name]


# --------------------------------------------------------------------------------------------------
# zero at the teacher, non-negativity
# --------------------------------------------------------------------------------------------------


@SETTINGS
@given(
    data=pairs(),
    tau=st.sampled_from((None, *TAUS)),
    shift=hnp.arrays(np.float64, st.integers(1, 16), elements=_floats(1000.0)),
)
def test_kl_zero_when_student_is_teacher_over_tau(data, tau, shift):
    _, t = data
    b = t.shape[0]
    shift = np.resize(shift, b)[:, None]
    eff_tau = 0.01 if tau is None else tau
    s = t / eff_tau + shift  # softmax(s) == softmax(t / tau): any per-row shift leaves it unchanged
    st_, tt = _t(s), _t(t)
    value = L.kl(st_, tt) if tau is None else L.kl(st_, tt, tau=tau)
    assert value.dim() == 0
    # The only error is float32 rounding of logits up to ~1e5, which enters KL at second order.
    assert abs(value.item()) < 1e-3, value.item()


@SETTINGS
@given(data=pairs(s_bound=500.0), temperature=st.sampled_from((0.5, 1.0, 2.0, 7.0)))
def test_hinton_lam1_zero_when_student_equals_teacher(data, temperature):
    _, t = data
    value = L.hinton(_t(t), _t(t), temperature=temperature, lam=1.0)
    assert abs(value.item()) < 1e-5


@SETTINGS
@given(data=pairs(t_bound=1e4), dtype=st.sampled_from((torch.float32, torch.float64)))
def test_mse_zero_when_equal(data, dtype):
    _, t = data
    assert L.mse(_t(t, dtype), _t(t, dtype)).item() == 0.0


@SETTINGS
@given(data=pairs(s_bound=1000.0), tau=st.sampled_from(TAUS))
def test_kl_nonnegative(data, tau):
    s, t = data
    assert L.kl(_t(s), _t(t), tau=tau).item() >= -kl_tol(s, t, tau)


@SETTINGS
@given(data=pairs(s_bound=1000.0, t_bound=1000.0))
def test_mse_nonnegative(data):
    s, t = data
    assert L.mse(_t(s), _t(t)).item() >= 0.0


@SETTINGS
@given(data=pairs(s_bound=500.0), temperature=st.sampled_from((0.5, 1.0, 2.0, 7.0)))
def test_hinton_lam1_nonnegative(data, temperature):
    s, t = data
    value = L.hinton(_t(s), _t(t), temperature=temperature, lam=1.0).item()
    assert value >= -(temperature**2) * kl_tol(s / temperature, t, temperature)


# --------------------------------------------------------------------------------------------------
# invariances
# --------------------------------------------------------------------------------------------------


@SETTINGS
@given(
    data=pairs(s_bound=20.0),
    tau=st.sampled_from(TAUS),
    shift=hnp.arrays(np.float64, 16, elements=_floats(500.0)),
)
def test_kl_invariant_to_per_row_teacher_shift(data, tau, shift):
    s, t = data
    c = shift[: t.shape[0], None]
    base = L.kl(_t(s), _t(t), tau=tau).item()
    moved = L.kl(_t(s), _t(t + c), tau=tau).item()
    assert moved == pytest.approx(base, abs=2 * kl_tol(s, np.abs(t) + np.abs(c), tau), rel=1e-4)


@SETTINGS
@given(
    data=pairs(s_bound=50.0),
    tau=st.sampled_from(TAUS),
    shift=hnp.arrays(np.float64, 16, elements=_floats(1000.0)),
)
def test_kl_invariant_to_per_row_student_shift(data, tau, shift):
    s, t = data
    c = shift[: s.shape[0], None]
    base = L.kl(_t(s), _t(t), tau=tau).item()
    moved = L.kl(_t(s + c), _t(t), tau=tau).item()
    # s + c is rounded to float32 (|s + c| <= 1050), so log q moves by a few float32 ulps of 1050.
    tol = kl_tol(s, t, tau) + 8 * F32_EPS * 1100 * (1 + abs(base))
    assert moved == pytest.approx(base, abs=tol, rel=1e-4)


# --------------------------------------------------------------------------------------------------
# batch-size independence
# --------------------------------------------------------------------------------------------------


def _apply(name: str, s: torch.Tensor, t: torch.Tensor) -> float:
    return L.compute_loss(s, t, L.LossConfig(name=name)).item()


@SETTINGS
@given(data=pairs(), name=st.sampled_from(NAMES), k=st.integers(2, 5))
def test_duplicated_batch_has_same_loss(data, name, k):
    s, t = data
    one = _apply(name, _t(s), _t(t))
    many = _apply(name, _t(np.concatenate([s] * k)), _t(np.concatenate([t] * k)))
    assert many == pytest.approx(one, rel=1e-5, abs=1e-5)


@SETTINGS
@given(shape=shapes(), name=st.sampled_from(NAMES), data=st.data())
def test_concatenated_batches_average(shape, name, data):
    s1, t1 = data.draw(pairs(shape=shape))
    s2, t2 = data.draw(pairs(shape=shape))
    a = _apply(name, _t(s1), _t(t1))
    b = _apply(name, _t(s2), _t(t2))
    both = _apply(name, _t(np.concatenate([s1, s2])), _t(np.concatenate([t1, t2])))
    assert both == pytest.approx((a + b) / 2, rel=1e-5, abs=1e-5)


# --------------------------------------------------------------------------------------------------
# limits and references
# --------------------------------------------------------------------------------------------------


@SETTINGS
@given(data=pairs(s_bound=20.0), margin=st.floats(0.01, 50.0), col=st.integers(0, 5))
def test_kl_tends_to_nll_as_tau_goes_to_zero(data, margin, col):
    s, t = data
    t = t.copy()
    rows = np.arange(t.shape[0])
    a = min(col, t.shape[1] - 1)
    # Make column `a` the unique argmax of every row, ahead of the runner-up by at least `margin`.
    runner_up = np.delete(t, a, axis=1).max(axis=1)
    t[rows, a] = np.maximum(t[rows, a], runner_up + margin)
    assert np.all(t[rows, a] - runner_up >= margin * (1 - 1e-6))
    limit = L.nll(_t(s), _t(t)).item()
    assert limit == pytest.approx(nll_ref(s, t), rel=1e-5, abs=1e-5)
    near = L.kl(_t(s), _t(t), tau=1e-4).item()
    # margin / tau >= 50 in the exponent: softmax(t / tau) is one-hot to within exp(-50).
    assert near == pytest.approx(limit, rel=1e-4, abs=1e-4)


@SETTINGS
@given(data=pairs(s_bound=100.0, t_bound=100.0), temperature=st.sampled_from((0.5, 1.0, 2.0, 5.0, 10.0)))
def test_hinton_lam0_is_nll_exactly(data, temperature):
    s, t = data
    st_, tt = _t(s), _t(t)
    assert torch.equal(L.hinton(st_, tt, temperature=temperature, lam=0.0), L.nll(st_, tt))


def _soft_ref_torch(s: np.ndarray, t: np.ndarray, temperature: float) -> float:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), batch mean, straightforward float64 torch."""
    p = torch.softmax(_t(t) / temperature, dim=-1)
    q = torch.softmax(_t(s) / temperature, dim=-1)
    per_row = (p * (torch.log(p) - torch.log(q))).sum(dim=-1)
    return float(temperature**2 * per_row.mean())


@SETTINGS
@given(data=pairs(s_bound=100.0, t_bound=100.0), temperature=st.sampled_from((0.5, 1.0, 2.0, 5.0, 10.0)))
def test_hinton_lam1_matches_scaled_soft_reference(data, temperature):
    s, t = data
    ref = _soft_ref_torch(s, t, temperature)
    assert math.isfinite(ref)
    got = L.hinton(_t(s), _t(t), temperature=temperature, lam=1.0).item()
    tol = temperature**2 * kl_tol(s / temperature, t, temperature)
    assert got == pytest.approx(ref, rel=1e-4, abs=tol)


@SETTINGS
@given(
    data=pairs(s_bound=100.0, t_bound=100.0),
    temperature=st.sampled_from((0.5, 2.0, 5.0)),
    lam=st.floats(0.0, 1.0),
)
def test_hinton_is_convex_mix_of_soft_and_nll(data, temperature, lam):
    s, t = data
    ref = lam * _soft_ref_torch(s, t, temperature) + (1 - lam) * nll_ref(s, t)
    got = L.hinton(_t(s), _t(t), temperature=temperature, lam=lam).item()
    tol = temperature**2 * kl_tol(s / temperature, t, temperature) + 1e-5 * (1 + np.abs(s).max())
    assert got == pytest.approx(ref, rel=1e-4, abs=tol)


def test_hinton_defaults():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(8, 4)) * 3, rng.normal(size=(8, 4)) * 3
    ref = 0.5 * _soft_ref_torch(s, t, 2.0) + 0.5 * nll_ref(s, t)
    assert L.hinton(_t(s), _t(t)).item() == pytest.approx(ref, rel=1e-5, abs=1e-5)


@SETTINGS
@given(data=pairs(s_bound=50.0, t_bound=500.0), tau=st.sampled_from((None, *TAUS)))
def test_kl_matches_numpy_float64_reference(data, tau):
    s, t = data
    eff_tau = 0.01 if tau is None else tau
    got = (L.kl(_t(s), _t(t)) if tau is None else L.kl(_t(s), _t(t), tau=tau)).item()
    ref = kl_ref(s, t, eff_tau)
    assert got == pytest.approx(ref, rel=1e-4, abs=kl_tol(s, t, eff_tau))


def test_kl_reference_handcrafted():
    # p = softmax([0, ln 3]) = (1/4, 3/4); q uniform: KL = 1/4 ln(1/2) + 3/4 ln(3/2).
    t = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    s = torch.zeros(1, 2, dtype=torch.float64)
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert L.kl(s, t, tau=1.0).item() == pytest.approx(expected, rel=1e-6)
    # Direction check: KL(q || p) would be 1/2 ln 2 + 1/2 ln(2/3), a different number.
    assert L.kl(t, s, tau=1.0).item() == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), rel=1e-6)


@SETTINGS
@given(data=pairs(s_bound=100.0, t_bound=100.0))
def test_nll_and_mse_match_references(data):
    s, t = data
    assert L.nll(_t(s), _t(t)).item() == pytest.approx(nll_ref(s, t), rel=1e-5, abs=1e-5)
    assert L.mse(_t(s), _t(t)).item() == pytest.approx(float(((s - t) ** 2).mean()), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_compute_loss_dispatches_to_named_loss(name):
    rng = np.random.default_rng(1)
    s, t = _t(rng.normal(size=(5, 3))), _t(rng.normal(size=(5, 3)) * 10)
    direct = {
        "kl": L.kl(s, t, tau=0.01),
        "nll": L.nll(s, t),
        "mse": L.mse(s, t),
        "hinton": L.hinton(s, t, temperature=2.0, lam=0.5),
    }[name]
    assert torch.equal(L.compute_loss(s, t, L.LossConfig(name=name)), direct)
    custom = L.LossConfig(name=name, tau=0.5, temperature=3.0, lam=0.25)
    expected = {
        "kl": L.kl(s, t, tau=0.5),
        "nll": L.nll(s, t),
        "mse": L.mse(s, t),
        "hinton": L.hinton(s, t, temperature=3.0, lam=0.25),
    }[name]
    assert torch.equal(L.compute_loss(s, t, custom), expected)


# --------------------------------------------------------------------------------------------------
# extreme logits: finite values and gradients
# --------------------------------------------------------------------------------------------------

_EXTREME = st.one_of(st.sampled_from((-1e4, 1e4, 0.0)), _floats(1e4))


@SETTINGS
@given(
    shape=shapes(),
    name=st.sampled_from(NAMES),
    data=st.data(),
)
def test_extreme_logits_give_finite_loss_and_gradients(shape, name, data):
    s = data.draw(hnp.arrays(np.float32, shape, elements=_EXTREME))
    t = data.draw(hnp.arrays(np.float32, shape, elements=_EXTREME))
    student = torch.tensor(s, dtype=torch.float32, requires_grad=True)
    teacher = torch.tensor(t, dtype=torch.float32)
    for value in (L.compute_loss(student, teacher, L.LossConfig(name=name)), loss_fn(name)(student, teacher)):
        assert value.dtype == torch.float32
        assert torch.isfinite(value)
        (grad,) = torch.autograd.grad(value, student)
        assert grad.shape == student.shape
        assert torch.isfinite(grad).all()


# --------------------------------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------------------------------

BAD_SHAPES = [
    ((4, 3), (4, 2)),
    ((4, 3), (5, 3)),
    ((3,), (3,)),
    ((2, 3, 4), (2, 3, 4)),
    ((4, 3), (4, 3, 1)),
    ((), ()),
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("s_shape", "t_shape"), BAD_SHAPES)
def test_bad_shapes_raise(name, s_shape, t_shape):
    s, t = torch.zeros(s_shape), torch.zeros(t_shape)
    with pytest.raises(ValueError, match="batch, n_actions"):
        loss_fn(name)(s, t)
    with pytest.raises(ValueError):
        L.compute_loss(s, t, L.LossConfig(name=name))


@pytest.mark.parametrize("tau", [0.0, -0.0, -1e-8, -1.0])
def test_nonpositive_tau_raises(tau):
    s, t = torch.zeros(2, 3), torch.zeros(2, 3)
    with pytest.raises(ValueError, match="tau"):
        L.kl(s, t, tau=tau)
    with pytest.raises(ValueError, match="tau"):
        L.compute_loss(s, t, L.LossConfig(name="kl", tau=tau))


@pytest.mark.parametrize("temperature", [0.0, -2.0])
def test_nonpositive_temperature_raises(temperature):
    with pytest.raises(ValueError, match="temperature"):
        L.hinton(torch.zeros(2, 3), torch.zeros(2, 3), temperature=temperature)


@pytest.mark.parametrize("lam", [-0.1, 1.5])
def test_lam_out_of_range_raises(lam):
    with pytest.raises(ValueError, match="lam"):
        L.hinton(torch.zeros(2, 3), torch.zeros(2, 3), lam=lam)


@pytest.mark.parametrize("bad", ["", "KL", "cross_entropy", "kld"])
def test_unknown_loss_name_raises_and_lists_valid_names(bad):
    with pytest.raises(ValueError) as info:
        L.compute_loss(torch.zeros(2, 3), torch.zeros(2, 3), L.LossConfig(name=bad))
    message = str(info.value)
    assert repr(bad) in message
    for name in NAMES:
        assert name in message
    assert set(L.LOSSES) == {*NAMES, "kl_entropy", "gaussian_kl", "gaussian_nll"}


# --------------------------------------------------------------------------------------------------
# kl_entropy (Czarnecki et al. 2019)
# --------------------------------------------------------------------------------------------------


def _entropy_np(s: np.ndarray) -> float:
    log_q = _log_softmax_np(s)
    return float(-(np.exp(log_q) * log_q).sum(-1).mean())


@SETTINGS
@given(data=pairs(), tau=st.sampled_from(TAUS))
def test_kl_entropy_without_entropy_weight_is_kl(data, tau):
    s, t = _t(data[0]), _t(data[1])
    assert torch.equal(L.kl_entropy(s, t, tau=tau, entropy_weight=0.0), L.kl(s, t, tau=tau))


@SETTINGS
@given(data=pairs(s_bound=20.0), tau=st.sampled_from(TAUS), beta=st.floats(0.0, 1.0))
def test_kl_entropy_is_kl_minus_entropy_bonus_and_bounded(data, tau, beta):
    s, t = data
    value = L.kl_entropy(_t(s), _t(t), tau=tau, entropy_weight=beta).item()
    expected = L.kl(_t(s), _t(t), tau=tau).item() - beta * _entropy_np(s)
    assert value == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert value >= -beta * math.log(s.shape[1]) - 1e-5


def test_kl_entropy_gradient_raises_student_entropy_at_equal_kl():
    # uniform teacher at tau=1, student a bit peaked: both terms push toward uniform, the bonus adds to it
    s = torch.tensor([[2.0, 0.0, 0.0]], requires_grad=True)
    t = torch.zeros(1, 3)
    (g0,) = torch.autograd.grad(L.kl_entropy(s, t, tau=1.0, entropy_weight=0.0), s)
    (g1,) = torch.autograd.grad(L.kl_entropy(s, t, tau=1.0, entropy_weight=0.5), s)
    assert g1[0, 0] > g0[0, 0] > 0  # descending lowers the peaked logit more with the bonus


def test_kl_entropy_rejects_negative_entropy_weight():
    with pytest.raises(ValueError, match="entropy_weight"):
        L.kl_entropy(torch.zeros(2, 3), torch.zeros(2, 3), entropy_weight=-0.1)


# --------------------------------------------------------------------------------------------------
# gaussian_kl
# --------------------------------------------------------------------------------------------------


@st.composite
def gaussians(draw, bound: float = 5.0):
    batch, dim = draw(st.integers(1, 8)), draw(st.integers(1, 4))
    arr = lambda b: draw(hnp.arrays(np.float64, (batch, dim), elements=_floats(b)))  # noqa: E731
    return arr(bound), arr(2.0), arr(bound), arr(2.0)


def _gkl_ref(mu_s, ls_s, mu_t, ls_t):
    """KL(N(mu_t, e^ls_t) || N(mu_s, e^ls_s)) via torch.distributions, float64."""
    p = torch.distributions.Normal(_t(mu_t), _t(ls_t).exp())
    q = torch.distributions.Normal(_t(mu_s), _t(ls_s).exp())
    return torch.distributions.kl_divergence(p, q).sum(-1).mean().item()


@SETTINGS
@given(g=gaussians())
def test_gaussian_kl_matches_torch_distributions_both_directions(g):
    mu_s, ls_s, mu_t, ls_t = g
    fwd = L.gaussian_kl(_t(mu_s), _t(ls_s), _t(mu_t), _t(ls_t)).item()
    rev = L.gaussian_kl(_t(mu_s), _t(ls_s), _t(mu_t), _t(ls_t), direction="reverse").item()
    assert fwd == pytest.approx(_gkl_ref(mu_s, ls_s, mu_t, ls_t), rel=1e-4, abs=1e-4)
    assert rev == pytest.approx(_gkl_ref(mu_t, ls_t, mu_s, ls_s), rel=1e-4, abs=1e-4)
    assert fwd >= -1e-6 and rev >= -1e-6


@SETTINGS
@given(g=gaussians())
def test_gaussian_kl_zero_iff_equal(g):
    mu, ls, other_mu, _ = g
    assert L.gaussian_kl(_t(mu), _t(ls), _t(mu), _t(ls)).item() == 0.0
    if not np.allclose(mu, other_mu, atol=1e-2):
        assert L.gaussian_kl(_t(other_mu), _t(ls), _t(mu), _t(ls)).item() > 0


@SETTINGS
@given(g=gaussians(), shift=_floats(100.0))
def test_gaussian_kl_invariant_to_shifting_both_means(g, shift):
    mu_s, ls_s, mu_t, ls_t = g
    a = L.gaussian_kl(_t(mu_s), _t(ls_s), _t(mu_t), _t(ls_t)).item()
    b = L.gaussian_kl(_t(mu_s + shift), _t(ls_s), _t(mu_t + shift), _t(ls_t)).item()
    assert b == pytest.approx(a, rel=1e-4, abs=1e-3)  # float32 rounding of means shifted by up to 100


@SETTINGS
@given(g=gaussians(), k=st.integers(2, 4))
def test_gaussian_kl_batch_size_independent(g, k):
    tiled = [_t(np.tile(x, (k, 1))) for x in g]
    assert L.gaussian_kl(*tiled).item() == pytest.approx(L.gaussian_kl(*map(_t, g)).item(), rel=1e-6)


def test_gaussian_kl_broadcasts_state_independent_log_std():
    mu_s, mu_t = torch.zeros(4, 2), torch.ones(4, 2)
    ls = torch.tensor([0.0, math.log(2.0)])
    full = L.gaussian_kl(mu_s, ls.expand(4, 2), mu_t, ls.expand(4, 2))
    assert torch.equal(L.gaussian_kl(mu_s, ls, mu_t, ls), full)
    # hand value: per dim (mu diff)^2 / (2 sigma^2): 0.5 + 0.125
    assert full.item() == pytest.approx(0.625)


def test_gaussian_kl_extreme_inputs_finite_in_float32():
    mu_s = torch.tensor([[1e4, -1e4]], requires_grad=True)
    ls_s = torch.tensor([[-5.0, 5.0]], requires_grad=True)
    value = L.gaussian_kl(mu_s, ls_s, torch.tensor([[-1e4, 1e4]]), torch.tensor([[5.0, -5.0]]))
    assert torch.isfinite(value)
    grads = torch.autograd.grad(value, (mu_s, ls_s))
    assert all(torch.isfinite(g).all() for g in grads)


def test_gaussian_kl_via_compute_loss_and_errors():
    m, ls = torch.zeros(3, 2), torch.zeros(2)
    cfg = L.LossConfig(name="gaussian_kl", direction="reverse")
    assert L.compute_loss(m, m + 1, cfg, student_log_std=ls, teacher_log_std=ls).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="log_std"):
        L.compute_loss(m, m, cfg)
    with pytest.raises(ValueError, match="direction"):
        L.gaussian_kl(m, ls, m, ls, direction="sideways")
    with pytest.raises(ValueError, match="batch, act_dim"):
        L.gaussian_kl(m, ls, torch.zeros(3, 3), ls)


# --------------------------------------------------------------------------------------------------
# hint
# --------------------------------------------------------------------------------------------------


@SETTINGS
@given(data=pairs())
def test_hint_is_mse_zero_iff_equal_and_batch_independent(data):
    s, t = data
    assert L.hint(_t(s), _t(s)).item() == 0.0
    assert L.hint(_t(s), _t(t)).item() == pytest.approx(float(((s - t) ** 2).mean()), rel=1e-5, abs=1e-5)
    tiled = L.hint(_t(np.tile(s, (3, 1))), _t(np.tile(t, (3, 1)))).item()
    assert tiled == pytest.approx(L.hint(_t(s), _t(t)).item(), rel=1e-6, abs=1e-6)


def test_hint_rejects_unprojected_features():
    with pytest.raises(ValueError, match="project"):
        L.hint(torch.zeros(4, 8), torch.zeros(4, 64))


# --------------------------------------------------------------------------------------------------
# gaussian_kl between squashed (SAC-style) policies: the tanh change of variables cancels
# --------------------------------------------------------------------------------------------------


def _squashed(mean: torch.Tensor, log_std: torch.Tensor, low: torch.Tensor, high: torch.Tensor):
    """The policy of a SAC actor: ``a = low + (tanh(u) + 1) (high - low) / 2`` with ``u ~ N(mean, e^log_std)``,
    as a torch distribution with its own (Jacobian-corrected) log_prob, per dimension."""
    return torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.exp()),
        [
            torch.distributions.TanhTransform(),
            torch.distributions.AffineTransform(loc=(high + low) / 2, scale=(high - low) / 2),
        ],
    )


def _mc_squashed_kl(p_mean, p_ls, q_mean, q_ls, low, high, n: int, seed: int) -> tuple[float, float]:
    """Monte-Carlo KL(p || q) of two squashed policies, from actions drawn by ``p`` and scored by both
    densities in action space (each with its own tanh Jacobian): (estimate, standard error)."""
    gen = torch.Generator().manual_seed(seed)
    u = p_mean + p_ls.exp() * torch.randn((n, *p_mean.shape), generator=gen, dtype=torch.float64)
    a = low + (torch.tanh(u) + 1) * (high - low) / 2  # (n, batch, act_dim)
    # score in action space: the densities invert the squashing themselves (atanh), so the Jacobians
    # are theirs; keep draws that round to the bounds out (their atanh is infinite in float64 too)
    inside = ((a > low) & (a < high)).all(dim=(-1, -2))
    a = a[inside]
    log_ratio = _squashed(p_mean, p_ls, low, high).log_prob(a) - _squashed(q_mean, q_ls, low, high).log_prob(
        a
    )
    per_draw = log_ratio.sum(-1).mean(-1)  # summed over action dims, mean over the batch of states
    return per_draw.mean().item(), (per_draw.std() / math.sqrt(len(per_draw))).item()


def test_gaussian_kl_of_squashed_policies_equals_monte_carlo_both_directions():
    # two states, two action dims with different bounds (Pendulum-like [-2, 2] and [0, 1]); means kept
    # where tanh is not saturated, so atanh in the MC densities is accurate
    f64 = dict(dtype=torch.float64)
    low, high = torch.tensor([-2.0, 0.0], **f64), torch.tensor([2.0, 1.0], **f64)
    t_mean = torch.tensor([[0.3, -0.5], [-0.8, 0.2]], **f64)
    t_ls = torch.tensor([[-0.5, -1.0], [-0.7, -0.3]], **f64)
    s_mean = torch.tensor([[-0.4, 0.4], [0.1, -0.6]], **f64)
    s_ls = torch.tensor([[-1.2, -0.4], [-0.2, -1.0]], **f64)
    forward = L.gaussian_kl(s_mean, s_ls, t_mean, t_ls).item()  # KL(teacher || student)
    reverse = L.gaussian_kl(s_mean, s_ls, t_mean, t_ls, direction="reverse").item()
    mc_fwd, se_fwd = _mc_squashed_kl(t_mean, t_ls, s_mean, s_ls, low, high, n=400_000, seed=0)
    mc_rev, se_rev = _mc_squashed_kl(s_mean, s_ls, t_mean, t_ls, low, high, n=400_000, seed=1)
    print(f"squashed KL forward {forward:.4f} analytic vs {mc_fwd:.4f} MC (se {se_fwd:.4f}); "
          f"reverse {reverse:.4f} vs {mc_rev:.4f} (se {se_rev:.4f})")  # fmt: skip
    assert abs(forward - mc_fwd) < 4 * se_fwd + 1e-3
    assert abs(reverse - mc_rev) < 4 * se_rev + 1e-3
    assert abs(forward - reverse) > 20 * (se_fwd + se_rev)  # the two directions really differ here
    # a "corrected" KL that subtracted the tanh log-Jacobian of one side would miss by far more than the noise
    u = t_mean  # e.g. the teacher's log-Jacobian at its mean, per state, summed over dims
    jac = torch.log(1 - torch.tanh(u) ** 2).sum(-1).mean().item()
    assert abs(forward - jac - mc_fwd) > 10 * se_fwd


# --------------------------------------------------------------------------------------------------
# gaussian_nll
# --------------------------------------------------------------------------------------------------


@SETTINGS
@given(g=gaussians())
def test_gaussian_nll_matches_torch_normal_log_prob(g):
    mu_s, ls_s, mu_t, _ = g
    ref = -torch.distributions.Normal(_t(mu_s), _t(ls_s).exp()).log_prob(_t(mu_t)).sum(-1).mean().item()
    got = L.gaussian_nll(_t(mu_s), _t(ls_s), _t(mu_t)).item()
    assert got == pytest.approx(ref, rel=1e-4, abs=1e-3)


@SETTINGS
@given(g=gaussians(), k=st.integers(2, 4))
def test_gaussian_nll_minimised_at_the_teacher_mean_and_batch_independent(g, k):
    _, ls_s, mu_t, _ = g
    mean = _t(mu_t).clone().requires_grad_(True)
    value = L.gaussian_nll(mean, _t(ls_s), _t(mu_t))
    (grad,) = torch.autograd.grad(value, mean)
    assert torch.all(grad == 0)  # stationary at m = t, whatever the std
    moved = L.gaussian_nll(_t(mu_t + 0.5), _t(ls_s), _t(mu_t))
    assert moved.item() > value.item()
    tiled = L.gaussian_nll(
        _t(np.tile(mu_t + 0.5, (k, 1))), _t(np.tile(ls_s, (k, 1))), _t(np.tile(mu_t, (k, 1)))
    )
    assert tiled.item() == pytest.approx(moved.item(), rel=1e-6)


def test_gaussian_nll_via_compute_loss_and_errors():
    m, ls = torch.zeros(3, 2), torch.zeros(2)
    cfg = L.LossConfig(name="gaussian_nll")
    # per dim: 0.5 * 1 + 0.5 * log(2 pi), two dims
    assert L.compute_loss(m, m + 1, cfg, student_log_std=ls).item() == pytest.approx(
        1 + math.log(2 * math.pi)
    )
    with pytest.raises(ValueError, match="student_log_std"):
        L.compute_loss(m, m, cfg)
    with pytest.raises(ValueError, match="batch, act_dim"):
        L.gaussian_nll(m, ls, torch.zeros(3, 3))


# --------------------------------------------------------------------------------------------------
# critic_guidance
# --------------------------------------------------------------------------------------------------


@SETTINGS
@given(q=hnp.arrays(np.float64, st.integers(1, 16), elements=_floats(1e3)), scale=st.floats(0.01, 100.0))
def test_critic_guidance_zero_when_equal_and_scale_invariant(q, scale):
    q_t = _t(q)
    assert L.critic_guidance(q_t, q_t).item() == 0.0
    assume(np.abs(q).mean() * min(scale, 1.0) > 1e-3)  # above the all-zero-critic floor of the scale
    q_s = q_t - 1.0
    a = L.critic_guidance(q_s, q_t).item()
    assert L.critic_guidance(q_s * scale, q_t * scale).item() == pytest.approx(a, rel=1e-4)
    tiled = L.critic_guidance(_t(np.tile(q - 1.0, 3)), _t(np.tile(q, 3))).item()
    assert tiled == pytest.approx(a, rel=1e-5)


def test_critic_guidance_raises_the_students_q():
    q_t = torch.tensor([-100.0, -50.0, -150.0])
    q_s = torch.tensor([-120.0, -60.0, -150.0], requires_grad=True)
    value = L.critic_guidance(q_s, q_t)
    assert value.item() == pytest.approx(30 / 3 / 100)  # mean shortfall / mean |Q_teacher|
    (grad,) = torch.autograd.grad(value, q_s)
    assert torch.all(grad < 0)  # descending the loss raises Q at the student's action
    # the teacher's Q is a fixed reference: no gradient flows to it
    q_t2 = q_t.clone().requires_grad_(True)
    assert not L.critic_guidance(q_s.detach(), q_t2).requires_grad
    with pytest.raises(ValueError, match=r"\(batch,\)"):
        L.critic_guidance(torch.zeros(3, 1), torch.zeros(3, 1))
    assert torch.isfinite(L.critic_guidance(torch.zeros(4), torch.zeros(4)))  # an untrained critic's 0s
