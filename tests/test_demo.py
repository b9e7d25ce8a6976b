"""``policy-kd demo`` for real: the README's first command, run end to end.

The fast test gives the demo the session's throwaway teacher (a finished stage is reused, as the demo
promises) and tiny budgets for the other stages; the slow one runs the demo exactly as ``make demo`` does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli

from policy_kd.report import format_table


def test_demo_runs_its_stages_and_prints_the_comparison(
    artifacts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    shutil.copytree(artifacts["teacher"], out / "teacher")
    args = ("demo", "--out", out, "--record-steps", "600", "--distill-steps", "100", "--episodes", "3",
            "--no-progress")  # fmt: skip
    assert run_cli(*args) == 0
    printed = capsys.readouterr().out
    assert f"[demo] teacher: reusing {out / 'teacher'}" in printed
    for stage in ("buffer", "student", "eval"):
        assert f"[demo] {stage} -> {out / stage}" in printed
    manifest = json.loads((out / "buffer" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["rows"] == 600
    student = json.loads((out / "student" / "student.json").read_text())
    assert student["params"] <= 0.011 * student["teacher_params"]  # --params-fraction 0.01
    result = json.loads((out / "eval" / "eval.json").read_text())
    assert result["episodes"] == 3 and result["students"][0]["agreement_teacher_states"] is not None
    table = format_table(result)
    assert table in printed  # the table it ends with is the evaluation's

    # a second run finds every stage finished and only prints the table again
    assert run_cli(*args) == 0
    again = capsys.readouterr().out
    assert all(f"[demo] {s}: reusing" in again for s in ("teacher", "buffer", "student", "eval"))
    assert table in again


@pytest.mark.slow
def test_demo_as_make_demo_runs_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The demo with its own defaults (a full CartPole DQN teacher: minutes): the 1% student keeps the task."""
    assert run_cli("demo", "--out", tmp_path / "demo", "--no-progress") == 0
    result = json.loads((tmp_path / "demo" / "eval" / "eval.json").read_text())
    assert result["teacher"]["mean_return"] > 400 and result["students"][0]["mean_return"] > 400
    assert format_table(result) in capsys.readouterr().out
