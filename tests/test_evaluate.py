"""evaluate with several students, both action modes, fidelity, cost, the report files and their schema."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from policy_kd.buffer import Buffer
from policy_kd.evaluate import EvaluateConfig, divergence, evaluate
from policy_kd.report import format_table, learning_curves, write_report


@pytest.fixture(scope="module")
def report(artifacts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("evaluate")
    assert run_cli("export", artifacts["student"], "--format", "numpy", "--out", root / "numpy") == 0
    out = root / "eval"
    code = run_cli(
        "evaluate",
        "--teacher",
        artifacts["teacher"],
        "--student",
        artifacts["student"],
        "--student",
        root / "numpy",
        "--buffer",
        artifacts["buffer"],
        "--episodes",
        "8",
        "--mode",
        "both",
        "--aggregate",
        "--out",
        out,
    )
    assert code == 0
    return out, json.loads((out / "eval.json").read_text())


def test_report_files_and_schema(report: tuple[Path, dict], artifacts: dict[str, Path]) -> None:
    out, r = report
    for name in ("eval.json", "report.md", "returns.png", "return_vs_params.png", "learning_curves.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert r["format"] == "policy_kd.eval" and r["schema_version"] == 2
    assert r["modes"] == ["deterministic", "sampled"] and r["seeds"] == list(range(8))
    assert [s["name"] for s in r["students"]] == ["student", "numpy"] and r["student"] == r["students"][0]
    for p in (r["teacher"], *r["students"]):
        for key in (
            "mean_return",
            "std_return",
            "median_return",
            "iqm_return",
            "ci95",
            "iqm_ci95",
            "returns",
        ):
            assert key in p and key in p["modes"]["sampled"], key
        assert p["params"] > 0 and p["bytes"] > 0 and p["flops"] == 2 * p["macs"] > 0
        assert p["latency"]["batch1_us"] > 0 and p["latency"]["batch256_us"] > 0
    # hand-computed: the teacher's 4-256-256-2 Q-network; the student's 4-22-22-2 MLP
    assert r["teacher"]["macs"] == 4 * 256 + 256 * 256 + 256 * 2
    assert r["students"][0]["macs"] == r["students"][1]["macs"] == 4 * 22 + 22 * 22 + 22 * 2
    md = (out / "report.md").read_text()
    assert "## Return" in md and "## Fidelity" in md and "## Cost" in md and "![returns](returns.png)" in md
    assert set(r["files"]) >= {"eval.json", "report.md", "returns.png"}
    # which teacher was measured: the digest the buffer recorded for it (the sweep files and checks this one)
    recorded = Buffer.open(artifacts["buffer"]).meta["teacher"]["weights_sha256"]
    assert r["teacher"]["weights_sha256"] == recorded


def test_paired_statistics_and_compat_keys(report: tuple[Path, dict]) -> None:
    _, r = report
    t, s = r["teacher"], r["student"]
    for mode in r["modes"]:
        sm, tm = s["modes"][mode], t["modes"][mode]
        diff = np.asarray(sm["returns"]) - np.asarray(tm["returns"])
        assert sm["paired_difference"]["mean"] == pytest.approx(diff.mean())
        lo, hi = sm["paired_difference"]["ci"]
        assert lo <= diff.mean() <= hi
        assert sm["return_ratio"]["value"] == pytest.approx(sm["mean_return"] / tm["mean_return"])
    assert r["return_ratio"] == pytest.approx(s["mean_return"] / t["mean_return"])
    assert r["params_ratio"] == pytest.approx(s["params"] / t["params"])
    # the numpy export plays exactly like the eager student (deterministic mode)
    assert r["students"][1]["modes"]["deterministic"]["returns"] == s["modes"]["deterministic"]["returns"]
    agg = r["aggregate"]["deterministic"]
    assert agg["runs"] == ["student", "numpy"] and agg["mean_return"]["n_runs"] == 2


def test_fidelity(report: tuple[Path, dict]) -> None:
    _, r = report
    f = r["student"]["fidelity"]
    own, theirs = f["student_states"], f["teacher_states"]
    assert own["rows"] == sum(r["student"]["modes"]["deterministic"]["lengths"])
    assert 0 <= own["agreement"] <= 1 and own["kl"] >= 0 and theirs["kl"] >= 0
    assert r["student"]["agreement"] == own["agreement"]
    assert r["student"]["agreement_teacher_states"] == theirs["agreement"]
    firsts = own["first_disagreement"]
    assert len(firsts) == 8 and own["episodes_with_disagreement"] == sum(x is not None for x in firsts)
    lengths = r["student"]["modes"]["deterministic"]["lengths"]
    assert all(x is None or 0 <= x < n for x, n in zip(firsts, lengths, strict=True))
    if own["agreement"] == 1.0:
        assert all(x is None for x in firsts)


def test_divergence_known_values() -> None:
    q = np.array([[1.0, 2.0, 3.0]])
    assert divergence(q, q, "discrete")[0] == pytest.approx(0.0, abs=1e-12)
    # KL(one-hot-ish || uniform) = log 3 as tau -> 0
    assert divergence(q, np.zeros((1, 3)), "discrete", tau=1e-4)[0] == pytest.approx(np.log(3), rel=1e-6)
    # Gaussians: KL(N(0, 1) || N(1, 1)) = 0.5 per dimension
    kl = divergence(
        np.zeros((1, 2)),
        np.ones((1, 2)),
        "gaussian",
        teacher_log_std=np.zeros(2),
        student_log_std=np.zeros(2),
    )
    assert kl[0] == pytest.approx(1.0)
    assert divergence(q, q, "gaussian") is None


def test_report_regenerates_from_eval_json(report: tuple[Path, dict], tmp_path: Path) -> None:
    _, r = report
    files = write_report(r, tmp_path, plots=False)
    assert files[:2] == ["eval.json", "report.md"] and (tmp_path / "report.md").read_text().startswith(
        "# Evaluation"
    )
    table = format_table(r)
    assert "student/teacher return ratio" in table and "numpy" in table and "batch-1 µs" in table


def test_learning_curves_from_tensorboard(artifacts: dict[str, Path]) -> None:
    curves = learning_curves(artifacts["student"] / "tb")
    assert "eval/mean_return" in curves and ({"loss/total", "distill/loss"} & set(curves))
    assert curves["eval/mean_return"][:, 0].tolist() == [150, 300]


def test_single_student_library_call_and_video(artifacts: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("moviepy")
    r = evaluate(
        EvaluateConfig(
            teacher=str(artifacts["teacher"]),
            student=str(artifacts["student"]),  # one path, as the demo passes it
            episodes=2,
            latency=False,
            plots=False,
            video=True,
            out=str(tmp_path / "ev"),
        )
    )
    assert len(r["students"]) == 1 and "latency" not in r["teacher"]
    videos = [f for f in r["files"] if f.endswith(".mp4")]
    assert any(v.startswith("videos/teacher/") for v in videos) and "videos/side_by_side.mp4" in videos
    assert all((tmp_path / "ev" / v).is_file() for v in videos)


def test_video_without_pygame_is_a_message_not_a_crash(
    artifacts: dict[str, Path], tmp_path: Path, capsys, monkeypatch
) -> None:
    # CartPole declares rgb_array but draws with pygame only when a frame is rendered: without pygame the video
    # is skipped with the fix named, and the scores are still written.
    monkeypatch.setitem(sys.modules, "pygame", None)
    r = evaluate(
        EvaluateConfig(
            teacher=str(artifacts["teacher"]),
            student=str(artifacts["student"]),
            episodes=1,
            latency=False,
            plots=False,
            video=True,
            out=str(tmp_path / "ev"),
        )
    )
    assert not [f for f in r["files"] if f.endswith(".mp4")]
    err = capsys.readouterr().err
    assert "no video" in err and "pygame" in err and "policy-kd[video]" in err
    assert (tmp_path / "ev" / "eval.json").is_file()


def test_evaluate_errors(artifacts: dict[str, Path], tmp_path: Path, capsys) -> None:
    from test_errors import expect_error

    t, s = artifacts["teacher"], artifacts["student"]
    expect_error(capsys, ["evaluate", "--student", s], "--teacher")
    expect_error(capsys, ["evaluate", "--teacher", t, "--student", s, "--kl-tau", "0"], "--kl-tau")
    expect_error(capsys, ["evaluate", "--teacher", t, "--student", s, "--aggregate"], "at least two")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep me")
    expect_error(
        capsys,
        ["evaluate", "--teacher", t, "--student", s, "--episodes", "1", "--out", tmp_path / "taken"],
        "--force",
    )
    assert (tmp_path / "taken" / "x").read_text() == "keep me"


def test_teacher_alone_is_scored_on_the_same_episodes(
    report: tuple[Path, dict], artifacts: dict[str, Path], tmp_path: Path, capsys
) -> None:
    _, with_students = report
    capsys.readouterr()
    out = tmp_path / "teacher_only"
    assert run_cli("evaluate", "--teacher", artifacts["teacher"], "--episodes", "5", "--out", out) == 0
    printed = capsys.readouterr().out
    r = json.loads((out / "eval.json").read_text())
    assert r["students"] == [] and r["student"] is None and r["return_ratio"] is None
    # episode i starts from reset(seed=i) with or without students beside the teacher
    expected = with_students["teacher"]["modes"]["deterministic"]["returns"][:5]
    assert r["teacher"]["returns"] == expected
    assert r["teacher"]["mean_return"] == pytest.approx(np.mean(expected))
    assert "teacher only" in printed and "agreement" not in printed
    md = (out / "report.md").read_text()
    assert "## Return" in md and "## Fidelity" not in md and (out / "returns.png").is_file()
