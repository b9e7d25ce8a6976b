"""Evaluate teacher and student by the same code: episode returns on the same seeds, fidelity, cost.

Teacher and students play the same seeds through :func:`policy_kd.rollout.run_episodes` (any
:class:`~policy_kd.rollout.Policy`); fidelity is measured by :mod:`policy_kd.fidelity`, the report is
written by :mod:`policy_kd.report`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
import tyro

from policy_kd import stats as pkd_stats
from policy_kd.contenders import (  # the contenders stay importable from here
    Contender,
    _student_contender,
    _teacher_contender,
)
from policy_kd.errors import PolicyKDError
from policy_kd.fidelity import (
    ACTION_TOLERANCE,
    _FidelityOnStudentStates,
    compare_actions,
    divergence,
    teacher_state_fidelity,
)
from policy_kd.rollout import Episodes, Policy, run_episodes
from policy_kd.run import job, prepare_out_dir, write_json, write_run_info
from policy_kd.spaces import action_range, check_compatible, random_actions


def summarize(returns: np.ndarray, *, seed: int = 0) -> dict[str, Any]:
    """Return statistics of one policy in one mode (``policy_kd.stats.summarize``), under the eval.json names."""
    st = pkd_stats.summarize(returns, seed=seed)
    return {
        "mean_return": st["mean"],
        "std_return": st["std"],
        "median_return": st["median"],
        "iqm_return": st["iqm"],
        "ci95": st["mean_ci"],
        "iqm_ci95": st["iqm_ci"],
        "returns": [float(r) for r in returns],
    }


MODES = {"deterministic": ("deterministic",), "sampled": ("sampled",), "both": ("deterministic", "sampled")}


@dataclass(frozen=True)
class EvaluateConfig:
    """Play teacher and students on the same episode seeds and compare return, fidelity and cost."""

    teacher: str | None = None
    """Teacher: a train-teacher run folder, an rl-baselines3-zoo run folder (logs/ALGO/ENV_1), hf://ORG/REPO[@REVISION] (a zoo agent on the Hugging Face Hub; hub extra), an SB3 .zip (then --env is required), or py:PKG.MODULE:NAME (a factory returning a teacher that is not an SB3 model). Its .zip and .pkl files are unpickled code, and py: runs the module: load only trusted ones."""
    student: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """Student: a distill --out folder (its best weights), a .pt weights file inside one, or a policy-kd
    export folder. Repeat for several students (--student a --student b); omit to evaluate the teacher
    alone."""
    env: str | None = None
    """Environment id; required for a plain .zip teacher; another version of a run folder's env (LunarLander-v3 for a LunarLander-v2 teacher) runs it there if the spaces match."""
    buffer: str | None = None
    """Optional buffer the teacher recorded: also report agreement and KL on the teacher's own states."""
    out: str | None = None
    """Folder for eval.json, report.md and plots (refused if it exists, unless --force); omit to only print."""
    episodes: int = 100
    """Episodes per policy and mode; episode i starts from reset(seed=seed + i) for every policy."""
    seed: int = 0
    """First episode seed (also seeds sampled actions and the bootstrap)."""
    mode: Literal["deterministic", "sampled", "both"] = "deterministic"
    """Greedy actions, actions sampled from each policy's distribution (DQN teachers stay greedy), or both."""
    kl_tau: float | None = None
    """Temperature of the teacher's softmax in the reported KL(softmax(teacher / tau) || softmax(student));
    default: the first student's distillation --tau when it has one (DQN Q-values are near-uniform at
    tau 1), else 1."""
    latency: bool = True
    """Measure batch-1 and batch-256 CPU latency (one thread) of every policy."""
    random_baseline: bool = True
    """Also play a uniformly random policy on the same seeds: the 0 of each student's normalized score
    (student - random) / (teacher - random)."""
    action_tolerance: float = ACTION_TOLERANCE
    """Continuous actions: student and teacher agree at a state when every action dimension is within this
    fraction of its range (the env's bounds)."""
    aggregate: bool = False
    """The students are runs (seeds) of one configuration: also report their IQM with a stratified
    bootstrap CI."""
    plots: bool = True
    """With --out: PNG plots (needs matplotlib, the [report] extra)."""
    video: bool = False
    """With --out: record episodes of the teacher and each student (gymnasium RecordVideo, [video] extra)."""
    video_episodes: int = 1
    """Episodes per policy for --video."""
    n_parallel: int = 16
    """Episodes played side by side (batched predict); results do not depend on it."""
    buffer_rows: int = 50_000
    """At most this many of the buffer's states (evenly spaced) for the teacher-state fidelity."""
    threads: int = 1
    """torch CPU threads."""
    force: bool = False
    """Replace an existing --out folder."""

    def __post_init__(self) -> None:
        if isinstance(self.student, str):  # library callers may pass one path
            object.__setattr__(self, "student", (self.student,))

    def validate(self) -> None:
        if self.teacher is None:
            raise PolicyKDError(
                "evaluate needs --teacher RUN_DIR (a train-teacher folder or an SB3 .zip with --env); "
                "add --student DISTILL_DIR to compare a student with it"
            )
        if self.episodes <= 0 or self.n_parallel <= 0:
            raise PolicyKDError("--episodes and --n-parallel must be > 0")
        if self.mode not in MODES:
            raise PolicyKDError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.kl_tau is not None and not self.kl_tau > 0:
            raise PolicyKDError(f"--kl-tau must be > 0, got {self.kl_tau}")
        if not 0 < self.action_tolerance <= 1:
            raise PolicyKDError(f"--action-tolerance must lie in (0, 1], got {self.action_tolerance}")
        if self.video_episodes <= 0 or self.buffer_rows <= 0:
            raise PolicyKDError("--video-episodes and --buffer-rows must be > 0")
        if self.aggregate and len(self.student) < 2:
            raise PolicyKDError("--aggregate needs at least two --student runs to aggregate")


