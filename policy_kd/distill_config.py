"""The options of ``policy-kd distill`` (:class:`DistillConfig`) and their checks."""

from __future__ import annotations

from dataclasses import dataclass, replace

from policy_kd.config import check_seed
from policy_kd.errors import PolicyKDError
from policy_kd.losses import LOSSES, LossConfig
from policy_kd.options import LossOptions, RunOptions, StudentOptions, check_choice, check_ranges
from policy_kd.training import LR_SCHEDULES

BETA_SCHEDULES = ("linear", "constant", "exponential")
#: The largest --lr accepted: Adam divides the step by 1 - 0.9 in float32, which overflows near 3e37.
MAX_LR = 1e30


def teacher_option(rounds: int, hint_weight: float, critic_weight: float) -> str | None:
    """The option that makes distill load the teacher itself (``--rounds``, ``--hint-weight``,
    ``--critic-weight``), or None when the buffer's labels are all it needs."""
    if rounds > 1:
        return "--rounds"
    if hint_weight > 0:
        return "--hint-weight"
    if critic_weight > 0:
        return "--critic-weight"
    return None


@dataclass(frozen=True)
class DistillConfig(StudentOptions, LossOptions, RunOptions):
    """Train a student to match the teacher outputs stored in a buffer (optionally in DAgger rounds)."""

    buffer: str | None = None
    """Buffer folder written by policy-kd record (the teacher-driven data; optional with --rounds > 1)."""
    out: str | None = None
    """Student folder to create (refused if it exists, unless --force or --resume)."""
    teacher: str | None = None
    """Teacher for --hint-weight and --rounds (required by both; checked to be the one that recorded --buffer): a run folder, a zoo run folder, hf://ORG/REPO, an SB3 .zip or py:PKG.MODULE:NAME. Its .zip and .pkl files are unpickled code, and py: runs the module: load only trusted ones."""
    env: str | None = None
    """Environment id, for a plain .zip --teacher without a buffer."""
    channels: tuple[int, ...] | None = None
    """Explicit conv channels of a CNN student, e.g. --channels 8 (minatar_cnn) or 16 32 32 (nature_cnn)."""
    conv: str = "standard"
    """CNN students' convolutions: standard, or separable (depthwise kxk, then pointwise 1x1 to the channels)."""
    conv_stride: int = 1
    """minatar_cnn: its convolution's stride, 1 or 2 (padded by 1: 5x5 maps from a 10x10 frame, not 8x8)."""
    params_fraction: float = 0.01
    """Student size as a fraction (0, 1] of the teacher's policy parameters (widths solved, actual count reported)."""
    activation: str = "relu"
    """Hidden activation: relu, tanh, elu, gelu."""
    normalize_obs: bool = True
    """Standardise the student's inputs with the buffer's observation mean/std (stored with the student)."""
    loss: str = "kl"
    """Loss: kl (Rusu et al. 2016), nll (teacher argmax), mse (regress outputs), hinton (soft at T + hard),
    kl_entropy (kl minus an entropy bonus, Czarnecki et al. 2019); gaussian_kl, mse or gaussian_nll (NLL of the
    teacher's mean under the student's Gaussian) for Gaussian heads; mse (on the [-1, 1]-scaled actions) for
    deterministic (TD3/DDPG) teachers."""
    direction: str = "forward"
    """gaussian_kl: forward = KL(teacher || student), reverse = KL(student || teacher)."""
    critic_weight: float = 0.0
    """Weight of critic guidance (TD3/DDPG/SAC/TQC teachers; needs --teacher): a term that raises the teacher
    critic's Q at the student's action, relative to its Q at the teacher's (``losses.critic_guidance``); 0: off."""
    hint_weight: float = 0.0
    """Weight of the hint loss (student features, through a learned linear projection, regressed on the
    input of the teacher's output layer); 0: off. Needs the teacher."""
    steps: int = 5_000
    """Gradient steps (per round with --rounds)."""
    batch_size: int = 256
    """Minibatch size (sampled with replacement)."""
    lr: float = 1e-3
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay (0: plain Adam)."""
    lr_schedule: str = "constant"
    """Learning-rate schedule: constant, or cosine (to 0 at the last step of the last round)."""
    max_grad_norm: float = 0.0
    """Clip the gradient's global norm to this (0: no clipping)."""
    source_weights: tuple[float, ...] | None = None
    """Sampling probability per recording (buffer sources in order, then one per round); default: uniform over rows."""
    eval_every: int = 1_000
    """Steps between environment evaluations that select the best checkpoint (0: never; last = best)."""
    eval_episodes: int = 10
    """Episodes per periodic evaluation (seeds from 1,000,000 on, apart from evaluate's)."""
    patience: int = 0
    """Stop after this many evaluations without a better (return, agreement); 0: never stop early."""
    target_return: float | None = None
    """Stop once an evaluation reaches this mean return (e.g. the teacher's); default: never."""
    log_every: int = 100
    """Steps between TensorBoard scalars."""
    checkpoint_every: int = 1_000
    """Steps between resumable checkpoints (checkpoint.pt; 0: none)."""
    resume: bool = False
    """Continue the interrupted run in --out from its last checkpoint, with its saved options."""
    rounds: int = 1
    """Student-driven rounds (DAgger): 1 = teacher-driven only; K > 1 records K-1 rounds of new states."""
    behaviour: str = "mixture"
    """Who acts in rounds: mixture (teacher with probability beta, else the student) or student."""
    beta: float = 1.0
    """Starting beta of the mixture (probability that the teacher acts)."""
    beta_schedule: str = "linear"
    """beta in round r of K-1: linear (beta * (1 - r / (K - 1))), constant (beta), exponential (beta ** r)."""
    round_steps: int = 10_000
    """States recorded (and labelled by the teacher) per round."""
    round_n_envs: int = 1
    """Parallel environments while recording a round."""
    in_memory: bool | None = None
    """Hold the sampled fields in RAM (fastest) or sample them memory-mapped; default: in RAM when under 2 GiB."""
    seed: int = 0
    """Seed for weight initialisation, minibatch sampling and round recordings."""

    def validate(self) -> None:
        if self.resume:
            if self.out is None:
                raise PolicyKDError("--resume needs --out DIR (the interrupted distill run)")
            return
        if self.buffer is None and self.rounds <= 1:
            raise PolicyKDError("distill needs a buffer: pass --buffer DIR (written by policy-kd record)")
        what = teacher_option(self.rounds, self.hint_weight, self.critic_weight)
        if self.teacher is None and what is not None:
            # the buffer names its teacher, but its manifest carries no signature: loading (unpickling)
            # a path from it would run whatever code that file holds
            raise PolicyKDError(
                f"{what} needs the teacher: pass --teacher PATH (the run folder or .zip that recorded the buffer; "
                "a path named inside a buffer is never loaded unasked)"
            )
        self.validate_loss(LOSSES)
        self.validate_student()
        from policy_kd.students import CONVS  # students imports torch: only when a job validates

        check_choice("conv", self.conv, CONVS)
        self.validate_run()
        check_ranges(self, positive=("lr",))
        if self.lr > MAX_LR:  # Adam divides it by 1 - 0.9 in float32: above ~3e37 the step overflows
            raise PolicyKDError(f"--lr must be at most {MAX_LR:g}, got {self.lr}")
        if self.params_fraction > 1:
            raise PolicyKDError(
                f"--params-fraction must lie in (0, 1] (a student no larger than the teacher), got "
                f"{self.params_fraction}; for a larger network give its widths with --hidden"
            )
        check_seed(self.seed)
        check_ranges(
            self,
            positive=("steps", "batch_size", "eval_episodes", "log_every", "rounds"),
            non_negative=(
                "hint_weight",
                "critic_weight",
                "weight_decay",
                "max_grad_norm",
                "eval_every",
                "patience",
            ),
            unit_interval=("beta",),
        )
        check_ranges(self, non_negative=("checkpoint_every",), positive=("round_steps", "round_n_envs"))
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_choice("direction", self.direction, ("forward", "reverse"))
        check_choice("behaviour", self.behaviour, ("mixture", "student"))
        check_choice("beta_schedule", self.beta_schedule, BETA_SCHEDULES)

    @property
    def loss_config(self) -> LossConfig:
        return replace(super().loss_config, direction=self.direction)

    def round_beta(self, r: int) -> float:
        """The mixture's beta in round ``r`` (1 .. rounds-1)."""
        if self.behaviour == "student":
            return 0.0
        if self.beta_schedule == "constant":
            return self.beta
        if self.beta_schedule == "exponential":
            return self.beta**r
        return self.beta * (1.0 - r / max(self.rounds - 1, 1))
