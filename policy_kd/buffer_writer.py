"""Writing a buffer: a new one, a resumed segment, or a recording appended (see ``policy_kd.buffer``)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from policy_kd.buffer_format import (
    FORMAT,
    MANIFEST,
    SCHEMA_VERSION,
    FieldSpec,
    _describe,
    _digest,
    _npy_size,
    _reserve,
    field_file,
    load_npy,
    read_manifest,
)
from policy_kd.errors import PolicyKDError
from policy_kd.run import write_json


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
