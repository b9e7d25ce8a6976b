"""Distillation losses: pure functions of tensors, each averaged over the batch.

Every loss takes ``student`` and ``teacher`` tensors of shape ``(batch, n_actions)``: the student's raw
outputs (logits, or Q-values for ``mse``) and the teacher's recorded outputs (Q-values for DQN, action
logits for PPO/A2C). Losses are means over the batch on purpose, so their size and their gradients do
not grow with the batch size (CleanRL's QDagger sums instead). Nothing here knows about buffers,
networks or SB3.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

__all__ = ["LOSSES", "LossConfig", "compute_loss", "hinton", "kl", "mse", "nll"]


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


@dataclass(frozen=True)
class LossConfig:
    """Which loss to use and its settings; ``compute_loss`` applies it."""

    name: str = "kl"
    """One of ``LOSSES``: kl, nll, mse, hinton."""
    tau: float = 0.01
    """Teacher temperature for ``kl``."""
    temperature: float = 2.0
    """Temperature T for ``hinton`` (both sides softened)."""
    lam: float = 0.5
    """Weight of the soft term for ``hinton``; 1 - lam goes to the hard (nll) term."""


LOSSES: dict[str, Callable[[Tensor, Tensor, LossConfig], Tensor]] = {
    "kl": lambda s, t, c: kl(s, t, tau=c.tau),
    "nll": lambda s, t, c: nll(s, t),
    "mse": lambda s, t, c: mse(s, t),
    "hinton": lambda s, t, c: hinton(s, t, temperature=c.temperature, lam=c.lam),
}


def compute_loss(student: Tensor, teacher: Tensor, config: LossConfig) -> Tensor:
    """Apply the loss named by ``config.name`` (see ``LOSSES``)."""
    try:
        fn = LOSSES[config.name]
    except KeyError:
        raise ValueError(f"unknown loss {config.name!r}; choose one of {', '.join(LOSSES)}") from None
    return fn(student, teacher, config)
