"""Record what a teacher knows: act in its environment and store its outputs at every visited state.

Who acts is the *behaviour* policy: the teacher itself (greedy, or sampling its own distribution), an
epsilon-greedy teacher, a distilled student (the teacher only labels: the data of student-driven
distillation / DAgger), or a mixture where the teacher acts with probability beta. Whoever acts, the
teacher labels every visited state, in one batched forward pass per step over all parallel envs.

Episodes are the teacher's own (for Atari: one life, clipped rewards, as it was trained), so frame stacks
are rebuilt as it saw them. An Atari buffer also stores the games: ``game_reward`` (the real score paid),
``game_first`` and ``game_over`` (see ``policy_kd.buffer``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.vec_env.stacked_observations import StackedObservations
from tqdm.auto import tqdm

from policy_kd.buffer import SHARDS, Buffer, BufferWriter, FieldSpec, FrameStack, read_manifest
from policy_kd.config import absolute_paths, check_seed, config_from_mapping, to_dict
from policy_kd.envs import game_monitor
from policy_kd.errors import PolicyKDError
from policy_kd.run import (
    check_interrupted,
    job,
    lock_out_dir,
    prepare_out_dir,
    write_run_info,
)
from policy_kd.spaces import check_compatible, random_actions, space_json
from policy_kd.teacher import Teacher, load_teacher
from policy_kd.teachers import teacher_digest

BEHAVIOURS = ("teacher", "epsilon", "student", "mixture")


@dataclass(frozen=True)
class RecordConfig:
    """Let a teacher (or a student, or a mixture) act in the environment and record the teacher's outputs at every state."""

    teacher: str | None = None
    """Teacher: a train-teacher run folder, an rl-baselines3-zoo run folder (logs/ALGO/ENV_1), hf://ORG/REPO[@REVISION] (a zoo agent on the Hugging Face Hub; hub extra), an SB3 .zip (then --env is required), or py:PKG.MODULE:NAME (a factory returning a teacher that is not an SB3 model). Its .zip and .pkl files are unpickled code, and py: runs the module: load only trusted ones."""
    env: str | None = None
    """Environment id; required for a plain .zip teacher, checked against a run folder's; another version of a run folder's env (LunarLander-v3 for a LunarLander-v2 teacher) runs it there if the spaces match."""
    out: str | None = None
    """Buffer folder to create (refused if it exists, unless --force, --resume or --append)."""
    steps: int = 50_000
    """Transitions to record (summed over parallel envs)."""
    behaviour: str = "epsilon"
    """Who acts: teacher, epsilon (teacher, random action with probability --epsilon), student (--student acts), mixture (teacher with probability --beta, else student)."""
    epsilon: float = 0.05
    """Random-action probability for --behaviour epsilon."""
    sample: bool = False
    """The teacher samples its own action distribution instead of acting greedily (PPO/A2C/SAC/TQC teachers)."""
    record_q: bool = False
    """Also record ``teacher_q``: the teacher critic's Q at its own deterministic action (SAC, TQC, TD3, DDPG)."""
    values: bool = False
    """Also record the teacher's state value V(s) per row (field teacher_value; PPO/A2C teachers): the critic target of policy-kd export --format sb3 --algo ppo --value-target teacher."""
    student: str | None = None
    """Student folder (from distill) that acts for --behaviour student or mixture."""
    beta: float = 0.5
    """Probability that the teacher acts at a step, for --behaviour mixture (DAgger's beta)."""
    n_envs: int = 1
    """Parallel environments; the teacher labels all of them in one batched forward pass per step."""
    seed: int = 0
    """Seed for the environments and the behaviour policy's random choices."""
    chunk_rows: int = 16_384
    """Rows per checksummed chunk: a killed record loses at most this many rows."""
    resume: bool = False
    """Continue an interrupted recording in --out to its requested size (its saved options are used)."""
    append: bool = False
    """Add this recording to the existing buffer in --out as a new source (e.g. a DAgger round)."""
    threads: int = 1
    """torch CPU threads."""
    progress: bool = True
    """Show a progress bar."""
    force: bool = False
    """Replace an existing --out folder."""
    workers: int = 1
    """Record this many shards in parallel (each a buffer with its own seed range) into --out, read back as one buffer."""
    backend: str = "local"
    """Where --workers shards record: local (processes on this machine) or ray (a Ray cluster; the ray extra)."""
    address: str | None = None
    """Ray cluster address for --backend ray (default: start a local Ray with --workers CPUs)."""

    def validate(self) -> None:
        if self.workers < 1:
            raise PolicyKDError(f"--workers must be >= 1, got {self.workers}")
        if self.resume:
            if self.out is None:
                raise PolicyKDError("--resume needs --out BUFFER (the interrupted recording)")
            return
        if self.workers > 1 and self.append:
            raise PolicyKDError(
                "--append adds one recording to a buffer; record shards (--workers) into a new --out"
            )
        if self.teacher is None:
            raise PolicyKDError("record needs a teacher: pass --teacher RUN_DIR (or an SB3 .zip with --env)")
        if self.behaviour not in BEHAVIOURS:
            raise PolicyKDError(
                f"unknown behaviour {self.behaviour!r}; choose one of {', '.join(BEHAVIOURS)}"
            )
        if self.behaviour in ("student", "mixture") and self.student is None:
            raise PolicyKDError(
                f"--behaviour {self.behaviour} needs --student DISTILL_DIR (the student that acts)"
            )
        if not 0.0 <= self.epsilon <= 1.0:
            raise PolicyKDError(f"--epsilon must lie in [0, 1], got {self.epsilon}")
        if not 0.0 <= self.beta <= 1.0:
            raise PolicyKDError(f"--beta must lie in [0, 1], got {self.beta}")
        if self.steps <= 0 or self.n_envs <= 0 or self.chunk_rows <= 0:
            raise PolicyKDError("--steps, --n-envs and --chunk-rows must be > 0")
        check_seed(self.seed)
        if self.append and self.force:
            raise PolicyKDError("--append adds to a buffer and --force replaces it; pass one of them")


