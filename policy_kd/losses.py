"""Distillation losses: pure functions of tensors, each averaged over the batch.

The discrete losses take ``student`` and ``teacher`` tensors of shape ``(batch, n_actions)``: the
student's raw outputs (logits, or Q-values for ``mse``) and the teacher's recorded outputs (Q-values for
DQN, action logits for PPO/A2C). ``gaussian_kl`` compares diagonal Gaussians (continuous-action PPO/A2C
teachers) and ``hint`` compares intermediate features. Losses are means over the batch on purpose, so
their size and their gradients do not grow with the batch size (CleanRL's QDagger sums instead). Nothing
here knows about buffers, networks or SB3.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from policy_kd.errors import PolicyKDError

__all__ = [
    "ACTION_LOSSES",
    "CONTINUOUS_LOSSES",
    "DETERMINISTIC_LOSSES",
    "DISCRETE_LOSSES",
    "LOSSES",
    "LossConfig",
    "check_loss_for_kind",
    "compute_loss",
    "critic_guidance",
    "gaussian_kl",
    "gaussian_nll",
    "hint",
    "hinton",
    "kl",
    "kl_entropy",
    "mse",
    "nll",
    "per_component",
]


def _check(student: Tensor, teacher: Tensor) -> None:
    if student.shape != teacher.shape or student.dim() != 2 or student.shape[0] == 0:
        raise ValueError(
            f"student and teacher outputs must both be (batch, n_actions) with batch > 0; got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )


def kl(student: Tensor, teacher: Tensor, *, tau: float = 0.01) -> Tensor:
    """KL(softmax(teacher / tau) || softmax(student)), batch mean (Rusu et al., 2016).

    A low ``tau`` sharpens the teacher's Q-values into a near one-hot target that still ranks the
    actions; the student's outputs are used unsoftened, as in the paper. Invariant to adding a
    constant to all of a state's teacher outputs (softmax is), and tends to ``nll`` as tau -> 0.
    """
    _check(student, teacher)
    if not tau > 0:  # also rejects NaN
        raise ValueError(f"tau must be > 0, got {tau}")
    log_p = F.log_softmax(teacher.float() / tau, dim=-1)
    log_q = F.log_softmax(student.float(), dim=-1)
    # log_target keeps the target in log space: exp(log_p) * (log_p - log_q) is finite even where
    # p underflows to 0 at tau = 0.01 and Q-values in the hundreds.
    return F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")


def nll(student: Tensor, teacher: Tensor) -> Tensor:
    """Negative log-likelihood of the teacher's greedy action under softmax(student), batch mean."""
    _check(student, teacher)
    return F.cross_entropy(student.float(), teacher.argmax(dim=-1))


