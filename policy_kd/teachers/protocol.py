"""The teacher protocol: what record, distill, evaluate and kickstart need from a teacher, whoever made it.

A teacher takes a batch of raw observations and gives, in one call, the outputs a buffer records and the
action it takes (:class:`Labels`). What the outputs are is its declared ``kind``:

=====================  =========================================  ===========================================
kind                   ``teacher`` field ``(n_outputs,)``          greedy action / sample
=====================  =========================================  ===========================================
``q_values``           Q-values                                    argmax / argmax (value-based teachers act greedily)
``quantiles``          the quantiles' mean (SB3 QR-DQN only)       argmax / argmax
``logits``             action logits                               argmax / softmax draw
``gaussian``           Gaussian mean (+ ``teacher_log_std``)       mean clipped to the bounds / mean + std * N(0, 1)
``squashed_gaussian``  pre-tanh mean (+ ``teacher_log_std``)       tanh-squashed mean / squashed draw
``deterministic``      the action scaled to ``[-1, 1]`` (TD3)      rescaled to the bounds / the same
``actions``            Discrete: one-hot of the action taken;      the action / the action
                       Box: the action
=====================  =========================================  ===========================================

``actions`` is a teacher that exposes only what it does (a scripted controller, a human, a dataset): a
student can only clone its behaviour (``--loss nll`` for Discrete, ``mse`` for Box), see ``docs/teachers.md``.

:class:`TeacherProtocol` is that contract as a ``typing.Protocol``; :class:`BaseTeacher` implements its generic
parts (sampling by kind, bounds, buffer fields, metadata) so a teacher only supplies :meth:`BaseTeacher.label`
and its spaces. The SB3 adapter (:class:`~policy_kd.teachers.Teacher`) and the teachers made by
:func:`~policy_kd.teachers.from_callable` / :func:`~policy_kd.teachers.from_module` both subclass it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
import torch

from policy_kd.errors import PolicyKDError
from policy_kd.heads import rescale_to_bounds, sample_gaussian, sample_logits, sample_outputs, to_bounds
from policy_kd.spaces import action_nvec

KINDS: tuple[str, ...] = (
    "q_values",
    "quantiles",
    "logits",
    "gaussian",
    "squashed_gaussian",
    "deterministic",
    "actions",
)
"""Every teacher output kind (see the module docstring)."""
GAUSSIAN_KINDS = ("gaussian", "squashed_gaussian")
DISCRETE_KINDS = ("q_values", "quantiles", "logits", "actions")
CONTINUOUS_KINDS = (*GAUSSIAN_KINDS, "deterministic", "actions")


@dataclass(frozen=True)
class Labels:
    """What one teacher forward pass gives for a batch of states."""

    outputs: dict[str, np.ndarray]
    """Buffer field name -> array ``(batch, *shape)`` (see ``Teacher.output_fields``)."""
    greedy: np.ndarray
    """The teacher's deterministic action per state ``(batch, *action_shape)``."""


@runtime_checkable
class TeacherProtocol(Protocol):
    """What every part of policy_kd reads from a teacher (SB3 or not).

    Observations are raw ``(batch, *obs_shape)`` arrays as the env returns them; the teacher applies its own
    normalisation. :class:`BaseTeacher` implements all but ``label``, the spaces and the environment recipe.
    """

    kind: str
    algo: str
    path: str
    env_id: str

    @property
    def observation_space(self) -> gym.Space: ...

    @property
    def action_space(self) -> gym.Space: ...

    @property
    def continuous(self) -> bool: ...

    @property
    def n_outputs(self) -> int: ...

    @property
    def policy_params(self) -> int: ...

    def label(self, obs: np.ndarray) -> Labels: ...

    def sample(self, labels: Labels, rng: np.random.Generator) -> np.ndarray: ...

    def outputs(self, obs: np.ndarray) -> np.ndarray: ...

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray: ...

    def output_fields(self) -> dict[str, tuple[str, tuple[int, ...]]]: ...

    def meta(self) -> dict[str, Any]: ...

    def make_env(self, *, stacked: bool = True) -> gym.Env: ...


