"""Student-driven distillation (DAgger, Ross et al. 2011): the rounds of ``policy-kd distill --rounds K``.

Round r saves the current student, lets it act (or a mixture with the teacher, see
:meth:`~policy_kd.distill_config.DistillConfig.round_beta`) while the teacher labels every state, and
records those states into ``rounds/round_r/buffer``; each round's buffer joins the training data.
:class:`Rounds` holds these steps for the distillation run (``policy_kd.distill._Run``), which owns the
attributes declared below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from policy_kd.buffer import Buffer, Sampler
from policy_kd.distill_config import DistillConfig
from policy_kd.errors import PolicyKDError
from policy_kd.run import atomic_torch_save
from policy_kd.students import Student, StudentSpec, save_student

#: Round r's recording is seeded ``seed + ROUND_SEED_STRIDE * (r + 1)``: a prime stride keeps round
#: seeds apart from each other and from the samplers' ``seed + round``.
ROUND_SEED_STRIDE = 7919


class Rounds:
    """The teacher (loaded on first use) and the DAgger rounds of a distillation run."""

    # set by the run (policy_kd.distill._Run)
    cfg: DistillConfig
    out: Path
    meta: dict[str, Any]
    buffers: list[Buffer]
    teacher_path: str | None
    _teacher: Any
    net: Student
    spec: StudentSpec
    step: int
    round: int
    sampler: Sampler
    # and its methods _info() (the student.json entries) and _sampler() (a sampler over self.buffers)

    @property
    def teacher(self) -> Any:
        if self._teacher is None:
            from policy_kd.record import check_same_teacher
            from policy_kd.teacher import load_teacher

            if self.teacher_path is None:
                raise PolicyKDError("this needs the teacher: pass --teacher PATH")
            env = self.meta.get("env_id") or self.cfg.env
            teacher = load_teacher(self.teacher_path, env)
            if self.buffers:  # its features and labels must be those of the teacher that labelled the data
                check_same_teacher(
                    teacher,
                    self.meta.get("teacher"),
                    f"buffer {self.buffers[0].path} was recorded by",
                    fix="drop --hint-weight and --rounds",
                )
            self._teacher = teacher
        return self._teacher

    def _round_dir(self, r: int) -> Path:
        return self.out / "rounds" / f"round_{r}"

    def _record_round(self, r: int, student_dir: Path | None) -> None:
        """Record round ``r``'s states into ``rounds/round_r/buffer`` (redone from scratch if incomplete:
        the recording is a deterministic function of the seed and the student's weights)."""
        from policy_kd.record import RecordConfig, record

        cfg = self.cfg
        buf_dir = self._round_dir(r) / "buffer"
        if (buf_dir / "manifest.json").is_file():
            existing = Buffer.open(buf_dir, allow_empty=True)
            if existing.complete:
                self.buffers.append(existing)
                return
        if self.teacher_path is None:
            raise PolicyKDError("--rounds needs the teacher: pass --teacher PATH")
        beta = self.cfg.round_beta(r) if student_dir is not None else 1.0
        rec = RecordConfig(
            teacher=self.teacher_path,
            env=self.meta.get("env_id") or cfg.env,
            out=str(buf_dir),
            steps=cfg.round_steps,
            behaviour="teacher" if student_dir is None else cfg.behaviour,
            beta=beta,
            student=str(student_dir) if student_dir else None,
            n_envs=cfg.round_n_envs,
            seed=cfg.seed + ROUND_SEED_STRIDE * (r + 1),
            threads=cfg.threads,
            progress=cfg.progress,
            force=True,
        )
        record(rec)
        self.buffers.append(Buffer.open(buf_dir))

    def _start_round(self, r: int) -> None:
        """Save the current student, let it act (mixed with the teacher) and add what it saw to the data."""
        student_dir = self._round_dir(r) / "student"
        student_dir.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(self.net.state_dict(), student_dir / "weights.pt")
        save_student(student_dir, self.spec, {**self._info(), "weights": "weights.pt"})
        self._record_round(r, student_dir)

    def _next_round(self, tb: SummaryWriter) -> None:
        """Record the next round with the current student and train on the grown data from here on."""
        self.round = self.step // self.cfg.steps
        self._start_round(self.round)
        self.sampler.close()
        self.sampler = self._sampler()
        tb.add_scalar("rounds/labels", sum(b.rows for b in self.buffers), self.step)
