"""What a job reads is checked before it is used (issue 22): non-finite numbers, unfinished or mixed
buffers, names that would reach outside a buffer folder, teachers nobody asked for, absurd sizes,
damaged manifests, and run folders resumed from another working directory."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import run_cli
from stable_baselines3 import DQN
from test_errors import expect_error

from policy_kd.buffer import Buffer, _digest

QUICK = ["--steps", "60", "--eval-every", "30", "--eval-episodes", "1", "--no-progress"]


def edit_manifest(buffer: Path, change: Callable[[dict[str, Any]], None]) -> None:
    m = json.loads((buffer / "manifest.json").read_text())
    change(m)
    (buffer / "manifest.json").write_text(json.dumps(m))


def poisoned(src: Path, dst: Path) -> Path:
    """A copy of ``src`` with 1% of its teacher outputs NaN or Inf, checksums recomputed (so it verifies)."""
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    for seg in m["segments"]:
        a = np.load(dst / seg["name"] / "teacher.npy", mmap_mode="r+")
        rows = np.arange(7, seg["rows"], 100)
        a[rows, 0] = np.nan
        a[rows[::2], -1] = np.inf
        a.flush()
        for c in seg["chunks"]:
            c["sha256"]["teacher"] = _digest(np.asarray(a[c["start"] : c["start"] + c["rows"]]))
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def interrupted(src: Path, dst: Path) -> Path:
    """A copy of a finished buffer as a kill -9 leaves it: its last chunk not listed, not complete."""
    shutil.copytree(src, dst)

    def drop_last_chunk(m: dict[str, Any]) -> None:
        seg = m["segments"][-1]
        seg["rows"] -= seg["chunks"].pop()["rows"]
        m["rows"] = sum(s["rows"] for s in m["segments"])
        m["complete"] = False

    edit_manifest(dst, drop_last_chunk)
    return dst


def other_weights(teacher_dir: Path) -> None:
    """Replace the teacher's model in place by one with slightly different weights."""
    path = teacher_dir / "best_model.zip"
    model = DQN.load(path, device="cpu")
    with torch.no_grad():
        next(model.policy.parameters()).add_(0.01)
    model.save(path)


# ------------------------------------------------------------------------------- 1: non-finite numbers


def test_record_refuses_a_teacher_with_non_finite_outputs(artifacts, tmp_path, capsys):
    model = DQN.load(artifacts["teacher"] / "best_model.zip", device="cpu")
    with torch.no_grad():
        model.q_net.q_net[-1].bias[1] = float("nan")
    model.save(tmp_path / "nan.zip")
    out = tmp_path / "b"
    args = [
        "record",
        "--teacher",
        tmp_path / "nan.zip",
        "--env",
        "CartPole-v1",
        "--out",
        out,
        "--steps",
        "300",
    ]
    expect_error(capsys, [*args, "--no-progress"], "output 'teacher' is not finite", "at row 0", "nan")
    assert Buffer.open(out, allow_empty=True).rows == 0  # nothing non-finite was committed


def test_inspect_counts_non_finite_values_and_fails(artifacts, tmp_path, capsys):
    bad = poisoned(artifacts["buffer"], tmp_path / "b")
    expect_error(capsys, ["inspect", bad], "non-finite", "teacher: 45 NaN/Inf value(s) in 30 row(s)")
    assert run_cli("inspect", artifacts["buffer"]) == 0
    assert "non-finite values: none" in capsys.readouterr().out


@pytest.mark.parametrize("loss", ["kl", "mse"])
def test_distill_refuses_non_finite_targets(artifacts, tmp_path, capsys, loss):
    bad = poisoned(artifacts["buffer"], tmp_path / "b")
    out = tmp_path / "s"
    expect_error(
        capsys,
        ["distill", "--buffer", bad, "--out", out, "--loss", loss, *QUICK],
        "first at row 7",
        "re-record",
    )
    assert not (out / "student.json").exists() and not (out / "best.pt").exists()


def test_distill_stops_when_the_loss_diverges(artifacts, tmp_path, capsys):
    out = tmp_path / "s"
    args = ["distill", "--buffer", artifacts["buffer"], "--out", out, "--lr", "1e9", *QUICK]
    expect_error(capsys, args, "diverged at step", "--lr 1e+09 is too high", "no student was saved")
    assert not (out / "student.json").exists()


def test_a_non_finite_student_is_named_by_export_and_evaluate(artifacts, tmp_path, capsys):
    student = tmp_path / "s"
    shutil.copytree(artifacts["student"], student)
    weights = torch.load(student / "best.pt", weights_only=True)
    next(v for k, v in weights.items() if k.endswith("weight")).fill_(float("nan"))
    torch.save(weights, student / "best.pt")
    expect_error(capsys, ["export", student, "--out", tmp_path / "e"], "NaN/Inf", "diverged")
    assert not (tmp_path / "e").exists()
    args = ["evaluate", "--student", student, "--teacher", artifacts["teacher"], "--episodes", "1"]
    expect_error(capsys, [*args, "--out", tmp_path / "ev"], "NaN/Inf", "diverged")


