"""The teacher-output buffer: a documented, chunked, append-only on-disk format readable without pickle.

Layout of a buffer folder::

    manifest.json               schema, metadata, chunk list with sizes and sha256 checksums
    chunk_000000/obs.npy        one plain .npy file per field per chunk, ``rows`` rows each
    chunk_000000/action.npy
    ...

``manifest.json`` holds ``format`` ("policy_kd.buffer"), ``schema_version``, ``fields`` (name -> dtype and
per-row shape), ``meta`` (env id, spaces, teacher kind/algo/path/params, behaviour policy, counts,
episode statistics), ``rows`` (total), ``complete`` (false while recording) and ``chunks`` (name, rows,
and per field the file, byte size and sha256). A chunk is written to temporary files, fsynced and renamed,
and only then listed in the manifest, which is itself replaced atomically: a killed writer leaves every
listed chunk whole. Readers check each chunk's size and checksum and name the chunk that fails.

Standard fields (row = one environment step of one env): ``obs`` (the raw observation the teacher
labelled), ``action`` (the action taken by the behaviour policy), ``reward``, ``terminated``,
``truncated``, ``env`` (index of the parallel env, for episode boundaries) and ``teacher`` (the teacher's
outputs at ``obs``: Q-values or logits, ``(n_actions,)``). This module knows no network and no SB3.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BufferWriter:
    """Append rows field by field; full chunks go to disk as soon as they fill.

    Use as a context manager or call :meth:`close`. Rows still in memory when the process dies are lost;
    every chunk listed in the manifest is whole.
    """

    def __init__(
        self,
        path: str | Path,
        fields: dict[str, FieldSpec],
        meta: dict[str, Any],
        *,
        chunk_rows: int = 65_536,
    ):
        if chunk_rows <= 0:
            raise ValueError(f"chunk_rows must be > 0, got {chunk_rows}")
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.fields = dict(fields)
        self.meta = dict(meta)
        self.chunk_rows = chunk_rows
        self.chunks: list[dict[str, Any]] = []
        self.rows = 0
        self._buf = {k: np.empty((chunk_rows, *f.shape), dtype=f.dtype) for k, f in self.fields.items()}
        self._fill = 0
        self._write_manifest(complete=False)

    def append(self, **arrays: np.ndarray) -> None:
        """Append ``n`` rows: one array of shape ``(n, *field.shape)`` per field, all fields at once."""
        if set(arrays) != set(self.fields):
            raise ValueError(f"append needs exactly the fields {sorted(self.fields)}, got {sorted(arrays)}")
        n = len(next(iter(arrays.values())))
        for k, a in arrays.items():
            if a.shape != (n, *self.fields[k].shape):
                raise ValueError(f"field {k}: expected shape {(n, *self.fields[k].shape)}, got {a.shape}")
        start = 0
        while start < n:
            take = min(n - start, self.chunk_rows - self._fill)
            for k, a in arrays.items():
                self._buf[k][self._fill : self._fill + take] = a[start : start + take]
            self._fill += take
            start += take
            if self._fill == self.chunk_rows:
                self.flush()

    def flush(self) -> None:
        """Write the rows held in memory as a new chunk (no-op when there are none)."""
        if self._fill == 0:
            return
        name = f"chunk_{len(self.chunks):06d}"
        chunk_dir = self.path / name
        chunk_dir.mkdir(exist_ok=True)
        files = {}
        for k, buf in self._buf.items():
            final = chunk_dir / f"{k}.npy"
            tmp = chunk_dir / f".{k}.npy.tmp"
            with open(tmp, "wb") as f:
                np.save(f, buf[: self._fill])
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            files[k] = {"file": f"{name}/{k}.npy", "bytes": final.stat().st_size, "sha256": _sha256(final)}
        _fsync_dir(chunk_dir)
        self.chunks.append({"name": name, "rows": self._fill, "files": files})
        self.rows += self._fill
        self._fill = 0
        self._write_manifest(complete=False)

    def close(self, meta_update: dict[str, Any] | None = None) -> None:
        """Flush the last rows, merge ``meta_update`` into the metadata and mark the buffer complete."""
        self.flush()
        if meta_update:
            self.meta.update(meta_update)
        self._write_manifest(complete=True)

    def _write_manifest(self, *, complete: bool) -> None:
        write_json(
            self.path / MANIFEST,
            {
                "format": FORMAT,
                "schema_version": SCHEMA_VERSION,
                "complete": complete,
                "rows": self.rows,
                "fields": {k: f.to_json() for k, f in self.fields.items()},
                "meta": self.meta,
                "chunks": self.chunks,
            },
        )

    def __enter__(self) -> BufferWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        # On an error (Ctrl-C included) keep the finished rows readable, but leave complete = false.
        if exc_type is None:
            self.close()
        else:
            self.flush()


class Buffer:
    """A buffer opened for reading: validated manifest, chunks memory-mapped on demand."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = path
        self.manifest = manifest
        self.fields = {k: FieldSpec(v["dtype"], tuple(v["shape"])) for k, v in manifest["fields"].items()}
        self.meta: dict[str, Any] = manifest["meta"]
        self.chunks: list[dict[str, Any]] = manifest["chunks"]
        self.rows = int(manifest["rows"])
        self.complete = bool(manifest.get("complete", False))

    @classmethod
    def open(cls, path: str | Path, *, verify: bool = True) -> Buffer:
        """Open and validate a buffer; ``verify`` also checks every chunk's checksum."""
        path = Path(path)
        if not path.exists():
            raise PolicyKDError(
                f"buffer not found: {path}; record one with: policy-kd record --out {path} ..."
            )
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
        try:
            buf = cls(path, manifest)
        except (KeyError, TypeError, ValueError) as exc:
            raise PolicyKDError(f"{mpath} is missing {exc}; re-record the buffer") from None
        for chunk in buf.chunks:
            buf._check_chunk(chunk, verify=verify)
        if sum(c["rows"] for c in buf.chunks) != buf.rows:
            raise PolicyKDError(
                f"{mpath} counts {buf.rows} rows but its chunks hold another number; re-record the buffer"
            )
        if buf.rows == 0:
            raise PolicyKDError(f"buffer {path} holds no transitions; record with more --steps")
        return buf

    def _check_chunk(self, chunk: dict[str, Any], *, verify: bool) -> None:
        for k in self.fields:
            entry = chunk["files"].get(k)
            if entry is None:
                raise PolicyKDError(f"buffer chunk {chunk['name']} has no field {k}; re-record the buffer")
            f = self.path / entry["file"]
            if not f.is_file():
                raise PolicyKDError(f"buffer chunk file missing: {f}; re-record the buffer")
            size = f.stat().st_size
            if size != entry["bytes"]:
                raise PolicyKDError(
                    f"buffer chunk file {f} is truncated or altered ({size} bytes, expected {entry['bytes']}); re-record the buffer"
                )
            if verify and _sha256(f) != entry["sha256"]:
                raise PolicyKDError(
                    f"buffer chunk file {f} is corrupted (sha256 mismatch); re-record the buffer"
                )

    def chunk_array(self, chunk_index: int, name: str) -> np.ndarray:
        """One field of one chunk, memory-mapped read-only."""
        chunk = self.chunks[chunk_index]
        arr = np.load(self.path / chunk["files"][name]["file"], mmap_mode="r", allow_pickle=False)
        spec = self.fields[name]
        if arr.shape != (chunk["rows"], *spec.shape) or arr.dtype != np.dtype(spec.dtype):
            raise PolicyKDError(
                f"buffer chunk {chunk['name']}/{name} has shape {arr.shape} {arr.dtype}, not as the manifest says; re-record"
            )
        return arr

    def field(self, name: str) -> np.ndarray:
        """A whole field, all chunks concatenated into memory: ``(rows, *shape)``."""
        if name not in self.fields:
            raise PolicyKDError(f"buffer {self.path} has no field {name!r}; it has {', '.join(self.fields)}")
        return np.concatenate([self.chunk_array(i, name) for i in range(len(self.chunks))])

    def episode_returns(self) -> np.ndarray:
        """Returns of the episodes that finished inside the buffer (episodes cut by its end are left out)."""
        reward = self.field("reward")
        done = self.field("terminated") | self.field("truncated")
        env = self.field("env")
        returns = []
        for e in np.unique(env):
            r, d = reward[env == e], done[env == e]
            ends = np.flatnonzero(d)
            starts = np.concatenate([[0], ends[:-1] + 1])
            csum = np.concatenate([[0.0], np.cumsum(r, dtype=np.float64)])
            returns.extend(csum[ends + 1] - csum[starts])
        return np.asarray(returns, dtype=np.float64)
