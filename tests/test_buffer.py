"""Buffer storage and record behaviours: crash safety, resume, append, sampling, inspect."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

from policy_kd.buffer import Buffer, BufferWriter, FieldSpec, Sampler
from policy_kd.errors import PolicyKDError
from policy_kd.students import load_student
from policy_kd.teacher import load_teacher

FIELDS = {"x": FieldSpec("float32", (3,)), "k": FieldSpec("int64", ())}


def _write(path: Path, rows: int, capacity: int, chunk_rows: int = 4) -> None:
    w = BufferWriter(
        path,
        fields=FIELDS,
        meta={"env_id": "X"},
        source={"behaviour": "t"},
        capacity=capacity,
        chunk_rows=chunk_rows,
    )
    with w:
        for i in range(rows):
            w.append(x=np.full((1, 3), i, np.float32), k=np.array([i]))


def test_writer_commits_chunks_and_partial_tail(tmp_path: Path) -> None:
    _write(tmp_path / "b", rows=10, capacity=10)
    buf = Buffer.open(tmp_path / "b")
    assert buf.complete and buf.rows == 10
    assert [c["rows"] for c in buf.segments[0]["chunks"]] == [4, 4, 2]
    np.testing.assert_array_equal(buf.field("k"), np.arange(10))


def test_unfinished_writer_keeps_committed_rows_only(tmp_path: Path) -> None:
    w = BufferWriter(tmp_path / "b", fields=FIELDS, meta={}, source={}, capacity=100, chunk_rows=4)
    for i in range(10):
        w.append(x=np.zeros((1, 3), np.float32), k=np.array([i]))
    # the process "dies" here: no flush, no close; rows 8 and 9 were never committed
    buf = Buffer.open(tmp_path / "b")
    assert not buf.complete and buf.rows == 8
    np.testing.assert_array_equal(buf.field("k"), np.arange(8))


def test_writer_rejects_overflow_and_bad_shapes(tmp_path: Path) -> None:
    w = BufferWriter(tmp_path / "b", fields=FIELDS, meta={}, source={}, capacity=2)
    with pytest.raises(ValueError, match="room for 2 rows"):
        w.append(x=np.zeros((3, 3), np.float32), k=np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="field x"):
        w.append(x=np.zeros((1, 4), np.float32), k=np.zeros(1, np.int64))
    with pytest.raises(ValueError, match="exactly the fields"):
        w.append(x=np.zeros((1, 3), np.float32))


def test_append_needs_same_fields(tmp_path: Path) -> None:
    _write(tmp_path / "b", rows=4, capacity=4)
    with pytest.raises(PolicyKDError, match="append only recordings"):
        BufferWriter(
            tmp_path / "b", fields={"x": FieldSpec("float32", (5,))}, source={}, capacity=4, mode="append"
        )


def test_sampler_memmap_matches_in_memory(tmp_path: Path) -> None:
    _write(tmp_path / "b", rows=12, capacity=12)
    w = BufferWriter(tmp_path / "b", fields=FIELDS, source={"behaviour": "u"}, capacity=8, mode="append")
    with w:
        w.append(x=np.full((8, 3), 100, np.float32) + np.arange(8)[:, None], k=100 + np.arange(8))
    buf = Buffer.open(tmp_path / "b")
    assert buf.rows == 20 and [s["source"] for s in buf.segments] == [0, 1]
    mem = Sampler(buf, ("x", "k"), seed=1, in_memory=True).sample(512)
    mm = Sampler(buf, ("x", "k"), seed=1, in_memory=False).sample(512)
    # the same rows (memory-mapped batches come sorted by row)
    assert sorted(mem["k"].tolist()) == mm["k"].tolist()
    for batch in (mem, mm):
        np.testing.assert_array_equal(batch["x"][:, 0].numpy(), batch["k"].numpy().astype(np.float32))
    # all 20 rows reachable, sources selectable
    assert set(mem["k"].tolist()) == set(range(12)) | set(range(100, 108))
    only_new = Sampler(buf, ("k",), seed=0, sources=(1,), in_memory=False).sample(64)["k"]
    assert (only_new >= 100).all()


def test_kill_9_then_resume(artifacts: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "b"
    cmd = [
        sys.executable,
        "-m",
        "policy_kd",
        "record",
        "--teacher",
        str(artifacts["teacher"]),
        "--out",
        str(out),
        "--steps",
        "12000",
        "--chunk-rows",
        "1000",
        "--no-progress",
        "--seed",
        "4",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            m = out / "manifest.json"
            if m.is_file() and json.loads(m.read_text())["rows"] >= 3000:
                break
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    buf = Buffer.open(out)
    assert not buf.complete and buf.rows % 1000 == 0 and 3000 <= buf.rows < 12000
    killed_at = buf.rows
    assert run_cli("record", "--resume", "--out", out, "--no-progress") == 0
    buf = Buffer.open(out)
    assert buf.complete and buf.rows == 12000 and len(buf.sources) == 1
    teacher = load_teacher(artifacts["teacher"])
    obs, q = buf.field("obs"), buf.field("teacher")
    np.testing.assert_allclose(
        teacher.outputs(obs[killed_at - 5 : killed_at + 5]),
        q[killed_at - 5 : killed_at + 5],
        rtol=1e-5,
        atol=1e-5,
    )
    assert buf.field("first")[killed_at]  # the resumed part starts a new episode
    assert run_cli("record", "--resume", "--out", out) == 2  # nothing left to resume


def test_student_and_mixture_behaviours(artifacts: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "b"
    assert (
        run_cli(
            "record",
            "--teacher",
            artifacts["teacher"],
            "--out",
            out,
            "--steps",
            "400",
            "--behaviour",
            "student",
            "--student",
            artifacts["student"],
            "--no-progress",
        )
        == 0
    )
    assert (
        run_cli(
            "record",
            "--teacher",
            artifacts["teacher"],
            "--out",
            out,
            "--steps",
            "2000",
            "--behaviour",
            "mixture",
            "--student",
            artifacts["student"],
            "--beta",
            "0.3",
            "--n-envs",
            "2",
            "--append",
            "--no-progress",
        )
        == 0
    )
    buf = Buffer.open(out)
    student = load_student(artifacts["student"])
    src = buf.field("source")
    obs, act, q = buf.field("obs"), buf.field("action"), buf.field("teacher")
    first = src == 0
    np.testing.assert_array_equal(act[first], student.predict(obs[first]))  # the student acted...
    teacher = load_teacher(artifacts["teacher"])
    np.testing.assert_allclose(
        teacher.outputs(obs[first]), q[first], rtol=1e-5, atol=1e-5
    )  # ...the teacher labelled
    assert buf.sources[0]["teacher_action_fraction"] == 0.0
    assert 0.2 < buf.sources[1]["teacher_action_fraction"] < 0.4
    assert buf.sources[1]["behaviour"] == "mixture" and buf.sources[1]["config"]["beta"] == 0.3


def test_inspect(artifacts: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("inspect", artifacts["buffer"]) == 0
    out = capsys.readouterr().out
    assert (
        "3,000 rows" in out
        and "action histogram" in out
        and "checksums" in out
        and "[0] epsilon(0.05)" in out
    )


def test_sampler_feeds_distill_bit_identically_from_memmap(
    artifacts: dict[str, Path], tmp_path: Path
) -> None:
    """In RAM or memory-mapped, distill trains on the same rows (order within a batch aside)."""
    args = [
        "distill",
        "--buffer",
        artifacts["buffer"],
        "--steps",
        "50",
        "--eval-every",
        "0",
        "--no-progress",
        "--hidden",
        "8",
        "--loss",
        "nll",
    ]
    assert run_cli(*args, "--out", tmp_path / "ram", "--in-memory", "True") == 0
    assert run_cli(*args, "--out", tmp_path / "mm", "--in-memory", "False") == 0
    a = torch.load(tmp_path / "ram" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "mm" / "last.pt", weights_only=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_buffer_keeps_the_teachers_env_spec(artifacts: dict[str, Path]) -> None:
    buf = Buffer.open(artifacts["buffer"])
    assert buf.meta["env_spec"] == load_teacher(artifacts["teacher"]).env_spec
    assert buf.meta["env_spec"]["env_id"] == "CartPole-v1"


def test_epsilon_random_actions_on_unbounded_box() -> None:
    import gymnasium as gym

    from policy_kd.spaces import random_actions as _random_actions

    low, high = np.array([-1.0, -np.inf], np.float32), np.array([1.0, np.inf], np.float32)
    space = gym.spaces.Box(low=low, high=high, dtype=np.float32)
    a = _random_actions(space, 64, np.random.default_rng(0))
    b = _random_actions(space, 64, np.random.default_rng(0))
    assert a.shape == (64, 2) and np.isfinite(a).all() and (np.abs(a[:, 0]) <= 1).all()
    np.testing.assert_array_equal(a, b)  # reproducible from the recording's generator
    assert a[:, 1].std() > 0


def test_prefetching_sampler_gives_the_same_batches_and_resumes_exactly(artifacts):
    buf = Buffer.open(artifacts["buffer"])
    plain = Sampler(buf, ("obs", "teacher"), seed=3, in_memory=False)
    ahead = Sampler(buf, ("obs", "teacher"), seed=3, in_memory=False, prefetch=True)
    for size in (64, 64, 32, 64, 64):  # a new batch size drops the batch prefetched at the old one
        a, b = plain.sample(size), ahead.sample(size)
        assert all(torch.equal(a[k], b[k]) for k in a)
    state = ahead.state()  # a prefetched batch is pending: not counted as drawn
    assert torch.equal(state, plain.state())
    resumed = Sampler(buf, ("obs", "teacher"), seed=99, in_memory=False, prefetch=True)
    resumed.set_state(state)
    a, b = plain.sample(64), resumed.sample(64)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ahead.close()
    resumed.close()


def test_episode_returns_count_only_episodes_that_start_and_end_inside(tmp_path: Path) -> None:
    """An env whose rows hold no episode start (its episode began before the buffer) adds nothing; the
    other env's one whole episode is counted (this raised a zip() length error before)."""
    fields = {
        k: FieldSpec(dtype, ())
        for k, dtype in {
            "reward": "float32",
            "first": "bool",
            "terminated": "bool",
            "truncated": "bool",
            "env": "int16",
        }.items()
    }
    w = BufferWriter(tmp_path / "b", fields=fields, meta={"env_id": "X"}, source={}, capacity=6, chunk_rows=6)
    with w:
        w.append(
            reward=np.ones(6, np.float32),
            first=np.array([0, 1, 0, 0, 0, 0], bool),  # env 0: a start at row 1; env 1: none
            terminated=np.array([0, 0, 0, 1, 1, 0], bool),
            truncated=np.zeros(6, bool),
            env=np.array([0, 0, 0, 0, 1, 1], np.int16),
        )
    np.testing.assert_array_equal(Buffer.open(tmp_path / "b").episode_returns(), [3.0])