def _record_values(teacher: Teacher, values: bool) -> None:
    """Make ``teacher`` label every state with its V(s) too (``--values``), or refuse a teacher without one."""
    if values and teacher.algo not in ("ppo", "a2c"):
        raise PolicyKDError(
            f"--values records a critic's V(s); a {teacher.algo} teacher has none (use a ppo or a2c teacher, "
            "or export --value-target returns from the recorded rewards)"
        )
    teacher.values = values


def _action_spec(space: gym.Space) -> FieldSpec:
    if isinstance(space, gym.spaces.Discrete):
        return FieldSpec("int64", ())
    if isinstance(space, gym.spaces.Box):
        return FieldSpec("float32", tuple(space.shape))
    if isinstance(space, gym.spaces.MultiDiscrete | gym.spaces.MultiBinary):
        return FieldSpec("int64", tuple(space.shape))
    raise PolicyKDError(
        f"cannot record actions of space {space}; Discrete, Box, MultiDiscrete and MultiBinary are supported"
    )


class Behaviour:
    """Chooses the actions taken, given the teacher's labels for the current states."""

    def __init__(self, config: RecordConfig, teacher: Teacher, rng: np.random.Generator):
        self.config, self.teacher, self.rng = config, teacher, rng
        self._ones = np.ones(0, dtype=bool)
        self.student = None
        if config.behaviour in ("student", "mixture"):
            from policy_kd.students import load_student

            self.student = load_student(config.student)  # type: ignore[arg-type]
            check_compatible(
                self.student.info, teacher.env_id, teacher.n_outputs, f"student {config.student}"
            )

    def _all(self, n: int) -> np.ndarray:
        if len(self._ones) != n:  # reused: a fresh array per step costs more than CartPole's physics
            self._ones = np.ones(n, dtype=bool)
        return self._ones

    def __call__(self, obs: np.ndarray, labels: Any) -> tuple[np.ndarray, np.ndarray]:
        """Actions to take and whether the teacher chose each of them."""
        cfg, n = self.config, len(obs)
        t_act = self.teacher.sample(labels, self.rng) if cfg.sample else labels.greedy
        if cfg.behaviour == "teacher":
            return t_act, self._all(n)
        if cfg.behaviour == "epsilon":
            explore = self.rng.random(n) < cfg.epsilon
            if not explore.any():
                return t_act, self._all(n)
            rand = random_actions(self.teacher.action_space, n, self.rng)
            mask = explore.reshape(n, *([1] * (np.ndim(t_act) - 1)))
            return np.where(mask, rand, t_act), ~explore
        assert self.student is not None
        s_act = np.asarray(self.student.predict(obs))
        if cfg.behaviour == "student":
            return s_act, np.zeros(n, dtype=bool)
        use_teacher = self.rng.random(n) < cfg.beta
        mask = use_teacher.reshape(n, *([1] * (np.ndim(t_act) - 1)))
        return np.where(mask, t_act, s_act), use_teacher