#: Generator stream of the random policy's actions (contender k samples from stream k).
RANDOM_STREAM = 1_000_003


class RandomPolicy:
    """Uniformly random actions over ``action_space``, drawn from ``rng`` (the normalized score's 0)."""

    def __init__(self, action_space: Any, rng: np.random.Generator):
        # record's epsilon-greedy draws them the same way
        self.action_space, self.rng, self._draw = action_space, rng, random_actions

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        return self._draw(self.action_space, len(obs), self.rng)


def play_random(
    env_id: str,
    action_space: Any,
    seeds: Sequence[int],
    seed: int,
    env_factory: Callable[[], Any] | None = None,
) -> Episodes:
    """A uniformly random policy on ``env_id`` (built by ``env_factory``, e.g. the teacher's wrappers) from
    ``reset(seed=s)`` for each of ``seeds``.

    Its actions come from one generator seeded by ``seed``, and it plays one episode at a time, so its
    returns are reproducible and do not depend on ``--n-parallel`` (nothing to batch: it has no network).
    """
    policy = RandomPolicy(action_space, np.random.default_rng([seed, RANDOM_STREAM]))
    return run_episodes(policy, env_id, seeds, n_parallel=1, env_factory=env_factory)


def _names(paths: Sequence[str]) -> list[str]:
    """Short, unique display names: the folder name (``student``, ``int8``...), numbered when repeated."""
    base = []
    for p in paths:
        q = Path(p)
        base.append(q.parent.name if q.is_file() else (q.name or str(q)))
    out = [b if base.count(b) == 1 else f"{b}#{base[: i + 1].count(b)}" for i, b in enumerate(base)]
    return [f"{n} (student)" if n == "teacher" else n for n in out]


# --------------------------------------------------------------------------------------------- cost


