"""Record what a teacher knows: act in its environment and store its outputs at every visited state."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from policy_kd.buffer import BufferWriter, FieldSpec
from policy_kd.errors import PolicyKDError
from policy_kd.run import prepare_out_dir, write_run_info
from policy_kd.teacher import Teacher, load_teacher

BEHAVIOURS = ("teacher", "epsilon")


@dataclass(frozen=True)
class RecordConfig:
    """Let a teacher act in its environment and record observations, actions, rewards and its outputs."""

    teacher: str | None = None
    """Teacher: a train-teacher run folder, or an SB3 .zip (then --env is required). A .zip is unpickled code: load only trusted files."""
    env: str | None = None
    """Environment id; required for a plain .zip teacher, checked against a run folder's."""
    out: str | None = None
    """Buffer folder to create (refused if it exists, unless --force)."""
    steps: int = 50_000
    """Transitions to record (summed over parallel envs)."""
    behaviour: str = "epsilon"
    """Who acts: teacher (greedy) or epsilon (teacher greedy, a random action with probability --epsilon)."""
    epsilon: float = 0.05
    """Random-action probability for --behaviour epsilon."""
    n_envs: int = 1
    """Parallel environments; the teacher labels all of them in one batched forward pass per step."""
    seed: int = 0
    """Seed for the environments and the behaviour policy's random actions."""
    chunk_rows: int = 65_536
    """Rows per on-disk chunk (a killed record keeps every finished chunk)."""
    threads: int = 1
    """torch CPU threads."""
    progress: bool = True
    """Show a progress bar."""
    force: bool = False
    """Replace an existing --out folder."""

    def validate(self) -> None:
        if self.teacher is None:
            raise PolicyKDError("record needs a teacher: pass --teacher RUN_DIR (or an SB3 .zip with --env)")
        if self.behaviour not in BEHAVIOURS:
            raise PolicyKDError(
                f"unknown behaviour {self.behaviour!r}; choose one of {', '.join(BEHAVIOURS)}"
            )
        if not 0.0 <= self.epsilon <= 1.0:
            raise PolicyKDError(f"--epsilon must lie in [0, 1], got {self.epsilon}")
        if self.steps <= 0 or self.n_envs <= 0 or self.chunk_rows <= 0:
            raise PolicyKDError("--steps, --n-envs and --chunk-rows must be > 0")


def _space_json(space: gym.Space) -> dict[str, Any]:
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n)}
    if isinstance(space, gym.spaces.Box):
        return {"type": "Box", "shape": list(space.shape), "dtype": str(space.dtype)}
    return {"type": type(space).__name__, "repr": repr(space)}


def record(config: RecordConfig) -> Path:
    """Record ``config.steps`` transitions into a new buffer folder; return its path."""
    config.validate()
    teacher = load_teacher(config.teacher, config.env)  # type: ignore[arg-type]
    out = prepare_out_dir(config.out, force=config.force, what="buffer folder", inputs=(config.teacher,))
    torch.set_num_threads(config.threads)
    write_run_info(out, config, job="record")
    return _record_into(out, teacher, config)


def _record_into(out: Path, teacher: Teacher, config: RecordConfig) -> Path:
    n = config.n_envs
    venv = teacher.make_vec_env(n, config.seed)
    obs_space = venv.observation_space
    rng = np.random.default_rng(config.seed)
    fields = {
        "obs": FieldSpec(str(obs_space.dtype), tuple(obs_space.shape)),
        "action": FieldSpec("int64", ()),
        "reward": FieldSpec("float32", ()),
        "terminated": FieldSpec("bool", ()),
        "truncated": FieldSpec("bool", ()),
        "env": FieldSpec("int16", ()),
        **{k: FieldSpec(dtype, shape) for k, (dtype, shape) in teacher.output_fields().items()},
    }
    meta: dict[str, Any] = {
        "env_id": teacher.env_id,
        "observation_space": _space_json(obs_space),
        "action_space": _space_json(teacher.action_space),
        "teacher": {
            "kind": teacher.kind,
            "algo": teacher.algo,
            "path": str(Path(teacher.path).resolve()),
            "policy_params": teacher.policy_params,
            "n_outputs": teacher.n_outputs,
        },
        "behaviour": {
            "name": config.behaviour,
            "epsilon": config.epsilon if config.behaviour == "epsilon" else 0.0,
        },
        "seed": config.seed,
        "n_envs": n,
    }
    env_index = np.arange(n, dtype=np.int16)
    running = np.zeros(n, dtype=np.float64)
    returns: list[float] = []
    written = 0
    start = time.perf_counter()
    obs = venv.reset()
    with (
        BufferWriter(out, fields, meta, chunk_rows=config.chunk_rows) as writer,
        tqdm(total=config.steps, disable=not config.progress, desc="record", unit="step") as bar,
    ):
        while written < config.steps:
            labels = teacher.label(
                obs
            )  # the one forward pass: recorded outputs and actions both come from it
            actions = labels.greedy
            if config.behaviour == "epsilon" and config.epsilon > 0:
                explore = rng.random(n) < config.epsilon
                actions = np.where(explore, rng.integers(teacher.n_outputs, size=n), actions)
            next_obs, rewards, dones, infos = venv.step(actions)
            truncated = np.array([bool(info.get("TimeLimit.truncated", False)) for info in infos])
            take = min(n, config.steps - written)
            writer.append(
                obs=np.asarray(obs)[:take],
                action=actions[:take].astype(np.int64),
                reward=rewards[:take].astype(np.float32),
                terminated=(dones & ~truncated)[:take],
                truncated=truncated[:take],
                env=env_index[:take],
                **{k: v[:take] for k, v in labels.outputs.items()},
            )
            running += rewards
            for i in np.flatnonzero(dones[:take]):
                returns.append(float(running[i]))
            running[dones] = 0.0
            written += take
            bar.update(take)
            obs = next_obs
        r = np.asarray(returns)
        writer.meta.update(
            {
                "transitions": written,
                "episodes": len(returns),
                "episode_return_mean": float(r.mean()) if len(r) else None,
                "episode_return_std": float(r.std()) if len(r) else None,
                "record_seconds": round(time.perf_counter() - start, 2),
            }
        )
    venv.close()
    return out
