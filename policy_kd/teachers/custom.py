"""Teachers that are not SB3 models: a Python callable or a ``torch.nn.Module`` with declared spaces and kind.

:func:`from_callable` wraps any function from a batch of observations to the teacher's outputs (a CleanRL
checkpoint's forward pass, an RLlib/TorchRL policy, a scripted controller); :func:`from_module` wraps a
``torch.nn.Module`` (its parameters are counted, hashed and timed like an SB3 teacher's). Both return a
:class:`CustomTeacher`, which implements :class:`~policy_kd.teachers.protocol.TeacherProtocol`, so record,
distill, evaluate and kickstart take it unchanged. On the command line a factory that returns one is named
``--teacher py:PKG.MODULE:NAME`` (see :func:`~policy_kd.teachers.load_teacher`)::

    # mypkg/teachers.py
    import policy_kd.teachers as T

    def cartpole_dqn():
        net = QNetwork(...); net.load_state_dict(torch.load("q.pt"))
        return T.from_module(net, kind="q_values", env_id="CartPole-v1")

    $ policy-kd record --teacher py:mypkg.teachers:cartpole_dqn --out buf

What the function returns, per kind, for a batch ``obs`` ``(batch, *obs_shape)``: ``q_values``/``logits``:
``(batch, n_actions)``; ``gaussian``/``squashed_gaussian``: a pair ``(mean, log_std)``, each
``(batch, action_dim)`` (``log_std`` may be ``(action_dim,)``); ``actions``: ``(batch,)`` integer actions
(Discrete) or ``(batch, *action_shape)`` (Box).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from policy_kd.envs import ensure_registered, make_env_from_spec
from policy_kd.errors import PolicyKDError
from policy_kd.teachers.protocol import GAUSSIAN_KINDS, KINDS, BaseTeacher, Labels, check_kind
from policy_kd.teachers.teacher import _EnvRecipe

__all__ = ["CUSTOM_KINDS", "CustomTeacher", "from_callable", "from_module"]

CUSTOM_KINDS = tuple(k for k in KINDS if k != "quantiles")
"""What a callable or module may declare: every kind but SB3 QR-DQN's ``quantiles`` (give their mean as
``q_values``)."""


@dataclass(kw_only=True)
class CustomTeacher(_EnvRecipe, BaseTeacher):
    """A teacher made of a function from raw observations to outputs (see the module docstring).

    ``env_id`` may be None until the teacher is bound to an environment (``load_teacher(..., env)`` or
    ``--env``); record and evaluate need it.
    """

    fn: Callable[[np.ndarray], Any]
    """Batch of raw observations -> outputs of ``kind`` (see the module docstring)."""
    kind: str
    """What ``fn`` returns: ``q_values``, ``logits``, ``gaussian``, ``squashed_gaussian`` or ``actions``."""
    observation_space: gym.Space
    action_space: gym.Space
    name: str
    """How reports and buffers name the teacher."""
    module: nn.Module | None = None
    """The module ``fn`` runs, if any: its parameters size students, identify the teacher and are timed."""
    params: int | None = None
    """Parameters to size students against; default: the module's, else SB3's default MLP for the spaces."""
    env_id: str | None = None  # type: ignore[assignment]
    algo: str = "custom"
    source: str | None = None
    """What ``load_teacher`` was given (``py:PKG.MODULE:NAME``): load it again from this."""

    def __post_init__(self) -> None:
        # quantiles is SB3 QR-DQN's (its extra field); another distributional teacher gives its mean as q_values
        check_kind(self.kind, self.action_space, f"teacher {self.name}", kinds=CUSTOM_KINDS)
        self.format = "torch" if self.module is not None else "python"
        if self.module is not None:
            self.module.eval()

    @property
    def path(self) -> str:  # type: ignore[override]
        return self.source or self.name

    @property
    def policy_params(self) -> int:
        if self.params is not None:
            return int(self.params)
        if self.module is not None:
            return sum(p.numel() for p in self.module.parameters())
        return BaseTeacher.policy_params.fget(self)  # type: ignore[attr-defined]

    def meta(self) -> dict[str, Any]:
        """What a buffer or run records about its teacher (JSON-able)."""
        return {
            "kind": self.kind,
            "algo": self.algo,
            "path": self.name,
            "source": self.source,
            "trained_env_id": None,
            "policy_params": self.policy_params,
            "n_outputs": self.n_outputs,
        }

    def bind(self, env_id: str) -> None:
        """Run the teacher in ``env_id``: refused unless the env's spaces are the declared ones."""
        check_env_spaces(
            env_id,
            self.observation_space,
            self.action_space,
            who=f"teacher {self.name} declares",
            fix="pass the env it acts in",
        )
        self.env_id = env_id

    def make_env(self, *, stacked: bool = True) -> gym.Env:
        if self.env_id is None:
            raise PolicyKDError(f"teacher {self.name} is bound to no environment; pass --env ENV_ID")
        return super().make_env(stacked=stacked)

    @torch.no_grad()
    def label(self, obs: np.ndarray) -> Labels:
        """One call of ``fn`` over a batch of raw observations: the recorded outputs and the greedy action."""
        obs = np.asarray(obs)
        n = len(obs)
        raw = self.fn(obs)
        if self.kind in GAUSSIAN_KINDS:
            if not (isinstance(raw, tuple | list) and len(raw) == 2):
                raise PolicyKDError(
                    f"teacher {self.name} (kind {self.kind}) must return a pair (mean, log_std), got {type(raw).__name__}"
                )
            mean = self._array(raw[0], (n, self.n_outputs), "mean")
            log_std = _numpy(raw[1])
            log_std = np.broadcast_to(log_std.reshape(-1, self.n_outputs), (n, self.n_outputs)).copy()
            return Labels(outputs={"teacher": mean, "teacher_log_std": log_std}, greedy=self.to_action(mean))
        if self.kind == "actions":
            return self._label_actions(raw, n)
        values = self._array(raw, (n, self.n_outputs), self.kind)  # (batch, n_actions)
        return Labels(outputs={"teacher": values}, greedy=values.argmax(axis=-1))

    def _label_actions(self, raw: Any, n: int) -> Labels:
        """The ``teacher`` field of an action-only teacher: a one-hot row (Discrete) or the action (Box)."""
        space = self.action_space
        if isinstance(space, gym.spaces.Box):
            actions = self._array(raw, (n, *space.shape), "actions").astype(space.dtype, copy=False)
            return Labels(outputs={"teacher": actions.reshape(n, -1).astype(np.float32)}, greedy=actions)
        actions = np.asarray(raw.detach().cpu() if isinstance(raw, torch.Tensor) else raw).reshape(-1)
        if actions.shape != (n,) or not np.issubdtype(actions.dtype, np.integer):
            raise PolicyKDError(
                f"teacher {self.name} (kind actions) must return {n} integer actions, got {actions.dtype} {actions.shape}"
            )
        index = actions - int(space.start)  # type: ignore[attr-defined]
        if index.min(initial=0) < 0 or index.max(initial=0) >= self.n_outputs:
            raise PolicyKDError(f"teacher {self.name} returned actions outside {space}")
        one_hot = np.zeros((n, self.n_outputs), dtype=np.float32)
        one_hot[np.arange(n), index] = 1.0
        return Labels(outputs={"teacher": one_hot}, greedy=actions.astype(np.int64))

    def _array(self, value: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
        arr = _numpy(value)
        if arr.shape != shape:
            raise PolicyKDError(
                f"teacher {self.name} returned {what} of shape {arr.shape} for {shape[0]} observations; "
                f"expected {shape} (kind {self.kind})"
            )
        return arr

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The module's weights; a plain function is identified by its name."""
        if self.module is not None:
            return self.module.state_dict()
        return {f"callable:{self.name}": torch.zeros(0)}

    def network(self) -> nn.Module | None:
        return self.module

    def head_module(self) -> nn.Module:
        """The module's last ``nn.Linear`` (its input is the feature layer hint distillation matches)."""
        linears = [m for m in self.module.modules() if isinstance(m, nn.Linear)] if self.module else []
        if not linears:
            return super().head_module()
        return linears[-1]

    def file_bytes(self) -> int:
        """The size of the module's weights as ``torch.save`` writes them (0 for a plain function)."""
        if self.module is None:
            return 0
        buf = io.BytesIO()
        torch.save(self.module.state_dict(), buf)
        return buf.getbuffer().nbytes


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def _spaces(
    env_id: str | None, observation_space: gym.Space | None, action_space: gym.Space | None, name: str
) -> tuple[gym.Space, gym.Space]:
    """The declared spaces, or the env's where not declared."""
    if observation_space is not None and action_space is not None:
        return observation_space, action_space
    if env_id is None:
        raise PolicyKDError(f"teacher {name}: declare observation_space and action_space, or give env_id")
    obs_space, act_space = env_spaces(env_id)
    return observation_space or obs_space, action_space or act_space


def env_spaces(env_id: str) -> tuple[gym.Space, gym.Space]:
    """The observation and action spaces of a registered env id (the env is made and closed)."""
    ensure_registered(env_id)
    env = make_env_from_spec({"env_id": env_id})
    spaces = env.observation_space, env.action_space
    env.close()
    return spaces


def check_env_spaces(
    env_id: str, observation_space: gym.Space, action_space: gym.Space, *, who: str, fix: str
) -> None:
    """Refuse ``env_id`` unless its observations have ``observation_space``'s shape and its actions are
    ``action_space`` (``who`` and ``fix`` begin and end the message)."""
    obs_space, act_space = env_spaces(env_id)
    if obs_space.shape != observation_space.shape or act_space != action_space:
        raise PolicyKDError(
            f"{who} observations {observation_space} and actions {action_space}, but {env_id} has "
            f"{obs_space} and {act_space}; {fix}"
        )


def from_callable(
    fn: Callable[[np.ndarray], Any],
    observation_space: gym.Space | None = None,
    action_space: gym.Space | None = None,
    *,
    kind: str,
    name: str | None = None,
    env_id: str | None = None,
    params: int | None = None,
) -> CustomTeacher:
    """A teacher from a function of a batch of raw observations.

    :param fn: ``obs (batch, *obs_shape) -> outputs`` as numpy arrays or tensors: Q-values or logits
        ``(batch, n_actions)``, ``(mean, log_std)`` for Gaussian kinds, or the actions for ``kind="actions"``.
    :param observation_space: the observations ``fn`` takes (default: ``env_id``'s).
    :param action_space: the actions (default: ``env_id``'s); Discrete or Box.
    :param kind: ``q_values``, ``logits``, ``gaussian``, ``squashed_gaussian`` or ``actions`` (see
        :mod:`policy_kd.teachers.protocol`).
    :param name: how buffers and reports name it (default: the function's name).
    :param env_id: the environment it acts in; checked against the spaces. Without it, pass ``--env``.
    :param params: parameters to size students against (default: SB3's default MLP for the spaces).
    :return: a :class:`CustomTeacher`.

    Example (a scripted controller that only exposes actions)::

        teacher = from_callable(lambda obs: (obs[:, 2] + obs[:, 3] > 0).astype(int),
                                kind="actions", env_id="CartPole-v1", name="pole-controller")
    """
    name = name or getattr(fn, "__name__", type(fn).__name__)
    obs_space, act_space = _spaces(env_id, observation_space, action_space, name)
    teacher = CustomTeacher(
        fn=fn,
        kind=kind,
        observation_space=obs_space,
        action_space=act_space,
        name=name,
        params=params,
        env_id=None,
    )
    if env_id is not None:
        teacher.bind(env_id)
    return teacher


def from_module(
    module: nn.Module,
    observation_space: gym.Space | None = None,
    action_space: gym.Space | None = None,
    *,
    kind: str,
    name: str | None = None,
    env_id: str | None = None,
    forward: Callable[[nn.Module, torch.Tensor], Any] | None = None,
) -> CustomTeacher:
    """A teacher from a ``torch.nn.Module`` that maps a float32 batch of observations to the outputs.

    Its parameters size students (``--params-fraction``), identify it in buffers (``weights_sha256``) and
    are timed by evaluate; its last ``nn.Linear`` is the head hint distillation reads the features of. The
    module runs on the CPU in eval mode, without gradients.

    :param module: e.g. a CleanRL ``QNetwork`` (``kind="q_values"``) or an actor giving logits.
    :param forward: ``(module, obs_tensor) -> outputs`` when calling the module is not enough (an actor-critic
        that returns several heads); default ``module(obs)``.
    :param observation_space, action_space, kind, name, env_id: as for :func:`from_callable`.
    """
    module = module.cpu().eval()
    call = forward or (lambda m, x: m(x))

    def fn(obs: np.ndarray) -> Any:
        return call(module, torch.as_tensor(np.asarray(obs, dtype=np.float32)))

    name = name or type(module).__name__
    obs_space, act_space = _spaces(env_id, observation_space, action_space, name)
    teacher = CustomTeacher(
        fn=fn, kind=kind, observation_space=obs_space, action_space=act_space, name=name, module=module
    )
    if env_id is not None:
        teacher.bind(env_id)
    return teacher