def mse(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean squared error between student outputs and teacher Q-values/logits, mean over all entries."""
    _check(student, teacher)
    return F.mse_loss(student.float(), teacher.float())


def hinton(student: Tensor, teacher: Tensor, *, temperature: float = 2.0, lam: float = 0.5) -> Tensor:
    """Hinton et al. (2015): ``lam * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - lam) * nll``.

    Both sides are softened at ``T``; the ``T^2`` factor keeps the soft term's gradients the same size
    as the hard term's when ``T`` changes.
    """
    _check(student, teacher)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must lie in [0, 1], got {lam}")
    log_p = F.log_softmax(teacher.float() / temperature, dim=-1)
    log_q = F.log_softmax(student.float() / temperature, dim=-1)
    soft = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean") * temperature**2
    return lam * soft + (1.0 - lam) * nll(student, teacher)


def kl_entropy(
    student: Tensor, teacher: Tensor, *, tau: float = 0.01, entropy_weight: float = 0.01
) -> Tensor:
    """Entropy-regularised distillation: ``kl(student, teacher, tau) - entropy_weight * H(softmax(student))``.

    Czarnecki et al. (2019) show that plain cross-entropy to a near-deterministic teacher drives the
    student to a collapsed policy whose errors compound once it drives the data; an entropy bonus keeps
    its distribution soft where the teacher is indifferent. ``entropy_weight = 0`` is ``kl`` exactly; the
    loss is bounded below by ``-entropy_weight * log(n_actions)``.
    """
    if not entropy_weight >= 0:
        raise ValueError(f"entropy_weight must be >= 0, got {entropy_weight}")
    log_q = F.log_softmax(student.float(), dim=-1)
    entropy = -(log_q.exp() * log_q).sum(dim=-1).mean()
    return kl(student, teacher, tau=tau) - entropy_weight * entropy


def gaussian_kl(
    student_mean: Tensor,
    student_log_std: Tensor,
    teacher_mean: Tensor,
    teacher_log_std: Tensor,
    *,
    direction: str = "forward",
) -> Tensor:
    """Closed-form KL between diagonal Gaussians, summed over action dimensions, batch mean.

    ``direction="forward"`` is KL(teacher || student) (mode-covering: the student must put mass wherever
    the teacher does, the usual distillation target); ``"reverse"`` is KL(student || teacher)
    (mode-seeking, as in on-policy distillation). Means are ``(batch, act_dim)``; log-stds are the same
    shape or broadcastable to it (a state-independent ``(act_dim,)`` log-std, as SB3's PPO has).
    Squashed (SAC/TQC-style) policies: pass the pre-squash means and log-stds. The KL between the two
    squashed policies *equals* the KL between their pre-squash Gaussians, exactly: both actions are the
    same bijection ``a = low + (tanh(u) + 1) (high - low) / 2`` of ``u``, so each density picks up the same
    Jacobian factor ``1 / |da/du|`` at the same ``u``, and the factors cancel in the log-ratio
    ``log p_t(a) - log p_s(a) = log N_t(u) - log N_s(u)`` (KL is invariant under any shared invertible
    map). No tanh correction is needed; ``tests/test_losses.py`` checks this against a Monte-Carlo
    estimate of the squashed KL in both directions.
    """
    if student_mean.shape != teacher_mean.shape or student_mean.dim() != 2 or student_mean.shape[0] == 0:
        raise ValueError(
            f"student and teacher means must both be (batch, act_dim) with batch > 0; got "
            f"{tuple(student_mean.shape)} and {tuple(teacher_mean.shape)}"
        )
    if direction not in ("forward", "reverse"):
        raise ValueError(f"direction must be forward or reverse, got {direction!r}")
    mu_s, mu_t = student_mean.float(), teacher_mean.float()
    ls_s = torch.broadcast_to(student_log_std.float(), mu_s.shape)
    ls_t = torch.broadcast_to(teacher_log_std.float(), mu_t.shape)
    if direction == "reverse":
        mu_s, mu_t, ls_s, ls_t = mu_t, mu_s, ls_t, ls_s
    # KL(N(mu_t, s_t) || N(mu_s, s_s)) per dim = log(s_s/s_t) + (s_t^2 + (mu_t - mu_s)^2) / (2 s_s^2) - 1/2,
    # written with exp(2 * (ls_t - ls_s)) so equal log-stds give exactly 0 without dividing tiny numbers.
    per_dim = (
        (ls_s - ls_t) + 0.5 * (torch.exp(2 * (ls_t - ls_s)) + ((mu_t - mu_s) * torch.exp(-ls_s)) ** 2) - 0.5
    )
    return per_dim.sum(dim=-1).mean()


def gaussian_nll(student_mean: Tensor, student_log_std: Tensor, teacher_mean: Tensor) -> Tensor:
    """Negative log-likelihood of the teacher's (pre-squash) mean under the student's diagonal Gaussian,
    summed over action dimensions, batch mean: the continuous analogue of ``nll`` (the teacher's most
    likely action as a hard label; its spread is not used).

    Per dimension ``log s + (t - m)^2 / (2 s^2) + log(2 pi) / 2``: minimised at ``m = t`` for any ``s``, and
    over ``s`` at ``s = |t - m|``, so the student's spread shrinks toward its own error (unlike
    ``gaussian_kl``, which pulls it toward the teacher's). For squashed heads the pre-squash means are
    compared (the log-Jacobian of tanh does not depend on the student's parameters at the teacher's
    action, so it only shifts the loss). Means ``(batch, act_dim)``; the log-std broadcastable to them.
    """
    if student_mean.shape != teacher_mean.shape or student_mean.dim() != 2 or student_mean.shape[0] == 0:
        raise ValueError(
            f"student and teacher means must both be (batch, act_dim) with batch > 0; got "
            f"{tuple(student_mean.shape)} and {tuple(teacher_mean.shape)}"
        )
    mu_s, mu_t = student_mean.float(), teacher_mean.float()
    ls = torch.broadcast_to(student_log_std.float(), mu_s.shape)
    per_dim = ls + 0.5 * ((mu_t - mu_s) * torch.exp(-ls)) ** 2 + 0.5 * math.log(2 * math.pi)
    return per_dim.sum(dim=-1).mean()


def critic_guidance(q_student: Tensor, q_teacher: Tensor) -> Tensor:
    """How far the teacher critic's value at the student's action falls short of its value at the
    teacher's own action, relative to the critic's scale, batch mean:
    ``mean(q_teacher - q_student) / mean(|q_teacher|)`` (the scale detached).

    Added with a weight to the action ``mse`` of a deterministic (TD3/DDPG) or squashed (SAC/TQC) student,
    it raises the critic's Q at the student's action: where the student cannot copy the teacher, the
    critic says which errors cost return (TD3+BC's ``alpha / mean|Q|`` normalisation, Fujimoto & Gu 2021,
    makes the weight independent of the reward scale). Zero when both actions are valued alike; invariant
    to scaling both Q's by a positive constant. ``q_student`` carries the gradient (through the critic to
    the student's action); both are ``(batch,)``.
    """
    if q_student.shape != q_teacher.shape or q_student.dim() != 1 or q_student.shape[0] == 0:
        raise ValueError(
            f"critic_guidance needs (batch,) Q-values of one shape; got {tuple(q_student.shape)} and "
            f"{tuple(q_teacher.shape)}"
        )
    q_s, q_t = q_student.float(), q_teacher.float().detach()
    scale = q_t.abs().mean().clamp_min(1e-6)  # all-zero Q's (an untrained critic) must not divide by 0
    return (q_t - q_s).mean() / scale


def hint(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    """FitNets-style hint loss: mean squared error between (projected) student and teacher features.

    ``student_features`` must already be mapped to the teacher's feature width (distill learns that
    projection alongside the student); both are ``(batch, width)``.
    """
    if student_features.shape != teacher_features.shape or student_features.dim() != 2:
        raise ValueError(
            f"hint needs (batch, width) features of one shape; got {tuple(student_features.shape)} and "
            f"{tuple(teacher_features.shape)} (project the student's features to the teacher's width first)"
        )
    return F.mse_loss(student_features.float(), teacher_features.float())


@dataclass(frozen=True)
class LossConfig:
    """Which loss to use and its settings; ``compute_loss`` applies it."""

    name: str = "kl"
    """One of ``LOSSES``: kl, nll, mse, hinton, kl_entropy (discrete); gaussian_kl, mse, gaussian_nll
    (Gaussian heads); mse (deterministic heads)."""
    tau: float = 0.01
    """Teacher temperature for ``kl``."""
    temperature: float = 2.0
    """Temperature T for ``hinton`` (both sides softened)."""
    lam: float = 0.5
    """Weight of the soft term for ``hinton``; 1 - lam goes to the hard (nll) term."""
    entropy_weight: float = 0.01
    """Weight of the student's entropy bonus for ``kl_entropy`` (the ``--entropy-coef`` option; not the
    DAgger mixture's beta)."""
    direction: str = "forward"
    """``gaussian_kl`` direction: forward = KL(teacher || student), reverse = KL(student || teacher)."""


