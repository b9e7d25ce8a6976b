"""The buffer's on-disk format: schema constants, field specs, manifest validation and field files.

What a manifest may say and how a field file is opened, checked to lie inside the buffer folder (see
``policy_kd.buffer`` for the layout). Everything here is torch-free; the reader is ``policy_kd.buffer``,
the writer ``policy_kd.buffer_writer``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from policy_kd.errors import PolicyKDError

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


def _describe(fields: dict[str, FieldSpec]) -> str:
    return ", ".join(f"{k}{list(f.shape)}:{f.dtype}" for k, f in fields.items())
