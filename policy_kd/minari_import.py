"""``policy-kd import minari DATASET``: a Minari dataset as a buffer of kind ``actions`` (behaviour cloning).

A Minari dataset holds episodes of observations, actions, rewards, terminations and truncations, but not
what the policy that acted knew (no Q-values, no logits): its buffer's ``teacher`` field is the action taken
(one-hot for Discrete actions, the action for Box ones), its teacher kind ``actions``, and a student is
distilled from it with ``--loss nll`` (Discrete) or ``--loss mse`` (Box): behaviour cloning. See
``docs/teachers.md`` for what is lost without soft targets.

The dataset is read from Minari's local store (``MINARI_DATASETS_PATH``, default ``~/.minari/datasets``);
nothing is downloaded. Every episode is checked before a row is written: an episode with a missing or
mis-sized array or a NaN/Inf value is refused in one line. Rows are written as ``record`` writes them
(``obs`` is the observation the action was taken in; an episode that ends neither terminated nor truncated
is marked truncated, as a cut episode). The ``minari`` extra installs Minari with its HDF5 backend.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import tyro

from policy_kd.buffer import BufferWriter, FieldSpec
from policy_kd.config import to_dict
from policy_kd.errors import PolicyKDError
from policy_kd.record import transition_fields
from policy_kd.run import job, prepare_out_dir, write_run_info
from policy_kd.spaces import space_json
from policy_kd.teachers.custom import check_env_spaces
from policy_kd.teachers.protocol import default_params

MINARI_HINT = "pip install 'policy-kd[minari]'"


@dataclass(frozen=True)
class ImportMinariConfig:
    """Import a local Minari dataset into a buffer of kind actions (distil from it with --loss nll, or mse for Box actions)."""

    dataset: tyro.conf.Positional[str | None] = None
    """Minari dataset id (e.g. cartpole/expert-v0), read from MINARI_DATASETS_PATH (default ~/.minari/datasets)."""
    out: str | None = None
    """Buffer folder to create (refused if it exists, unless --force)."""
    env: str | None = None
    """Environment id the buffer's students are evaluated in; default: the dataset's own env spec (checked against its spaces)."""
    chunk_rows: int = 65_536
    """Rows per committed, checksummed chunk."""
    force: bool = False
    """Replace --out if it exists."""

    def validate(self) -> None:
        if not self.dataset:
            raise PolicyKDError("import minari needs a dataset: policy-kd import minari DATASET --out BUFFER")
        if self.chunk_rows <= 0:
            raise PolicyKDError("--chunk-rows must be > 0")


def _load(dataset_id: str) -> Any:
    try:
        import minari
    except ImportError:
        raise PolicyKDError(f"import minari needs Minari; install it with: {MINARI_HINT}") from None
    from minari.storage.datasets_root_dir import get_dataset_path

    where = get_dataset_path(dataset_id)
    if not where.is_dir():
        raise PolicyKDError(
            f"no Minari dataset {dataset_id} in {where.parent} (set MINARI_DATASETS_PATH, or download it "
            f"once with `minari download {dataset_id}`)"
        )
    try:
        return minari.load_dataset(dataset_id, download=False)
    except Exception as exc:  # minari raises ValueError, KeyError, OSError... for a damaged dataset
        why = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise PolicyKDError(f"could not read Minari dataset {dataset_id} ({why})") from None


def _env_id(dataset: Any, requested: str | None) -> str:
    """The env students of this buffer are evaluated in, refused unless its spaces are the dataset's."""
    spec = dataset.spec.env_spec
    env_id = requested or (spec.id if spec is not None else None)
    if env_id is None:
        raise PolicyKDError(
            f"Minari dataset {dataset.spec.dataset_id} names no environment; pass --env ENV_ID"
        )
    check_env_spaces(
        env_id,
        dataset.observation_space,
        dataset.action_space,
        who=f"Minari dataset {dataset.spec.dataset_id} has",
        fix="pass the env it was collected in",
    )
    return env_id


@dataclass(frozen=True)
class _Episode:
    """One checked episode, as buffer columns ``(T, ...)``."""

    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray


def _episode(ep: Any, obs_space: gym.Space, act_space: gym.Space, dataset_id: str) -> _Episode:
    """The rows of one Minari episode, or a one-line refusal naming what is missing or broken."""
    what = f"episode {ep.id} of Minari dataset {dataset_id}"
    arrays = {
        k: getattr(ep, k, None) for k in ("observations", "actions", "rewards", "terminations", "truncations")
    }
    missing = [k for k, v in arrays.items() if v is None or not isinstance(v, np.ndarray)]
    if missing:
        raise PolicyKDError(
            f"{what} has no {', '.join(missing)} (dict/tuple observations are not supported); "
            "import a dataset with array observations and actions"
        )
    obs, actions = arrays["observations"], arrays["actions"]
    n = len(actions)
    if n == 0:
        raise PolicyKDError(f"{what} is empty; drop it from the dataset")
    lengths = {k: len(v) for k, v in arrays.items()}
    want = {"observations": n + 1, "actions": n, "rewards": n, "terminations": n, "truncations": n}
    wrong = [f"{k} {lengths[k]} (expected {want[k]})" for k in want if lengths[k] != want[k]]
    if wrong:
        raise PolicyKDError(f"{what} is missing data: {', '.join(wrong)}; repair or drop the episode")
    if obs.shape[1:] != obs_space.shape:
        raise PolicyKDError(f"{what} has observations of shape {obs.shape[1:]}, not {obs_space.shape}")
    for k in ("observations", "actions", "rewards"):
        a = arrays[k]
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            raise PolicyKDError(f"{what} holds NaN or Inf {k}; repair or drop the episode")
    if isinstance(act_space, gym.spaces.Discrete):
        action = actions.reshape(n).astype(np.int64)
        bad = (action < act_space.start) | (action >= act_space.start + act_space.n)
        if bad.any() or not np.array_equal(action, actions.reshape(n)):
            raise PolicyKDError(f"{what} holds actions outside {act_space}")
    else:
        action = actions.reshape(n, *act_space.shape).astype(np.float32)  # type: ignore[misc]
    terminated = arrays["terminations"].astype(bool)
    truncated = arrays["truncations"].astype(bool)
    if not (terminated[-1] or truncated[-1]):
        truncated = truncated.copy()
        truncated[-1] = True  # a cut episode: its last state does not end it, as a time limit would not
    return _Episode(
        obs=obs[:-1].astype(obs_space.dtype, copy=False),
        action=action,
        reward=arrays["rewards"].astype(np.float32),
        terminated=terminated,
        truncated=truncated & ~terminated,
    )