DISCRETE_LOSSES: dict[str, Callable[[Tensor, Tensor, LossConfig], Tensor]] = {
    "kl": lambda s, t, c: kl(s, t, tau=c.tau),
    "nll": lambda s, t, c: nll(s, t),
    "mse": lambda s, t, c: mse(s, t),
    "hinton": lambda s, t, c: hinton(s, t, temperature=c.temperature, lam=c.lam),
    "kl_entropy": lambda s, t, c: kl_entropy(s, t, tau=c.tau, entropy_weight=c.entropy_weight),
}
"""Losses for discrete actions: student logits vs teacher Q-values/logits."""

CONTINUOUS_LOSSES = ("gaussian_kl", "mse", "gaussian_nll")
"""Losses for Gaussian (continuous-action) teachers: ``mse`` regresses the mean only, ``gaussian_nll`` scores
the teacher's mean under the student's Gaussian."""

DETERMINISTIC_LOSSES = ("mse",)
"""Losses for deterministic (TD3/DDPG) teachers: ``mse`` on the actions scaled to ``[-1, 1]`` (optionally
with ``critic_guidance`` added)."""

LOSSES = (*DISCRETE_LOSSES, "gaussian_kl", "gaussian_nll")
"""Every output loss by name (``hint`` is added on top of any of them, with its own weight)."""

