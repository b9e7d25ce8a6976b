"""The teacher-output buffer: a documented, append-only on-disk format, memory-mapped, readable without pickle.

Layout of a buffer folder::

    manifest.json                 schema, metadata, sources, segments and their checksummed chunks
    segment_000/obs.npy           one plain .npy file per field per segment (``capacity`` rows, preallocated)
    segment_000/teacher.npy
    ...
    segment_001/...               a later recording appended to the same buffer (e.g. a DAgger round)

Each ``record`` run writes one *segment*: its files are created at full size and filled in place through
memory maps. Every ``chunk_rows`` rows the new rows are flushed to disk, checksummed (sha256 per field over
the chunk's bytes) and listed in the manifest, which is replaced atomically. A reader trusts only listed
chunks, so a killed writer (kill -9 included) leaves every listed row readable, and ``record --resume``
continues the last segment from its last listed row. A file of the wrong size is reported as truncated,
a chunk whose bytes do not match its checksum as corrupted, each by name. Every name a manifest gives
(segment, field) must be a plain file name, and a symbolic link among a buffer's files is refused, so
nothing from a manifest reads or writes outside the buffer folder (see ``read_manifest``, ``field_file``).

``manifest.json`` keys: ``format`` ("policy_kd.buffer"), ``schema_version``, ``complete`` (all segments
filled), ``rows``, ``fields`` (name -> dtype and per-row shape), ``meta`` (env id, spaces, teacher kind,
algo, path and policy parameters, episode statistics), ``sources`` (one entry per recording: behaviour,
seed, teacher, ...) and ``segments`` (name, source, capacity, rows, chunks: start, rows, sha256 per field).

Standard fields (row = one environment step of one env): ``obs`` (the raw observation the teacher
labelled), ``action`` (taken by the behaviour policy), ``reward``, ``first`` (first step of an episode),
``terminated``, ``truncated``, ``env`` (parallel env index), ``source`` (index into ``sources``) and the
teacher's outputs at ``obs``: ``teacher`` (Q-values, logits or Gaussian mean) and kind-specific extras
(``teacher_log_std``, ``teacher_quantiles``). This module knows no network and no SB3.

Frame-stacked observations (Atari's 4 frames, a zoo run's ``frame_stack``) are stored once per frame:
``meta.frame_stack`` = ``{"k", "axis", "frame_shape"}`` says so, ``obs`` then holds only each step's newest
frame and ``episode_step`` (steps since the episode began, capped at 255) says how many earlier frames
belong to the same episode. Readers (``take``, ``field``, ``spaced``, ``Sampler``) rebuild the stack from
rows ``r - j * n_envs`` (the same env ``j`` steps back), with zeros before the episode's first frame, as
SB3's ``VecFrameStack`` does; ``Buffer.obs_shape`` is the stacked shape.

Atari buffers keep the teacher's own episodes (``first``, ``terminated``, ``episode_step``: one life, as
``AtariWrapper`` ends an episode at a lost life) and its training ``reward`` (clipped to its sign), and
also store the games: ``game_reward`` (the real score the game paid at that step), ``game_first`` (first
step of a game) and ``game_over`` (the game ended after this step: no lives left, or its frame limit).
``Buffer.game_returns`` sums them into game scores, as ``evaluate`` reports them.

A folder with a ``shards.json`` (``record --workers N``) is a *sharded* buffer: N buffers recorded in
parallel, which ``Buffer.open`` reads as one (``policy_kd.shards``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# The format, writer, sampler and summary live in their own modules; they are re-exported here so that
# ``from policy_kd.buffer import X`` keeps working for every X.
from policy_kd.buffer_format import (
    FORMAT,
    MANIFEST,
    SCHEMA_VERSION,
    FieldSpec,
    _digest,
    _npy_size,
    check_name,
    field_file,
    load_npy,
    read_manifest,
)
from policy_kd.buffer_inspect import STANDARD_FIELDS, describe, describe_nonfinite
from policy_kd.buffer_writer import BufferWriter
from policy_kd.errors import PolicyKDError
from policy_kd.sampler import Sampler, _gather

SHARDS = "shards.json"
"""Marks a sharded buffer: a folder of buffers recorded in parallel, read as one (``policy_kd.shards``)."""

__all__ = [
    "FORMAT",
    "MANIFEST",
    "SCHEMA_VERSION",
    "STANDARD_FIELDS",
    "Buffer",
    "BufferWriter",
    "FieldSpec",
    "FrameStack",
    "Sampler",
    "check_name",
    "describe",
    "describe_nonfinite",
    "field_file",
    "load_npy",
    "read_manifest",
    "write_synthetic_q_buffer",
]


@dataclass(frozen=True)
class FrameStack:
    """How a buffer's ``obs`` rows rebuild into stacked observations (see the module docstring)."""

    k: int
    axis: int
    """Stacking axis within one (stacked) observation, non-negative."""
    frame_shape: tuple[int, ...]

    @property
    def stacked_shape(self) -> tuple[int, ...]:
        shape = list(self.frame_shape)
        shape[self.axis] *= self.k
        return tuple(shape)

    def newest(self, obs: np.ndarray) -> np.ndarray:
        """The newest frame of a batch of stacked observations ``(n, *stacked_shape)``."""
        c = self.frame_shape[self.axis]
        return np.take(obs, np.arange((self.k - 1) * c, self.k * c), axis=1 + self.axis)

    def rebuild(self, frames: Any, episode_step: Any, idx: np.ndarray, n_envs: np.ndarray) -> np.ndarray:
        """Stacked observations of rows ``idx`` from per-row ``frames`` and ``episode_step`` (indexable by
        row arrays; ``n_envs`` per row of ``idx``): frame ``j`` back is row ``idx - j * n_envs``, zeros where
        it would precede the episode."""
        steps = np.asarray(episode_step[idx]).astype(np.int64)
        parts = []
        for j in range(self.k - 1, -1, -1):  # oldest first, as VecFrameStack lays them out
            valid = steps >= j
            rows = np.where(valid, idx - j * n_envs, idx)
            order = np.argsort(rows, kind="stable")  # memory maps read best front to back
            got = np.empty((len(idx), *self.frame_shape), dtype=frames.dtype)
            got[order] = frames[rows[order]]
            got[~valid] = 0
            parts.append(got)
        return np.concatenate(parts, axis=1 + self.axis)


