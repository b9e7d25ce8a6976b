"""Kickstarting (Schmitt et al. 2018) / QDagger-style (Agarwal et al. 2022) distillation-regularised RL.

A small student is trained by SB3 (DQN, PPO or A2C; for Box actions PPO/A2C, SAC/TQC or TD3/DDPG, the same
kind of policy as the teacher's) on the environment's reward *plus* a distillation loss
toward a fixed teacher, whose weight ``lambda_t`` is annealed to zero, so the student starts by imitating
the teacher and ends as a plain RL agent that may surpass it. The RL side is ``train-teacher`` unchanged
(the student's preset is the algorithm's zoo preset for the env with a small ``net_arch``); the
distillation side is one SB3 callback, :class:`Kickstart`, and no copy of SB3's training loop:

* Before **every** optimizer step SB3 takes (a DQN gradient step, a PPO/A2C minibatch update), a
  ``torch.optim`` step pre-hook draws a minibatch of states from the same data SB3 is learning from (the
  replay buffer; the current rollout), lets the teacher label them, and adds ``lambda_t * grad L_distill``
  to the gradients SB3 has just computed. The update is therefore that of ``L_RL + lambda_t * L_distill``
  (SB3 clips its own gradient before the hook; the distillation gradient is added unclipped). This works
  for every SB3 algorithm without mirroring its ``train()`` body (checked against SB3 2.9).
* ``lambda_t`` depends only on the env step count: ``linear`` (``weight * (1 - t / horizon)`` until the
  horizon, then 0), ``step`` (``weight`` until the horizon, then 0) or ``constant``; ``horizon`` is
  ``--anneal-fraction`` of the training steps.
* The student's outputs in the loss: a Gaussian (PPO/A2C) or squashed (SAC/TQC) student's mean and log-std,
  a TD3/DDPG student's ``[-1, 1]``-scaled action (an actor-critic student's actor optimizer gets the term,
  its critics none); a PPO/A2C student's action logits; a DQN student's Q-values divided by
  ``--tau`` for the softmax losses (kl, kl_entropy, nll), as QDagger softens both sides with one
  temperature: then KL = 0 exactly when the student's Q-values equal the teacher's up to a constant, which
  the TD loss is free to fix (raw Q-values for mse and hinton).

Layout of ``policy-kd kickstart --out OUT``::

    OUT/config.yaml, command.txt, versions.json, student_preset.yaml, kickstart.json
    OUT/model/    a train-teacher run folder of the student (best_model.zip, teacher.json, evaluations.npz,
                  tb/): ``load_teacher(OUT/model)`` and ``policy-kd evaluate --teacher OUT/model`` read it
    OUT/student/  the same network as a policy_kd student folder (student.json, best.pt), for
                  ``policy-kd evaluate --teacher TEACHER --student OUT/student``

``--weight 0`` trains the same student, with the same hyperparameters, from scratch: the baseline.

A run checkpoints every ``--checkpoint-freq`` env steps and on SIGINT/SIGTERM (``OUT/model/checkpoint/``:
the SB3 model, its replay buffer or VecNormalize statistics and the callback's minibatch RNG, annealing
horizon and log), and ``policy-kd kickstart --resume --out OUT`` continues it with its saved options
(``--n-timesteps`` may extend it; the weight schedule keeps its horizon). As with train-teacher, the resumed
envs start new episodes, so a resumed run is not bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from torch import nn

from policy_kd.config import to_dict
from policy_kd.errors import PolicyKDError
from policy_kd.losses import LOSSES, LossConfig, check_loss_for_kind, compute_loss
from policy_kd.options import LossOptions, RunOptions, TeacherTrainingOptions, check_choice, check_ranges
from policy_kd.record import space_json
from policy_kd.run import (
    atomic_torch_save,
    job,
    lock_out_dir,
    prepare_out_dir,
    read_run_config,
    write_json,
    write_run_info,
)
from policy_kd.students import StudentSpec, build_student, count_params, save_student, width_for_budget
from policy_kd.teacher import (
    Teacher,
    algo_class,
    load_preset,
    load_teacher,
    policy_param_count,
    train_teacher,
)
from policy_kd.teachers import sb3
from policy_kd.teachers.sb3 import algo_name, check_supported, sample_states
from policy_kd.training import student_info

ANNEALS = ("linear", "step", "constant")
STUDENT_ALGOS = ("dqn", "ppo", "a2c", "sac", "tqc", "td3", "ddpg")
#: The student algorithms whose policy has the same kind of outputs as a teacher of each kind: a Box
#: teacher's outputs are compared with a student of the same head (Gaussian, squashed, deterministic).
STUDENTS_FOR_KIND = {
    "q_values": ("dqn", "ppo", "a2c"),
    "quantiles": ("dqn", "ppo", "a2c"),
    "logits": ("dqn", "ppo", "a2c"),
    "gaussian": ("ppo", "a2c"),
    "squashed_gaussian": ("sac", "tqc"),
    "deterministic": ("td3", "ddpg"),
    "actions": ("dqn", "ppo", "a2c"),  # Discrete only (a Box action-only teacher is refused)
}
#: A continuous student's outputs agree with the teacher's when every dimension is within this (the
#: outputs' own scale: a Gaussian mean, a pre-squash mean, or an action in [-1, 1]).
CONTINUOUS_AGREEMENT = 0.1
# Losses that compare softmaxes: a DQN student's Q-values enter them divided by tau (see the module doc).
SOFTMAX_LOSSES = ("kl", "kl_entropy", "nll")
#: Distillation minibatch size for an algorithm without a ``batch_size`` of its own (A2C).
FALLBACK_BATCH_SIZE = 64
#: Training env steps for a preset that names none.
DEFAULT_N_TIMESTEPS = 100_000
_ACTIVATION_NAMES = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.ELU: "elu", nn.GELU: "gelu"}


def distill_weight(step: int, *, weight: float, anneal: str, horizon: int) -> float:
    """The distillation weight ``lambda_t`` after ``step`` env steps.

    ``linear``: ``weight * (1 - step / horizon)``, 0 from ``horizon`` on; ``step``: ``weight`` before
    ``horizon``, 0 from it on; ``constant``: ``weight`` always.
    """
    if anneal == "constant":
        return weight
    if anneal not in ANNEALS:
        raise ValueError(f"unknown anneal {anneal!r}; choose one of {', '.join(ANNEALS)}")
    if step >= horizon:
        return 0.0
    return weight if anneal == "step" else weight * (1.0 - step / horizon)


@dataclass(frozen=True)
class KickstartConfig(TeacherTrainingOptions, LossOptions, RunOptions):
    """Train a small student with SB3 DQN/PPO/A2C on the env reward plus an annealed distillation loss
    toward a fixed teacher (kickstarting; --weight 0 trains the same student from scratch)."""

    teacher: str | None = None
    """Teacher: a train-teacher run folder, an rl-baselines3-zoo run folder (logs/ALGO/ENV_1), hf://ORG/REPO[@REVISION] (a zoo agent on the Hugging Face Hub; hub extra), an SB3 .zip (then --env is required), or py:PKG.MODULE:NAME (a factory returning a teacher that is not an SB3 model). Its .zip and .pkl files are unpickled code, and py: runs the module: load only trusted ones."""
    env: str | None = None
    """Environment id, for a plain .zip --teacher; another version of a run folder's env (LunarLander-v3 for a LunarLander-v2 teacher) runs it there if the spaces match."""
    algo: str = "dqn"
    """The student's RL algorithm (its preset for the env comes from agents/<algo>.yml): dqn, ppo or a2c for a
    discrete teacher; ppo or a2c for a Gaussian (PPO/A2C) one, sac or tqc for a SAC/TQC one, td3 or ddpg for
    a TD3/DDPG one."""
    out: str | None = None
    """Run folder to create (refused if it exists, unless --force)."""
    student_hidden: tuple[int, ...] | None = None
    """The student's hidden widths (its SB3 net_arch; PPO/A2C: the actor's and the critic's), e.g.
    --student-hidden 32 32; overrides --params-fraction."""
    critic_hidden: tuple[int, ...] | None = None
    """PPO/A2C: the critic's hidden widths, e.g. --critic-hidden 64 64; default: the actor's. Only the actor
    is deployed (and counted against the teacher), so a larger critic costs nothing at run time and gives
    the small actor better advantages. SAC/TQC/TD3/DDPG critics keep the preset's size whatever this is."""
    params_fraction: float = 0.01
    """Student size as a fraction of the teacher's policy parameters (equal widths solved for)."""
    layers: int = 2
    """Hidden layers of a student sized by --params-fraction."""
    weight: float = 1.0
    """Initial distillation weight lambda_0; 0 trains the student from scratch (the baseline)."""
    anneal: str = "linear"
    """How lambda_t falls: linear (to 0 at the horizon), step (lambda_0, then 0 at the horizon) or constant."""
    anneal_fraction: float = 0.5
    """The horizon as a fraction of the training steps."""
    distill_batch_size: int | None = None
    """States per distillation minibatch; default: the algorithm's batch_size."""
    seed: int = 0
    """Seed for the student's weights, its envs and its distillation minibatches."""
    checkpoint_freq: int = 100_000
    """Env steps between resumable checkpoints in OUT/model/checkpoint/ (also written on SIGINT/SIGTERM); 0: none."""
    resume: bool = False
    """Continue the interrupted run in --out from its checkpoint, with its saved options (--n-timesteps may
    extend it). The checkpoint's .zip and .pkl files are unpickled code: resume only runs you trust."""

    def validate(self) -> None:
        if self.resume:
            if self.out is None:
                raise PolicyKDError("--resume needs --out OUT (the interrupted kickstart run)")
            check_ranges(self, positive=("n_timesteps",))
            return
        if self.teacher is None:
            raise PolicyKDError("kickstart needs a teacher: pass --teacher DIR (a train-teacher run folder)")
        check_choice("algo", self.algo, STUDENT_ALGOS, what="algo")
        self.validate_loss(LOSSES)  # which of them fits the teacher is checked once it is loaded
        self.validate_run()
        check_choice("anneal", self.anneal, ANNEALS)
        self.validate_training()
        check_ranges(
            self,
            positive=("params_fraction", "layers", "distill_batch_size"),
            non_negative=("weight", "checkpoint_freq"),
        )
        if not 0.0 < self.anneal_fraction <= 1.0:
            raise PolicyKDError(f"--anneal-fraction must lie in (0, 1], got {self.anneal_fraction}")
        for name in ("student_hidden", "critic_hidden"):
            widths = getattr(self, name)
            if widths is not None and (not widths or min(widths) <= 0):
                flag = "--" + name.replace("_", "-")
                raise PolicyKDError(f"{flag} needs positive widths, got {list(widths)}")
        # the same split as student_preset's: only the on-policy branch builds its critic from widths
        if self.critic_hidden is not None and (self.algo == "dqn" or self.algo in sb3.ACTOR_CRITIC_ALGOS):
            raise PolicyKDError(
                f"--critic-hidden sizes a PPO/A2C student's critic; --algo {self.algo} has "
                + ("no critic" if self.algo == "dqn" else "critics of the preset's size")
                + ": drop it"
            )


