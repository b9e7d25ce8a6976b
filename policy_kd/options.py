"""Option blocks shared by the jobs, and the one helper that checks numeric ranges.

Each block is a frozen dataclass with a docstring per field (the ``--help`` text, through tyro). A job's
config *inherits* the blocks it uses rather than nesting them as fields: inheritance keeps the option
names flat (``--params-fraction`` on the command line, ``params_fraction`` in YAML and in saved
``config.yaml`` files), exactly as they were before the blocks existed. A job that wants another default
or help text redeclares the field; the block's ``validate_*`` method still checks it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from policy_kd.errors import PolicyKDError
from policy_kd.losses import DISCRETE_LOSSES, LossConfig


def flag(name: str) -> str:
    """The command-line spelling of option ``name``: ``params_fraction`` -> ``--params-fraction``."""
    return "--" + name.replace("_", "-")


def check_ranges(
    config: Any,
    *,
    positive: Iterable[str] = (),
    non_negative: Iterable[str] = (),
    unit_interval: Iterable[str] = (),
) -> None:
    """Refuse options out of range, naming the option: ``positive`` must be > 0 (and finite),
    ``non_negative`` >= 0 (and finite), ``unit_interval`` in [0, 1]. ``None`` (an unset optional) passes."""
    checks = (
        (positive, lambda v: v > 0, "be > 0"),
        (non_negative, lambda v: v >= 0, "be >= 0"),
        (unit_interval, lambda v: 0.0 <= v <= 1.0, "lie in [0, 1]"),
    )
    for names, ok, what in checks:
        for name in names:
            value = getattr(config, name)
            if value is None:
                continue
            if not ok(value):  # also refuses NaN: every comparison with it is false
                raise PolicyKDError(f"{flag(name)} must {what}, got {value}")
            if not math.isfinite(value):  # inf would pass the comparison and poison the run
                raise PolicyKDError(f"{flag(name)} must be finite, got {value}")


def check_choice(name: str, value: str, allowed: Iterable[str], *, what: str | None = None) -> None:
    """Refuse ``value`` unless it is one of ``allowed``; the message lists them."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise PolicyKDError(f"unknown {what or flag(name)} {value!r}; choose one of {', '.join(allowed)}")


@dataclass(frozen=True)
class RunOptions:
    """How any job runs, whatever it computes."""

    threads: int = 1
    """torch CPU threads."""
    progress: bool = True
    """Show a progress bar."""
    force: bool = False
    """Replace an existing --out folder."""

    def validate_run(self) -> None:
        check_ranges(self, positive=("threads",))


@dataclass(frozen=True)
class LossOptions:
    """The distillation loss and its settings (see :mod:`policy_kd.losses`)."""

    loss: str = "kl"
    """Distillation loss: kl, nll, mse, hinton or kl_entropy (see policy_kd.losses)."""
    tau: float = 0.01
    """Teacher temperature for kl and kl_entropy (low tau sharpens the target)."""
    temperature: float = 2.0
    """Temperature T for hinton (both sides softened, soft term scaled by T^2)."""
    lam: float = 0.5
    """hinton weight of the soft term; 1 - lam goes to the hard nll term."""
    entropy_coef: float = 0.01
    """kl_entropy: weight of the student's entropy bonus."""

    def validate_loss(self, allowed: Iterable[str] = DISCRETE_LOSSES) -> None:
        check_choice("loss", self.loss, allowed, what="loss")
        check_ranges(
            self, positive=("tau", "temperature"), non_negative=("entropy_coef",), unit_interval=("lam",)
        )

    @property
    def loss_config(self) -> LossConfig:
        """These options as the :class:`LossConfig` that ``compute_loss`` takes."""
        return LossConfig(
            name=self.loss,
            tau=self.tau,
            temperature=self.temperature,
            lam=self.lam,
            entropy_weight=self.entropy_coef,
        )


@dataclass(frozen=True)
class StudentOptions:
    """The student network: architecture and size."""

    student: str = "mlp"
    """Student architecture (registry name): mlp, nature_cnn (84x84 images) or minatar_cnn (small images)."""
    hidden: tuple[int, ...] | None = None
    """Explicit hidden widths, e.g. --hidden 32 32; overrides --params-fraction. --hidden 0: no hidden layer
    (a CNN's features straight to the head; its channels solved for --params-fraction unless --channels)."""
    params_fraction: float = 0.01
    """Student size as a fraction of the teacher's policy parameters (widths solved, actual count reported)."""
    layers: int = 2
    """Hidden layers of an mlp student sized by --params-fraction."""

    def student_spec(
        self, obs_shape: tuple[int, ...], n_outputs: int, *, teacher_params: int, **job: Any
    ) -> Any:
        """The :class:`StudentSpec` these options give for a teacher of ``teacher_params`` parameters;
        ``job`` adds the job's own settings (activation, channels, head, pad_channels)."""
        from policy_kd.students import size_student

        return size_student(
            self.student,
            obs_shape,
            n_outputs,
            hidden=self.hidden,
            params_fraction=self.params_fraction,
            teacher_params=teacher_params,
            layers=self.layers,
            **job,
        )

    def validate_student(self) -> None:
        from policy_kd.students import STUDENTS  # students imports torch: only when a job validates

        check_choice("student", self.student, STUDENTS, what="student")
        check_ranges(self, positive=("params_fraction", "layers"))


@dataclass(frozen=True)
class TeacherTrainingOptions:
    """How a job that trains an SB3 model (as train-teacher does) runs that training."""

    n_timesteps: int | None = None
    """Training env steps; default: the preset's n_timesteps."""
    preset: str | None = None
    """YAML file of presets in the agents/ format; default: the packaged agents/<algo>.yml."""
    eval_freq: int = 5000
    """Env steps between the model's evaluations (which keep its best model)."""
    eval_episodes: int = 10
    """Episodes per evaluation."""
    device: str = "cpu"
    """torch device for the SB3 training."""

    def validate_training(self) -> None:
        check_ranges(self, positive=("n_timesteps", "eval_freq", "eval_episodes"))

    def train_teacher_config(self, **job: Any) -> Any:
        """The ``TrainTeacherConfig`` that trains the model with these options; ``job`` gives the rest
        (algo, env, out, seed, threads, progress, and optionally n_timesteps and preset)."""
        from policy_kd.teacher import TrainTeacherConfig  # SB3: only when a job trains

        given = {
            "n_timesteps": self.n_timesteps,
            "preset": self.preset,
            "eval_freq": self.eval_freq,
            "eval_episodes": self.eval_episodes,
            "device": self.device,
        }
        return TrainTeacherConfig(**{**given, **job})
