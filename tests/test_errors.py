"""Every bad input gets one line on stderr, exit status 2, no traceback, and nothing overwritten."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli


def expect_error(capsys: pytest.CaptureFixture[str], args: list[object], *fragments: str) -> str:
    code = run_cli(*map(str, args))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("policy-kd: error: ")
    for frag in fragments:
        assert frag in err, (frag, err)
    return err


@pytest.fixture
def copy_of(tmp_path: Path):
    def copy(src: Path, name: str) -> Path:
        dst = tmp_path / name
        shutil.copytree(src, dst)
        return dst

    return copy


# ----------------------------------------------------------------------------------------- missing inputs


def test_missing_teacher(capsys, tmp_path):
    expect_error(
        capsys, ["record", "--teacher", tmp_path / "nope", "--out", tmp_path / "b"], "teacher not found"
    )
    assert not (tmp_path / "b").exists()


def test_no_teacher_given(capsys, tmp_path):
    expect_error(capsys, ["record", "--out", tmp_path / "b"], "--teacher")


def test_folder_that_is_not_a_teacher(capsys, tmp_path):
    (tmp_path / "t").mkdir()
    expect_error(
        capsys, ["record", "--teacher", tmp_path / "t", "--out", tmp_path / "b"], "not a teacher run folder"
    )


def test_unreadable_teacher_zip(capsys, tmp_path):
    bad = tmp_path / "model.zip"
    bad.write_bytes(b"not a zip at all")
    expect_error(
        capsys,
        ["record", "--teacher", bad, "--env", "CartPole-v1", "--out", tmp_path / "b"],
        "could not read",
    )


def test_plain_zip_needs_env(capsys, artifacts, tmp_path):
    expect_error(
        capsys,
        ["record", "--teacher", artifacts["teacher"] / "best_model.zip", "--out", tmp_path / "b"],
        "--env",
    )


def test_zip_teacher_for_another_env(capsys, artifacts, tmp_path):
    expect_error(
        capsys,
        [
            "record",
            "--teacher",
            artifacts["teacher"] / "best_model.zip",
            "--env",
            "Acrobot-v1",
            "--out",
            tmp_path / "b",
        ],
        "Acrobot-v1",
    )


def test_run_folder_teacher_for_another_env(capsys, artifacts, tmp_path):
    expect_error(
        capsys,
        ["record", "--teacher", artifacts["teacher"], "--env", "Acrobot-v1", "--out", tmp_path / "b"],
        "trained on CartPole-v1",
    )


def test_missing_buffer(capsys, tmp_path):
    expect_error(
        capsys, ["distill", "--buffer", tmp_path / "nope", "--out", tmp_path / "s"], "buffer not found"
    )


def test_folder_that_is_not_a_buffer(capsys, tmp_path):
    (tmp_path / "b").mkdir()
    expect_error(
        capsys, ["distill", "--buffer", tmp_path / "b", "--out", tmp_path / "s"], "not a policy_kd buffer"
    )


def test_damaged_manifest(capsys, artifacts, copy_of, tmp_path):
    b = copy_of(artifacts["buffer"], "b")
    (b / "manifest.json").write_text("{ not json")
    expect_error(capsys, ["distill", "--buffer", b, "--out", tmp_path / "s"], "damaged")


def test_truncated_chunk_is_named(capsys, artifacts, copy_of, tmp_path):
    b = copy_of(artifacts["buffer"], "b")
    f = b / "segment_000" / "obs.npy"
    f.write_bytes(f.read_bytes()[:-100])
    expect_error(
        capsys, ["distill", "--buffer", b, "--out", tmp_path / "s"], "segment_000/obs.npy", "truncated"
    )


def test_corrupted_chunk_is_named(capsys, artifacts, copy_of, tmp_path):
    b = copy_of(artifacts["buffer"], "b")
    f = b / "segment_000" / "teacher.npy"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF  # a byte of the last row, which lies in the third chunk (rows 2000-2999)
    f.write_bytes(bytes(data))
    expect_error(
        capsys,
        ["distill", "--buffer", b, "--out", tmp_path / "s"],
        "segment_000/teacher.npy",
        "rows 2000-2999",
        "corrupted",
    )


def test_buffer_from_newer_schema(capsys, artifacts, copy_of, tmp_path):
    b = copy_of(artifacts["buffer"], "b")
    m = json.loads((b / "manifest.json").read_text())
    m["schema_version"] = 99
    (b / "manifest.json").write_text(json.dumps(m))
    expect_error(capsys, ["distill", "--buffer", b, "--out", tmp_path / "s"], "schema 99", "upgrade")


def test_missing_student(capsys, artifacts, tmp_path):
    expect_error(
        capsys,
        ["evaluate", "--teacher", artifacts["teacher"], "--student", tmp_path / "nope"],
        "student not found",
    )


def test_student_missing_weights(capsys, artifacts, copy_of):
    s = copy_of(artifacts["student"], "s")
    (s / "best.pt").unlink()
    expect_error(capsys, ["evaluate", "--teacher", artifacts["teacher"], "--student", s], "weights missing")


def test_student_with_garbage_weights(capsys, artifacts, copy_of):
    s = copy_of(artifacts["student"], "s")
    (s / "best.pt").write_bytes(b"\x00garbage")
    expect_error(
        capsys, ["evaluate", "--teacher", artifacts["teacher"], "--student", s], "could not load student"
    )


# ------------------------------------------------------------------------------- mismatched env / actions


def test_student_made_for_another_env(capsys, artifacts, copy_of):
    s = copy_of(artifacts["student"], "s")
    info = json.loads((s / "student.json").read_text())
    info["env_id"] = "Acrobot-v1"
    (s / "student.json").write_text(json.dumps(info))
    expect_error(
        capsys,
        ["evaluate", "--teacher", artifacts["teacher"], "--student", s, "--env", "CartPole-v1"],
        "made for Acrobot-v1",
    )


def test_student_with_another_action_space(capsys, artifacts, copy_of):
    s = copy_of(artifacts["student"], "s")
    info = json.loads((s / "student.json").read_text())
    info["action_space"]["n"] = 3
    (s / "student.json").write_text(json.dumps(info))
    expect_error(capsys, ["evaluate", "--teacher", artifacts["teacher"], "--student", s], "3 actions")


def test_buffer_made_for_another_env(capsys, artifacts, copy_of):
    b = copy_of(artifacts["buffer"], "b")
    m = json.loads((b / "manifest.json").read_text())
    m["meta"]["env_id"] = "MountainCar-v0"
    (b / "manifest.json").write_text(json.dumps(m))
    expect_error(
        capsys,
        ["evaluate", "--teacher", artifacts["teacher"], "--student", artifacts["student"], "--buffer", b],
        "made for MountainCar-v0",
    )


# ------------------------------------------------------------------------------------ unknown names, values


def test_unknown_algo(capsys, tmp_path):
    expect_error(capsys, ["train-teacher", "--algo", "sac9", "--out", tmp_path / "t"], "unknown algo", "dqn")


def test_unknown_env(capsys, tmp_path):
    expect_error(
        capsys, ["train-teacher", "--env", "CartPoleX-v9", "--out", tmp_path / "t"], "unknown environment"
    )
    assert not (tmp_path / "t").exists()


def test_unknown_loss(capsys, artifacts, tmp_path):
    expect_error(
        capsys,
        ["distill", "--buffer", artifacts["buffer"], "--loss", "cosine", "--out", tmp_path / "s"],
        "unknown loss",
        "kl",
    )


def test_unknown_student(capsys, artifacts, tmp_path):
    expect_error(
        capsys,
        ["distill", "--buffer", artifacts["buffer"], "--student", "transformer", "--out", tmp_path / "s"],
        "unknown student",
        "mlp",
    )


@pytest.mark.parametrize("tau", ["0", "-0.5"])
def test_non_positive_tau(capsys, artifacts, tmp_path, tau):
    expect_error(
        capsys,
        ["distill", "--buffer", artifacts["buffer"], "--tau", tau, "--out", tmp_path / "s"],
        "--tau must be > 0",
    )
    assert not (tmp_path / "s").exists()


def test_params_fraction_too_small(capsys, artifacts, tmp_path):
    expect_error(
        capsys,
        ["distill", "--buffer", artifacts["buffer"], "--params-fraction", "0.00001", "--out", tmp_path / "s"],
        "raise --params-fraction",
    )


def test_unknown_config_key(capsys, tmp_path):
    cfg = tmp_path / "c.yml"
    cfg.write_text("steps: 10\nlearning_rate_typo: 0.1\n")
    expect_error(capsys, ["distill", "--config", cfg], "unknown option(s) learning_rate_typo")


def test_config_value_of_wrong_type(capsys, tmp_path):
    cfg = tmp_path / "c.yml"
    cfg.write_text("steps: many\n")
    expect_error(capsys, ["distill", "--config", cfg], "'steps' must be int")


def test_invalid_yaml(capsys, tmp_path):
    cfg = tmp_path / "c.yml"
    cfg.write_text("steps: [1, 2\n")
    expect_error(capsys, ["distill", "--config", cfg], "not valid YAML")


def test_unknown_command(capsys):
    expect_error(capsys, ["distil-everything"], "unknown command")


# ------------------------------------------------------------------------------------------ overwriting


def test_existing_output_is_refused_then_replaced_with_force(capsys, artifacts, tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    args = [
        "distill",
        "--buffer",
        artifacts["buffer"],
        "--out",
        out,
        "--steps",
        "5",
        "--eval-every",
        "0",
        "--no-progress",
    ]
    expect_error(capsys, args, "already exists", "--force")
    assert (out / "precious.txt").read_text() == "keep me"
    assert run_cli(*map(str, args), "--force") == 0
    assert not (out / "precious.txt").exists() and (out / "student.json").is_file()


def test_existing_teacher_run_is_refused(capsys, artifacts):
    before = (artifacts["teacher"] / "best_model.zip").read_bytes()
    expect_error(
        capsys, ["train-teacher", "--out", artifacts["teacher"], "--n-timesteps", "10"], "already exists"
    )
    assert (artifacts["teacher"] / "best_model.zip").read_bytes() == before


def test_output_inside_input_is_refused(capsys, artifacts, copy_of):
    b = copy_of(artifacts["buffer"], "b")
    expect_error(capsys, ["distill", "--buffer", b, "--out", b, "--force"], "would overwrite the input")
    assert (b / "manifest.json").is_file()


def test_interrupted_record_keeps_finished_chunks(artifacts, tmp_path, monkeypatch):
    """A crash mid-recording leaves the finished chunks readable (marked incomplete)."""
    from policy_kd import record as record_mod
    from policy_kd.buffer import Buffer

    calls = {"n": 0}
    real_label = record_mod.Teacher.label

    def flaky(self, obs):
        calls["n"] += 1
        if calls["n"] > 1500:
            raise KeyboardInterrupt
        return real_label(self, obs)

    monkeypatch.setattr(record_mod.Teacher, "label", flaky)
    code = run_cli(
        "record",
        "--teacher",
        artifacts["teacher"],
        "--out",
        tmp_path / "b",
        "--steps",
        "3000",
        "--chunk-rows",
        "500",
        "--no-progress",
    )
    assert code == 130
    buf = Buffer.open(tmp_path / "b")
    assert not buf.complete and buf.rows == 1500
    assert np.isfinite(buf.field("teacher")).all()


@pytest.mark.parametrize("argv", [["--help"], ["distill", "--help"]])
def test_a_closed_output_pipe_ends_quietly(argv):
    import subprocess
    import sys

    # the reader closes its end before the CLI writes (its imports take far longer): `... --help | head -0`
    proc = subprocess.Popen(
        [sys.executable, "-m", "policy_kd", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()
    assert proc.returncode == 141
