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
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policy_kd.errors import PolicyKDError
from policy_kd.run import write_json

FORMAT = "policy_kd.buffer"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class FieldSpec:
    """dtype and per-row shape of one buffer field."""

    dtype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape)}

    @property
    def row_bytes(self) -> int:
        return int(np.dtype(self.dtype).itemsize * np.prod(self.shape, dtype=np.int64))


def _digest(rows: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rows).view(np.uint8).reshape(-1).data).hexdigest()


def _npy_size(spec: FieldSpec, rows: int) -> int:
    """Bytes of a .npy file holding ``rows`` rows of ``spec`` (header included)."""
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(spec.dtype)),
        "fortran_order": False,
        "shape": (rows, *spec.shape),
    }
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.tell() + rows * spec.row_bytes


def _reserve(f: Path) -> None:
    """Allocate the disk blocks of a (sparse) segment file now: a full disk is then an ENOSPC here, not a
    SIGBUS when a memory-mapped page is first written, rows later."""
    fd = os.open(f, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):  # a file system that cannot reserve: go on
            exc.filename = str(f)
            raise
    finally:
        os.close(fd)


def read_manifest(path: Path) -> dict[str, Any]:
    """The validated manifest of the buffer at ``path``; errors name the problem and the fix."""
    if not path.exists():
        raise PolicyKDError(f"buffer not found: {path}; record one with: policy-kd record --out {path} ...")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise PolicyKDError(
            f"{path} is not a policy_kd buffer (no {MANIFEST}); pass a folder written by policy-kd record"
        )
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PolicyKDError(f"{mpath} is damaged ({exc}); re-record the buffer") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PolicyKDError(
            f"{mpath} is not a policy_kd buffer manifest; pass a folder written by policy-kd record"
        )
    version = manifest.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise PolicyKDError(
            f"{path} has buffer schema {version}, this policy_kd reads up to {SCHEMA_VERSION}; upgrade policy-kd"
        )
    missing = [k for k in ("fields", "meta", "segments", "sources", "rows") if k not in manifest]
    if missing:
        raise PolicyKDError(f"{mpath} is missing {', '.join(missing)}; re-record the buffer")
    try:
        _check_manifest(manifest)
    except _Bad as exc:
        raise PolicyKDError(f"{mpath} is inconsistent: {exc}; re-record the buffer") from None
    return manifest


class _Bad(Exception):
    """One way a manifest's structure is wrong (read_manifest turns it into a PolicyKDError)."""


def _expect(ok: bool, what: str) -> None:
    if not ok:
        raise _Bad(what)