# ------------------------------------------------------------------------------------------- the callback


class Kickstart(BaseCallback):
    """Add ``lambda_t * grad L_distill(student, teacher)`` to the gradient of every SB3 update.

    :param teacher: the fixed teacher; it labels raw observations (its own normalisation applied inside)
    :param loss: which distillation loss, with its settings
    :param weight: lambda_0
    :param anneal: ``linear``, ``step`` or ``constant`` (see :func:`distill_weight`)
    :param horizon: env steps at which lambda_t reaches 0
    :param batch_size: states per distillation minibatch (default: the algorithm's ``batch_size``)
    :param seed: seeds the minibatch draws

    ``weights`` holds ``(env step, lambda_t)`` for every env step count at which SB3 updated the student;
    ``distill_steps`` counts the updates that got a distillation term, ``log`` one summary per rollout.
    """

    def __init__(
        self,
        teacher: Teacher,
        loss: LossConfig,
        *,
        weight: float,
        anneal: str,
        horizon: int,
        batch_size: int | None = None,
        seed: int = 0,
    ):
        super().__init__()
        if anneal not in ANNEALS:
            raise PolicyKDError(f"unknown --anneal {anneal!r}; choose one of {', '.join(ANNEALS)}")
        self.teacher, self.loss = teacher, loss
        self.weight, self.anneal, self.horizon = weight, anneal, horizon
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self.weights: list[tuple[int, float]] = []
        self.distill_steps = 0
        self.log: list[dict[str, float]] = []
        self._sums = {"loss": 0.0, "agreement": 0.0, "n": 0}
        self._handle: Any = None

    def weight_at(self, step: int) -> float:
        return distill_weight(step, weight=self.weight, anneal=self.anneal, horizon=self.horizon)

    def checkpoint_state(self) -> dict[str, Any]:
        """What a resumed run continues (train-teacher's checkpoint keeps it beside the model). ``weights``
        is left out: it is ``weight_at`` of each update's step, one entry per update (millions for SAC)."""
        return {
            "rng": self.rng.bit_generator.state,
            "horizon": self.horizon,
            "distill_steps": self.distill_steps,
            "log": self.log,
            "sums": self._sums,
        }

    def restore_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.horizon = int(state["horizon"])
        self.distill_steps = int(state["distill_steps"])
        self.log = list(state["log"])
        self._sums = dict(state["sums"])

    def _init_callback(self) -> None:
        model = self.model
        check_supported(model, "kickstart")
        self.algo = algo_name(model)
        if self.algo not in STUDENTS_FOR_KIND[self.teacher.kind]:
            raise PolicyKDError(
                f"kickstart trains {', '.join(STUDENTS_FOR_KIND[self.teacher.kind])} students from a "
                f"{self.teacher.kind} teacher, not {self.algo}"
            )
        if tuple(model.observation_space.shape or ()) != tuple(self.teacher.observation_space.shape or ()):
            raise PolicyKDError(
                f"the teacher takes observations {self.teacher.observation_space.shape} but the student's env "
                f"gives {model.observation_space.shape}; kickstart a student on the teacher's environment"
            )
        space = model.action_space
        n = int(space.n) if hasattr(space, "n") else int(np.prod(space.shape or ()))  # type: ignore[attr-defined]
        if self.teacher.n_outputs != n or type(space) is not type(self.teacher.action_space):
            raise PolicyKDError(
                f"the teacher acts in {self.teacher.action_space}, the student's env in {model.action_space}"
            )
        self.continuous = self.teacher.continuous
        self.batch_size = self.batch_size or int(getattr(model, "batch_size", None) or FALLBACK_BATCH_SIZE)
        self.scale = self.loss.tau if self.algo == "dqn" and self.loss.name in SOFTMAX_LOSSES else 1.0
        # register_step_pre_hook is torch's public API: the hook runs inside optimizer.step(), after SB3's
        # backward() and gradient clipping, before the parameters move.
        # (an actor-critic student: the actor's optimizer, so the critic's updates get no distillation term)
        self._handle = sb3.actor_optimizer(model, self.algo).register_step_pre_hook(self._add_distillation)

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        t, s = self.num_timesteps, self._sums
        w = self.weight_at(t)
        self.logger.record("kickstart/weight", w)
        if s["n"]:
            loss, agreement = s["loss"] / s["n"], s["agreement"] / s["n"]
            self.logger.record("kickstart/distill_loss", loss)
            self.logger.record("kickstart/agreement", agreement)
            self.log.append(
                {"step": t, "weight": w, "distill_loss": loss, "agreement": agreement, "updates": s["n"]}
            )
            self._sums = {"loss": 0.0, "agreement": 0.0, "n": 0}

    def _on_training_end(self) -> None:
        self._on_rollout_end()
        if self._handle is not None:  # the model goes on without the teacher (e.g. further .learn calls)
            self._handle.remove()
            self._handle = None

    def student_outputs(self, obs: torch.Tensor) -> torch.Tensor:
        """What the loss compares with the teacher's outputs ``(batch, n_actions)``: a DQN student's
        Q-values (divided by tau for softmax losses), a PPO/A2C student's action logits."""
        return sb3.student_outputs(self.model, self.algo, obs, self.scale)

    def _add_distillation(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        t = self.model.num_timesteps
        w = self.weight_at(t)
        if not self.weights or self.weights[-1][0] != t:
            self.weights.append((t, w))
        if w == 0.0:
            return  # no teacher forward pass at all: exactly SB3's update
        model = self.model
        raw = sample_states(model, self.batch_size, self.rng)  # (batch, *obs_shape), as the env gave them
        labels = self.teacher.label(raw).outputs
        target = torch.as_tensor(labels["teacher"], device=model.device)
        vec_normalize = model.get_vec_normalize_env()
        obs = vec_normalize.normalize_obs(raw) if vec_normalize is not None else raw
        obs_t, _ = model.policy.obs_to_tensor(obs)
        with torch.enable_grad():
            if self.continuous:
                out, log_std = sb3.student_gaussian_outputs(model, self.algo, obs_t)  # (batch, action_dim)
                t_log_std = labels.get("teacher_log_std")
                loss = compute_loss(
                    out,
                    target,
                    self.loss,
                    student_log_std=log_std,
                    teacher_log_std=None
                    if t_log_std is None
                    else torch.as_tensor(t_log_std, device=model.device),
                )
            else:
                out = self.student_outputs(obs_t)  # (batch, n_actions)
                loss = compute_loss(out, target, self.loss)
            # backward() adds into .grad, which holds SB3's gradient for this step by now
            (w * loss).backward()
        self.distill_steps += 1
        self._sums["loss"] += float(loss.detach())
        if self.continuous:
            close = ((out.detach() - target).abs() <= CONTINUOUS_AGREEMENT).all(dim=-1)
            self._sums["agreement"] += float(close.float().mean())
        else:
            self._sums["agreement"] += float((out.argmax(-1) == target.argmax(-1)).float().mean())
        self._sums["n"] += 1


# ------------------------------------------------------------------------------------- the student folder


def export_sb3_student(model: BaseAlgorithm, out: Path, info: dict[str, Any]) -> tuple[Path | None, str]:
    """Write an SB3 MLP student as a policy_kd student folder (``student.json``, ``best.pt``) with the same
    outputs (Q-values, logits, a Gaussian mean and log-std, a deterministic action) and, for Box actions,
    the same bounds; return (folder or None, why not)."""
    algo = algo_name(model)
    if model.get_vec_normalize_env() is not None:
        return None, "the student was trained on normalised observations (VecNormalize)"
    head, why_not = _student_head(model, algo)
    if head is None:
        return None, why_not
    extractor = sb3.actor_features_extractor(model, algo)
    if type(extractor).__name__ != "FlattenExtractor":
        return None, f"the student's features extractor is {type(extractor).__name__}, not an MLP's"
    linears, act = sb3.actor_linears(model, algo)
    if len(linears) > 1 and act not in _ACTIVATION_NAMES:
        return None, f"the student's activation {act} has no policy_kd equivalent"
    space = model.action_space
    spec = StudentSpec(
        arch="mlp",
        obs_shape=tuple(model.observation_space.shape or ()),
        n_outputs=int(space.n) if head == "discrete" else int(np.prod(space.shape)),  # type: ignore[attr-defined]
        hidden=tuple(m.out_features for m in linears[:-1]),
        activation=_ACTIVATION_NAMES.get(act, "relu") if act else "relu",  # type: ignore[arg-type]
        head=head,
    )
    net = build_student(spec)
    targets = [m for m in net.net if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for dst, src in zip(targets, linears, strict=True):
            dst.weight.copy_(src.weight.cpu())
            dst.bias.copy_(src.bias.cpu())
        if head != "discrete":
            net.set_action_bounds(space.low.reshape(-1), space.high.reshape(-1))  # type: ignore[attr-defined]
        if head == "gaussian":  # PPO/A2C: the state-independent log-std, as policy_kd's Gaussian head
            net.log_std.copy_(model.policy.log_std.detach().cpu())
    out.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(net.state_dict(), out / "best.pt")
    params = count_params(net)
    save_student(out, spec, {**info, "params": params, "weights": "best.pt"})
    return out, ""


def _student_head(model: BaseAlgorithm, algo: str) -> tuple[str | None, str]:
    """The policy_kd head that reproduces an SB3 student's actions exactly, or None and why there is none."""
    if (
        algo in ("dqn", "ppo", "a2c")
        and not model.policy.squash_output
        and not getattr(model, "use_sde", False)
    ):
        return ("gaussian" if sb3.output_kind(model, algo) == "gaussian" else "discrete"), ""
    if algo in sb3.DETERMINISTIC_ALGOS:
        return "deterministic", ""
    if algo in sb3.SQUASHED_ALGOS:
        return None, (
            f"a {algo} student's std depends on the state, which policy_kd's state-independent log-std "
            "cannot reproduce (evaluate OUT/model instead)"
        )
    return (
        None,
        "the student uses gSDE or squashed actions, which policy_kd's Gaussian head does not reproduce",
    )


# ------------------------------------------------------------------------------------------------ the job


def student_hidden(config: KickstartConfig, teacher: Teacher) -> tuple[int, ...]:
    """The student's widths: --student-hidden, or equal widths within --params-fraction of the teacher."""
    if config.student_hidden is not None:
        return tuple(config.student_hidden)
    budget = math.floor(config.params_fraction * teacher.policy_params)
    in_dim = int(np.prod(teacher.observation_space.shape or ()))
    width = width_for_budget(budget, in_dim, teacher.n_outputs, config.layers)
    return (width,) * config.layers


def _load_kickstart_teacher(config: KickstartConfig) -> Teacher:
    """The fixed teacher, refused unless a student's SB3 training env can reproduce its inputs."""
    teacher = load_teacher(config.teacher, config.env)  # type: ignore[arg-type]
    if teacher.kind == "actions" and teacher.continuous:
        raise PolicyKDError(
            f"kickstart from teacher {config.teacher}, which exposes only its Box actions, is not supported; "
            "distil from its recording instead (policy-kd distill --loss mse)"
        )
    check_loss_for_kind(
        config.loss,
        teacher.kind,
        teacher.continuous,
        only_actions=f"teacher {config.teacher} exposes only its actions (kind actions)",
    )
    algos = STUDENTS_FOR_KIND[teacher.kind]
    if config.algo not in algos:
        raise PolicyKDError(
            f"a {teacher.kind} teacher ({teacher.algo}) kickstarts a student of the same kind of policy: "
            f"pass --algo {' or '.join(algos)}, not {config.algo}"
        )
    if teacher.env_wrappers or teacher.raw_env:
        raise PolicyKDError(
            f"teacher {config.teacher} acts in a zoo-wrapped {teacher.env_id}, which the student's training "
            "env would not reproduce; kickstart from a train-teacher run"
        )
    return teacher


def student_preset(config: KickstartConfig, env_id: str, hidden: tuple[int, ...]) -> dict[str, Any]:
    """The algorithm's preset for ``env_id`` with the student's small ``net_arch`` (PPO/A2C: actor and
    critic alike unless --critic-hidden; SAC/TQC/TD3/DDPG: the actor only, the critics keep the preset's
    size, since only the actor is deployed)."""
    preset = load_preset(config.algo, env_id, config.preset)
    policy_kwargs = dict(preset.get("policy_kwargs") or {})
    if config.algo == "dqn":
        policy_kwargs["net_arch"] = list(hidden)
    elif config.algo in sb3.ACTOR_CRITIC_ALGOS:
        arch = policy_kwargs.get("net_arch")
        # SB3's own defaults when the preset names no size: 256x256 (SAC/TQC), 400x300 (TD3/DDPG)
        qf = arch.get("qf") if isinstance(arch, dict) else arch
        default_qf = [256, 256] if config.algo in sb3.SQUASHED_ALGOS else [400, 300]
        policy_kwargs["net_arch"] = {"pi": list(hidden), "qf": list(qf or default_qf)}
    else:
        policy_kwargs["net_arch"] = {"pi": list(hidden), "vf": list(config.critic_hidden or hidden)}
    return {**preset, "policy_kwargs": policy_kwargs}


def _resumed_config(config: KickstartConfig) -> KickstartConfig:
    """``--resume``: the interrupted run's saved options (with a new --n-timesteps budget, if given)."""
    out = Path(config.out)  # type: ignore[arg-type]
    if not (out / "config.yaml").is_file() or not (out / "student_preset.yaml").is_file():
        raise PolicyKDError(f"{out} holds no kickstart run to resume; start one without --resume")
    lock_out_dir(out, what="kickstart folder")
    if (out / "kickstart.json").is_file():
        raise PolicyKDError(f"{out} holds a finished kickstart run; nothing to resume")
    saved = read_run_config(KickstartConfig, out, progress=config.progress)
    return replace(saved, n_timesteps=config.n_timesteps or saved.n_timesteps)


@job(resumable=True)
def kickstart(config: KickstartConfig) -> Path:
    """Kickstart a student into ``config.out`` (see the module docstring for the layout); return it."""
    config.validate()
    if config.resume:
        config = _resumed_config(config)
    teacher = _load_kickstart_teacher(config)
    algo_class(config.algo)
    env_id = teacher.env_id
    hidden = student_hidden(config, teacher)
    if config.resume:  # the folder and preset the run started with (its lock is taken)
        out = Path(config.out)  # type: ignore[arg-type]
        preset = yaml.safe_load((out / "student_preset.yaml").read_text())[env_id]
    else:
        preset = student_preset(config, env_id, hidden)
        out = prepare_out_dir(
            config.out, force=config.force, what="kickstart folder", inputs=(config.teacher,)
        )
        write_run_info(out, config, job="kickstart")
        (out / "student_preset.yaml").write_text(yaml.safe_dump({env_id: preset}, sort_keys=False))
    n_timesteps = int(config.n_timesteps or preset.get("n_timesteps", DEFAULT_N_TIMESTEPS))
    horizon = max(1, round(config.anneal_fraction * n_timesteps))  # a resumed run restores its own
    torch.set_num_threads(config.threads)
    callback = Kickstart(
        teacher,
        config.loss_config,
        weight=config.weight,
        anneal=config.anneal,
        horizon=horizon,
        batch_size=config.distill_batch_size,
        seed=config.seed,
    )
    rl_config = config.train_teacher_config(
        algo=config.algo,
        env=env_id,
        out=str(out / "model"),
        seed=config.seed,
        n_timesteps=n_timesteps,
        preset=str(out / "student_preset.yaml"),
        threads=config.threads,
        progress=config.progress,
        checkpoint_freq=config.checkpoint_freq,
        resume=config.resume,
    )
    model_dir = train_teacher(
        rl_config, extra_callbacks=[callback], resume_command=f"policy-kd kickstart --resume --out {out}"
    )

    best = algo_class(config.algo).load(model_dir / "best_model.zip", device="cpu")
    teacher_meta = teacher.meta()
    student_params = policy_param_count(best, config.algo)
    meta = {
        "env_id": env_id,
        "action_space": space_json(best.action_space, all_bounds=True),
        "observation_space": space_json(best.observation_space),
        "env_spec": teacher.env_spec,
        "teacher": teacher_meta,
    }
    record = {
        "algo": config.algo,
        "weight": config.weight,
        "anneal": config.anneal,
        "horizon": callback.horizon,
    }
    info = student_info(  # its "params" is the exported network's count, added by export_sb3_student
        meta,
        loss=config.loss_config,
        params=student_params,
        teacher_params=teacher.policy_params,
        extra={"kickstart": record},
        write_params=False,
    )
    student_dir, why_not = export_sb3_student(best, out / "student", info)
    summary = {
        "config": to_dict(replace(config, progress=False)),
        "env_id": env_id,
        "teacher": teacher_meta,
        "student_hidden": list(hidden),
        "student_params": student_params,
        "params_ratio": student_params / teacher.policy_params,
        "n_timesteps": n_timesteps,
        "horizon": callback.horizon,  # a resumed run's is the one it started with
        "distill_updates": callback.distill_steps,
        "student_folder": str(student_dir) if student_dir else None,
        "student_folder_skipped": why_not or None,
    }
    write_json(out / "kickstart.json", {**summary, **_learning_curve(model_dir, callback)})
    return out


def _learning_curve(model_dir: Path, callback: Kickstart) -> dict[str, Any]:
    """The student's best return, its evaluation curve and the distillation log, for kickstart.json."""
    evals = np.load(model_dir / "evaluations.npz") if (model_dir / "evaluations.npz").is_file() else None
    trained = json.loads((model_dir / "teacher.json").read_text())
    return {
        "best_eval_mean_return": trained["best_eval_mean_return"],
        "resumed": bool(trained.get("resumed")),
        "curve": {
            "timesteps": evals["timesteps"].tolist() if evals is not None else [],
            "mean_return": evals["results"].mean(axis=1).tolist() if evals is not None else [],
        },
        "log": callback.log,
        "seconds": trained["train_seconds"],  # every segment of a resumed run
    }
