"""The SB3 adapter: every access that depends on the algorithm (DQN, QR-DQN, PPO, A2C, SAC, TQC, TD3,
DDPG) in one place.

Which algorithm saved a file and which class loads it; which modules of its policy choose actions, what
they output and how many parameters they hold (for :class:`~policy_kd.teachers.Teacher`, ``policy_kd.cost``
and kickstart's students); and which states a model that is still training learns from (for online
distillation and kickstarting). Everything else in policy_kd reaches SB3 policies through these functions,
so supporting another algorithm means changing this module.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import A2C, DDPG, DQN, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.vec_env import VecTransposeImage, unwrap_vec_wrapper
from torch import nn

from policy_kd.errors import PolicyKDError

ALGOS: tuple[str, ...] = ("dqn", "qrdqn", "ppo", "a2c", "sac", "tqc", "td3", "ddpg")
"""Teacher algorithms. ``qrdqn`` and ``tqc`` come from sb3-contrib (the ``contrib`` extra), imported only
when used."""
SQUASHED_ALGOS = ("sac", "tqc")
"""Off-policy actors with a squashed (tanh) Gaussian policy: recorded as its pre-squash mean and log-std."""
DETERMINISTIC_ALGOS = ("td3", "ddpg")
"""Off-policy deterministic actors: recorded as the action scaled to ``[-1, 1]`` (the actor's tanh output)."""
ACTOR_CRITIC_ALGOS = SQUASHED_ALGOS + DETERMINISTIC_ALGOS
"""Algorithms with a critic ``Q(s, a)`` over continuous actions (``record --record-q``, critic guidance)."""
CONTRIB_HINT = "pip install 'policy-kd[contrib]'"


def algo_class(algo: str) -> type[BaseAlgorithm]:
    """The SB3 algorithm class for ``algo``; sb3-contrib's QR-DQN and TQC are imported only here, on demand."""
    if algo in ("qrdqn", "tqc"):
        try:
            import sb3_contrib
        except ImportError:
            raise PolicyKDError(
                f"{algo} teachers need sb3-contrib; install it with: {CONTRIB_HINT}"
            ) from None
        return sb3_contrib.QRDQN if algo == "qrdqn" else sb3_contrib.TQC
    classes: dict[str, type[BaseAlgorithm]] = {
        "dqn": DQN,
        "ppo": PPO,
        "a2c": A2C,
        "sac": SAC,
        "td3": TD3,
        "ddpg": DDPG,
    }
    if algo not in classes:
        raise PolicyKDError(f"unknown algo {algo!r}; choose one of {', '.join(ALGOS)}")
    return classes[algo]


def _zip_data(zip_path: Path) -> dict[str, Any]:
    """The JSON ``data`` entry of an SB3 ``.zip``, read without unpickling anything."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            data = json.loads(archive.read("data"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise PolicyKDError(
            f"could not read SB3 model {zip_path} ({type(exc).__name__}: {exc})".splitlines()[0]
        ) from None
    if not isinstance(data, dict):
        raise PolicyKDError(f"could not read SB3 model {zip_path} (its data entry is not a mapping)")
    return data


def _detect_algo(zip_path: Path) -> str:
    """Which algorithm saved ``zip_path``, from its policy class's module (nothing is unpickled)."""
    data = _zip_data(zip_path)
    policy_class = data.get("policy_class")
    module = policy_class.get("__module__", "") if isinstance(policy_class, dict) else ""
    if module.startswith("stable_baselines3.dqn."):
        return "dqn"
    if module.startswith("sb3_contrib.qrdqn."):
        return "qrdqn"
    if module.startswith("stable_baselines3.sac."):
        return "sac"
    if module.startswith("sb3_contrib.tqc."):
        return "tqc"
    if module.startswith("stable_baselines3.td3."):
        # DDPG is TD3 with one actor update per critic update and no target policy smoothing; both save
        # the same policy class
        ddpg = data.get("policy_delay") == 1 and data.get("target_noise_clip") == 0.0
        return "ddpg" if ddpg else "td3"
    if module == "stable_baselines3.common.policies":  # ActorCriticPolicy and its Cnn/MultiInput variants
        if "cg_max_steps" in data:
            algo = "trpo"  # sb3-contrib's TRPO shares the policy class
        else:
            return "ppo" if "clip_range" in data else "a2c"
    else:
        # e.g. stable_baselines3.sac.policies -> sac, sb3_contrib.common.recurrent.policies -> recurrent
        parts = module.split(".")
        algo = (parts[2] if parts[1:2] == ["common"] else parts[1]) if len(parts) > 2 else "unknown"
    raise PolicyKDError(
        f"{zip_path} was saved by {algo!r} (policy class from {module or 'an unknown module'}); "
        f"supported teachers are {', '.join(ALGOS)}"
    )


def policy_param_count(model: BaseAlgorithm, algo: str) -> int:
    """Parameters of the modules that choose actions: DQN's q_net and QR-DQN's quantile_net (not their
    targets), PPO/A2C's actor (features extractor, policy MLP, action head, and log_std for Gaussian
    policies; not the value head), SAC/TQC/TD3/DDPG's actor (not the critics, not the target actor)."""
    policy = model.policy
    extra: list[torch.nn.Parameter] = []
    if algo in ACTOR_CRITIC_ALGOS:
        modules: list[torch.nn.Module] = [policy.actor]
    elif algo == "dqn":
        modules = [policy.q_net]
    elif algo == "qrdqn":
        modules = [policy.quantile_net]
    else:
        modules = [policy.pi_features_extractor, policy.mlp_extractor.policy_net, policy.action_net]
        extra = [policy.log_std] if isinstance(getattr(policy, "log_std", None), torch.nn.Parameter) else []
    params = {id(p): p for m in modules for p in m.parameters()} | {id(p): p for p in extra}
    return sum(p.numel() for p in params.values())


# ----------------------------------------------------------------------------- what a policy outputs


def output_kind(model: BaseAlgorithm, algo: str) -> str:
    """What the ``teacher`` buffer field holds for this model (``Teacher.kind``, see the package docstring)."""
    if algo == "dqn":
        return "q_values"
    if algo == "qrdqn":
        return "quantiles"
    if algo in SQUASHED_ALGOS:
        return "squashed_gaussian"
    if algo in DETERMINISTIC_ALGOS:
        return "deterministic"
    if not isinstance(model.action_space, gym.spaces.Box):
        return "logits"
    return "squashed_gaussian" if model.policy.squash_output else "gaussian"


def extra_output_fields(
    model: BaseAlgorithm, algo: str, n_outputs: int, *, record_q: bool = False
) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Buffer fields recorded beside ``teacher``: name -> (dtype, per-row shape). ``record_q`` adds
    ``teacher_q`` (the critic's value at the teacher's deterministic action, see :func:`critic_value`)."""
    q = {"teacher_q": ("float32", ())} if record_q else {}
    if algo == "qrdqn":
        return {"teacher_quantiles": ("float32", (int(model.policy.n_quantiles), n_outputs))}
    if algo in DETERMINISTIC_ALGOS:
        return q
    if isinstance(model.action_space, gym.spaces.Box):
        return {"teacher_log_std": ("float32", (n_outputs,)), **q}
    return {}


def forward_outputs(
    model: BaseAlgorithm, algo: str, obs_t: torch.Tensor, *, record_q: bool = False
) -> dict[str, np.ndarray]:
    """One forward pass of the modules that choose actions on a batch in the network's layout: buffer field
    name -> array. ``teacher`` is what the policy acts on (Q-values, the quantiles' mean, logits, the
    Gaussian's (pre-squash) mean, or a deterministic actor's action scaled to ``[-1, 1]``); QR-DQN adds
    ``teacher_quantiles``, a Gaussian policy ``teacher_log_std``, ``record_q`` the critic's ``teacher_q``."""
    policy = model.policy
    if algo in ACTOR_CRITIC_ALGOS:
        scaled, out = _actor_outputs(model, algo, obs_t)
        if record_q:
            out["teacher_q"] = _numpy(critic_value(model, algo, obs_t, scaled))
        return out
    if algo == "dqn":
        return {"teacher": _numpy(policy.q_net(obs_t))}  # (batch, n_actions)
    if algo == "qrdqn":
        quantiles = _numpy(policy.quantile_net(obs_t))  # (batch, n_quantiles, n_actions)
        q = quantiles.mean(axis=1)  # (batch, n_actions): what QR-DQN acts on
        return {"teacher": q, "teacher_quantiles": quantiles}
    features = policy.extract_features(obs_t, policy.pi_features_extractor)
    latent_pi = policy.mlp_extractor.forward_actor(features)
    if not isinstance(model.action_space, gym.spaces.Box):
        return {"teacher": _numpy(policy.action_net(latent_pi))}  # (batch, n_actions)
    # The action distribution (diagonal Gaussian, or gSDE's state-dependent one) in one pass.
    normal = policy._get_action_dist_from_latent(latent_pi).distribution
    mean, log_std = _numpy(normal.mean), _numpy(normal.stddev.log())  # (batch, action_dim) each
    return {"teacher": mean, "teacher_log_std": log_std}


def _actor_outputs(
    model: BaseAlgorithm, algo: str, obs_t: torch.Tensor
) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """An off-policy actor's deterministic action scaled to ``[-1, 1]`` (what its critic takes) and its
    buffer fields."""
    actor = model.policy.actor
    if algo in DETERMINISTIC_ALGOS:
        scaled = actor(obs_t)  # (batch, action_dim), the tanh output
        return scaled, {"teacher": _numpy(scaled)}
    # SAC/TQC: the distribution before tanh. The action distribution's own proba_distribution gives the
    # per-state std for both a plain squashed Gaussian and gSDE (whose std depends on the latent features).
    mean, log_std, kwargs = actor.get_action_dist_params(obs_t)
    normal = actor.action_dist.proba_distribution(mean, log_std, **kwargs).distribution
    fields = {"teacher": _numpy(normal.mean), "teacher_log_std": _numpy(normal.stddev.log())}
    return torch.tanh(normal.mean), fields


def critic_value(model: BaseAlgorithm, algo: str, obs_t: torch.Tensor, scaled: torch.Tensor) -> torch.Tensor:
    """The teacher critic's value ``(batch,)`` of actions scaled to ``[-1, 1]`` ``(batch, action_dim)``, as
    its actor is trained to raise it: TD3/DDPG's first Q-network, the minimum of SAC's two, the mean of all
    of TQC's quantiles. Differentiable in ``scaled`` (critic guidance); observations in the network's layout."""
    critic = model.policy.critic
    if algo in DETERMINISTIC_ALGOS:
        return critic.q1_forward(obs_t, scaled).squeeze(-1)
    if algo == "tqc":
        return critic(obs_t, scaled).mean(dim=(1, 2))  # (batch, n_critics, n_quantiles) -> (batch,)
    if algo == "sac":
        return torch.cat(critic(obs_t, scaled), dim=1).min(dim=1).values
    raise PolicyKDError(
        f"a {algo} teacher has no critic over actions; one of {', '.join(ACTOR_CRITIC_ALGOS)} has"
    )


def head_module(model: BaseAlgorithm, algo: str) -> nn.Module:
    """The final linear layer of the modules that choose actions: its input is the feature layer hint
    distillation matches."""
    policy = model.policy
    if algo in ACTOR_CRITIC_ALGOS:
        # SAC: mu is a Linear (a Linear + Hardtanh with gSDE); TD3/DDPG: mu is the whole MLP ending in Tanh
        return [m for m in policy.actor.mu.modules() if isinstance(m, nn.Linear)][-1]
    if algo == "dqn":
        return policy.q_net.q_net[-1]
    if algo == "qrdqn":
        return policy.quantile_net.quantile_net[-1]
    return policy.action_net


def actor_module(model: BaseAlgorithm, algo: str) -> nn.Module:
    """The part of ``model``'s policy that chooses actions, as one ``nn.Module`` mapping a batch of
    observations in the network's layout to the ``teacher`` output (what :func:`forward_outputs` computes):
    DQN's Q-network, QR-DQN's quantile network (averaged), PPO/A2C's actor (features, policy MLP, action
    head), SAC/TQC's pre-squash mean, TD3/DDPG's scaled action. In eval mode; shares the model's
    parameters."""

    class ActorNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.policy = model.policy

        def forward(self, obs: Any) -> Any:
            p = self.policy
            if algo in DETERMINISTIC_ALGOS:
                return p.actor(obs)
            if algo in SQUASHED_ALGOS:
                return p.actor.get_action_dist_params(obs)[0]
            if algo == "dqn":
                return p.q_net(obs)
            if algo == "qrdqn":
                return p.quantile_net(obs).mean(dim=1)
            features = p.extract_features(obs, p.pi_features_extractor)
            return p.action_net(p.mlp_extractor.forward_actor(features))

    return ActorNet().eval()


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.cpu().numpy().astype(np.float32, copy=False)


# ------------------------------------------------------------------------ models that are still training


def algo_name(model: BaseAlgorithm) -> str:
    """``dqn``, ``qrdqn``, ``ppo``, ``a2c``, ``sac``, ``tqc``, ``td3`` or ``ddpg`` for an SB3 (or sb3-contrib)
    model."""
    # The exact class name of the model's class or, for a subclass, of its nearest supported base
    # (matching name suffixes took sb3-contrib's QRDQN for dqn).
    for cls in type(model).__mro__:
        if cls.__name__.lower() in ALGOS:
            return cls.__name__.lower()
    raise PolicyKDError(f"{type(model).__name__} is not one of the supported algorithms {', '.join(ALGOS)}")


def check_supported(model: BaseAlgorithm, what: str) -> None:
    """Refuse models whose stored states are not the env's observations, and actions neither Discrete nor
    a Box."""
    if not isinstance(model.action_space, (gym.spaces.Discrete, gym.spaces.Box)):
        raise PolicyKDError(
            f"{what} supports Discrete and Box actions, not {model.action_space}; distil this teacher from a "
            "recorded buffer with policy-kd distill"
        )
    if not isinstance(model.observation_space, gym.spaces.Box):
        raise PolicyKDError(f"{what} needs array observations, not {model.observation_space}")
    env = model.get_env()
    if env is not None and unwrap_vec_wrapper(env, VecTransposeImage) is not None:
        # SB3 stores transposed (channels-first) frames; students and teachers take the env's layout.
        raise PolicyKDError(f"{what} does not support channels-last image observations (SB3 transposes them)")


def _pool(model: BaseAlgorithm) -> np.ndarray:
    """The stored observations ``(N, *obs_shape)`` the model learns from (a view where possible)."""
    if isinstance(model, OffPolicyAlgorithm):
        buf: Any = model.replay_buffer
    elif isinstance(model, OnPolicyAlgorithm):
        buf = model.rollout_buffer
    else:
        raise PolicyKDError(f"{type(model).__name__} has neither a replay nor a rollout buffer")
    obs = buf.observations
    if isinstance(obs, dict):
        raise PolicyKDError("dict observations are not supported")
    shape = tuple(model.observation_space.shape or ())
    if getattr(buf, "generator_ready", False):
        # PPO's get() flattened the full rollout to (buffer_size * n_envs, *obs_shape) in place
        return obs.reshape(-1, *shape)
    size = buf.buffer_size if buf.full else buf.pos
    return obs[:size].reshape(-1, *shape)  # (buffer_size, n_envs, *obs_shape) -> rows


def sample_states(model: BaseAlgorithm, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` states drawn uniformly, with replacement, from the data ``model`` learns from, as the env
    returned them ``(n, *obs_shape)``.

    Off-policy algorithms: the replay buffer, where SB3 keeps the unnormalised observations. On-policy: the
    latest rollout, stored after ``VecNormalize``, so unnormalised here with the current statistics.
    """
    pool = _pool(model)
    if len(pool) == 0:
        raise PolicyKDError("the model has stored no states yet; distil after its first rollout")
    rows = pool[rng.integers(0, len(pool), size=n)]
    vec_normalize = model.get_vec_normalize_env()
    if isinstance(model, OnPolicyAlgorithm) and vec_normalize is not None:
        rows = vec_normalize.unnormalize_obs(rows)
    return np.asarray(rows)


# -------------------------------------------------------------------------- SB3 students (kickstart)


def student_outputs(model: BaseAlgorithm, algo: str, obs: torch.Tensor, scale: float) -> torch.Tensor:
    """What kickstart's loss compares with the teacher's outputs ``(batch, n_actions)``, with gradients: a
    DQN student's Q-values divided by ``scale`` (tau, for softmax losses), a PPO/A2C student's logits."""
    policy = model.policy
    if algo == "dqn":
        return policy.q_net(obs) / scale
    return policy.get_distribution(obs).distribution.logits


def student_gaussian_outputs(
    model: BaseAlgorithm, algo: str, obs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What kickstart's loss compares with a Box teacher's outputs, with gradients: ``(mean, log_std)`` of a
    PPO/A2C (Gaussian) or SAC/TQC (pre-squash) student's action distribution, each ``(batch, action_dim)``;
    a TD3/DDPG student's action scaled to ``[-1, 1]`` and ``None``."""
    policy = model.policy
    if algo in DETERMINISTIC_ALGOS:
        return policy.actor(obs), None
    if algo in SQUASHED_ALGOS:
        mean, log_std, kwargs = policy.actor.get_action_dist_params(obs)
        normal = policy.actor.action_dist.proba_distribution(mean, log_std, **kwargs).distribution
    else:
        normal = policy.get_distribution(obs).distribution
    return normal.mean, normal.stddev.log()


def actor_optimizer(model: BaseAlgorithm, algo: str) -> torch.optim.Optimizer:
    """The optimizer that updates the layers that choose actions: SAC/TQC/TD3/DDPG's actor optimizer (their
    critics have their own), else the policy's one optimizer."""
    if algo in ACTOR_CRITIC_ALGOS:
        return model.policy.actor.optimizer
    return model.policy.optimizer


def actor_features_extractor(model: BaseAlgorithm, algo: str) -> nn.Module:
    """The features extractor in front of the layers that choose actions."""
    if algo in ACTOR_CRITIC_ALGOS:
        return model.policy.actor.features_extractor
    return model.policy.q_net.features_extractor if algo == "dqn" else model.policy.pi_features_extractor


def actor_linears(model: BaseAlgorithm, algo: str) -> tuple[list[nn.Linear], type[nn.Module] | None]:
    """The Linear layers that choose actions, in order, and their hidden activation class (DQN, PPO, A2C,
    TD3/DDPG MLPs; a SAC/TQC actor's mean path, its log-std head left out)."""
    policy = model.policy
    if algo in DETERMINISTIC_ALGOS:
        seq = list(policy.actor.mu)[:-1]  # its final Tanh is the deterministic head's, not a hidden one
    elif algo in SQUASHED_ALGOS:
        mu = policy.actor.mu
        seq = [*policy.actor.latent_pi, *(mu if isinstance(mu, nn.Sequential) else [mu])]
    elif algo == "dqn":
        seq = list(policy.q_net.q_net)
    else:
        seq = [*policy.mlp_extractor.policy_net, policy.action_net]
    linears = [m for m in seq if isinstance(m, nn.Linear)]
    acts = {type(m) for m in seq if not isinstance(m, nn.Linear)}
    return linears, (acts.pop() if len(acts) == 1 else None)
