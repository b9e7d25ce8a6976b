"""record --workers: shards recorded in parallel, each a normal buffer, read back as one (every row checked)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from policy_kd.backends import Sequential
from policy_kd.buffer import Buffer
from policy_kd.errors import PolicyKDError
from policy_kd.record import RecordConfig, record
from policy_kd.shards import record_shards, shard_plan
from tests.conftest import run_cli


def check_every_row(sharded: Path, plan: list[tuple[int, int]], teacher: Path, tmp: Path) -> None:
    """The sharded buffer reads as its shards one after another, and each shard holds exactly the rows a plain
    ``record`` with the shard's steps and seed writes."""
    merged = Buffer.open(sharded, verify=True)  # every chunk of every shard against its checksum
    names = json.loads((sharded / "shards.json").read_text())["shards"]
    assert merged.rows == sum(steps for steps, _ in plan) and merged.complete
    assert [s["config"]["seed"] for s in merged.sources] == [seed for _, seed in plan]
    offset = 0
    for i, (name, (steps, seed)) in enumerate(zip(names, plan, strict=True)):
        opts = {"steps": steps, "seed": seed, "n_envs": 2, "chunk_rows": 500, "progress": False}
        alone = record(RecordConfig(teacher=str(teacher), out=str(tmp / f"alone{i}"), **opts))
        plain = Buffer.open(alone)
        for field in merged.fields:
            got = merged.field(field)[offset : offset + steps]
            want = plain.field(field) + (i if field == "source" else 0)  # shard i's source is source i
            np.testing.assert_array_equal(got, want, err_msg=f"{name}.{field}")
        offset += steps


def test_shards_split_steps_with_disjoint_seed_ranges() -> None:
    assert shard_plan(10, 3, n_envs=2, seed=5) == [(4, 5), (3, 11), (3, 16)]
    with pytest.raises(PolicyKDError, match="more than --steps"):
        shard_plan(2, 3, n_envs=1, seed=0)


def test_a_sharded_record_reads_back_row_for_row_and_resumes_a_lost_shard(
    tmp_path: Path, artifacts: dict[str, Path]
) -> None:
    opts = {"steps": 1001, "n_envs": 2, "seed": 3, "chunk_rows": 500, "progress": False}
    cfg = RecordConfig(teacher=str(artifacts["teacher"]), out=str(tmp_path / "b"), **opts)
    out = record_shards(cfg, workers=2, backend=Sequential())
    plan = shard_plan(1001, 2, n_envs=2, seed=3)
    check_every_row(out, plan, artifacts["teacher"], tmp_path)
    before = Buffer.open(out).field("obs")
    shutil.rmtree(out / "shard_001")  # a shard whose worker was lost before it wrote anything
    assert run_cli("record", "--resume", "--out", out, "--no-progress") == 0
    np.testing.assert_array_equal(Buffer.open(out).field("obs"), before)
    assert run_cli("inspect", out) == 0
    # distill reads it as one buffer
    assert run_cli("distill", "--buffer", out, "--out", tmp_path / "s", "--steps", "20", "--eval-every", "0",
                   "--no-progress") == 0  # fmt: skip


def test_sharded_record_refusals(
    tmp_path: Path, artifacts: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["record", "--teacher", artifacts["teacher"], "--steps", "10", "--no-progress"]
    assert run_cli(*base, "--out", tmp_path / "a", "--workers", "0") == 2
    assert run_cli(*base, "--out", artifacts["buffer"], "--workers", "2", "--append") == 2
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("")
    assert run_cli(*base, "--out", tmp_path / "x", "--workers", "2") == 2  # never overwritten without --force
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "shards.json").write_text('{"format": "policy_kd.shards", "shards": ["../a"]}')
    assert run_cli("inspect", tmp_path / "bad") == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("policy-kd: error:")]
    assert len(errors) == 4 and "--workers must be >= 1" in errors[0] and "not a plain file name" in errors[3]