# ----------------------------------------------------------------- 2: unfinished and resumed buffers


def test_distill_warns_on_an_unfinished_buffer(artifacts, tmp_path, capsys):
    part = interrupted(artifacts["buffer"], tmp_path / "b")
    assert run_cli("distill", "--buffer", part, "--out", tmp_path / "s", *QUICK) == 0
    err = capsys.readouterr().err
    assert "warning: buffer" in err and "unfinished (2,000 of 3,000 rows" in err and "record --resume" in err
    assert run_cli("distill", "--buffer", artifacts["buffer"], "--out", tmp_path / "s2", *QUICK) == 0
    assert "warning" not in capsys.readouterr().err


def test_resumed_recording_statistics_cover_the_whole_source(artifacts, tmp_path):
    part = interrupted(artifacts["buffer"], tmp_path / "b")
    assert run_cli("record", "--resume", "--out", part, "--no-progress") == 0
    buf = Buffer.open(part)
    returns = buf.episode_returns(source=0)
    src = buf.sources[0]
    assert buf.complete and len(returns) > 0
    assert src["episodes"] == len(returns) and src["episode_return_mean"] == pytest.approx(returns.mean())
    assert src["teacher_action_rows"] == 1000  # what the fraction beside it covers


def test_resume_refuses_another_teacher(artifacts, tmp_path, capsys):
    teacher = tmp_path / "t"
    shutil.copytree(artifacts["teacher"], teacher)
    buf = tmp_path / "b"
    args = ["--steps", "1000", "--chunk-rows", "500", "--no-progress"]
    assert run_cli("record", "--teacher", teacher, "--out", tmp_path / "full", *args) == 0
    interrupted(tmp_path / "full", buf)
    other_weights(teacher)  # the folder now holds another teacher
    before = (buf / "manifest.json").read_text()
    expect_error(capsys, ["record", "--resume", "--out", buf], "another teacher", "weights differ")
    assert (buf / "manifest.json").read_text() == before
    # a buffer made before digests were stored: resumed, with a warning that it cannot be checked
    edit_manifest(buf, lambda m: m["sources"][0]["teacher"].pop("weights_sha256"))
    assert run_cli("record", "--resume", "--out", buf, "--no-progress") == 0
    assert "does not record" in capsys.readouterr().err


# --------------------------------------------------------------------- 6: names that leave the folder


@pytest.mark.parametrize("name", ["../escaped", "/tmp/escaped", "a/b", "..", ".hidden", "", 7])
def test_segment_names_must_be_plain_file_names(artifacts, tmp_path, capsys, name):
    buf = interrupted(artifacts["buffer"], tmp_path / "b")
    edit_manifest(buf, lambda m: m["segments"][0].update(name=name))
    for args in (["inspect", buf], ["record", "--resume", "--out", buf, "--no-progress"]):
        expect_error(capsys, args, "not a plain file name")
    assert not (tmp_path / "escaped").exists()  # a refused resume created nothing outside


def test_field_names_must_be_plain_file_names(artifacts, tmp_path, capsys):
    buf = tmp_path / "b"
    shutil.copytree(artifacts["buffer"], buf)
    edit_manifest(buf, lambda m: m["fields"].update({"../../x": m["fields"]["obs"]}))
    expect_error(capsys, ["inspect", buf], "field '../../x' is not a plain file name")


def test_symlinked_chunk_files_are_refused(artifacts, tmp_path, capsys):
    buf = interrupted(artifacts["buffer"], tmp_path / "b")
    outside = tmp_path / "outside.npy"
    shutil.move(buf / "segment_000" / "teacher.npy", outside)
    (buf / "segment_000" / "teacher.npy").symlink_to(outside)
    before = outside.read_bytes()
    expect_error(capsys, ["inspect", buf], "symbolic link")
    expect_error(capsys, ["record", "--resume", "--out", buf, "--no-progress"], "symbolic link")
    assert outside.read_bytes() == before  # neither read through nor written through


def test_hard_linked_chunk_files_are_not_written(artifacts, tmp_path, capsys):
    buf = interrupted(artifacts["buffer"], tmp_path / "b")
    os.link(buf / "segment_000" / "obs.npy", tmp_path / "other_name.npy")
    expect_error(capsys, ["record", "--resume", "--out", buf, "--no-progress"], "hard links")


# ------------------------------------------------------------------ 7: teachers nobody passed


@pytest.mark.parametrize("extra", [["--hint-weight", "1"], ["--rounds", "2", "--round-steps", "50"]])
def test_a_teacher_is_loaded_only_when_passed(artifacts, tmp_path, capsys, extra):
    buf = tmp_path / "b"
    shutil.copytree(artifacts["buffer"], buf)
    trap = tmp_path / "trap.zip"  # what the manifest now names: must never be opened
    trap.write_bytes(b"not read")
    edit_manifest(buf, lambda m: m["meta"]["teacher"].update(path=str(trap)))
    expect_error(
        capsys, ["distill", "--buffer", buf, "--out", tmp_path / "s", *extra, *QUICK], "--teacher PATH"
    )


