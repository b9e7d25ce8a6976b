"""The Teacher adapter: a loaded SB3 model with one-forward-pass access to its outputs and greedy actions
(see the package docstring for what the outputs are)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import (
    VecEnv,
    VecNormalize,
)
from stable_baselines3.common.vec_env.stacked_observations import StackedObservations

from policy_kd.envs import make_env_from_spec
from policy_kd.errors import PolicyKDError
from policy_kd.heads import rescale_to_bounds, sample_gaussian, sample_logits, to_bounds
from policy_kd.teachers import sb3
from policy_kd.teachers.sb3 import _numpy, policy_param_count
from policy_kd.teachers.vec_env import _vec_env


@dataclass(frozen=True)
class Labels:
    """What one teacher forward pass gives for a batch of states."""

    outputs: dict[str, np.ndarray]
    """Buffer field name -> array ``(batch, *shape)`` (see ``Teacher.output_fields``)."""
    greedy: np.ndarray
    """The teacher's deterministic action per state ``(batch, *action_shape)``."""


@dataclass(kw_only=True)
class _EnvRecipe:
    """How to rebuild the environment a teacher saw; shared by what load_teacher finds and the Teacher."""

    env_id: str
    frame_stack: int | None = None
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    env_wrappers: tuple[tuple[str, dict[str, Any]], ...] = ()
    raw_env: bool = False
    normalize_before_stack: bool = False
    trained_env_id: str | None = None
    """The env id the teacher was trained on, when it runs on another version of it (``env_id``)."""

    def recipe(self) -> dict[str, Any]:
        """The recipe's fields as keyword arguments (to pass from a _Source to a Teacher)."""
        return {f.name: getattr(self, f.name) for f in fields(_EnvRecipe)}

    @property
    def env_spec(self) -> dict[str, Any]:
        """How to rebuild the teacher's env, as JSON-able data: ``policy_kd.envs.make_env_from_spec(spec)``
        makes it without loading the teacher (e.g. for a student distilled from its buffer)."""
        return {
            "env_id": self.env_id,
            "raw": self.raw_env,
            "env_kwargs": dict(self.env_kwargs),
            "wrappers": [[name, dict(kwargs)] for name, kwargs in self.env_wrappers],
            "frame_stack": self.frame_stack,
        }

    def make_env(self, *, stacked: bool = True) -> gym.Env:
        """One environment as the teacher saw it, with raw (unnormalised) observations: its wrappers, and
        frame stacking laid out as ``VecFrameStack`` does (unless ``stacked=False``)."""
        return make_env_from_spec(self.env_spec, stacked=stacked)

    def make_vec_env(self, n_envs: int, seed: int | None) -> VecEnv:
        """Envs as the teacher saw them (wrappers, frame stacking), with raw (unnormalised) observations."""
        return _vec_env(lambda: self.make_env(stacked=False), n_envs, seed, self.frame_stack)