def latency(contender: Contender, teacher: Any, obs_pool: np.ndarray) -> dict[str, Any]:
    """Batch-1 and batch-256 latency of a policy's forward pass (numpy in, numpy out, one thread).

    A teacher is timed as its bare network (``policy_kd.cost.teacher_module``) in eager PyTorch where it
    takes the raw observations as they are; otherwise (VecNormalize, transposed images) through
    ``Teacher.outputs``.
    """
    from policy_kd.cost import measure_latency, single_thread, teacher_module

    fn = contender.outputs
    net = teacher_module(teacher) if contender.role == "teacher" and teacher.vec_normalize is None else None
    if net is not None:
        try:
            with torch.inference_mode():
                net(torch.as_tensor(obs_pool[:1]))

            def fn(obs: np.ndarray) -> np.ndarray:
                with torch.inference_mode():
                    return net(torch.from_numpy(obs)).numpy()

        except Exception:  # the network wants another layout (SB3 transposes images itself)
            fn = contender.outputs
    reps = -(-256 // len(obs_pool))
    big = np.ascontiguousarray(np.concatenate([obs_pool] * reps)[:256])
    with single_thread():
        one = measure_latency(fn, np.ascontiguousarray(obs_pool[:1]))
        many = measure_latency(fn, big, warmup=10, min_calls=30, min_seconds=0.2)
    return {"batch1_us": one["median_us"], "batch256_us": many["median_us"], "batch1": one, "batch256": many}


# ------------------------------------------------------------------------------------------ evaluate


@job(resumable=False)
def evaluate(config: EvaluateConfig) -> dict[str, Any]:
    """Run the comparison; with ``config.out`` write eval.json, report.md and plots; return the result."""
    from policy_kd.teacher import load_teacher

    config.validate()
    names = _names(config.student)
    students = [_student_contender(p, n) for p, n in zip(config.student, names, strict=True)]
    env_hint = config.env or (students[0].info.get("env_id") if students else None)
    teacher = load_teacher(config.teacher, env_hint)  # type: ignore[arg-type]
    for p, st in zip(config.student, students, strict=True):
        check_compatible(st.info, teacher.env_id, teacher.n_outputs, str(p))
    buffer = None
    if config.buffer is not None:
        from policy_kd.buffer import Buffer

        buffer = Buffer.open(config.buffer)
        check_compatible(buffer.meta, teacher.env_id, teacher.n_outputs, f"buffer {config.buffer}")
    out = None
    if config.out is not None:
        out = prepare_out_dir(
            config.out, force=config.force, inputs=(config.teacher, config.buffer, *config.student)
        )
        write_run_info(out, config, job="evaluate")
    torch.set_num_threads(config.threads)
    t_con = _teacher_contender(teacher)
    contenders = [t_con, *students]
    loss = (students[0].info.get("loss") if students else None) or {}
    tau = config.kl_tau or float(loss.get("tau") or 1.0)
    play = _play(config, teacher, contenders, buffer, tau)
    t_entry = _policy_entry(t_con, t_con, play, config.seed)
    s_entries = [_policy_entry(c, t_con, play, config.seed) for c in students]
    if config.latency:
        obs_pool = play.obs_pool
        pool = np.concatenate(obs_pool) if obs_pool else np.stack([teacher.observation_space.sample()])
        for c, entry in zip(contenders, [t_entry, *s_entries], strict=True):
            entry["latency"] = latency(c, teacher, pool)
    result = _result(config, teacher, play, t_entry, s_entries, tau)
    if out is not None:
        from policy_kd.report import write_report

        result["files"] = write_report(
            result,
            out,
            plots=config.plots,
            video=(teacher, contenders, config.video_episodes) if config.video else None,
        )
        write_json(out / "eval.json", result)
    return result


@dataclass
class _Played:
    """What playing every contender on the seeds gave: episodes by (name, mode), fidelity by student."""

    seeds: list[int]
    modes: tuple[str, ...]
    episodes: dict[tuple[str, str], Episodes]
    fidelity: dict[str, dict[str, Any]]
    random: Episodes | None
    obs_pool: list[np.ndarray]
    """Up to 256 states the teacher acted in (its first mode), to time forward passes on."""
    seconds: float


def _play(
    config: EvaluateConfig, teacher: Any, contenders: list[Contender], buffer: Any, tau: float
) -> _Played:
    """Every contender in every mode on the same seeds (contender ``k`` samples from stream ``[seed, k]``),
    the students' fidelity in the first mode, then the random baseline."""
    seeds = [config.seed + i for i in range(config.episodes)]
    modes = MODES[config.mode]
    started = time.perf_counter()
    obs_pool: list[np.ndarray] = []

    def keep_obs(obs: np.ndarray, _actions: np.ndarray) -> None:
        if sum(len(o) for o in obs_pool) < 256:
            obs_pool.append(np.array(obs))

    episodes: dict[tuple[str, str], Episodes] = {}
    fidelity: dict[str, dict[str, Any]] = {}
    for mode in modes:
        for k, c in enumerate(contenders):
            fid = None
            if c.role == "student" and mode == modes[0]:
                fid = _FidelityOnStudentStates(teacher, c, len(seeds), tau, config.action_tolerance)
            episodes[c.name, mode] = run_episodes(
                c.policy(mode, np.random.default_rng([config.seed, k])),
                teacher.env_id,
                seeds,
                n_parallel=config.n_parallel,
                env_factory=teacher.make_env,
                observer=keep_obs if c.role == "teacher" and mode == modes[0] else None,
                step_observer=fid,
            )
            if fid is not None:
                fidelity[c.name] = {"mode": mode, "student_states": fid.result()}
                if buffer is not None:
                    fidelity[c.name]["teacher_states"] = teacher_state_fidelity(
                        c,
                        buffer,
                        max_rows=config.buffer_rows,
                        tau=tau,
                        action_space=teacher.action_space,
                        teacher_head=contenders[0].head,
                        tolerance=config.action_tolerance,
                    )
    rand = (
        play_random(teacher.env_id, teacher.action_space, seeds, config.seed, teacher.make_env)
        if config.random_baseline
        else None
    )
    seconds = time.perf_counter() - started
    return _Played(seeds, modes, episodes, fidelity, rand, obs_pool, seconds)


def _policy_entry(c: Contender, t_con: Contender, play: _Played, seed: int) -> dict[str, Any]:
    """One policy's eval.json entry: return statistics per mode (a student's also against the teacher's and
    the random policy's on the same seeds), fidelity, cost."""
    modes, rand = play.modes, play.random
    per_mode = {}
    for mode in modes:
        eps = play.episodes[c.name, mode]
        entry = {**summarize(eps.returns, seed=seed), "mean_length": float(eps.lengths.mean())}
        entry["lengths"] = [int(x) for x in eps.lengths]
        if c.role == "student":
            t_ret = play.episodes["teacher", mode].returns
            entry["paired_difference"] = pkd_stats.paired_difference(eps.returns, t_ret, seed=seed)
            entry["return_ratio"] = pkd_stats.return_ratio(eps.returns, t_ret, seed=seed)
            if rand is not None:
                entry["normalized_score"] = pkd_stats.normalized_score(
                    eps.returns, t_ret, rand.returns, seed=seed
                )
        per_mode[mode] = entry
    d = {
        "name": c.name,
        "path": c.path,
        "format": c.format,
        "head": c.head,
        **{k: v for k, v in per_mode[modes[0]].items() if k != "lengths"},
        "params": c.params,
        "bytes": c.bytes,
        "macs": c.macs,
        "flops": None if c.macs is None else 2 * c.macs,
        "modes": per_mode,
    }
    if c.role == "student":
        fid = play.fidelity[c.name]
        d["fidelity"] = fid
        d["agreement"] = fid["student_states"]["agreement"]
        if "teacher_states" in fid:
            d["agreement_teacher_states"] = fid["teacher_states"]["agreement"]
        d["params_ratio"] = c.params / t_con.params
        d["tb"] = str(c.tb_dir) if c.tb_dir else None
    else:
        d.update(c.info)
    return d


def _result(
    config: EvaluateConfig,
    teacher: Any,
    play: _Played,
    t_entry: dict[str, Any],
    s_entries: list[dict[str, Any]],
    tau: float,
) -> dict[str, Any]:
    """The eval.json document (schema version 2)."""
    from policy_kd.teachers import teacher_digest

    # a teacher-only evaluation has no student: its summary fields are None
    first = s_entries[0] if s_entries else None
    ratio = None if first is None else first["return_ratio"]
    random_entry = None
    rand = play.random
    if rand is not None:
        random_entry = {
            "name": "random",
            "actions": "uniform over the action space; one generator seeded by --seed, one episode at a time",
            **summarize(rand.returns, seed=config.seed),
            "mean_length": float(rand.lengths.mean()),
            "lengths": [int(x) for x in rand.lengths],
        }
    result: dict[str, Any] = {
        "format": "policy_kd.eval",
        "schema_version": 2,
        "env_id": teacher.env_id,
        "episodes": config.episodes,
        "seeds": play.seeds,
        "modes": list(play.modes),
        "teacher": t_entry,
        "random": random_entry,
        "students": s_entries,
        "student": first,
        "normalized_score": None if first is None else first.get("normalized_score"),
        "return_ratio": None if ratio is None else ratio["value"],
        "params_ratio": None if first is None else first["params_ratio"],
        "kl_tau": tau,
        "statistics": {
            "confidence": pkd_stats.CONFIDENCE,
            "bootstrap": f"scipy.stats.bootstrap, {pkd_stats.METHOD}",
            "n_resamples": pkd_stats.N_RESAMPLES,
            "seed": config.seed,
        },
        "play_seconds": play.seconds,
    }
    result["teacher"]["trained_env_id"] = teacher.trained_env_id  # set when --env ran it on another version
    result["teacher"]["weights_sha256"] = teacher_digest(teacher)  # which teacher these figures measure
    if config.aggregate:
        result["aggregate"] = {mode: _aggregate(s_entries, mode, config.seed) for mode in play.modes}
    return result


def _aggregate(entries: list[dict[str, Any]], mode: str, seed: int) -> dict[str, Any]:
    """The students as runs of one configuration: IQM of their mean returns, normalized scores and return
    ratios over runs, stratified bootstrap CI (``policy_kd.stats.aggregate_runs``); a score undefined for
    any run is undefined for all (``None``)."""

    def over_runs(key: str) -> dict[str, Any] | None:
        values = [(e["modes"][mode].get(key) or {}).get("value") for e in entries]
        return None if None in values else pkd_stats.aggregate_runs(values, seed=seed)

    return {
        "runs": [e["name"] for e in entries],
        "mean_return": pkd_stats.aggregate_runs(
            [e["modes"][mode]["mean_return"] for e in entries], seed=seed
        ),
        "normalized_score": over_runs("normalized_score"),
        "return_ratio": over_runs("return_ratio"),
    }


# action_range, compare_actions, divergence, Episodes, Policy and run_episodes live in spaces/fidelity/
# rollout; importable from here as before
__all__ = [
    "Contender",
    "Episodes",
    "EvaluateConfig",
    "Policy",
    "action_range",
    "compare_actions",
    "divergence",
    "evaluate",
    "run_episodes",
]