def _is_int(v: Any, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def check_name(name: Any, what: str) -> str:
    """``name`` if it is a plain file name (it becomes a path inside the buffer folder), else raise.

    Every path a reader or writer opens is ``folder / segment name / field name + ".npy"``: a name with a
    separator, ``..``, or an absolute path would reach outside the folder, so none is accepted.
    """
    _expect(
        isinstance(name, str) and _PLAIN_NAME.fullmatch(name) is not None and name not in (".", ".."),
        f"{what} {name!r} is not a plain file name (letters, digits, '_', '-', '.'; no '/', no '..')",
    )
    return name


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def load_npy(f: Path, mode: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Memory-map the .npy file ``f`` (never unpickled), checked to hold ``shape`` rows of ``dtype``
    as the manifest says; a header that does not parse is named as damage."""
    try:
        arr = np.load(f, mmap_mode=mode, allow_pickle=False)  # type: ignore[arg-type]
    except Exception as exc:  # numpy parses the header with ast: SyntaxError, TokenError, ValueError...
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PolicyKDError(f"buffer file {f} is damaged ({why}); re-record the buffer") from None
    if arr.shape != shape or arr.dtype != np.dtype(dtype):
        raise PolicyKDError(
            f"buffer file {f} holds {arr.shape} {arr.dtype}, not as the manifest says; re-record"
        )
    return arr


def field_file(folder: Path, segment: str, field: str, *, write: bool = False) -> Path:
    """The file of ``field`` in ``segment`` of the buffer at ``folder``, checked to lie inside it.

    The names are checked by read_manifest; here the segment folder and the file must not be symbolic
    links (reading or writing through one would reach outside the buffer), and a file written in place
    must have no other hard link (a write would change the other name's content too).
    """
    seg_dir = folder / segment
    f = seg_dir / f"{field}.npy"
    for p in (seg_dir, f):
        if p.is_symlink():
            raise PolicyKDError(
                f"buffer {folder}: {p} is a symbolic link, refused (it could point outside the buffer); "
                "replace it with the real file or re-record the buffer"
            )
    if write and f.is_file() and os.stat(f).st_nlink > 1:
        raise PolicyKDError(
            f"buffer {folder}: {f} has {os.stat(f).st_nlink} hard links, refused (writing it would change "
            "the other copies); copy the buffer with cp -r (no hard links) and resume the copy"
        )
    return f


def _check_manifest(m: dict[str, Any]) -> None:
    """Types, ranges and names of everything a reader or writer uses from a manifest (see the docstring)."""
    _expect(isinstance(m["fields"], dict) and len(m["fields"]) > 0, "'fields' must be a non-empty mapping")
    for k, f in m["fields"].items():
        check_name(k, "field")
        _expect(isinstance(f, dict) and isinstance(f.get("dtype"), str), f"field {k} has no dtype")
        try:
            dtype = np.dtype(f["dtype"])
        except (TypeError, ValueError):
            raise _Bad(f"field {k} has an unknown dtype {f['dtype']!r}") from None
        _expect(dtype.kind in "biuf" and not dtype.hasobject, f"field {k} has dtype {dtype}, not a number")
        shape = f.get("shape")
        _expect(
            isinstance(shape, list) and len(shape) <= 8 and all(_is_int(d) and d < 2**31 for d in shape),
            f"field {k} has shape {shape!r}, not a list of sizes",
        )
    _expect(isinstance(m["meta"], dict), "'meta' must be a mapping")
    _expect(
        isinstance(m["sources"], list) and all(isinstance(s, dict) for s in m["sources"]), "bad 'sources'"
    )
    segs = m["segments"]
    _expect(isinstance(segs, list) and len(segs) > 0, "'segments' must be a non-empty list")
    names = set()
    for i, seg in enumerate(segs):
        _expect(isinstance(seg, dict), f"segment {i} is not a mapping")
        name = check_name(seg.get("name"), f"segment {i} name")
        _expect(name not in names, f"segment name {name} is listed twice")
        names.add(name)
        cap, rows, chunks = seg.get("capacity"), seg.get("rows"), seg.get("chunks")
        _expect(_is_int(cap, 1), f"segment {name} has capacity {cap!r}")
        _expect(_is_int(rows) and rows <= cap, f"segment {name} has rows {rows!r} (capacity {cap})")
        _expect(
            _is_int(seg.get("source")) and seg["source"] < len(m["sources"]),
            f"segment {name} names source {seg.get('source')!r} of {len(m['sources'])}",
        )
        _expect(isinstance(chunks, list), f"segment {name} has no chunk list")
        end = 0
        for c in chunks:
            _expect(
                isinstance(c, dict) and c.get("start") == end and _is_int(c.get("rows"), 1),
                f"segment {name} has a gap or a malformed chunk at row {end}",
            )
            end += c["rows"]
            sha = c.get("sha256")
            _expect(
                isinstance(sha, dict) and all(isinstance(sha.get(k), str) for k in m["fields"]),
                f"segment {name} has a chunk at row {c['start']} without a sha256 per field",
            )
        _expect(end == rows, f"segment {name} lists chunks for {end} rows, not {rows}")
    _expect(m["rows"] == sum(s["rows"] for s in segs), f"'rows' {m['rows']!r} is not the segments' sum")


class BufferWriter:
    """Write one segment of a buffer: a new buffer, a resumed segment, or a recording appended to a buffer.

    ``append`` rows field by field; every ``chunk_rows`` rows are committed (flushed, checksummed, listed).
    Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        fields: dict[str, FieldSpec] | None = None,
        meta: dict[str, Any] | None = None,
        source: dict[str, Any] | None = None,
        capacity: int = 0,
        chunk_rows: int = 65_536,
        mode: str = "create",
    ):
        if chunk_rows <= 0:
            raise ValueError(f"chunk_rows must be > 0, got {chunk_rows}")
        self.path = Path(path)
        self.chunk_rows = chunk_rows
        if mode == "create":
            assert fields is not None and meta is not None and source is not None
            self.path.mkdir(parents=True, exist_ok=True)
            self.manifest: dict[str, Any] = {
                "format": FORMAT,
                "schema_version": SCHEMA_VERSION,
                "complete": False,
                "rows": 0,
                "fields": {k: f.to_json() for k, f in fields.items()},
                "meta": dict(meta),
                "sources": [],
                "segments": [],
            }
            self._new_segment(source, capacity)
        elif mode == "append":
            assert source is not None
            self.manifest = read_manifest(self.path)
            self._check_fields(fields, "append only recordings of the same env and teacher kind")
            self._new_segment(source, capacity)
        elif mode == "resume":
            self.manifest = read_manifest(self.path)
            self._check_fields(fields, "it cannot be resumed by this teacher; record a new buffer")
            seg = self.manifest["segments"][-1]
            if seg["rows"] >= seg["capacity"]:
                raise PolicyKDError(
                    f"buffer {self.path} is complete ({self.manifest['rows']} rows); nothing to resume"
                )
        else:
            raise ValueError(f"unknown mode {mode!r}")
        self.fields = {
            k: FieldSpec(v["dtype"], tuple(v["shape"])) for k, v in self.manifest["fields"].items()
        }
        self.segment = self.manifest["segments"][-1]
        self._open_maps(create=mode != "resume")
        self._committed = self.segment["rows"]
        self._stage = {k: np.empty((chunk_rows, *f.shape), dtype=f.dtype) for k, f in self.fields.items()}
        self._staged = 0  # rows appended but not yet committed
        self._write_manifest()

    def _check_fields(self, fields: dict[str, FieldSpec] | None, fix: str) -> None:
        """Refuse to add rows whose fields differ from the buffer's (names, dtypes or shapes)."""
        theirs = {k: FieldSpec(v["dtype"], tuple(v["shape"])) for k, v in self.manifest["fields"].items()}
        if fields is None or theirs == fields:
            return
        diff = [f"no field {k}" for k in fields if k not in theirs]
        diff += [f"a field {k} this recording does not make" for k in theirs if k not in fields]
        diff += [
            f"field {_describe({k: theirs[k]})}, this recording makes {_describe({k: f})}"
            for k, f in fields.items()
            if k in theirs and theirs[k] != f
        ]
        raise PolicyKDError(f"buffer {self.path} has {'; '.join(diff)}; {fix}")

    # -- segment files -------------------------------------------------------------------------------------

    def _new_segment(self, source: dict[str, Any], capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be > 0, got {capacity}")
        idx = len(self.manifest["segments"])
        self.manifest["sources"].append({"id": len(self.manifest["sources"]), **source})
        self.manifest["segments"].append(
            {
                "name": f"segment_{idx:03d}",
                "source": len(self.manifest["sources"]) - 1,
                "capacity": int(capacity),
                "rows": 0,
                "chunks": [],
            }
        )

    def _open_maps(self, *, create: bool) -> None:
        seg_dir = self.path / self.segment["name"]
        if create:  # a resumed segment's folder must already be there: nothing is created for it
            seg_dir.mkdir(exist_ok=True)
        self._maps: dict[str, np.memmap] = {}
        try:
            for k, spec in self.fields.items():
                f = field_file(self.path, self.segment["name"], k, write=True)
                shape = (self.segment["capacity"], *spec.shape)
                if create:
                    self._maps[k] = np.lib.format.open_memmap(
                        f, mode="w+", dtype=np.dtype(spec.dtype), shape=shape
                    )
                else:
                    if not f.is_file() or f.stat().st_size != _npy_size(spec, shape[0]):
                        raise PolicyKDError(
                            f"cannot resume: {f} is missing or truncated; record into a new buffer"
                        )
                    self._maps[k] = load_npy(f, "r+", shape, spec.dtype)
                _reserve(f)
        except OSError:
            self._maps = {}
            if create:  # not listed in any manifest yet: leave no half-made segment behind
                shutil.rmtree(seg_dir, ignore_errors=True)
            raise

    @property
    def remaining(self) -> int:
        """Rows the current segment can still take."""
        return self.segment["capacity"] - self._committed - self._staged

    def append(self, **arrays: np.ndarray) -> None:
        """Append ``n`` rows: one array of shape ``(n, *field.shape)`` per field, all fields at once."""
        if arrays.keys() != self.fields.keys():
            raise ValueError(f"append needs exactly the fields {sorted(self.fields)}, got {sorted(arrays)}")
        n = len(next(iter(arrays.values())))
        if n > self.remaining:
            raise ValueError(f"segment {self.segment['name']} has room for {self.remaining} rows, got {n}")
        for k, a in arrays.items():
            if a.shape != (n, *self.fields[k].shape):
                raise ValueError(f"field {k}: expected shape {(n, *self.fields[k].shape)}, got {a.shape}")
        # Rows are staged in RAM and copied to the memory maps a chunk at a time: a small memmap write per
        # field per step would cost more than the teacher's forward pass.
        done = 0
        while done < n:
            take = min(n - done, self.chunk_rows - self._staged)
            for k, a in arrays.items():
                self._stage[k][self._staged : self._staged + take] = a[done : done + take]
            self._staged += take
            done += take
            if self._staged == self.chunk_rows:
                self.flush()

    def flush(self) -> None:
        """Commit every row appended so far (also a partial chunk): write, msync, checksum, list."""
        if self._staged == 0:
            return
        start, end = self._committed, self._committed + self._staged
        digests = {}
        for k, m in self._maps.items():
            rows = self._stage[k][: self._staged]
            m[start:end] = rows
            m.flush()  # msync: the rows are on disk before the manifest says they exist
            digests[k] = _digest(rows)
        self.segment["chunks"].append({"start": start, "rows": end - start, "sha256": digests})
        self.segment["rows"] = end
        self._committed = end
        self._staged = 0
        self._write_manifest()

    def close(
        self, meta_update: dict[str, Any] | None = None, source_update: dict[str, Any] | None = None
    ) -> None:
        """Commit the last rows, merge metadata updates, and mark the buffer complete if every segment is full."""
        self.flush()
        if meta_update:
            self.manifest["meta"].update(meta_update)
        if source_update:
            self.manifest["sources"][self.segment["source"]].update(source_update)
        self._write_manifest()
        self._maps = {}  # drop the memory maps (closes the files once no view is left)

    def _write_manifest(self) -> None:
        segs = self.manifest["segments"]
        self.manifest["rows"] = sum(s["rows"] for s in segs)
        self.manifest["complete"] = all(s["rows"] == s["capacity"] for s in segs)
        write_json(self.path / MANIFEST, self.manifest)

    def __enter__(self) -> BufferWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        # On an error (Ctrl-C included) still commit what was written: those rows are whole.
        if self._maps:
            self.flush()


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


def _describe(fields: dict[str, FieldSpec]) -> str:
    return ", ".join(f"{k}{list(f.shape)}:{f.dtype}" for k, f in fields.items())


class Buffer:
    """A buffer opened for reading: validated manifest and chunks, segments memory-mapped read-only."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = path
        self.manifest = manifest
        self.fields = {k: FieldSpec(v["dtype"], tuple(v["shape"])) for k, v in manifest["fields"].items()}
        self.meta: dict[str, Any] = manifest["meta"]
        self.sources: list[dict[str, Any]] = manifest["sources"]
        self.segments: list[dict[str, Any]] = [s for s in manifest["segments"] if s["rows"] > 0]
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
            f = field_file(self.path, seg["name"], k)
            if not f.is_file():
                raise PolicyKDError(f"buffer file missing: {f}; re-record the buffer")
            size, expected = f.stat().st_size, _npy_size(spec, seg["capacity"])
            if size != expected:
                raise PolicyKDError(
                    f"buffer file {f} is truncated ({size} bytes, expected {expected}); re-record the buffer"
                )
            if not verify:
                continue
            arr = self.segment_array(i, k)
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
        """Field ``name`` of segment ``i``: a read-only memory map of its listed rows."""
        key = (i, name)
        if key not in self._maps:
            seg = self.segments[i]
            f = field_file(self.path, seg["name"], name)
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
                for start in range(0, seg["rows"], 65_536):  # a block at a time: bounded memory
                    bad = ~np.isfinite(arr[start : start + 65_536])
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
                starts = np.flatnonzero(f)
                for s, t in zip(starts, np.append(starts[1:], len(r)), strict=True):
                    ends = np.flatnonzero(d[s:t])
                    if len(ends):  # finished within the buffer
                        returns.append(float(csum[s + ends[0] + 1] - csum[s]))
        return np.asarray(returns)


class Sampler:
    """Minibatches (with replacement) of buffer fields as torch tensors, with no per-sample Python.

    Rows are drawn uniformly over all rows of ``buffers`` (one buffer or several: e.g. a teacher-driven
    buffer plus DAgger rounds), or, with ``source_weights``, each row's *source* (one recording: a
    ``(buffer, source)`` pair, in buffer order then source order) is drawn with those probabilities and
    the row uniformly within it. ``in_memory=True`` copies the fields into RAM once (fastest); ``False``
    gathers each batch from the memory-mapped segments (the OS page cache holds what fits, so a buffer
    larger than RAM works); ``None`` picks in-memory when the fields take less than ``max_ram_bytes``.
    """

    def __init__(
        self,
        buffers: Buffer | list[Buffer],
        names: tuple[str, ...],
        *,
        seed: int = 0,
        in_memory: bool | None = None,
        max_ram_bytes: int = 2 << 30,
        sources: tuple[int, ...] | None = None,
        source_weights: tuple[float, ...] | None = None,
        prefetch: bool = False,
    ):
        buffers = [buffers] if isinstance(buffers, Buffer) else list(buffers)
        self._pool: Any = None
        self._pending: tuple[torch.Tensor, Any, int] | None = None  # (generator state before, future, size)
        self.names = names
        self.gen = torch.Generator().manual_seed(seed)
        segs = [
            (b, i, (bi, s["source"]))
            for bi, b in enumerate(buffers)
            for i, s in enumerate(b.segments)
            if sources is None or s["source"] in sources
        ]
        if not segs:
            raise PolicyKDError(f"buffer {buffers[0].path} has no rows from sources {sources}")
        # group segments by source so that each source's rows are one contiguous range
        segs.sort(key=lambda x: x[2])
        self.arrays = {k: [b.segment_array(i, k) for b, i, _ in segs] for k in names}
        sizes = np.array([b.segments[i]["rows"] for b, i, _ in segs], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.rows = int(self.offsets[-1])
        self.source_keys = sorted({key for _, _, key in segs})
        self.source_rows = np.array(
            [
                sum(int(n) for (_, _, key), n in zip(segs, sizes, strict=True) if key == k)
                for k in self.source_keys
            ]
        )
        self.source_starts = np.concatenate([[0], np.cumsum(self.source_rows)[:-1]])
        self.weights: torch.Tensor | None = None
        if source_weights is not None:
            if (
                len(source_weights) != len(self.source_keys)
                or min(source_weights) < 0
                or sum(source_weights) <= 0
            ):
                raise PolicyKDError(
                    f"--source-weights needs {len(self.source_keys)} non-negative numbers (one per recording, "
                    f"not all 0), got {list(source_weights)}"
                )
            self.weights = torch.tensor(source_weights, dtype=torch.float64)
        fields = buffers[0].fields
        self.stack = buffers[0].stack if "obs" in names else None
        if self.stack is not None:
            # stacked obs are rebuilt from per-frame rows: keep episode_step and each segment's n_envs
            self.arrays["episode_step"] = [b.segment_array(i, "episode_step") for b, i, _ in segs]
            self.seg_n_envs = np.array([b.segment_n_envs(i) for b, i, _ in segs], dtype=np.int64)
        nbytes = sum(self.rows * fields[k].row_bytes for k in self.arrays)
        self.in_memory = nbytes <= max_ram_bytes if in_memory is None else in_memory
        if self.in_memory:
            self.in_ram = {k: np.concatenate(v) for k, v in self.arrays.items()}
        elif prefetch:
            # numpy releases the GIL while it gathers rows, so the next batch's page-cache reads overlap
            # the training step's compute (as a DataLoader worker would, without a process)
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="policy_kd-sampler")

    def indices(self, batch_size: int) -> np.ndarray:
        """Global row indices of the next minibatch (advances the generator)."""
        if self.weights is None:
            return torch.randint(self.rows, (batch_size,), generator=self.gen).numpy()
        which = torch.multinomial(self.weights, batch_size, replacement=True, generator=self.gen).numpy()
        u = torch.rand(batch_size, generator=self.gen, dtype=torch.float64).numpy()
        within = np.minimum((u * self.source_rows[which]).astype(np.int64), self.source_rows[which] - 1)
        return self.source_starts[which] + within

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        """The next minibatch. With prefetching (memory-mapped only), the batch after it is gathered in a
        background thread while the caller trains on this one; the indices are still drawn here, in
        order, so the batches are the same as without prefetching."""
        if self._pool is None:
            return self._gather_batch(self.indices(batch_size))
        if self._pending is not None and self._pending[2] != batch_size:
            self.set_state(self._pending[0])  # un-draw the batch prefetched at another size
        if self._pending is None:
            self._pending = self._prefetch(batch_size)
        batch = self._pending[1].result()
        self._pending = self._prefetch(batch_size)
        return batch

    def _prefetch(self, batch_size: int) -> tuple[torch.Tensor, Any, int]:
        before = self.gen.get_state()
        return before, self._pool.submit(self._gather_batch, self.indices(batch_size)), batch_size

    def _gather_batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        if self.stack is not None:
            return self._sample_stacked(idx)
        if self.in_memory:
            # numpy's take gathers rows of small dtypes (uint8 frames) about twice as fast as tensor indexing
            return {k: torch.from_numpy(a.take(idx, axis=0)) for k, a in self.in_ram.items()}
        # Sorted indices read the memory maps front to back; one fancy-index per segment, not per sample.
        idx = np.sort(idx)
        return {k: torch.from_numpy(_gather(parts, self.offsets, idx)) for k, parts in self.arrays.items()}

    def _sample_stacked(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        assert self.stack is not None
        idx = np.sort(idx)
        n_envs = self.seg_n_envs[np.searchsorted(self.offsets, idx, side="right") - 1]
        out: dict[str, torch.Tensor] = {}
        if self.in_memory:
            obs = self.stack.rebuild(self.in_ram["obs"], self.in_ram["episode_step"], idx, n_envs)
            for k in self.names:
                if k != "obs":
                    out[k] = torch.from_numpy(self.in_ram[k].take(idx, axis=0))
        else:
            obs = self.stack.rebuild(
                _Concat(self.arrays["obs"], self.offsets), _Concat(self.arrays["episode_step"], self.offsets),
                idx, n_envs,
            )  # fmt: skip
            for k in self.names:
                if k != "obs":
                    out[k] = torch.from_numpy(_gather(self.arrays[k], self.offsets, idx))
        out["obs"] = torch.from_numpy(obs)
        return out

    def state(self) -> torch.Tensor:
        """The generator's state, to checkpoint (restore with ``set_state``) for bit-identical resumption;
        a batch prefetched but not yet returned is not counted as drawn."""
        return self._pending[0] if self._pending is not None else self.gen.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self._drop_pending()
        self.gen.set_state(state)

    def _drop_pending(self) -> None:
        if self._pending is not None:
            self._pending[1].result()
            self._pending = None

    def close(self) -> None:
        """Stop the prefetch thread (if any)."""
        self._drop_pending()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


class _Concat:
    """Row-indexable view of memory-mapped segments as one array (``view[sorted_rows]``), without copying."""

    def __init__(self, parts: list[np.ndarray], offsets: np.ndarray):
        self.parts, self.offsets, self.dtype = parts, offsets, parts[0].dtype

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        return _gather(self.parts, self.offsets, idx)


def _gather(parts: list[np.ndarray], offsets: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` (sorted, global) of the concatenation of ``parts`` whose starts are ``offsets``."""
    bounds = np.searchsorted(idx, offsets)
    pieces = [
        parts[s][idx[bounds[s] : bounds[s + 1]] - offsets[s]]
        for s in range(len(parts))
        if bounds[s + 1] > bounds[s]
    ]
    return np.concatenate(pieces) if len(pieces) > 1 else np.asarray(pieces[0])


def describe_nonfinite(bad: dict[str, tuple[int, int, int]]) -> str:
    return ", ".join(
        f"{k}: {n:,} NaN/Inf value(s) in {rows:,} row(s), first at row {first}"
        for k, (n, rows, first) in bad.items()
    )


#: What describe reads besides the teacher's outputs.
STANDARD_FIELDS = ("obs", "action", "reward", "first", "terminated", "truncated", "env", "source", "teacher")


def describe(buffer: Buffer) -> str:
    """A human-readable summary of a buffer: schema, counts, sources, episodes, actions, non-finite values."""
    buffer.require(*STANDARD_FIELDS)
    m, meta = buffer.manifest, buffer.meta
    n_chunks = sum(len(s["chunks"]) for s in buffer.segments)
    state = "complete" if buffer.complete else "INCOMPLETE (resume with: policy-kd record --resume --out ...)"
    t = meta.get("teacher") if isinstance(meta.get("teacher"), dict) else {}
    lines = [
        f"buffer {buffer.path}: schema {m['schema_version']}, {state}",
        f"  {buffer.rows:,} rows in {len(buffer.segments)} segment(s), {n_chunks} chunk(s), "
        f"{buffer.nbytes() / 1e6:.1f} MB of field data",
        f"env {meta.get('env_id')}: observations {meta.get('observation_space')}, actions {meta.get('action_space')}",
        f"teacher {t.get('algo')} ({t.get('kind')}), {t.get('policy_params')} policy parameters, {t.get('path')}",
        "fields: " + _describe(buffer.fields),
        "sources:",
    ]
    for i, src in enumerate(buffer.sources):
        # a source's statistics are informative only (nothing is computed from them): shown as found
        rows = sum(s["rows"] for s in buffer.segments if s["source"] == i)
        cfg = src.get("config") if isinstance(src.get("config"), dict) else {}
        how = str(src.get("behaviour"))
        if how == "epsilon":
            how += f"({cfg.get('epsilon')})"
        elif how == "mixture":
            how += f"(beta={cfg.get('beta')})"
        ret, std = _number(src.get("episode_return_mean")), _number(src.get("episode_return_std")) or 0.0
        ret_txt = f"return {ret:.1f} ± {std:.1f}" if ret is not None else "no finished episode"
        acted = _number(src.get("teacher_action_fraction"))
        acted_txt = f", teacher acted {acted * 100:.1f}%" if acted is not None else ""
        games, score, score_std = (
            src.get("games"),
            _number(src.get("game_return_mean")),
            _number(src.get("game_return_std")),
        )
        if score is not None:  # Atari: episodes are lives, games are scored apart
            ret_txt += f", {games} games, score {score:.1f} ± {score_std or 0.0:.1f}"
        lines.append(f"  [{i}] {how}: {rows:,} rows, {src.get('episodes', 0)} episodes, {ret_txt}{acted_txt}")
    returns = buffer.episode_returns()
    if len(returns):
        lines.append(
            f"episodes finished in the buffer: {len(returns)}, return mean {returns.mean():.2f} ± {returns.std():.2f} "
            f"(min {returns.min():.1f}, max {returns.max():.1f})"
        )
    else:
        lines.append("episodes finished in the buffer: 0")
    if "game_reward" in buffer.fields:
        game_scores = buffer.game_returns()
        lines.append(
            f"games finished in the buffer: {len(game_scores)}"
            + (f", score mean {game_scores.mean():.2f} ± {game_scores.std():.2f}" if len(game_scores) else "")
        )
    if buffer.rows == 0:
        lines.append("no actions recorded yet")
    elif buffer.fields["action"].shape == () and np.dtype(buffer.fields["action"].dtype).kind in "iu":
        counts: dict[int, int] = {}
        for i in range(len(buffer.segments)):
            values, n = np.unique(np.asarray(buffer.segment_array(i, "action")), return_counts=True)
            for a, c in zip(values.tolist(), n.tolist(), strict=True):
                counts[a] = counts.get(a, 0) + c
        lines.append(
            "action histogram: "
            + "  ".join(
                f"{a}: {counts.get(a, 0) / buffer.rows * 100:.1f}%"
                # actions never taken show as 0% (up to a sane action count)
                for a in sorted(set(counts) | set(range(min(max(counts) + 1, 1024))))
            )
        )
    else:
        act = buffer.spaced("action", 100_000)
        lines.append(
            f"action mean {np.round(act.mean(0), 3).tolist()}, std {np.round(act.std(0), 3).tolist()}"
        )
    bad = buffer.nonfinite()
    lines.append("non-finite values: " + (describe_nonfinite(bad) if bad else "none"))
    return "\n".join(lines)


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None