@job(resumable=True)
def record(config: RecordConfig) -> Path:
    """Record into a new buffer (or resume / append to one); return the buffer folder."""
    config.validate()
    if config.workers > 1 or (config.out is not None and (Path(config.out) / SHARDS).is_file()):
        from policy_kd.shards import record_shards

        return record_shards(config)
    if config.resume:
        return _resume(config)
    # saved with the buffer (what --resume reads): absolute, so it resumes from any working directory
    config = absolute_paths(config, "teacher", "student")
    teacher = _load_teacher(config)
    _record_values(teacher, config.values)
    if config.append:
        out = Path(config.out or "")
        lock_out_dir(out, what="buffer folder")
        manifest = read_manifest(out)
        if manifest["meta"].get("env_id") != teacher.env_id:
            raise PolicyKDError(
                f"buffer {out} was recorded in {manifest['meta'].get('env_id')}, not {teacher.env_id}; append a matching recording"
            )
        # one buffer, one teacher: another's labels appended would mix two targets in one source set
        check_same_teacher(
            teacher,
            manifest["meta"].get("teacher"),
            f"buffer {out} was recorded by",
            fix="record a new buffer",
        )
        mode = "append"
    else:
        out = prepare_out_dir(
            config.out, force=config.force, what="buffer folder", inputs=(config.teacher, config.student)
        )
        write_run_info(out, config, job="record")
        mode = "create"
    torch.set_num_threads(config.threads)
    return _record_into(out, teacher, config, mode=mode)


def _resume(config: RecordConfig) -> Path:
    out = Path(config.out)  # type: ignore[arg-type]
    lock_out_dir(out, what="buffer folder")
    manifest = read_manifest(out)
    seg = manifest["segments"][-1]
    if seg["rows"] >= seg["capacity"]:
        raise PolicyKDError(f"buffer {out} is complete ({manifest['rows']} rows); nothing to resume")
    saved = manifest["sources"][seg["source"]].get("config")
    if not isinstance(saved, dict):
        raise PolicyKDError(f"buffer {out} does not say how it was recorded; record a new one")
    cfg = replace(
        config_from_mapping(RecordConfig, saved, source=f"{out}/manifest.json"),
        resume=True,
        progress=config.progress,
        threads=config.threads,
    )
    replace(cfg, resume=False).validate()  # the saved options are read from a file: checked as typed ones
    teacher = _load_teacher(cfg)
    _record_values(teacher, cfg.values)
    started = manifest["sources"][seg["source"]].get("teacher")
    check_same_teacher(teacher, started, f"buffer {out} was started by", fix="record a new buffer")
    torch.set_num_threads(cfg.threads)
    return _record_into(out, teacher, cfg, mode="resume")


def _load_teacher(config: RecordConfig) -> Teacher:
    """The teacher that labels the recording; with ``--record-q`` it adds its critic's ``teacher_q``."""
    teacher = load_teacher(config.teacher, config.env)  # type: ignore[arg-type]
    return teacher.with_q() if config.record_q else teacher


def check_same_teacher(teacher: Teacher, recorded: Any, what: str, *, fix: str) -> None:
    """Refuse ``teacher`` unless its weights are those of the teacher described by ``recorded`` (a
    buffer's teacher entry); a buffer made before digests were stored gets a warning."""
    want = recorded.get("weights_sha256") if isinstance(recorded, dict) else None
    if want is None:
        print(
            f"policy-kd: warning: {what} a teacher whose weights it does not record (made by an older "
            f"policy-kd); cannot check that {teacher.path} is that teacher",
            file=sys.stderr,
        )
    elif teacher_digest(teacher) != want:
        raise PolicyKDError(
            f"{what} another teacher than {teacher.path} (its weights differ: sha256 {str(want)[:12]}...); "
            f"pass the teacher that recorded it, or {fix}"
        )


def _check_finite(outputs: dict[str, np.ndarray], writer: BufferWriter, teacher: Teacher) -> None:
    """Refuse to store a teacher output that is NaN or Inf: a student trained toward it learns garbage."""
    for k, v in outputs.items():
        bad = ~np.isfinite(v.reshape(len(v), -1)).all(axis=1)
        if bad.any():
            i = int(np.argmax(bad))
            row = writer.segment["capacity"] - writer.remaining + i
            raise PolicyKDError(
                f"teacher {teacher.path} output {k!r} is not finite ({v[i].reshape(-1)[:4].tolist()}) at row {row} "
                f"(env {i}) of {writer.path / writer.segment['name']}; rows before it were kept; "
                "the teacher is broken: retrain it or record with another"
            )