@dataclass(kw_only=True)
class Teacher(_EnvRecipe):
    """A loaded SB3 teacher with one-forward-pass access to its outputs and greedy actions.

    The environment is rebuilt as the teacher saw it (:attr:`env_spec`): ``make_env(env_id, raw=raw_env,
    **env_kwargs)``, then ``env_wrappers`` (allow-listed import path, kwargs) in order, then frame stacking. Observations stay raw (what a buffer records);
    ``vec_normalize`` statistics, if any, are applied inside :meth:`label`, before stacking when
    ``normalize_before_stack`` (rl-baselines3-zoo's order) and after it otherwise (train-teacher's).
    """

    model: BaseAlgorithm
    algo: str
    path: str
    vec_normalize: VecNormalize | None = None
    source: str | None = None
    """What ``load_teacher`` was given (run folder, ``.zip`` or ``hf://`` address): load it again from this."""
    record_q: bool = False
    """Also label each state with ``teacher_q``, the critic's value at the teacher's deterministic action
    (SAC, TQC, TD3, DDPG; ``record --record-q``): set it with :meth:`with_q`."""

    def __post_init__(self) -> None:
        # SB3's policy.device walks the parameters on every access (~50 µs): look it up once
        self._device = self.model.policy.device
        space = self.model.action_space
        if not isinstance(space, (gym.spaces.Discrete, gym.spaces.Box)):
            raise PolicyKDError(
                f"teacher {self.path} acts in {space}; supported action spaces are Discrete and Box"
            )
        self.model.policy.set_training_mode(False)

    def with_q(self) -> Teacher:
        """Label states with the critic's ``teacher_q`` too (refused for a teacher without a critic over
        continuous actions); returns ``self``."""
        if self.algo not in sb3.ACTOR_CRITIC_ALGOS:
            raise PolicyKDError(
                f"--record-q needs a teacher with a critic Q(s, a) ({', '.join(sb3.ACTOR_CRITIC_ALGOS)}), "
                f"not {self.algo}; drop --record-q"
            )
        self.record_q = True
        return self

    def critic_value(self, obs: np.ndarray, scaled_actions: torch.Tensor) -> torch.Tensor:
        """The critic's value ``(batch,)`` of actions scaled to ``[-1, 1]`` at a batch of raw observations,
        differentiable in ``scaled_actions`` (critic guidance); see :func:`~policy_kd.teachers.sb3.critic_value`."""
        if self.algo not in sb3.ACTOR_CRITIC_ALGOS:
            raise PolicyKDError(
                f"critic guidance needs a teacher with a critic Q(s, a) ({', '.join(sb3.ACTOR_CRITIC_ALGOS)}), "
                f"not {self.algo}; set --critic-weight 0"
            )
        # the critic is a fixed judge: no gradient is kept for its own weights
        self.model.policy.critic.requires_grad_(False)
        obs_t = torch.as_tensor(self.normalize_obs(obs), device=self._device)
        return sb3.critic_value(self.model, self.algo, obs_t, scaled_actions.to(self._device))

    @property
    def continuous(self) -> bool:
        return isinstance(self.model.action_space, gym.spaces.Box)

    @property
    def kind(self) -> str:
        """What ``teacher`` holds: ``q_values`` (DQN), ``quantiles`` (QR-DQN: the quantiles' mean),
        ``logits`` (PPO/A2C, discrete), ``gaussian`` or ``squashed_gaussian`` (PPO/A2C, Box; SAC/TQC: the
        pre-squash mean), ``deterministic`` (TD3/DDPG: the action scaled to ``[-1, 1]``)."""
        return sb3.output_kind(self.model, self.algo)

    @property
    def observation_space(self) -> gym.Space:
        return self.model.observation_space

    @property
    def action_space(self) -> gym.spaces.Discrete | gym.spaces.Box:
        return self.model.action_space  # type: ignore[return-value]

    @property
    def n_outputs(self) -> int:
        """Discrete: the number of actions. Box: the action dimension (the flattened action shape)."""
        space = self.action_space
        return int(np.prod(space.shape)) if isinstance(space, gym.spaces.Box) else int(space.n)

    @property
    def policy_params(self) -> int:
        return policy_param_count(self.model, self.algo)

    def meta(self) -> dict[str, Any]:
        """What a buffer or run records about its teacher (JSON-able)."""
        return {
            "kind": self.kind,
            "algo": self.algo,
            "path": str(Path(self.path).resolve()),
            "source": self.source,
            "trained_env_id": self.trained_env_id,
            "policy_params": self.policy_params,
            "n_outputs": self.n_outputs,
        }

    def output_fields(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Buffer fields this teacher labels each state with: name -> (dtype, per-row shape).

        ``teacher`` is always there: the output a student is distilled toward (see the module docstring).
        """
        return {
            "teacher": ("float32", (self.n_outputs,)),
            **sb3.extra_output_fields(self.model, self.algo, self.n_outputs, record_q=self.record_q),
        }

    def normalize_obs(self, obs: np.ndarray) -> np.ndarray:
        """Raw observations as the teacher's network takes them (VecNormalize statistics applied)."""
        vn = self.vec_normalize
        if vn is None:
            return obs
        if not (self.normalize_before_stack and self.frame_stack):
            return vn.normalize_obs(obs)
        # rl-baselines3-zoo normalises each frame, then stacks: undo the stack, normalise, restack.
        space = vn.observation_space  # one frame's
        _, axis, _, _ = StackedObservations.compute_stacking(self.frame_stack, space)  # type: ignore[arg-type]
        frames = np.split(np.asarray(obs), self.frame_stack, axis=axis)
        return np.concatenate([vn.normalize_obs(f) for f in frames], axis=axis)

    @torch.no_grad()
    def label(self, obs: np.ndarray) -> Labels:
        """One forward pass over a batch of raw observations: the recorded outputs and the greedy action."""
        policy = self.model.policy
        obs = self.normalize_obs(obs)
        if obs.shape[1:] == policy.observation_space.shape:
            # Already a batch in the network's layout: skip obs_to_tensor's per-call checks (~60 µs a
            # step, as much as the forward pass of a small MLP). Scaling happens inside the network.
            obs_t = torch.as_tensor(obs, device=self._device)
        else:  # e.g. channel-last images SB3 transposes for the network
            obs_t, _ = policy.obs_to_tensor(obs)
        outputs = sb3.forward_outputs(self.model, self.algo, obs_t, record_q=self.record_q)
        acted_on = outputs["teacher"]  # Q-values, the quantiles' mean, logits: greedy is their argmax
        greedy = self._to_action(acted_on) if self.continuous else acted_on.argmax(axis=-1)
        return Labels(outputs=outputs, greedy=greedy)

    def head_module(self) -> torch.nn.Module:
        """The teacher's final linear layer: its input is the feature layer hint distillation matches."""
        return sb3.head_module(self.model, self.algo)

    @property
    def feature_dim(self) -> int:
        return int(self.head_module().in_features)

    def features(self, obs: np.ndarray) -> np.ndarray:
        """The input of the teacher's output layer for a batch of raw observations ``(batch, feature_dim)``.

        Captured by a forward pre-hook during the usual labelling pass, so it is exactly what the
        teacher's head saw, whatever the feature extractor (MLP, NatureCNN, MinAtar CNN).
        """
        captured: list[torch.Tensor] = []
        handle = self.head_module().register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            self.label(obs)
        finally:
            handle.remove()
        return _numpy(captured[0].reshape(len(captured[0]), -1))

    def _to_action(self, pre_squash: np.ndarray) -> np.ndarray:
        """A Gaussian sample or mean -> the action SB3 takes: clipped to the bounds, or tanh-squashed and
        scaled to them; a deterministic actor's ``[-1, 1]`` output rescaled to them."""
        space = self.action_space
        assert isinstance(space, gym.spaces.Box)
        if self.algo in sb3.DETERMINISTIC_ALGOS:
            action = rescale_to_bounds(pre_squash.reshape(-1, *space.shape), space.low, space.high)
            return action.astype(space.dtype, copy=False)
        squash = bool(self.model.policy.squash_output)
        action = to_bounds(pre_squash.reshape(-1, *space.shape), space.low, space.high, squash=squash)
        return action.astype(space.dtype, copy=False)

    def sample(self, labels: Labels, rng: np.random.Generator) -> np.ndarray:
        """Actions drawn from the teacher's own distribution: softmax of logits, or mean + std * N(0, 1)
        (clipped or squashed as SB3 does); DQN, QR-DQN and the deterministic TD3/DDPG actors act greedily."""
        if self.algo in ("dqn", "qrdqn", *sb3.DETERMINISTIC_ALGOS):
            return labels.greedy
        if not self.continuous:
            return sample_logits(labels.outputs["teacher"], rng)
        mean, log_std = labels.outputs["teacher"], labels.outputs["teacher_log_std"]
        return self._to_action(sample_gaussian(mean, log_std, rng, noise_dtype=np.float32))

    def outputs(self, obs: np.ndarray) -> np.ndarray:
        """The ``teacher`` field for a batch of raw observations: ``(batch, n_outputs)`` float32."""
        return self.label(obs).outputs["teacher"]

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Actions for a batch of observations (the same protocol students follow)."""
        labels = self.label(obs)
        return labels.greedy if deterministic else self.sample(labels, np.random.default_rng())

    def file_bytes(self) -> int:
        return Path(self.path).stat().st_size
