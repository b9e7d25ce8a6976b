"""Evaluate teacher and student by the same code: episode returns on the same seeds, fidelity, cost.

Anything with ``predict(obs_batch, deterministic) -> actions`` is a :class:`Policy`: a loaded teacher and
a loaded student alike. Episode ``i`` always starts from ``env.reset(seed=seeds[i])``, so teacher and
student face the same initial states, and a deterministic policy gives the same returns however many
episodes run side by side.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from scipy import stats

from policy_kd.envs import make_env
from policy_kd.errors import PolicyKDError
from policy_kd.run import prepare_out_dir, write_json, write_run_info


class Policy(Protocol):
    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray: ...


@dataclass
class Episodes:
    """Per-episode results, in seed order."""

    seeds: list[int]
    returns: np.ndarray
    lengths: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)


def run_episodes(
    policy: Policy,
    env_id: str,
    seeds: Sequence[int],
    *,
    n_parallel: int = 8,
    deterministic: bool = True,
    observer: Callable[[np.ndarray, np.ndarray], None] | None = None,
    wrap: Callable[[Any], Any] | None = None,
    env_factory: Callable[[], Any] | None = None,
) -> Episodes:
    """Play one episode per seed, up to ``n_parallel`` at once with one batched ``predict`` per step.

    ``observer(obs_batch, actions)`` sees every state the policy acts in (e.g. to ask the teacher what it
    would have done there).
    """
    seeds = list(seeds)
    n_par = max(1, min(n_parallel, len(seeds)))
    # env_factory builds the env exactly as the teacher saw it (frame stacking, zoo wrappers)
    envs = [(env_factory or (lambda: make_env(env_id)))() for _ in range(n_par)]
    if wrap is not None:
        envs = [wrap(e) for e in envs]
    returns = np.zeros(len(seeds))
    lengths = np.zeros(len(seeds), dtype=np.int64)
    slot_ep = [-1] * n_par
    slot_obs: list[Any] = [None] * n_par
    next_ep = 0

    def start(slot: int) -> None:
        nonlocal next_ep
        if next_ep < len(seeds):
            slot_ep[slot] = next_ep
            slot_obs[slot], _ = envs[slot].reset(seed=seeds[next_ep])
            next_ep += 1
        else:
            slot_ep[slot] = -1

    for s in range(n_par):
        start(s)
    while True:
        active = [s for s in range(n_par) if slot_ep[s] >= 0]
        if not active:
            break
        obs = np.stack([slot_obs[s] for s in active])
        actions = np.asarray(policy.predict(obs, deterministic))
        if observer is not None:
            observer(obs, actions)
        for a, s in zip(actions, active, strict=True):
            ep = slot_ep[s]
            slot_obs[s], r, term, trunc, _ = envs[s].step(a.item() if np.ndim(a) == 0 else a)
            returns[ep] += float(r)
            lengths[ep] += 1
            if term or trunc:
                start(s)
    for e in envs:
        e.close()
    return Episodes(seeds=seeds, returns=returns, lengths=lengths)


def mean_ci95(x: np.ndarray) -> tuple[float, float]:
    """Two-sided 95% Student-t confidence interval for the mean of ``x``."""
    x = np.asarray(x, dtype=np.float64)
    m = float(x.mean())
    if len(x) < 2:
        return (m, m)
    sem = float(x.std(ddof=1)) / math.sqrt(len(x))
    if sem == 0.0:
        return (m, m)
    half = float(stats.t.ppf(0.975, df=len(x) - 1)) * sem
    return (m - half, m + half)


def summarize(returns: np.ndarray) -> dict[str, Any]:
    lo, hi = mean_ci95(returns)
    return {
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "median_return": float(np.median(returns)),
        "ci95": [lo, hi],
        "returns": [float(r) for r in returns],
    }


@dataclass(frozen=True)
class EvaluateConfig:
    """Play teacher and student on the same episode seeds and compare return, fidelity and cost."""

    teacher: str | None = None
    """Teacher: a train-teacher run folder, or an SB3 .zip (then --env is required)."""
    student: str | None = None
    """Student: a distill --out folder (its best weights) or a .pt weights file inside one."""
    env: str | None = None
    """Environment id; required for a plain .zip teacher."""
    buffer: str | None = None
    """Optional buffer the teacher recorded: also report agreement on the teacher's own states."""
    out: str | None = None
    """Folder for eval.json (refused if it exists, unless --force); omit to only print the table."""
    episodes: int = 100
    """Episodes per policy; episode i starts from reset(seed=seed + i) for both."""
    seed: int = 0
    """First episode seed."""
    n_parallel: int = 8
    """Episodes played side by side (batched predict); results do not depend on it."""
    threads: int = 1
    """torch CPU threads."""
    force: bool = False
    """Replace an existing --out folder."""

    def validate(self) -> None:
        if self.teacher is None or self.student is None:
            raise PolicyKDError("evaluate needs --teacher RUN_DIR and --student DISTILL_DIR")
        if self.episodes <= 0 or self.n_parallel <= 0:
            raise PolicyKDError("--episodes and --n-parallel must be > 0")


def _fmt(x: float) -> str:
    return f"{x:.1f}" if abs(x) < 1e4 else f"{x:.3g}"