def _frame_stack(teacher: Teacher) -> FrameStack | None:
    """How the teacher's envs stack frames (as SB3's VecFrameStack), or None when they do not."""
    k = teacher.frame_stack or 1
    if k <= 1:
        return None
    frame_space = teacher.make_env(stacked=False).observation_space
    _, _, _, repeat_axis = StackedObservations.compute_stacking(k, frame_space)  # type: ignore[arg-type]
    axis = repeat_axis % len(frame_space.shape)
    return FrameStack(k=k, axis=axis, frame_shape=tuple(frame_space.shape))


def transition_fields(
    obs_dtype: str, obs_shape: tuple[int, ...], action_space: gym.Space
) -> dict[str, FieldSpec]:
    """The columns every buffer has before its teacher's outputs: the transition and which env and
    source (teacher or student) each row came from."""
    return {
        "obs": FieldSpec(obs_dtype, obs_shape),
        "action": _action_spec(action_space),
        "reward": FieldSpec("float32", ()),
        "first": FieldSpec("bool", ()),
        "terminated": FieldSpec("bool", ()),
        "truncated": FieldSpec("bool", ()),
        "env": FieldSpec("int16", ()),
        "source": FieldSpec("int16", ()),
    }


def _fields(
    teacher: Teacher, obs_space: gym.Space, stack: FrameStack | None, games: bool
) -> dict[str, FieldSpec]:
    """The buffer's columns: the transition, the teacher's outputs, and the frame/game bookkeeping."""
    obs_shape = stack.frame_shape if stack else tuple(obs_space.shape)
    fields = {
        **transition_fields(str(obs_space.dtype), obs_shape, teacher.action_space),
        **{k: FieldSpec(dtype, shape) for k, (dtype, shape) in teacher.output_fields().items()},
    }
    if stack:  # one frame per row; the stack is rebuilt from earlier rows of the same episode
        fields["episode_step"] = FieldSpec("uint8", ())
    if games:  # Atari: an episode is a life; the games and their real scores are stored beside them
        fields.update(
            game_reward=FieldSpec("float32", ()),
            game_first=FieldSpec("bool", ()),
            game_over=FieldSpec("bool", ()),
        )
    return fields


def _buffer_meta(
    teacher: Teacher, obs_space: gym.Space, stack: FrameStack | None, teacher_meta: dict[str, Any]
) -> dict[str, Any]:
    """The buffer's metadata: its env, spaces and teacher, and how to rebuild the teacher's env."""
    meta: dict[str, Any] = {
        "env_id": teacher.env_id,
        "observation_space": space_json(obs_space),
        "action_space": space_json(teacher.action_space, all_bounds=True),
        "teacher": teacher_meta,
        # how to rebuild the env exactly as the teacher saw it (wrappers, frame stacking), for evaluation
        # of students without loading the teacher
        "env_spec": teacher.env_spec,
    }
    if stack:
        meta["frame_stack"] = {"k": stack.k, "axis": stack.axis, "frame_shape": list(stack.frame_shape)}
    return meta


