"""Sharded buffers: ``record --workers N`` records N buffers in parallel, read back as one.

Layout of a sharded buffer folder::

    shards.json        {"format": "policy_kd.shards", "shards": ["shard_000", "shard_001", ...]}
    shard_000/         a normal buffer (manifest.json, segment_000/...): one recording, one source
    shard_001/
    config.yaml  command.txt  versions.json

Shard ``i`` records its share of ``--steps`` with its own seed range: environment seeds (and the behaviour
policy's random stream) start at ``seed + sum over j < i of (steps_j + n_envs)``, past every seed an
earlier shard can use (a recording seeds its envs from ``seed + rows done``), so no two shards play the
same episode. Each shard is recorded, checksummed and resumed exactly as a plain buffer; a lost worker's
shard is recorded again from its last chunk. :meth:`policy_kd.buffer.Buffer.open` reads the folder as one
buffer: the shards' segments in shard order, their sources concatenated (shard ``i``'s source is source
``i``), after checking that every shard has the same fields, environment and teacher.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from policy_kd.backends import Backend, make_backend
from policy_kd.buffer_format import check_name, read_manifest
from policy_kd.errors import PolicyKDError
from policy_kd.run import job

FORMAT = "policy_kd.shards"


def read_shards(path: Path) -> list[str]:
    """The shard folder names listed in ``path/shards.json``, checked to be plain names inside ``path``."""
    from policy_kd.buffer import SHARDS

    try:
        data = json.loads((path / SHARDS).read_text())
        names = data["shards"]
        ok = data.get("format") == FORMAT and isinstance(names, list) and names
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise PolicyKDError(f"{path / SHARDS} is not a list of shards; re-record the buffer with --workers")
    for name in names:
        try:
            check_name(name, f"{path / SHARDS} shard")  # nothing outside the folder is read
        except Exception as exc:  # buffer_format's private "bad manifest" error
            raise PolicyKDError(f"{exc}; re-record the buffer") from None
    return list(names)


def open_shards(cls: Any, path: Path, *, verify: bool, allow_empty: bool) -> Any:
    """Open the sharded buffer ``path`` as one ``cls`` (:class:`policy_kd.buffer.Buffer`)."""
    names = read_shards(path)
    parts = [cls.open(path / n, verify=verify, allow_empty=True) for n in names]
    first = parts[0]
    teacher = _teacher_id(first.meta)
    for name, part in zip(names[1:], parts[1:], strict=True):
        if part.manifest["fields"] != first.manifest["fields"]:
            raise PolicyKDError(f"shard {path / name} has other fields than {path / names[0]}; re-record it")
        if part.meta.get("env_id") != first.meta.get("env_id") or _teacher_id(part.meta) != teacher:
            raise PolicyKDError(
                f"shard {path / name} was recorded in another env or by another teacher than {path / names[0]}; "
                "re-record it"
            )
    segments, dirs, offsets, sources = [], [], [], []
    for name, part in zip(names, parts, strict=True):
        for seg in part.manifest["segments"]:
            segments.append({**seg, "source": seg["source"] + len(sources)})
            dirs.append(path / name)
            offsets.append(len(sources))
        sources += part.sources
    manifest = {
        **first.manifest,
        "rows": sum(p.rows for p in parts),
        "complete": all(p.complete for p in parts),
        "sources": sources,
        "segments": segments,
    }
    buf = cls(path, manifest, segment_dirs=dirs, source_offsets=offsets)
    if buf.rows == 0 and not allow_empty:
        raise PolicyKDError(f"buffer {path} holds no transitions; record with more --steps (or --resume it)")
    return buf


def _teacher_id(meta: dict[str, Any]) -> Any:
    t = meta.get("teacher")
    return t.get("weights_sha256", t.get("path")) if isinstance(t, dict) else t


def shard_plan(steps: int, workers: int, n_envs: int, seed: int) -> list[tuple[int, int]]:
    """(steps, seed) of each shard: ``steps`` split as evenly as possible, seed ranges apart."""
    if workers > steps:
        raise PolicyKDError(f"--workers {workers} is more than --steps {steps}; record fewer shards")
    plan, next_seed = [], seed
    for i in range(workers):
        rows = steps // workers + (1 if i < steps % workers else 0)
        plan.append((rows, next_seed))
        next_seed += rows + n_envs
    return plan


def record_shard(options: dict[str, Any]) -> int:
    """Task: record (or finish) one shard from its record options; return its rows. Idempotent: a complete
    shard is kept, an interrupted one resumed from its last chunk."""
    from policy_kd.record import RecordConfig, record

    out = Path(options["out"])
    if (out / "manifest.json").is_file():
        if read_manifest(out).get("complete"):
            return int(read_manifest(out)["rows"])
        record(
            RecordConfig(out=str(out), resume=True, progress=False, threads=int(options.get("threads", 1)))
        )
    else:
        record(RecordConfig(**{**options, "progress": False, "force": True}))
    return int(read_manifest(out)["rows"])


@job(resumable=True)
def record_shards(config: Any, *, workers: int | None = None, backend: Backend | None = None) -> Path:
    """Record ``config`` (a :class:`policy_kd.record.RecordConfig`) as ``workers`` (default
    ``config.workers``) shards in parallel into ``config.out``, on ``backend`` (default: ``config.backend``),
    resuming the shards an earlier run left unfinished; return the folder."""
    from policy_kd.buffer import SHARDS
    from policy_kd.record import RecordConfig
    from policy_kd.run import (
        atomic_write_text,
        lock_out_dir,
        prepare_out_dir,
        read_run_config,
        write_run_info,
    )

    workers = workers or config.workers
    out = Path(config.out)
    if config.resume:  # the saved options, this call's backend
        if not (out / SHARDS).is_file():
            raise PolicyKDError(f"{out} is not a sharded buffer; resume it without --workers")
        saved = read_run_config(RecordConfig, out, progress=False)
        config = dataclasses.replace(
            saved, backend=config.backend, address=config.address, threads=config.threads
        )
        workers = saved.workers
    if (out / SHARDS).is_file() and not config.force:
        lock_out_dir(out, what="buffer folder")
        names = read_shards(out)
        if len(names) != workers:
            raise PolicyKDError(
                f"{out} holds {len(names)} shards, not --workers {workers}; resume with --workers {len(names)} "
                "or pass --force to record anew"
            )
    else:
        out = prepare_out_dir(config.out, force=config.force, what="buffer folder", inputs=(config.teacher,))
        # what --resume reads back: the shard count included
        write_run_info(out, dataclasses.replace(config, workers=workers), job="record")
        names = [f"shard_{i:03d}" for i in range(workers)]
        atomic_write_text(out / SHARDS, json.dumps({"format": FORMAT, "shards": names}, indent=1) + "\n")
    base = {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if f.name not in ("workers", "backend", "address", "resume", "append", "force", "progress")
    }
    plan = shard_plan(config.steps, workers, config.n_envs, config.seed)
    own = backend is None
    runner = backend or make_backend(config.backend, jobs=workers, address=config.address)
    try:
        handles = [
            runner.submit(record_shard, {**base, "out": str(out / name), "steps": steps, "seed": seed})
            for name, (steps, seed) in zip(names, plan, strict=True)
        ]
        for h in handles:
            runner.result(h)
    finally:
        if own:
            runner.close()
    return out