def _read_episodes(dataset: Any, dataset_id: str) -> Iterator[Any]:
    """The dataset's episodes in order; an episode whose stored arrays cannot be read is refused in one line."""
    it = iter(dataset.iterate_episodes())
    for index in dataset.episode_indices:
        try:
            yield next(it)
        except StopIteration:
            return
        except (KeyError, OSError, ValueError, TypeError) as exc:
            why = f"{type(exc).__name__}: {exc}".splitlines()[0]
            raise PolicyKDError(
                f"episode {index} of Minari dataset {dataset_id} is missing data ({why}); repair or drop the episode"
            ) from None


def _teacher_field(action: np.ndarray, space: gym.Space) -> np.ndarray:
    """The ``teacher`` column of an action-only buffer: one-hot rows (Discrete) or the actions (Box)."""
    if isinstance(space, gym.spaces.Discrete):
        one_hot = np.zeros((len(action), int(space.n)), np.float32)
        one_hot[np.arange(len(action)), action - int(space.start)] = 1.0
        return one_hot
    return action.reshape(len(action), -1).astype(np.float32)


@job(resumable=False)
def import_minari(config: ImportMinariConfig) -> Path:
    """Import ``config.dataset`` into a new buffer folder; return it."""
    config.validate()
    dataset_id = str(config.dataset)
    start = time.perf_counter()
    dataset = _load(dataset_id)
    obs_space, act_space = dataset.observation_space, dataset.action_space
    if not isinstance(obs_space, gym.spaces.Box):
        raise PolicyKDError(
            f"Minari dataset {dataset_id} has {obs_space} observations; array (Box) ones are supported"
        )
    if not isinstance(act_space, gym.spaces.Discrete | gym.spaces.Box):
        raise PolicyKDError(
            f"Minari dataset {dataset_id} acts in {act_space}; Discrete and Box are supported"
        )
    env_id = _env_id(dataset, config.env)
    # every episode is checked before the folder is touched: a refused dataset leaves nothing behind
    episodes = [_episode(ep, obs_space, act_space, dataset_id) for ep in _read_episodes(dataset, dataset_id)]
    if not episodes:
        raise PolicyKDError(f"Minari dataset {dataset_id} holds no episodes")
    rows = sum(len(e.action) for e in episodes)
    n_out = int(np.prod(act_space.shape)) if isinstance(act_space, gym.spaces.Box) else int(act_space.n)
    teacher_meta = {
        "kind": "actions",
        "algo": "minari",
        "path": dataset_id,
        "source": f"minari:{dataset_id}",
        "trained_env_id": None,
        "policy_params": default_params(obs_space, act_space),
        "n_outputs": n_out,
        "algorithm_name": dataset.storage.metadata.get("algorithm_name"),
    }
    fields = {
        **transition_fields(str(obs_space.dtype), tuple(obs_space.shape), act_space),
        "teacher": FieldSpec("float32", (n_out,)),
    }
    meta = {
        "env_id": env_id,
        "observation_space": space_json(obs_space),
        "action_space": space_json(act_space, all_bounds=True),
        "teacher": teacher_meta,
        "env_spec": {"env_id": env_id, "raw": False, "env_kwargs": {}, "wrappers": [], "frame_stack": None},
    }
    source = {
        "behaviour": "dataset",
        "config": to_dict(config),
        "teacher": teacher_meta,
        "student": None,
        "n_envs": 1,
    }
    returns = np.array([float(e.reward.sum()) for e in episodes])
    out = prepare_out_dir(config.out, force=config.force, what="buffer folder")
    write_run_info(out, config, job="import-minari")
    with BufferWriter(
        out, fields=fields, meta=meta, source=source, capacity=rows, chunk_rows=config.chunk_rows
    ) as writer:
        for e in episodes:
            n = len(e.action)
            first = np.zeros(n, bool)
            first[0] = True
            writer.append(
                obs=e.obs,
                action=e.action,
                reward=e.reward,
                first=first,
                terminated=e.terminated,
                truncated=e.truncated,
                env=np.zeros(n, np.int16),
                source=np.zeros(n, np.int16),
                teacher=_teacher_field(e.action, act_space),
            )
        writer.close(
            meta_update={"transitions": rows},
            source_update={
                "episodes": len(episodes),
                "episode_return_mean": float(returns.mean()),
                "episode_return_std": float(returns.std()),
                "teacher_action_fraction": 1.0,
                "teacher_action_rows": rows,
                "record_seconds": round(time.perf_counter() - start, 2),  # reading, checking and writing
                "steps_per_second": round(rows / max(time.perf_counter() - start, 1e-9), 1),
            },
        )
    return out