def check_kind(kind: str, action_space: gym.Space, what: str, *, kinds: tuple[str, ...] = KINDS) -> None:
    """Refuse a kind that is not one of ``kinds`` or does not fit the action space, with the kinds that do."""
    if isinstance(action_space, gym.spaces.Discrete):
        allowed: tuple[str, ...] = DISCRETE_KINDS
    elif isinstance(action_space, gym.spaces.Box):
        allowed = CONTINUOUS_KINDS
    else:
        raise PolicyKDError(f"{what} acts in {action_space}; supported action spaces are Discrete and Box")
    allowed = tuple(k for k in allowed if k in kinds)
    if kind not in allowed:
        raise PolicyKDError(
            f"{what} declares kind {kind!r}, which does not fit {action_space}; choose one of {', '.join(allowed)}"
        )


def default_params(observation_space: gym.Space, action_space: gym.Space) -> int:
    """The size of SB3's default MLP policy (two hidden layers of 64) for these spaces: the reference a
    student is sized against (``--params-fraction``) when a teacher has no parameters of its own (a scripted
    controller, a dataset)."""
    obs = int(np.prod(observation_space.shape or (1,)))
    out = (
        int(np.prod(action_space.shape)) if isinstance(action_space, gym.spaces.Box) else int(action_space.n)
    )  # type: ignore[attr-defined]
    return (obs * 64 + 64) + (64 * 64 + 64) + (64 * out + out)