ACTION_LOSSES: dict[str, tuple[str, ...]] = {"Discrete": ("nll",), "Box": ("mse",)}
"""The losses a teacher of kind ``actions`` (its actions only) takes, by action space: the negative
log-likelihood of the action taken, or the squared error to it."""


def check_loss_for_kind(loss: str, kind: str, continuous: bool, *, only_actions: str) -> None:
    """Refuse a loss that a teacher of output ``kind`` (``policy_kd.teachers.protocol.KINDS``) cannot take,
    naming the ones it can; ``only_actions`` says where an action-only teacher's actions come from."""
    if kind == "actions":  # only the action taken: behaviour cloning, no soft target to match
        allowed: tuple[str, ...] = ACTION_LOSSES["Box" if continuous else "Discrete"]
        if loss not in allowed:
            raise PolicyKDError(
                f"--loss {loss} needs soft targets, but {only_actions}; pass --loss {allowed[0]}"
            )
        return
    if kind == "deterministic":
        allowed = DETERMINISTIC_LOSSES
    else:
        allowed = CONTINUOUS_LOSSES if continuous else tuple(DISCRETE_LOSSES)
    if loss not in allowed:
        raise PolicyKDError(
            f"--loss {loss} does not apply to a {kind} teacher; choose one of {', '.join(allowed)}"
        )


def per_component(
    loss: Callable[[Tensor, Tensor], Tensor], student: Tensor, teacher: Tensor, nvec: tuple[int, ...]
) -> Tensor:
    """A discrete ``loss`` applied to each component of a MultiDiscrete/MultiBinary action and summed.

    ``student`` and ``teacher`` are ``(batch, sum(nvec))``: each component's logits side by side, ``nvec[i]``
    columns each. The components are independent categoricals (SB3's ``MultiCategoricalDistribution``), so
    the KL between two such policies is the sum of the components' KLs, and the likelihood of an action the
    product of theirs: summing keeps that meaning for every loss here. Each term is a batch mean, so the sum
    is too. With one component it is ``loss`` itself.
    """
    if student.shape != teacher.shape or student.dim() != 2 or student.shape[-1] != sum(nvec):
        raise ValueError(
            f"student and teacher outputs must both be (batch, sum(nvec) = {sum(nvec)}); got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    if not nvec or min(nvec) < 1:
        raise ValueError(f"nvec must list at least one component of >= 1 choices, got {list(nvec)}")
    parts = zip(student.split(list(nvec), dim=-1), teacher.split(list(nvec), dim=-1), strict=True)
    return torch.stack([loss(s, t) for s, t in parts]).sum()


def compute_loss(
    student: Tensor,
    teacher: Tensor,
    config: LossConfig,
    *,
    student_log_std: Tensor | None = None,
    teacher_log_std: Tensor | None = None,
    nvec: tuple[int, ...] | None = None,
) -> Tensor:
    """Apply the loss named by ``config.name``; ``gaussian_kl`` also needs both log-stds, ``gaussian_nll``
    the student's. ``nvec`` (a MultiDiscrete or MultiBinary action): the discrete loss per component, summed
    (:func:`per_component`)."""
    if config.name == "gaussian_nll":
        if student_log_std is None:
            raise ValueError("gaussian_nll needs student_log_std")
        return gaussian_nll(student, student_log_std, teacher)
    if config.name == "gaussian_kl":
        if student_log_std is None or teacher_log_std is None:
            raise ValueError("gaussian_kl needs student_log_std and teacher_log_std")
        return gaussian_kl(student, student_log_std, teacher, teacher_log_std, direction=config.direction)
    try:
        fn = DISCRETE_LOSSES[config.name]
    except KeyError:
        raise ValueError(f"unknown loss {config.name!r}; choose one of {', '.join(LOSSES)}") from None
    if nvec is not None:
        return per_component(lambda s, t: fn(s, t, config), student, teacher, tuple(nvec))
    return fn(student, teacher, config)
