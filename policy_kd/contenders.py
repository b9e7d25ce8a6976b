"""The policies ``policy-kd evaluate`` compares, as :class:`Contender`: the SB3 teacher, a distilled student
(eager torch) or an export (through :mod:`policy_kd.runtime` alone, so that evaluating an export never
imports a writer), each with its greedy and sampled actions, raw outputs and cost."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policy_kd.heads import head_for_teacher, sample_actions
from policy_kd.rollout import Policy


@dataclass
class Contender:
    """A teacher or a student as evaluate sees it: acting, raw outputs, cost."""

    name: str
    role: str
    """``teacher`` or ``student``."""
    path: str
    format: str
    """``sb3`` for a teacher, ``eager`` for a distilled student, else the export format."""
    head: str
    """``discrete``, ``gaussian``, ``squashed_gaussian`` or ``multi_discrete``."""
    greedy: Callable[[np.ndarray], np.ndarray]
    sample: Callable[[np.ndarray, np.random.Generator], np.ndarray]
    outputs: Callable[[np.ndarray], np.ndarray]
    """Batch of raw observations -> ``(batch, n_outputs)`` (logits / Q-values / Gaussian mean)."""
    params: int
    bytes: int
    macs: int | None
    log_std: np.ndarray | None = None
    tb_dir: Path | None = None
    """The distillation run's TensorBoard folder, for learning curves."""
    info: dict[str, Any] = field(default_factory=dict)
    nvec: tuple[int, ...] | None = None
    """``multi_discrete`` head: choices per action component (MultiDiscrete/MultiBinary)."""

    def policy(self, mode: str, rng: np.random.Generator) -> Policy:
        """The :class:`Policy` that acts greedily (``deterministic``) or samples with ``rng``."""
        contender = self

        class _Acting:
            def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
                return contender.greedy(obs) if mode == "deterministic" else contender.sample(obs, rng)

        return _Acting()


def _teacher_contender(teacher: Any) -> Contender:
    from policy_kd.cost import count_macs, teacher_module

    try:
        example = teacher.normalize_obs(np.stack([teacher.observation_space.sample()] * 2))
        net = teacher_module(teacher)  # None: a teacher without a network (a scripted controller)
        macs: int | None = None if net is None else count_macs(net, torch.as_tensor(example))
    except Exception:  # an observation layout the bare network does not take (e.g. channels-last)
        macs = None
    return Contender(
        name="teacher",
        role="teacher",
        path=str(teacher.path),
        format=teacher.format,
        head=head_for_teacher(teacher.kind, continuous=teacher.continuous, nvec=teacher.nvec),
        greedy=lambda obs: teacher.label(obs).greedy,
        sample=lambda obs, rng: teacher.sample(teacher.label(obs), rng),
        outputs=teacher.outputs,
        params=int(teacher.policy_params),
        bytes=int(teacher.file_bytes()),
        macs=macs,
        info={"algo": teacher.algo, "kind": teacher.kind},
        nvec=teacher.nvec,
    )


def _student_contender(path: str, name: str) -> Contender:
    from policy_kd.cost import count_macs
    from policy_kd.runtime import is_export, load_exported
    from policy_kd.students import count_params, load_student

    if is_export(path):
        ex = load_exported(path)
        head, log_std, bounds = ex.head, ex.log_std, ex.meta.get("action_bounds")
        ex_nvec = ex.nvec
        source = Path(ex.meta.get("source", ""))

        def sample_ex(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            return sample_actions(ex.outputs(obs), head, log_std, rng, bounds, nvec=ex_nvec)

        return Contender(
            name=name,
            role="student",
            path=str(ex.path),
            format=ex.format,
            head=head,
            greedy=ex.predict,
            sample=sample_ex,
            outputs=ex.outputs,
            params=ex.params,
            bytes=ex.file_bytes(),
            macs=ex.meta.get("macs"),
            log_std=log_std,
            tb_dir=source / "tb" if (source / "tb").is_dir() else None,
            info=ex.info,
            nvec=ex_nvec,
        )
    st = load_student(path)
    net = st.net
    head = str(st.info["spec"].get("head", "discrete"))
    nvec = tuple(st.info["spec"].get("nvec", ())) or None
    log_std_p = getattr(net, "log_std", None)
    log_std = None if log_std_p is None else log_std_p.detach().numpy().reshape(-1)
    s_bounds = (
        [net.action_low.numpy().tolist(), net.action_high.numpy().tolist()]  # type: ignore[union-attr,operator]
        if hasattr(net, "action_low")
        else None
    )

    def outputs(obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.as_tensor(np.asarray(obs))).float().numpy()

    def sample_st(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return sample_actions(outputs(obs), head, log_std, rng, s_bounds, nvec=nvec)

    example = torch.zeros((2, *st.info["spec"]["obs_shape"]))
    folder = st.weights_path.parent
    return Contender(
        name=name,
        role="student",
        path=str(st.weights_path),
        format="eager",
        head=head,
        greedy=lambda obs: np.asarray(st.predict(obs, True)),
        sample=sample_st,
        outputs=outputs,
        params=count_params(net),
        bytes=st.file_bytes(),
        macs=count_macs(net, example),
        log_std=log_std,
        tb_dir=folder / "tb" if (folder / "tb").is_dir() else None,
        info=st.info,
        nvec=nvec,
    )