class _Recording:
    """One recording into a buffer: set up its envs, writer and behaviour; :meth:`step` the envs once
    per call; :meth:`finish` with the source's episode statistics."""

    def __init__(self, out: Path, teacher: Teacher, config: RecordConfig, *, mode: str):
        self.out, self.teacher, self.config = out, teacher, config
        n = self.n = config.n_envs
        done_before = self.done_before = read_manifest(out)["segments"][-1]["rows"] if mode == "resume" else 0
        # A resumed recording starts new episodes; new env seeds keep it from replaying the first part.
        venv = self.venv = teacher.make_vec_env(n, config.seed + done_before)
        obs_space = venv.observation_space
        self.stack = _frame_stack(teacher)
        self.monitors = [game_monitor(e) for e in venv.unwrapped.envs]  # type: ignore[attr-defined]
        games = all(m is not None for m in self.monitors)
        self.fields = _fields(teacher, obs_space, self.stack, games)
        teacher_meta = {**teacher.meta(), "weights_sha256": teacher_digest(teacher)}
        source = {
            "behaviour": config.behaviour,
            "config": to_dict(replace(config, resume=False, append=False, force=False)),
            "teacher": teacher_meta,
            "student": config.student,
            "n_envs": n,
        }
        self.writer = BufferWriter(
            out,
            fields=self.fields,
            meta=_buffer_meta(teacher, obs_space, self.stack, teacher_meta),
            source=source,
            capacity=config.steps,
            chunk_rows=config.chunk_rows,
            mode=mode,
        )
        self.source_id = self.writer.segment["source"]
        # resuming a buffer recorded before games were stored
        self.games = games and "game_reward" in self.writer.fields
        rng = np.random.default_rng([config.seed, done_before])
        self.behaviour = Behaviour(config, teacher, rng)
        self.env_index = np.arange(n, dtype=np.int16)
        self.source_col = np.full(n, self.source_id, dtype=np.int16)
        self.first = np.ones(n, dtype=bool)
        self.episode_step = np.zeros(n, dtype=np.int64)
        self.game_first = np.ones(n, dtype=bool)
        self.teacher_acted = self.written = 0
        self.start = time.perf_counter()
        self.obs = venv.reset()

    def step(self) -> int:
        """Label the current states, act, and append the rows (as many as still fit); return their number."""
        # locals: the loop's hot path reads each of them several times
        teacher, writer, monitors, n = self.teacher, self.writer, self.monitors, self.n
        stack, games = self.stack, self.games
        obs, episode_step = self.obs, self.episode_step
        labels = teacher.label(obs)  # the one forward pass: recorded outputs and the teacher's action
        _check_finite(labels.outputs, writer, teacher)
        actions, by_teacher = self.behaviour(obs, labels)
        games_before = [m.games_finished for m in monitors] if games else []
        next_obs, rewards, dones, infos = self.venv.step(actions)
        truncated = np.fromiter((info.get("TimeLimit.truncated", False) for info in infos), bool, n)
        take = min(n, writer.remaining)
        extra = {"episode_step": np.minimum(episode_step[:take], 255).astype(np.uint8)} if stack else {}
        if games:
            game_reward = np.array([m.take_reward() for m in monitors])  # type: ignore[union-attr]
            game_over = np.array(
                [m.games_finished > b for m, b in zip(monitors, games_before, strict=True)]  # type: ignore[union-attr]
            )
            extra.update(
                game_reward=game_reward[:take].astype(np.float32),
                game_first=self.game_first[:take],
                game_over=game_over[:take],
            )
            self.game_first = game_over
        writer.append(
            obs=(stack.newest(np.asarray(obs[:take])) if stack else np.asarray(obs)[:take]),
            action=np.asarray(actions)[:take].astype(self.fields["action"].dtype, copy=False),
            reward=rewards[:take].astype(np.float32),
            first=self.first[:take],
            terminated=(dones & ~truncated)[:take],
            truncated=truncated[:take],
            env=self.env_index[:take],
            source=self.source_col[:take],
            **{k: v[:take] for k, v in labels.outputs.items()},
            **extra,
        )
        self.teacher_acted += int(np.count_nonzero(by_teacher[:take]))
        self.written += take
        self.first = dones.copy()
        self.episode_step = np.where(dones, 0, episode_step + 1)
        self.obs = next_obs
        return take

    def finish(self) -> None:
        """Commit the rows and close the source with its episode statistics."""
        writer, source_id, written = self.writer, self.source_id, self.written
        writer.flush()
        # episode statistics from the committed rows of this source: a resumed recording's cover the
        # rows recorded before the interruption too (the process that recorded them kept no statistics)
        written_buffer = Buffer(self.out, writer.manifest)
        r = written_buffer.episode_returns(source=source_id)
        elapsed = time.perf_counter() - self.start
        stats = {
            "episodes": len(r),
            "episode_return_mean": float(r.mean()) if len(r) else None,
            "episode_return_std": float(r.std()) if len(r) else None,
            # counted as the rows were recorded: a resumed recording's covers the resumed rows only
            "teacher_action_fraction": self.teacher_acted / max(written, 1),
            "teacher_action_rows": written,
            "record_seconds": round(elapsed, 2),
            "steps_per_second": round(written / max(elapsed, 1e-9), 1),
        }
        if self.games:
            g = written_buffer.game_returns(source=source_id)
            stats |= {
                "games": len(g),
                "game_return_mean": float(g.mean()) if len(g) else None,
                "game_return_std": float(g.std()) if len(g) else None,
            }
        writer.close(meta_update={"transitions": writer.manifest["rows"]}, source_update=stats)


def _record_into(out: Path, teacher: Teacher, config: RecordConfig, *, mode: str) -> Path:
    rec = _Recording(out, teacher, config, mode=mode)
    writer = rec.writer

    def stop() -> str:  # SIGINT/SIGTERM: commit the staged rows, say how to continue
        writer.flush()
        rows = writer.manifest["rows"]
        return f"{rows} rows committed to {out}; continue with: policy-kd record --resume --out {out}"

    with (
        writer,
        tqdm(
            total=config.steps,
            initial=rec.done_before,
            disable=not config.progress,
            desc="record",
            unit="step",
        ) as bar,
    ):
        while writer.remaining > 0:
            check_interrupted(stop)
            bar.update(rec.step())
        rec.finish()
    rec.venv.close()
    return out
