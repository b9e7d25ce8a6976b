"""policy-kd sweep: the YAML's checks, which students train together, resume, and a whole sweep end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from policy_kd import sweep as sweep_mod
from policy_kd.backends import Sequential, make_backend
from policy_kd.distill import CHECKPOINT
from policy_kd.errors import PolicyKDError
from policy_kd.sweep import Sweep, comparable, train_students
from policy_kd.sweep_config import SweepConfig
from tests.conftest import run_cli

BASE: dict[str, Any] = {
    "task": "t",
    "env": "CartPole-v1",
    "distill": {"steps": 10},
    "sizes": [0.25, 0.04],
    "losses": {"kl": {"loss": "kl", "tau": 0.1}, "nll": {"loss": "nll"}, "mse": {"loss": "mse"}},
    "seeds": [0, 1],
}


def _config(**changes: Any) -> SweepConfig:
    return SweepConfig.from_mapping({**BASE, **changes})


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"sizez": [0.1]}, "unknown key.*sizez; valid keys are task"),
        ({"sizes": [1.5]}, r"sizes must lie in \(0, 1\]"),
        ({"sizes": "0.1"}, "sizes must be a non-empty list"),
        ({"losses": {"kl": {"los": "kl"}}}, "losses.kl: unknown option.*los"),
        ({"losses": {"kl": {"loss": "klx"}}}, "losses.kl.*klx"),
        ({"losses": {"kl": {"steps": "many"}}}, "'steps' must be int"),
        ({"distill": {"seed": 3}}, "distill sets seed, which the sweep sets per student"),
        ({"cells": [{"sizes": [0.04], "losses": ["hinton"]}]}, "cells names.*hinton"),
        ({"shapes": {0.5: {"hidden": [4]}}}, "shapes names sizes"),
        ({"buffer": {"path": "b", "steps": 10}}, "buffer names a path and record options"),
        ({"buffer": {"stepz": 10}}, "buffer: unknown option.*stepz"),
        ({"dagger": {"size": 0.04, "loss": "kl", "labels": 10}}, "dagger needs rounds"),
        ({"env": None}, "env is needed to train the teacher"),
    ],
)
def test_a_bad_sweep_config_is_one_line_naming_the_key(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(PolicyKDError, match=match) as err:
        _config(**changes)
    assert "\n" not in str(err.value)


def test_a_bad_sweep_file_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**BASE, "loses": {}}))
    assert run_cli("sweep", path, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("policy-kd: error: ") and "loses" in err and "\n" not in err
    assert not (tmp_path / "out").exists()  # nothing written before the config is checked


def test_the_ray_backend_without_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    with pytest.raises(PolicyKDError, match=r"pip install 'policy-kd\[ray\]'"):
        make_backend("ray")


class Recorder(Sequential):
    """The sequential backend, noting each task it is given."""

    def __init__(self) -> None:
        self.tasks: list[tuple[str, Any]] = []

    def submit(self, fn: Any, *args: Any, after: Any = (), gpus: float = 0.0) -> Any:
        self.tasks.append((fn.__name__, args))
        return super().submit(fn, *args, after=after, gpus=gpus)


def _fake_tasks(monkeypatch: pytest.MonkeyPatch, trained: list[str]) -> None:
    def train(students: Any, vectorised: bool) -> dict[str, Any]:
        trained.extend(Path(out).name for out, _ in students)
        return {"seconds": 0.0, "resumed": []}

    def evaluate(teacher: str, students: list[str], out: str, episodes: int) -> dict[str, Any]:
        run = {"loss": "kl", "mean_return": 1.0, "latency": {"batch1_us": 3.0}}
        return {
            "teacher": {"mean_return": 1.0},
            "random": None,
            "runs": [run] * len(students),
            "versions": {},
            "seconds": 0.0,
        }

    monkeypatch.setattr(sweep_mod, "train_students", train)
    monkeypatch.setattr(sweep_mod, "evaluate_students", evaluate)
    # the fake buffer cannot be opened, which alone would make every student train alone: group by shape
    from policy_kd import group

    monkeypatch.setattr(group, "alone_reason", lambda config: None)


def test_students_of_one_architecture_train_as_one_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained: list[str] = []
    _fake_tasks(monkeypatch, trained)
    backend = Recorder()
    cfg = _config(losses={**BASE["losses"], "wide": {"loss": "nll", "hidden": [32]}})
    Sweep(cfg, root=tmp_path, results=tmp_path / "r.json", backend=backend).run(["distill"])
    groups = [[Path(out).name for out, _ in args[0]] for name, args in backend.tasks if name == "train"]
    # per size: kl/nll/mse share the solved shape (one task); the pinned width trains apart
    assert groups == [
        ["f0.25_kl_s0", "f0.25_kl_s1", "f0.25_nll_s0", "f0.25_nll_s1", "f0.25_mse_s0", "f0.25_mse_s1"],
        ["f0.25_wide_s0", "f0.25_wide_s1"],
        ["f0.04_kl_s0", "f0.04_kl_s1", "f0.04_nll_s0", "f0.04_nll_s1", "f0.04_mse_s0", "f0.04_mse_s1"],
        ["f0.04_wide_s0", "f0.04_wide_s1"],
    ]
    results = json.loads((tmp_path / "r.json").read_text())
    assert list(results["runs"]) == [c[0] for c in cfg.cell_list()]  # filed in the config's order


def test_no_vectorised_gives_one_task_per_student_and_filed_runs_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained: list[str] = []
    _fake_tasks(monkeypatch, trained)
    (tmp_path / "r.json").write_text(json.dumps({"runs": {"f0.04_nll_s0": {"kind": "grid"}}}))
    backend = Recorder()
    Sweep(_config(), root=tmp_path, results=tmp_path / "r.json", backend=backend, vectorised=False).run(
        ["distill"]
    )
    train_tasks = [args for name, args in backend.tasks if name == "train"]
    assert all(len(args[0]) == 1 for args in train_tasks) and len(train_tasks) == 11
    assert "f0.04_nll_s0" not in trained and len(trained) == 11  # filed: never retrained
    evaluated = [args[1] for name, args in backend.tasks if name == "evaluate"]
    assert [len(e) for e in evaluated] == [6, 5]


def test_a_pinned_shape_reaches_its_students_and_a_loss_width_wins(tmp_path: Path) -> None:
    cfg = _config(
        shapes={0.25: {"channels": [8], "hidden": [62]}},
        losses={**BASE["losses"], "nll": {"loss": "nll", "hidden": [32]}},
    )
    s = Sweep(cfg, root=tmp_path, results=tmp_path / "r.json")
    assert s._options(0.25, "mse", 0)["hidden"] == [62] and s._options(0.25, "mse", 0)["channels"] == [8]
    assert s._options(0.25, "nll", 0)["hidden"] == [32]
    assert "hidden" not in s._options(0.04, "mse", 0)
    assert s._options(0.04, "mse", 1)["seed"] == 1 and s._options(0.04, "mse", 1)["params_fraction"] == 0.04


@pytest.mark.parametrize(
    ("loss", "loads_teacher"),
    [
        ({"loss": "mse", "critic_weight": 1.0}, True),
        ({"loss": "kl", "tau": 0.1, "hint_weight": 0.5}, True),
        ({"loss": "mse", "rounds": 2, "round_steps": 10}, True),
        ({"loss": "mse", "critic_weight": 0.0}, False),
    ],
)
def test_a_loss_that_needs_the_teacher_gets_the_sweeps_teacher(
    tmp_path: Path, loss: dict[str, Any], loads_teacher: bool
) -> None:
    # critic guidance was left out of this list: its students reached distill without the teacher and the
    # config was refused before the first stage ("--critic-weight needs the teacher")
    cfg = _config(losses={"x": loss})
    s = Sweep(cfg, root=tmp_path, results=tmp_path / "r.json")
    assert (s._options(0.04, "x", 0).get("teacher") == str(s.teacher_dir)) is loads_teacher


def test_a_student_with_a_checkpoint_resumes_and_a_finished_one_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from policy_kd import group

    seen: list[Any] = []
    monkeypatch.setattr(group, "distill_group", lambda configs, **kw: seen.extend(configs))
    done, interrupted, fresh = (tmp_path / n for n in ("done", "interrupted", "fresh"))
    for folder in (done, interrupted):
        folder.mkdir()
    (done / "student.json").write_text("{}")
    (interrupted / CHECKPOINT).write_bytes(b"")
    opts = {"buffer": "b", "steps": 7, "hidden": [4], "seed": 3}
    got = train_students([(str(p), opts) for p in (done, interrupted, fresh)], True)
    assert got["resumed"] == ["interrupted"]
    assert [(Path(c.out).name, c.resume) for c in seen] == [("interrupted", True), ("fresh", False)]
    assert seen[1].steps == 7 and seen[1].hidden == (4,) and seen[1].seed == 3 and seen[1].force


def test_comparable_drops_only_timings() -> None:
    a = {
        "stage_seconds": {"distill": 1},
        "runs": {"x": {"mean_return": 2, "latency": {}, "distill_seconds": 3}},
    }
    assert comparable(a) == {"runs": {"x": {"mean_return": 2}}}


def write_sweep_file(folder: Path, artifacts: dict[str, Path], **changes: Any) -> Path:
    """``folder/sweep.yaml``: a tiny CartPole sweep over the session's teacher and buffer, ``changes`` on top
    (test_ray's sweep too)."""
    raw = {
        "task": "tiny",
        "teacher": {"path": str(artifacts["teacher"])},
        "buffer": {"path": str(artifacts["buffer"])},
        "distill": {"steps": 60, "eval_every": 0, "checkpoint_every": 20},
        "sizes": [0.25, 0.04],
        "losses": {"kl": {"loss": "kl", "tau": 0.1}, "nll": {"loss": "nll"}},
        "seeds": [0],
        "episodes": 2,
        **changes,
    }
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_a_sweep_end_to_end_then_resumed_retrains_nothing(
    tmp_path: Path, artifacts: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, out = write_sweep_file(tmp_path, artifacts), tmp_path / "out"
    assert run_cli("sweep", config, "--out", out) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["runs"]) == ["f0.25_kl_s0", "f0.25_nll_s0", "f0.04_kl_s0", "f0.04_nll_s0"]
    assert all(r["distill_steps"] == 60 and r["kind"] == "grid" for r in results["runs"].values())
    assert results["buffer"]["rows"] == 3000 and results["env"] == "CartPole-v1"
    assert "| kl |" in (out / "results.md").read_text()
    assert (out / "sweep.yaml").is_file() and (out / "command.txt").is_file()

    from policy_kd import group

    monkeypatch.setattr(group, "distill_group", lambda *a, **k: pytest.fail("retrained a finished student"))
    assert run_cli("sweep", config, "--out", out) == 0
    assert comparable(json.loads((out / "results.json").read_text())) == comparable(results)


def test_a_sweep_refuses_to_file_students_of_another_teacher(
    tmp_path: Path, artifacts: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The run folders are lost (runs/ is not committed) and the teacher retrained: its students must not be
    filed beside the first teacher's, in one table, as if measured against one teacher."""
    import shutil

    from test_untrusted import other_weights

    small = {"sizes": [0.04], "losses": {"nll": {"loss": "nll"}}}
    (tmp_path / "a").mkdir()
    out = tmp_path / "out"
    assert run_cli("sweep", write_sweep_file(tmp_path / "a", artifacts, **small), "--out", out) == 0
    results = out / "results.json"
    filed = json.loads(results.read_text())
    assert len(filed["teacher"]["weights_sha256"]) == 64 and list(filed["runs"]) == ["f0.04_nll_s0"]

    other = tmp_path / "teacher2"  # another teacher, and the buffer it records
    shutil.copytree(artifacts["teacher"], other)
    other_weights(other)
    buffer = tmp_path / "buffer2"
    args = ("--chunk-rows", "500", "--no-progress")
    assert run_cli("record", "--teacher", other, "--out", buffer, "--steps", "1000", *args) == 0
    (tmp_path / "b").mkdir()
    config = write_sweep_file(tmp_path / "b", {"teacher": other, "buffer": buffer}, **small, seeds=[0, 1])
    capsys.readouterr()

    assert run_cli("sweep", config, "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert "another teacher than" in err and "weights sha256" in err and "\n" not in err
    assert list(json.loads(results.read_text())["runs"]) == ["f0.04_nll_s0"]  # nothing filed, nothing trained
    assert not (out / "students" / "f0.04_nll_s1").exists()

    # results filed before digests were kept: the teacher's return on the same seeds tells them apart
    filed["teacher"].pop("weights_sha256")
    filed["teacher"]["mean_return"] = 123.25
    results.write_text(json.dumps(filed))
    assert run_cli("sweep", config, "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert "another teacher than" in err and "mean return 123.25" in err and "\n" not in err
    # refused after training: the file is left as it was, without this run's config or distill time
    assert json.loads(results.read_text()) == filed