def format_table(result: dict[str, Any]) -> str:
    """The comparison table evaluate prints."""
    rows = [("", "mean ± std", "95% CI", "params", "bytes")]
    for name in ("teacher", "student"):
        r = result[name]
        rows.append(
            (
                name,
                f"{_fmt(r['mean_return'])} ± {_fmt(r['std_return'])}",
                f"[{_fmt(r['ci95'][0])}, {_fmt(r['ci95'][1])}]",
                f"{r['params']:,}",
                f"{r['bytes']:,}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    ratio = result["return_ratio"]
    lines += [
        "",
        f"env {result['env_id']}, {result['episodes']} episodes on seeds {result['seeds'][0]}..{result['seeds'][-1]}",
        f"student/teacher return ratio: {ratio:.3f}"
        if ratio is not None
        else "student/teacher return ratio: n/a (teacher mean is 0)",
        f"student/teacher params ratio: {result['params_ratio']:.4f} ({result['params_ratio'] * 100:.2f}%)",
        f"action agreement with the teacher on the student's own states: {result['student']['agreement'] * 100:.1f}%",
    ]
    if "agreement_teacher_states" in result["student"]:
        lines.append(
            f"action agreement with the teacher on the teacher's recorded states: "
            f"{result['student']['agreement_teacher_states'] * 100:.1f}%"
        )
    return "\n".join(lines)


def evaluate(config: EvaluateConfig) -> dict[str, Any]:
    """Run the comparison; write ``eval.json`` to ``config.out`` when given; return the result."""
    from policy_kd.students import count_params, load_student
    from policy_kd.teacher import load_teacher

    config.validate()
    student = load_student(config.student)  # type: ignore[arg-type]
    teacher = load_teacher(config.teacher, config.env or student.info.get("env_id"))  # type: ignore[arg-type]
    check_compatible(student.info, teacher.env_id, teacher.n_outputs, str(config.student))
    buffer = None
    if config.buffer is not None:
        from policy_kd.buffer import Buffer

        buffer = Buffer.open(config.buffer)
        check_compatible(buffer.meta, teacher.env_id, teacher.n_outputs, f"buffer {config.buffer}")
    out = None
    if config.out is not None:
        out = prepare_out_dir(
            config.out, force=config.force, inputs=(config.teacher, config.student, config.buffer)
        )
        write_run_info(out, config, job="evaluate")
    torch.set_num_threads(config.threads)
    seeds = [config.seed + i for i in range(config.episodes)]

    t_eps = run_episodes(
        teacher, teacher.env_id, seeds, n_parallel=config.n_parallel, env_factory=teacher.make_env
    )
    agree = [0, 0]

    def observe(obs: np.ndarray, actions: np.ndarray) -> None:
        agree[0] += int((teacher.predict(obs) == actions).sum())
        agree[1] += len(actions)

    s_eps = run_episodes(
        student,
        teacher.env_id,
        seeds,
        n_parallel=config.n_parallel,
        observer=observe,
        env_factory=teacher.make_env,
    )
    t_params, s_params = teacher.policy_params, count_params(student.net)
    t_sum, s_sum = summarize(t_eps.returns), summarize(s_eps.returns)
    result = {
        "env_id": teacher.env_id,
        "episodes": config.episodes,
        "seeds": seeds,
        "teacher": {
            **t_sum,
            "params": t_params,
            "bytes": teacher.file_bytes(),
            "path": teacher.path,
            "mean_length": float(t_eps.lengths.mean()),
        },
        "student": {
            **s_sum,
            "params": s_params,
            "bytes": student.file_bytes(),
            "path": str(student.weights_path),
            "mean_length": float(s_eps.lengths.mean()),
            "agreement": agree[0] / max(agree[1], 1),
        },
        "return_ratio": s_sum["mean_return"] / t_sum["mean_return"] if t_sum["mean_return"] != 0 else None,
        "params_ratio": s_params / t_params,
    }
    if buffer is not None:
        result["student"]["agreement_teacher_states"] = teacher_state_agreement(student, buffer)
    if out is not None:
        write_json(out / "eval.json", result)
    return result


def teacher_state_agreement(student: Policy, buffer: Any, max_rows: int = 100_000) -> float:
    """Fraction of the buffer's states (at most ``max_rows``, evenly spaced) where the student picks the
    teacher's greedy action."""
    obs, target = buffer.spaced("obs", max_rows), buffer.spaced("teacher", max_rows)
    hits = sum(
        int((np.asarray(student.predict(obs[i : i + 4096])) == target[i : i + 4096].argmax(-1)).sum())
        for i in range(0, len(obs), 4096)
    )
    return hits / len(obs)


def check_compatible(info: dict[str, Any], env_id: str, n_actions: int, where: str) -> None:
    """Refuse a student or buffer made for another environment or action space."""
    their_env = info.get("env_id")
    their_n = (info.get("action_space") or {}).get("n")
    if their_env is not None and their_env != env_id:
        raise PolicyKDError(
            f"{where} was made for {their_env}, not {env_id}; pass a matching teacher or student"
        )
    if their_n is not None and int(their_n) != n_actions:
        raise PolicyKDError(
            f"{where} has {their_n} actions but the teacher has {n_actions}; pass a matching pair"
        )


__all__ = ["Episodes", "EvaluateConfig", "Policy", "evaluate", "format_table", "mean_ci95", "run_episodes"]
