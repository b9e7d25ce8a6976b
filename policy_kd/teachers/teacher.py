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
from policy_kd.heads import actions_from_outputs
from policy_kd.teachers import sb3
from policy_kd.teachers.protocol import BaseTeacher, Labels
from policy_kd.teachers.sb3 import policy_param_count
from policy_kd.teachers.vec_env import _vec_env


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
class Teacher(_EnvRecipe, BaseTeacher):
    """A loaded SB3 teacher with one-forward-pass access to its outputs and greedy actions (the generic
    parts, sampling by kind included, come from :class:`~policy_kd.teachers.protocol.BaseTeacher`).

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
    values: bool = False
    """Label states with the critic's V(s) too (``teacher_value``; PPO/A2C only), as ``record --values`` asks."""
    record_q: bool = False
    """Also label each state with ``teacher_q``, the critic's value at the teacher's deterministic action
    (SAC, TQC, TD3, DDPG; ``record --record-q``): set it with :meth:`with_q`."""

    def __post_init__(self) -> None:
        # SB3's policy.device walks the parameters on every access (~50 µs): look it up once
        self._device = self.model.policy.device
        space = self.model.action_space
        multi = isinstance(space, gym.spaces.MultiDiscrete | gym.spaces.MultiBinary)
        if not isinstance(space, gym.spaces.Discrete | gym.spaces.Box) and not multi:
            raise PolicyKDError(
                f"teacher {self.path} acts in {space}; supported action spaces are Discrete, Box, "
                "MultiDiscrete and MultiBinary"
            )
        if multi and self.algo not in ("ppo", "a2c"):
            raise PolicyKDError(
                f"teacher {self.path}: {space} actions are supported for ppo and a2c teachers"
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
            **({"teacher_value": ("float32", ())} if self.values else {}),
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
        if self.values:
            outputs["teacher_value"] = sb3.state_values(self.model, obs_t)
        acted_on = outputs["teacher"]  # Q-values, the quantiles' mean, logits: greedy is their argmax
        if self.nvec is not None:  # one argmax per component (a MultiBinary bit: 1 where its logit > 0)
            greedy = actions_from_outputs(acted_on, "multi_discrete", nvec=self.nvec).reshape(
                len(acted_on), *self.action_space.shape
            )
        else:
            greedy = self.to_action(acted_on) if self.continuous else acted_on.argmax(axis=-1)
        return Labels(outputs=outputs, greedy=greedy)

    def head_module(self) -> torch.nn.Module:
        """The teacher's final linear layer: its input is the feature layer hint distillation matches."""
        return sb3.head_module(self.model, self.algo)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The policy's weights (what :func:`~policy_kd.teachers.teacher_digest` hashes)."""
        return self.model.policy.state_dict()

    def network(self) -> torch.nn.Module:
        """The modules that choose actions as one ``nn.Module`` (see ``teachers.sb3.actor_module``)."""
        return sb3.actor_module(self.model, self.algo)

    def file_bytes(self) -> int:
        return Path(self.path).stat().st_size
