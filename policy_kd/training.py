"""The training core shared by ``distill``, ``distill-multitask`` and ``distill-online``.

Each job owns its data and its loop's shape (a buffer's minibatches, one minibatch per task, an SB3
callback); what they share lives here, once: the optimiser and its schedule, one gradient step with
optional clipping, the logging window, selection of the best student by evaluation (written atomically
to ``best.pt``), the ``last.pt`` / ``best.pt`` fallback at the end, the student folder's metadata and the
typed metrics record. Nothing here changes numerics: a job that switches to these pieces keeps its
bit-identical resume (the same operations run in the same order).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from policy_kd.envs import make_env_from_spec
from policy_kd.evaluate import run_episodes
from policy_kd.losses import LossConfig
from policy_kd.run import atomic_torch_save, atomic_write_bytes
from policy_kd.students import Student

# Episodes used to pick the best checkpoint start here, far from evaluate's default seeds (0..N), so the
# final comparison is not made on the episodes that selected the student.
SELECTION_SEED = 1_000_000
#: Buffer rows (evenly spaced) that set a student's input standardisation: enough for stable means.
INPUT_STATS_ROWS = 200_000
#: The same per task for a multi-task student, which reads one such sample per task at once.
TASK_INPUT_STATS_ROWS = 100_000
LR_SCHEDULES = ("constant", "cosine")
BEST, LAST = "best.pt", "last.pt"


def make_optimizer(
    params: Iterable[nn.Parameter],
    *,
    lr: float,
    weight_decay: float = 0.0,
    lr_schedule: str = "constant",
    total_steps: int = 1,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """AdamW (plain Adam at ``weight_decay`` 0) and, for ``cosine``, its schedule to 0 at ``total_steps``."""
    opt = torch.optim.AdamW(list(params), lr=lr, weight_decay=weight_decay)
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
        if lr_schedule == "cosine"
        else None
    )
    return opt, sched


def optimizer_step(
    loss: torch.Tensor,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler | None = None,
    *,
    params: list[nn.Parameter] | None = None,
    max_grad_norm: float = 0.0,
) -> torch.Tensor | None:
    """One gradient step on ``loss``: backward, clip ``params`` to ``max_grad_norm`` (0: no clipping),
    step the optimiser and the schedule. Returns the gradient norm before clipping (None unclipped)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = nn.utils.clip_grad_norm_(params or [], max_grad_norm) if max_grad_norm > 0 else None
    opt.step()
    if sched is not None:
        sched.step()
    return norm


@dataclass
class LogWindow:
    """Scalars between two logging steps: ``loss/...`` terms are summed (reported as the window's mean),
    other terms keep their latest value. Tensors are kept as tensors until read, so that logging costs
    no device sync per step. ``last`` is the latest window's report."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    count: int = 0
    last: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def _averaged(key: str) -> bool:
        return key.startswith("loss/")

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v if self._averaged(k) else v
        self.count += 1

    def close(self) -> dict[str, float]:
        """End the window: its report becomes ``last``, and a new window starts."""
        self.last = {k: float(v) / (self.count if self._averaged(k) else 1) for k, v in self.sums.items()}
        self.sums, self.count = {}, 0
        return self.last

    def report(self) -> dict[str, float]:
        """``last``, or the open window's report when no window has closed yet."""
        if not self.last:
            self.last = {k: float(v) / max(self.count, 1) for k, v in self.sums.items()}
        return self.last


@dataclass
class BestKeeper:
    """Keeps the best student by evaluation score: a better score rewrites ``folder/best.pt`` atomically
    (a kill while writing must not tear it). ``ties_to_later`` lets an equal score replace the best."""

    folder: Path
    best: Any = None
    since_best: int = 0
    ties_to_later: bool = False

    def better(self, score: Any) -> bool:
        if self.best is None:
            return True
        return score >= self.best if self.ties_to_later else score > self.best

    def offer(
        self, score: Any, nets: dict[Path, Student] | Student, before_save: Callable[[], None] | None = None
    ) -> bool:
        """Record ``score``; if it is the best so far, save ``nets`` (a student, or one per folder) as
        ``best.pt``, after ``before_save`` (e.g. a check that the weights are finite). True if saved."""
        if not self.better(score):
            self.since_best += 1
            return False
        if before_save is not None:
            before_save()
        self.best, self.since_best = score, 0
        for folder, net in nets.items() if isinstance(nets, dict) else [(self.folder, nets)]:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_torch_save(net.state_dict(), folder / BEST)
        return True


def save_final_weights(folder: Path, net: nn.Module) -> None:
    """Write ``last.pt``; with no ``best.pt`` (never evaluated) the last weights are the student too."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(net.state_dict(), folder / LAST)
    if not (folder / BEST).is_file():
        atomic_write_bytes(folder / BEST, (folder / LAST).read_bytes())


def selection_return(net: Student, meta: dict[str, Any], episodes: int) -> float:
    """Mean greedy return of ``net`` on the buffer's env over ``episodes`` SELECTION_SEED episodes."""
    spec = meta.get("env_spec") or {"env_id": meta["env_id"]}
    seeds = [SELECTION_SEED + i for i in range(episodes)]
    net.eval()
    try:
        result = run_episodes(net, meta["env_id"], seeds, env_factory=lambda: make_env_from_spec(spec))
    finally:
        net.train()
    return float(result.returns.mean())


def student_info(
    meta: dict[str, Any],
    *,
    loss: LossConfig,
    params: int,
    teacher_params: int,
    buffer: str | None = None,
    extra: dict[str, Any] | None = None,
    write_params: bool = True,
) -> dict[str, Any]:
    """The ``student.json`` metadata every job writes: the env and spaces from ``meta`` (a buffer's meta,
    or the same keys), the teacher, the loss and the sizes; ``extra`` holds the job's own record (placed
    before the loss, as the jobs always wrote it). ``write_params`` False leaves ``params`` to the caller."""
    info: dict[str, Any] = {
        "env_id": meta["env_id"],
        "action_space": meta["action_space"],
        "observation_space": meta["observation_space"],
        "env_spec": meta.get("env_spec"),
        "teacher": meta["teacher"],
        "buffer": buffer,
        **(extra or {}),
        "loss": asdict(loss),
    }
    if write_params:
        info["params"] = params
    info["teacher_params"] = teacher_params
    info["params_ratio"] = params / teacher_params
    return info


@dataclass(frozen=True)
class DistillMetrics:
    """What a finished ``distill`` run measured (``metrics.json``)."""

    steps: int
    """Gradient steps taken."""
    rounds: int
    """Rounds trained (1 without DAgger rounds)."""
    teacher_labels: int
    """Teacher-labelled rows trained on, over every recording."""
    stopped_early: str | None
    """Why the run stopped before its last step (--patience, --target-return); None: it ran to the end."""
    final: dict[str, float]
    """The last logging window's scalars (losses: window means; fidelity: its last batch)."""
    best_eval_mean_return: float | None
    """The selected student's evaluation return; None without evaluations."""
    history: list[dict[str, Any]]
    """One entry per evaluation."""
    seconds: float
    """Training wall time, summed over resumes."""
    samples_per_second: float
    """Rows trained on per second of that time."""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        # the two headline figures, also at the top level (as metrics.json always had them)
        out = {
            **{k: out[k] for k in ("steps", "rounds", "teacher_labels", "stopped_early", "final")},
            "final_train_loss": self.final.get("loss/total"),
            "final_train_agreement": self.final.get("fidelity/agreement"),
            **{k: out[k] for k in ("best_eval_mean_return", "history", "seconds", "samples_per_second")},
        }
        return out