def test_hint_teacher_must_be_the_buffers(artifacts, tmp_path, capsys):
    teacher = tmp_path / "t"
    shutil.copytree(artifacts["teacher"], teacher)
    other_weights(teacher)
    args = ["distill", "--buffer", artifacts["buffer"], "--out", tmp_path / "s", "--hint-weight", "1"]
    expect_error(capsys, [*args, "--teacher", teacher, *QUICK], "another teacher", "weights differ")


# ------------------------------------------------------------------ 8: sizes, fields, other directories


def test_params_fraction_above_one_is_refused(artifacts, tmp_path, capsys):
    args = ["distill", "--buffer", artifacts["buffer"], "--out", tmp_path / "s", "--params-fraction", "1e6"]
    expect_error(capsys, args, "--params-fraction must lie in (0, 1]")
    assert not (tmp_path / "s").exists()


def test_a_student_too_large_for_memory_is_refused_before_it_is_built(artifacts, tmp_path, capsys):
    args = [
        "distill",
        "--buffer",
        artifacts["buffer"],
        "--out",
        tmp_path / "s",
        "--hidden",
        "400000",
        "400000",
    ]
    expect_error(capsys, args, "160,003,200,002 parameters", "GiB are available", "smaller")


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("fields.reward", "no field reward"),
        ("segments.0.capacity", "capacity None"),
        ("segments.0.chunks", "no chunk list"),
        ("sources.0.config", "does not say how it was recorded"),
    ],
)
def test_a_manifest_missing_a_standard_entry_gets_one_line(artifacts, tmp_path, capsys, path, message):
    buf = interrupted(artifacts["buffer"], tmp_path / "b")

    def drop(m: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for p in parents:
            m = m[int(p)] if isinstance(m, list) else m[p]
        del m[last]

    edit_manifest(buf, drop)
    if not path.startswith("sources"):  # inspect reads no recording options
        expect_error(capsys, ["inspect", buf], message)
    expect_error(capsys, ["record", "--resume", "--out", buf, "--no-progress"], message)


def test_record_and_distill_resume_from_another_directory_and_moved(artifacts, tmp_path, monkeypatch):
    from policy_kd import distill as distill_mod

    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    shutil.copytree(artifacts["teacher"], home / "t")
    monkeypatch.chdir(home)  # relative paths, as a user types them
    assert run_cli("record", "--teacher", "t", "--out", "full", "--steps", "1000", "--chunk-rows", "500") == 0
    interrupted(home / "full", home / "b")
    calls = {"n": 0}
    real = distill_mod.Sampler.sample

    def interrupt_at_25(self, batch_size):
        calls["n"] += 1
        if calls["n"] > 25:
            raise KeyboardInterrupt
        return real(self, batch_size)

    monkeypatch.setattr(distill_mod.Sampler, "sample", interrupt_at_25)
    args = ["--checkpoint-every", "10", "--eval-every", "0", "--no-progress", "--steps", "40"]
    assert run_cli("distill", "--buffer", "full", "--out", "s", *args) == 130
    monkeypatch.setattr(distill_mod.Sampler, "sample", real)
    monkeypatch.chdir(elsewhere)
    shutil.move(home / "s", elsewhere / "moved")  # a run folder moved elsewhere resumes too
    assert run_cli("record", "--resume", "--out", home / "b", "--no-progress") == 0
    assert Buffer.open(home / "b").complete
    assert run_cli("distill", "--resume", "--out", "moved", "--no-progress") == 0
    assert (elsewhere / "moved" / "student.json").is_file()


def test_append_refuses_another_teacher(artifacts, tmp_path, capsys):
    teacher, buf = tmp_path / "t", tmp_path / "b"
    shutil.copytree(artifacts["teacher"], teacher)
    shutil.copytree(artifacts["buffer"], buf)
    other_weights(teacher)
    args = ["record", "--teacher", teacher, "--out", buf, "--steps", "100", "--append", "--no-progress"]
    expect_error(capsys, args, "another teacher", "weights differ")
    assert len(Buffer.open(buf).segments) == 1


@pytest.mark.parametrize("seed", ["-1", str(2**70)])
def test_out_of_range_seeds_get_one_line(artifacts, tmp_path, capsys, seed):
    record = ["record", "--teacher", artifacts["teacher"], "--out", tmp_path / "b", "--steps", "10"]
    expect_error(capsys, [*record, "--seed", seed], "--seed must lie in [0, 2**32)")
    distill = ["distill", "--buffer", artifacts["buffer"], "--out", tmp_path / "s", *QUICK]
    expect_error(capsys, [*distill, "--seed", seed], "--seed must lie in [0, 2**32)")
