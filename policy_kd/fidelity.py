"""Fidelity: how closely a student acts like its teacher, on the student's states and the teacher's.

Discrete actions agree when they are equal; continuous ones when every dimension is within a tolerance of
the action range (:func:`compare_actions`). The KL divergence (:func:`divergence`) is of the softmaxes
(discrete) or of the two diagonal Gaussians (continuous, when both log-stds are known).

MultiDiscrete and MultiBinary actions (a ``multi_discrete`` head, ``nvec`` choices per component) agree as a
whole when every component does; :func:`component_agreement` also gives each component's own agreement, and
their KL is the sum of the components' KLs.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from policy_kd.errors import PolicyKDError
from policy_kd.heads import DISCRETE_HEADS, actions_from_outputs, split_components
from policy_kd.spaces import action_range

ACTION_TOLERANCE = 0.05
"""Continuous actions agree when every dimension is within this fraction of that dimension's range
(``high - low`` of the env's action space; 1 where a dimension is unbounded)."""


__all__ = [
    "ACTION_TOLERANCE",
    "compare_actions",
    "component_agreement",
    "divergence",
    "teacher_state_fidelity",
]


class StudentOutputs(Protocol):
    """What fidelity needs of a student (``policy_kd.evaluate.Contender`` has it)."""

    head: str
    log_std: np.ndarray | None
    nvec: tuple[int, ...] | None

    def outputs(self, obs: np.ndarray) -> np.ndarray: ...

    def greedy(self, obs: np.ndarray) -> np.ndarray: ...


def _log_softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def divergence(
    teacher_out: np.ndarray,
    student_out: np.ndarray,
    head: str,
    *,
    tau: float = 1.0,
    teacher_log_std: np.ndarray | None = None,
    student_log_std: np.ndarray | None = None,
    nvec: tuple[int, ...] | None = None,
) -> np.ndarray | None:
    """Per-row KL(teacher ‖ student): of softmax(teacher / tau) and softmax(student) for a discrete head
    (summed over the ``nvec`` components for a ``multi_discrete`` one); of the two diagonal Gaussians
    (closed form, pre-squash) when both log-stds are known; else ``None``."""
    if head == "multi_discrete" and nvec is not None:
        parts = zip(split_components(teacher_out, nvec), split_components(student_out, nvec), strict=True)
        return np.sum([divergence(t, s, "discrete", tau=tau) for t, s in parts], axis=0)
    if head == "discrete":
        lp = _log_softmax(np.asarray(teacher_out, dtype=np.float64) / tau)
        lq = _log_softmax(np.asarray(student_out, dtype=np.float64))
        return (np.exp(lp) * (lp - lq)).sum(axis=-1)
    if teacher_log_std is None or student_log_std is None:
        return None
    mt, ms = np.asarray(teacher_out, dtype=np.float64), np.asarray(student_out, dtype=np.float64)
    lt = np.broadcast_to(teacher_log_std, mt.shape).astype(np.float64)
    ls = np.broadcast_to(student_log_std, ms.shape).astype(np.float64)
    return (ls - lt + (np.exp(2 * lt) + (mt - ms) ** 2) / (2 * np.exp(2 * ls)) - 0.5).sum(axis=-1)


def compare_actions(
    a: np.ndarray, b: np.ndarray, width: np.ndarray | None, tolerance: float = ACTION_TOLERANCE
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per row: whether the two actions disagree, and (continuous, ``width`` given) the mean absolute
    difference over dimensions as a fraction of the action range.

    Discrete actions disagree when they differ; continuous ones when any dimension differs by more than
    ``tolerance`` of its range (an exact match is meaningless for a network that regresses a mean).
    """
    a, b = np.asarray(a).reshape(len(a), -1), np.asarray(b).reshape(len(b), -1)
    if width is None:
        return np.any(a != b, axis=-1), None
    frac = np.abs(a.astype(np.float64) - b.astype(np.float64)) / width
    return np.any(frac > tolerance, axis=-1), frac.mean(axis=-1)


def component_agreement(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two batches of MultiDiscrete/MultiBinary actions ``(batch, n_components)`` (any shape per row):
    per row whether the whole action agrees (every component equal), and per component the fraction of
    rows on which it agrees ``(n_components,)``."""
    a, b = np.asarray(a).reshape(len(a), -1), np.asarray(b).reshape(len(b), -1)
    same = a == b
    return same.all(axis=-1), same.mean(axis=0)


def _component_fields(same_sum: np.ndarray | None, rows: int) -> dict[str, Any]:
    """A multi_discrete head's per-component agreement (none for another head)."""
    if same_sum is None:
        return {}
    per = (same_sum / max(rows, 1)).tolist()
    return {"component_agreement": per, "mean_component_agreement": float(np.mean(per))}


class _FidelityOnStudentStates:
    """Step observer of a student's episodes: the teacher labels every state the student visits."""

    def __init__(
        self,
        teacher: Any,
        student: StudentOutputs,
        n_episodes: int,
        tau: float,
        tolerance: float = ACTION_TOLERANCE,
    ):
        self.teacher, self.student, self.tau, self.tolerance = teacher, student, tau, tolerance
        self.width = action_range(teacher.action_space)
        self.first: list[int | None] = [None] * n_episodes
        self.rows = 0
        self.disagree = 0
        self.diff_sum = 0.0
        self.kl_sum = 0.0
        self.kl_ok = True
        self.nvec = getattr(student, "nvec", None)
        self.same_sum: np.ndarray | None = None  # per-component agreements summed over rows (multi_discrete)

    def __call__(self, obs: np.ndarray, actions: np.ndarray, eps: np.ndarray, steps: np.ndarray) -> None:
        labels = self.teacher.label(obs)
        bad, diff = compare_actions(labels.greedy, actions, self.width, self.tolerance)
        if self.nvec:
            per = component_agreement(labels.greedy, actions)[1] * len(obs)
            self.same_sum = per if self.same_sum is None else self.same_sum + per
        self.rows += len(obs)
        self.disagree += int(bad.sum())
        if diff is not None:
            self.diff_sum += float(diff.sum())
        for e, t in zip(eps[bad], steps[bad], strict=True):
            if self.first[e] is None:
                self.first[e] = int(t)
        kl = divergence(
            labels.outputs["teacher"],
            self.student.outputs(obs),
            self.student.head,
            tau=self.tau,
            teacher_log_std=labels.outputs.get("teacher_log_std"),
            student_log_std=self.student.log_std,
            nvec=self.nvec,
        )
        if kl is None:
            self.kl_ok = False
        else:
            self.kl_sum += float(kl.sum())

    def result(self) -> dict[str, Any]:
        firsts = [f for f in self.first if f is not None]
        return {
            "rows": self.rows,
            "agreement": 1.0 - self.disagree / max(self.rows, 1),
            **_continuous_fields(self.width, self.diff_sum, self.rows, self.tolerance),
            **_component_fields(self.same_sum, self.rows),
            "kl": self.kl_sum / max(self.rows, 1) if self.kl_ok else None,
            "first_disagreement": self.first,
            "episodes_with_disagreement": len(firsts),
            "median_first_disagreement": float(np.median(firsts)) if firsts else None,
        }


def _continuous_fields(
    width: np.ndarray | None, diff_sum: float, rows: int, tolerance: float
) -> dict[str, Any]:
    """A continuous head's extra fidelity figures (none for a discrete one)."""
    if width is None:
        return {}
    return {"mean_action_diff": diff_sum / max(rows, 1), "tolerance": tolerance}


def teacher_state_fidelity(
    student: StudentOutputs,
    buffer: Any,
    *,
    max_rows: int = 50_000,
    tau: float = 1.0,
    batch: int = 4096,
    action_space: Any = None,
    teacher_head: str | None = None,
    tolerance: float = ACTION_TOLERANCE,
) -> dict[str, Any]:
    """Agreement with the teacher's greedy action and mean KL on the buffer's states (at most ``max_rows``,
    evenly spaced): the teacher's own state distribution.

    A continuous head needs the env's ``action_space``: the teacher's recorded means become actions inside
    its bounds (clipped or squashed as the teacher's ``teacher_head`` does), compared with the actions the
    student takes there, within ``tolerance`` of the range (:func:`compare_actions`).
    """
    obs, target = buffer.spaced("obs", max_rows), buffer.spaced("teacher", max_rows)
    t_log_std = buffer.spaced("teacher_log_std", max_rows) if "teacher_log_std" in buffer.fields else None
    nvec = getattr(student, "nvec", None) if student.head == "multi_discrete" else None
    discrete = student.head in DISCRETE_HEADS
    width = None if discrete else action_range(action_space)
    if not discrete and width is None:
        raise PolicyKDError("teacher_state_fidelity of a continuous student needs the env's action_space")
    bounds = None if width is None else [action_space.low.reshape(-1), action_space.high.reshape(-1)]
    hits, diff_sum, kl_sum, kl_ok = 0, 0.0, 0.0, True
    same_sum = np.zeros(len(nvec)) if nvec else None
    for i in range(0, len(obs), batch):
        out, t = student.outputs(obs[i : i + batch]), target[i : i + batch]
        if nvec:
            whole, per = component_agreement(
                actions_from_outputs(t, "multi_discrete", nvec=nvec),
                actions_from_outputs(out, "multi_discrete", nvec=nvec),
            )
            hits += int(whole.sum())
            same_sum += per * len(t)  # type: ignore[operator]
        elif student.head == "discrete":
            hits += int((out.argmax(-1) == t.argmax(-1)).sum())
        else:
            a_t = actions_from_outputs(t, teacher_head or student.head, bounds)
            bad, diff = compare_actions(a_t, student.greedy(obs[i : i + batch]), width, tolerance)
            hits += int((~bad).sum())
            diff_sum += float(diff.sum())  # type: ignore[union-attr]
        kl = divergence(
            t,
            out,
            student.head,
            tau=tau,
            teacher_log_std=None if t_log_std is None else t_log_std[i : i + batch],
            student_log_std=student.log_std,
            nvec=nvec,
        )
        if kl is None:
            kl_ok = False
        else:
            kl_sum += float(kl.sum())
    return {
        "rows": len(obs),
        "agreement": hits / len(obs),
        **_continuous_fields(width, diff_sum, len(obs), tolerance),
        **_component_fields(same_sum, len(obs)),
        "kl": kl_sum / len(obs) if kl_ok else None,
    }