SCAN_ROWS = 65_536
"""Rows read at a time when a field is scanned for NaN/Inf (bounds the memory the scan takes)."""


class Buffer:
    """A buffer opened for reading: validated manifest and chunks, segments memory-mapped read-only."""

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        *,
        segment_dirs: list[Path] | None = None,
        source_offsets: list[int] | None = None,
    ):
        """``segment_dirs`` and ``source_offsets`` (one per manifest segment) place a sharded buffer's segments
        in their shards' folders and shift each shard's ``source`` row values past the earlier shards'."""
        self.path = path
        self.manifest = manifest
        self.fields = {k: FieldSpec(v["dtype"], tuple(v["shape"])) for k, v in manifest["fields"].items()}
        self.meta: dict[str, Any] = manifest["meta"]
        self.sources: list[dict[str, Any]] = manifest["sources"]
        n = len(manifest["segments"])
        kept = [i for i, s in enumerate(manifest["segments"]) if s["rows"] > 0]
        self.segments: list[dict[str, Any]] = [manifest["segments"][i] for i in kept]
        self._dirs = [(segment_dirs or [path] * n)[i] for i in kept]
        self._source_offsets = [(source_offsets or [0] * n)[i] for i in kept]
        self.rows = int(manifest["rows"])
        # derived from the segments, not taken from the manifest's flag (read_manifest checked the counts)
        self.complete = all(s["rows"] == s["capacity"] for s in manifest["segments"])
        self._maps: dict[tuple[int, str], np.ndarray] = {}
        self._nonfinite: dict[str, tuple[int, int, int] | None] = {}
        fs = self.meta.get("frame_stack")
        self.stack = FrameStack(int(fs["k"]), int(fs["axis"]), tuple(fs["frame_shape"])) if fs else None

    @property
    def obs_shape(self) -> tuple[int, ...]:
        """The shape of one observation as the teacher saw it (stacked frames rebuilt)."""
        return self.stack.stacked_shape if self.stack else self.fields["obs"].shape

    def segment_n_envs(self, i: int) -> int:
        """Parallel envs of segment ``i``'s recording (rows interleave them step by step)."""
        return int(self.sources[self.segments[i]["source"]].get("n_envs", 1))

    @classmethod
    def open(cls, path: str | Path, *, verify: bool = True, allow_empty: bool = False) -> Buffer:
        """Open and validate a buffer; ``verify`` also checks every chunk's checksum (reads every byte once)."""
        path = Path(path)
        if (path / SHARDS).is_file():
            from policy_kd.shards import open_shards

            return open_shards(cls, path, verify=verify, allow_empty=allow_empty)
        manifest = read_manifest(path)
        try:
            buf = cls(path, manifest)
            for i in range(len(buf.segments)):
                buf._check_segment(i, verify=verify)
        except (KeyError, TypeError, ValueError) as exc:
            raise PolicyKDError(
                f"{path / MANIFEST} is inconsistent ({exc!r}); re-record the buffer"
            ) from None
        if buf.rows != sum(s["rows"] for s in buf.segments):
            raise PolicyKDError(
                f"{path / MANIFEST} counts {buf.rows} rows but its segments hold another number; re-record"
            )
        if buf.rows == 0 and not allow_empty:
            raise PolicyKDError(
                f"buffer {path} holds no transitions; record with more --steps (or --resume it)"
            )
        return buf

    def _check_segment(self, i: int, *, verify: bool) -> None:
        seg = self.segments[i]
        for k, spec in self.fields.items():
            f = field_file(self._dirs[i], seg["name"], k)
            if not f.is_file():
                raise PolicyKDError(f"buffer file missing: {f}; re-record the buffer")
            size, expected = f.stat().st_size, _npy_size(spec, seg["capacity"])
            if size != expected:
                raise PolicyKDError(
                    f"buffer file {f} is truncated ({size} bytes, expected {expected}); re-record the buffer"
                )
            if not verify:
                continue
            arr = self._stored(i, k)
            end = 0
            for c in seg["chunks"]:
                if c["start"] != end:
                    raise PolicyKDError(
                        f"buffer {seg['name']} has a gap before row {c['start']}; re-record the buffer"
                    )
                end = c["start"] + c["rows"]
                if _digest(arr[c["start"] : end]) != c["sha256"][k]:
                    raise PolicyKDError(
                        f"buffer file {f} is corrupted (rows {c['start']}-{end - 1} fail their sha256); re-record the buffer"
                    )

    def segment_array(self, i: int, name: str) -> np.ndarray:
        """Field ``name`` of segment ``i``: a read-only memory map of its listed rows (a sharded buffer's
        ``source`` values shifted to index this buffer's ``sources``)."""
        arr = self._stored(i, name)
        if name == "source" and self._source_offsets[i]:
            key = (i, "source+")
            if key not in self._maps:
                shifted = (arr + self._source_offsets[i]).astype(arr.dtype)
                shifted.flags.writeable = False
                self._maps[key] = shifted
            return self._maps[key]
        return arr

    def _stored(self, i: int, name: str) -> np.ndarray:
        """Field ``name`` of segment ``i`` as stored (what its checksums cover), memory-mapped read-only."""
        key = (i, name)
        if key not in self._maps:
            seg = self.segments[i]
            f = field_file(self._dirs[i], seg["name"], name)
            spec = self.fields[name]
            arr = load_npy(f, "r", (seg["capacity"], *spec.shape), spec.dtype)
            self._maps[key] = arr[: seg["rows"]]
        return self._maps[key]

    def require(self, *names: str) -> None:
        """Refuse a buffer whose manifest lacks a field the caller reads."""
        missing = [k for k in names if k not in self.fields]
        if missing:
            raise PolicyKDError(
                f"buffer {self.path} has no field {', '.join(missing)} (it has {', '.join(self.fields)}); "
                "re-record the buffer with policy-kd record"
            )

    def nonfinite(self, names: tuple[str, ...] | None = None) -> dict[str, tuple[int, int, int]]:
        """Per floating-point field with NaN or Inf values: (values, rows, first global row)."""
        found: dict[str, tuple[int, int, int]] = {}
        for k in names or tuple(self.fields):
            if k in self._nonfinite:  # scanned before (a field is read-only once opened)
                if self._nonfinite[k]:
                    found[k] = self._nonfinite[k]  # type: ignore[assignment]
                continue
            self._nonfinite[k] = None
            if np.dtype(self.fields[k].dtype).kind != "f":
                continue
            values = rows = 0
            first = -1
            offset = 0
            for i, seg in enumerate(self.segments):
                arr = self.segment_array(i, k)
                for start in range(0, seg["rows"], SCAN_ROWS):  # a block at a time: bounded memory
                    bad = ~np.isfinite(arr[start : start + SCAN_ROWS])
                    if bad.any():
                        per_row = bad.reshape(len(bad), -1).any(axis=1)
                        values += int(bad.sum())
                        rows += int(per_row.sum())
                        if first < 0:
                            first = offset + start + int(np.argmax(per_row))
                offset += seg["rows"]
            if values:
                found[k] = self._nonfinite[k] = (values, rows, first)
        return found

    def check_finite(self, names: tuple[str, ...], fix: str) -> None:
        """Refuse a buffer whose fields ``names`` hold NaN or Inf (a student trained on them is garbage)."""
        bad = self.nonfinite(names)
        if bad:
            raise PolicyKDError(
                f"buffer {self.path} holds non-finite values ({describe_nonfinite(bad)}); {fix}"
            )

    def field(self, name: str) -> np.ndarray:
        """A whole field, all segments concatenated into memory: ``(rows, *shape)`` (obs stacked)."""
        if name not in self.fields:
            raise PolicyKDError(f"buffer {self.path} has no field {name!r}; it has {', '.join(self.fields)}")
        if name == "obs" and self.stack:
            return self.take("obs", np.arange(self.rows))
        return np.concatenate([self.segment_array(i, name) for i in range(len(self.segments))])

    def take(self, name: str, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (global, sorted ascending) of field ``name``, gathered from the memory maps."""
        sizes = [s["rows"] for s in self.segments]
        offsets = np.cumsum([0, *sizes])
        if name == "obs" and self.stack:
            pieces = []
            for i in range(len(sizes)):
                local = idx[(idx >= offsets[i]) & (idx < offsets[i + 1])] - offsets[i]
                if len(local):
                    n = np.full(len(local), self.segment_n_envs(i))
                    pieces.append(
                        self.stack.rebuild(
                            self.segment_array(i, "obs"), self.segment_array(i, "episode_step"), local, n
                        )
                    )
            return np.concatenate(pieces)
        return _gather([self.segment_array(i, name) for i in range(len(sizes))], offsets, idx)

    def spaced(self, name: str, max_rows: int) -> np.ndarray:
        """At most ``max_rows`` rows of ``name``, evenly spaced over the whole buffer (for statistics)."""
        idx = np.unique(np.linspace(0, self.rows - 1, num=min(self.rows, max_rows)).astype(np.int64))
        return self.take(name, idx)

    def nbytes(self, names: tuple[str, ...] | None = None) -> int:
        names = names or tuple(self.fields)
        return sum(self.rows * self.fields[k].row_bytes for k in names)

    def episode_returns(self, source: int | None = None) -> np.ndarray:
        """Returns of the episodes that both start and end inside the buffer (or inside the rows of
        ``source``), in recording order per env."""
        return self._returns("reward", "first", ("terminated", "truncated"), source)

    def game_returns(self, source: int | None = None) -> np.ndarray:
        """Atari: real scores of the games that both start and end inside the buffer (or inside the rows of
        ``source``), in recording order per env (empty for a buffer without game fields)."""
        if "game_reward" not in self.fields:
            return np.zeros(0)
        return self._returns("game_reward", "game_first", ("game_over",), source)

    def discounted_returns(self, gamma: float) -> tuple[np.ndarray, np.ndarray]:
        """Per row, the discounted return from that step to the end of its episode,
        ``G_t = reward_t + gamma * G_{t+1}`` (0 after the episode's last step), from the recorded rewards and
        episode ends: ``(returns (rows,) float64, complete (rows,) bool)``.

        ``complete`` is False on rows whose episode does not end inside their recording (the last, cut-off
        episode of each env): their sums miss the rest of the episode, so a critic fitted on them should
        leave them out. A time-limit truncation counts as the end (no bootstrap: the buffer holds no value
        to bootstrap from), as the teacher's own returns were scored. The returns are those of the
        behaviour policy that acted in the recording (the teacher's own when it acted).
        """
        if not 0.0 <= gamma <= 1.0:
            raise PolicyKDError(f"gamma must lie in [0, 1], got {gamma}")
        out, complete = np.zeros(self.rows), np.zeros(self.rows, dtype=bool)
        offset = 0
        for i, seg in enumerate(self.segments):
            reward = np.asarray(self.segment_array(i, "reward"), dtype=np.float64)
            done = np.asarray(self.segment_array(i, "terminated")) | np.asarray(
                self.segment_array(i, "truncated")
            )
            env = np.asarray(self.segment_array(i, "env"))
            for e in np.unique(env):
                rows = np.flatnonzero(env == e)  # this env's steps, in order
                g, ended = 0.0, False
                for r in rows[::-1]:  # backwards: each step's return from the next one's
                    if done[r]:
                        g, ended = 0.0, True
                    g = reward[r] + gamma * g
                    out[offset + r], complete[offset + r] = g, ended
            offset += seg["rows"]
        return out, complete

    def _returns(
        self, reward_field: str, first_field: str, end_fields: tuple[str, ...], source: int | None
    ) -> np.ndarray:
        returns: list[float] = []
        for i in range(len(self.segments)):
            if source is not None and self.segments[i]["source"] != source:
                continue
            reward = np.asarray(self.segment_array(i, reward_field), dtype=np.float64)
            first = np.asarray(self.segment_array(i, first_field))
            done = np.zeros(len(reward), dtype=bool)
            for name in end_fields:
                done |= np.asarray(self.segment_array(i, name))
            env = np.asarray(self.segment_array(i, "env"))
            for e in np.unique(env):
                sel = env == e
                r, f, d = reward[sel], first[sel], done[sel]
                csum = np.concatenate([[0.0], np.cumsum(r)])
                starts = np.flatnonzero(f)  # rows before the first start belong to an episode begun earlier
                for s, t in zip(starts, np.append(starts[1:], len(r))[: len(starts)], strict=True):
                    ends = np.flatnonzero(d[s:t])
                    if len(ends):  # finished within the buffer
                        returns.append(float(csum[s + ends[0] + 1] - csum[s]))
        return np.asarray(returns)


def write_synthetic_q_buffer(
    path: Path,
    obs_shape: tuple[int, ...],
    n_actions: int,
    rows: int,
    *,
    env_id: str,
    teacher_params: int,
    teacher_scale: float,
) -> Path:
    """A buffer of random rows in a DQN teacher's layout, for benchmarks and tests of the training loop:
    observations (float32 normals, or uint8 0/1 for an image shape) and Q-values (normals times
    ``teacher_scale``), drawn in that order from seed 0; the meta names ``env_id`` (evaluation runs on it)."""
    rng = np.random.default_rng(0)
    dtype = "float32" if len(obs_shape) == 1 else "uint8"
    meta = {
        "env_id": env_id,
        "observation_space": {"type": "Box", "shape": list(obs_shape), "dtype": dtype},
        "action_space": {"type": "Discrete", "n": n_actions},
        "teacher": {"kind": "q_values", "algo": "dqn", "path": None, "policy_params": teacher_params},
    }
    fields = {"obs": FieldSpec(dtype, obs_shape), "teacher": FieldSpec("float32", (n_actions,))}
    if dtype == "uint8":
        obs = rng.integers(0, 2, size=(rows, *obs_shape), dtype=np.uint8)
    else:
        obs = rng.standard_normal((rows, *obs_shape), dtype=np.float32)
    teacher = rng.standard_normal((rows, n_actions), dtype=np.float32) * teacher_scale
    with BufferWriter(path, fields=fields, meta=meta, source={"behaviour": "synthetic"}, capacity=rows) as w:
        w.append(obs=obs, teacher=teacher)
    return path