class BaseTeacher:
    """The generic half of a teacher: everything that follows from its ``kind``, spaces and :meth:`label`.

    A subclass supplies ``kind``, ``observation_space``, ``action_space``, ``algo``, ``path``, ``label`` and an
    environment recipe (``env_id``, ``make_env``, ``make_vec_env``, ``env_spec``; see
    ``policy_kd.teachers.teacher._EnvRecipe``); it may override ``policy_params``, ``state_dict`` (what
    identifies its weights), ``network`` (the module timed and counted by evaluate) and ``head_module`` (for
    hint distillation).
    """

    kind: str
    algo: str
    path: str
    source: str | None
    vec_normalize: Any = None
    """SB3 ``VecNormalize`` statistics applied inside :meth:`label`; None for teachers that normalise (or
    not) themselves."""
    format: str = "sb3"
    """What the teacher is, in evaluate's cost table (``sb3``, ``torch``, ``python``)."""

    observation_space: Any
    action_space: Any

    def label(self, obs: np.ndarray) -> Labels:  # pragma: no cover - the subclass's
        raise NotImplementedError

    @property
    def continuous(self) -> bool:
        return isinstance(self.action_space, gym.spaces.Box)

    @property
    def nvec(self) -> tuple[int, ...] | None:
        """Choices per component of a MultiDiscrete/MultiBinary action (2 per bit); None for other spaces."""
        return action_nvec(self.action_space)

    @property
    def n_outputs(self) -> int:
        """Discrete: the number of actions. Box: the action dimension (the flattened action shape).
        MultiDiscrete/MultiBinary: every component's logits side by side (``sum(nvec)``)."""
        space = self.action_space
        if self.nvec is not None:
            return sum(self.nvec)
        return int(np.prod(space.shape)) if isinstance(space, gym.spaces.Box) else int(space.n)

    @property
    def policy_params(self) -> int:
        """Parameters of what chooses actions; a teacher without any is sized as SB3's default MLP."""
        return default_params(self.observation_space, self.action_space)

    def output_fields(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Buffer fields this teacher labels each state with: name -> (dtype, per-row shape).

        ``teacher`` is always there: the output a student is distilled toward (see the module docstring);
        Gaussian teachers add ``teacher_log_std``.
        """
        fields = {"teacher": ("float32", (self.n_outputs,))}
        if self.kind in GAUSSIAN_KINDS:
            fields["teacher_log_std"] = ("float32", (self.n_outputs,))
        return fields

    def normalize_obs(self, obs: np.ndarray) -> np.ndarray:
        """Raw observations as the teacher's network takes them (identity unless a subclass normalises)."""
        return obs

    def to_action(self, pre_squash: np.ndarray) -> np.ndarray:
        """A Gaussian sample or mean -> the action taken: clipped to the bounds, or tanh-squashed and scaled to
        them (``squashed_gaussian``)."""
        space = self.action_space
        assert isinstance(space, gym.spaces.Box)
        if self.kind == "deterministic":  # a TD3/DDPG actor's [-1, 1] output, rescaled linearly
            action = rescale_to_bounds(pre_squash.reshape(-1, *space.shape), space.low, space.high)
            return action.astype(space.dtype, copy=False)
        squash = self.kind == "squashed_gaussian"
        action = to_bounds(pre_squash.reshape(-1, *space.shape), space.low, space.high, squash=squash)
        return action.astype(space.dtype, copy=False)

    def sample(self, labels: Labels, rng: np.random.Generator) -> np.ndarray:
        """Actions drawn from the teacher's own distribution: softmax of logits, or mean + std * N(0, 1)
        (clipped or squashed); value-based and action-only teachers act greedily."""
        if self.kind == "logits" and self.nvec is not None:
            drawn = sample_outputs(labels.outputs["teacher"], "multi_discrete", None, rng, nvec=self.nvec)
            return drawn.reshape(len(drawn), *self.action_space.shape)
        if self.kind == "logits":
            return sample_logits(labels.outputs["teacher"], rng)
        if self.kind in GAUSSIAN_KINDS:
            mean, log_std = labels.outputs["teacher"], labels.outputs["teacher_log_std"]
            return self.to_action(sample_gaussian(mean, log_std, rng, noise_dtype=np.float32))
        return labels.greedy

    def outputs(self, obs: np.ndarray) -> np.ndarray:
        """The ``teacher`` field for a batch of raw observations: ``(batch, n_outputs)`` float32."""
        return self.label(obs).outputs["teacher"]

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Actions for a batch of observations (the same protocol students follow)."""
        labels = self.label(obs)
        return labels.greedy if deterministic else self.sample(labels, np.random.default_rng())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors that identify this teacher (:func:`teacher_digest` hashes them); none by default."""
        return {}

    def network(self) -> torch.nn.Module | None:
        """The module that maps a batch of observations to the ``teacher`` output (evaluate times it and
        counts its FLOPs), or None when there is none."""
        return None

    def head_module(self) -> torch.nn.Module:
        """The teacher's final linear layer, whose input hint distillation matches."""
        raise PolicyKDError(
            f"teacher {self.path} ({self.algo}) exposes no feature layer; hint distillation needs an SB3 "
            "teacher or one made with policy_kd.teachers.from_module (drop --hint-weight)"
        )

    @property
    def feature_dim(self) -> int:
        return int(self.head_module().in_features)  # type: ignore[arg-type]

    def features(self, obs: np.ndarray) -> np.ndarray:
        """The input of the teacher's output layer for a batch of raw observations ``(batch, feature_dim)``.

        Captured by a forward pre-hook during the usual labelling pass, so it is exactly what the
        teacher's head saw, whatever the feature extractor.
        """
        captured: list[torch.Tensor] = []
        handle = self.head_module().register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            self.label(obs)
        finally:
            handle.remove()
        return captured[0].reshape(len(captured[0]), -1).detach().cpu().numpy().astype(np.float32, copy=False)

    def file_bytes(self) -> int:
        """Bytes the teacher takes on disk (its weights); 0 when it has none."""
        return 0


def teacher_digest(teacher: BaseTeacher) -> str:
    """sha256 over the teacher's policy weights (every state_dict tensor in name order, with its name,
    dtype and shape) and its observation-normalisation statistics: which teacher labelled a buffer (record),
    and which one an evaluation measured students against (evaluate, sweep)."""
    h = hashlib.sha256()
    for name, t in sorted(teacher.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    rms = getattr(teacher.vec_normalize, "obs_rms", None)
    for part in (getattr(rms, "mean", None), getattr(rms, "var", None)):
        if part is not None:
            h.update(np.ascontiguousarray(part, dtype=np.float64).tobytes())
    return h.hexdigest()
