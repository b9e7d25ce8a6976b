"""The experiment scripts' pure parts: which grid cells a config runs, and the goals table."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from policy_kd import sweep_report
from policy_kd.errors import PolicyKDError
from policy_kd.sweep_config import SweepConfig

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def _load(name: str) -> ModuleType:
    # private module names: "grid" and "tables" would shadow real packages (PyTables is "tables")
    spec = importlib.util.spec_from_file_location(f"_pkd_experiments_{name}", EXPERIMENTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


grid = _load("grid")
tables = _load("tables")

LOSSES = {"kl_t0.01": {}, "nll": {}, "mse": {}, "kl_t0.01_30k": {"steps": 30}}


def _grid(cells=None) -> SweepConfig:
    raw = {"task": "t", "env": "CartPole-v1", "sizes": [0.25, 0.04], "losses": LOSSES, "seeds": [0, 1]}
    return SweepConfig.from_mapping({**raw, **({"cells": cells} if cells else {})})


def test_cells_default_to_the_whole_product() -> None:
    assert len(_grid().cell_list()) == 2 * 4 * 2


def test_cells_restrict_to_the_union_of_groups() -> None:
    cells = [
        {"sizes": [0.04], "losses": ["kl_t0.01", "nll", "mse"]},
        {"sizes": [0.25], "losses": ["kl_t0.01"]},
    ]
    names = [c[0] for c in _grid(cells).cell_list()]
    assert names == [
        "f0.25_kl_t0.01_s0", "f0.25_kl_t0.01_s1",
        "f0.04_kl_t0.01_s0", "f0.04_kl_t0.01_s1", "f0.04_nll_s0", "f0.04_nll_s1", "f0.04_mse_s0", "f0.04_mse_s1",
    ]  # fmt: skip


def test_a_cells_group_may_run_fewer_seeds() -> None:
    cells = [
        {"sizes": [0.04], "losses": ["kl_t0.01"]},
        {"sizes": [0.25], "losses": ["kl_t0.01"], "seeds": [1]},
    ]
    assert [c[0] for c in _grid(cells).cell_list()] == [
        "f0.25_kl_t0.01_s1",
        "f0.04_kl_t0.01_s0",
        "f0.04_kl_t0.01_s1",
    ]


def test_cells_naming_an_undefined_loss_are_refused() -> None:
    with pytest.raises(PolicyKDError, match="hinton"):
        _grid([{"sizes": [0.04], "losses": ["hinton"]}])


GRID_CONFIGS = sorted(p for p in (EXPERIMENTS / "configs").glob("*.yaml") if "multitask" not in p.name)


@pytest.mark.parametrize("path", GRID_CONFIGS, ids=lambda p: p.stem)
def test_committed_grid_configs_parse_and_name_their_filed_runs(path: Path) -> None:
    """Every committed grid config reads as a sweep, and each grid run its committed results file holds is a
    cell of it (the results stay readable by the sweep that extends them)."""
    cfg = SweepConfig.load(path)
    results = EXPERIMENTS / "results" / f"{cfg.task}.json"
    if results.is_file():
        runs = json.loads(results.read_text())["runs"]
        names = {c[0] for c in cfg.cell_list()}
        assert {n for n, r in runs.items() if r["kind"] == "grid"} <= names


def test_tables_regenerate_the_committed_readme_identically(tmp_path) -> None:
    readme = (EXPERIMENTS / "README.md").read_text()
    body = readme.split(tables.BEGIN, 1)[1].split(tables.END, 1)[0]
    assert body == "\n\n" + "\n".join(tables.sections(tmp_path)) + "\n"


def _results(task: str, ratios: dict[str, list[float]]) -> dict:
    runs = {
        f"f0.04_{loss}_s{i}": {"kind": "grid", "return_ratio": {"value": r}}
        for loss, rs in ratios.items()
        for i, r in enumerate(rs)
    }
    return {"task": task, "config": {"sizes": [0.25, 0.04], "losses": LOSSES}, "runs": runs}


def test_goals_table_reads_the_results() -> None:
    ordered = _results("A", {"kl_t0.01": [1.0, 1.02, 1.01], "nll": [0.99, 1.0, 0.98], "mse": [0.5, 0.6, 0.4]})
    not_ordered = _results(
        "B", {"kl_t0.01": [0.9, 0.92, 0.91], "nll": [0.95, 0.96, 0.97], "mse": [0.5, 0.5, 0.5]}
    )
    text = tables.goals_section([ordered, not_ordered])
    row_a = next(line for line in text.splitlines() if line.startswith("| A |"))
    row_b = next(line for line in text.splitlines() if line.startswith("| B |"))
    assert "kl_t0.01, 4%: 1.010" in row_a and "| yes |" in row_a  # best <= 5% cell and its mean
    assert row_a.endswith("| yes |") and row_b.endswith("| no |")
    assert "nll, 4%: 0.960" in row_b and "| no" in row_b  # below 1: goal missed
    assert "holds on 1 of 2 single-task settings" in text


def test_goals_table_flags_a_met_goal_whose_ci_crosses_1() -> None:
    weak = _results("C", {"kl_t0.01": [0.9, 1.0, 1.15], "nll": [0.9], "mse": [0.5]})  # mean 1.017
    exact = _results("D", {"kl_t0.01": [1.0, 1.0, 1.0], "nll": [1.0], "mse": [0.8]})  # CI [1, 1]
    lines = tables.goals_section([weak, exact]).splitlines()
    row_c = next(line for line in lines if line.startswith("| C |"))
    row_d = next(line for line in lines if line.startswith("| D |"))
    assert "kl_t0.01, 4%: 1.017" in row_c and "| yes (CI includes 1) |" in row_c
    assert "| yes |" in row_d and "CI includes" not in row_d


def test_the_goal_counts_a_cell_by_its_students_actual_size() -> None:
    """A loss may give explicit widths under any size key: a 30% student filed under 4% must not meet the
    <= 5% goal, on the discrete table or the continuous one."""
    res = _results("E", {"kl_t0.01": [0.9, 0.9], "nll": [1.2, 1.2], "mse": [0.5]})
    for name, run in res["runs"].items():
        run["params_ratio"] = 0.3 if "_nll_" in name else 0.04
    row = next(x for x in tables.goals_section([res]).splitlines() if x.startswith("| E |"))
    assert "kl_t0.01, 4%: 0.900" in row and "| no |" in row
    cont = _continuous_task({"kl_fwd": [0.9, 0.9], "nll": [1.2, 1.2]})
    for name, run in cont["runs"].items():
        run["params_ratio"] = 0.3 if "_nll_" in name else 0.04
    row = next(x for x in tables.continuous_section([cont]).splitlines() if x.startswith("| Neg | kl_fwd"))
    assert "kl_fwd, 4%: 0.900" in row and "| no |" in row


def test_goals_table_checks_every_game_of_a_multitask_student() -> None:
    def multitask(name: str, per_seed: list[dict[str, float]]) -> dict:
        runs = {
            f"s{i}": {"tasks": {g: {"return_ratio": {"value": v}} for g, v in seed.items()}}
            for i, seed in enumerate(per_seed)
        }
        return {"task": name, "kind": "multitask", "config": {"tasks": {"G1": "", "G2": ""}}, "runs": runs}

    met = multitask("M1", [{"G1": 0.95, "G2": 0.90}, {"G1": 1.0, "G2": 0.92}])
    missed = multitask("M2", [{"G1": 1.2, "G2": 0.95}, {"G1": 1.2, "G2": 0.8}])  # mean over games 1.04
    lines = tables.goals_section([met, missed]).splitlines()
    assert next(x for x in lines if x.startswith("| M1 |")) == "| M1 | G1 0.975, G2 0.910 | yes |"
    assert next(x for x in lines if x.startswith("| M2 |")) == "| M2 | G1 1.200, G2 0.875 | no |"


def test_a_grid_of_one_size_gets_no_return_vs_params_plot(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    assert not sweep_report.plot("t", {"kl": {5210: 0.99}, "nll": {5210: 0.87}}, tmp_path / "one.png")
    assert not (tmp_path / "one.png").exists()
    assert sweep_report.plot("t", {"kl": {742: 0.2, 5210: 0.99}}, tmp_path / "two.png")
    assert (tmp_path / "two.png").is_file()


def _negative_task(random: dict | None) -> dict:
    """A task whose returns are negative: teacher -150, students -140 (better) on 2 seeds."""
    run = {"kind": "grid", "params": 100, "params_ratio": 0.04, "mean_return": -140.0,
           "return_ratio": {"value": -140.0 / -150.0}, "agreement": 0.9, "latency": {"batch1_us": 50.0}}  # fmt: skip
    res = {
        "task": "Neg",
        "env": "NoSuchEnv-v0",  # no results/random/ file: only the result's own random entry counts
        "config": {"sizes": [0.04], "losses": {"kl": {}}, "seeds": [0, 1], "episodes": 100},
        "teacher": {
            "mean_return": -150.0,
            "std_return": 10.0,
            "ci95": [-152.0, -148.0],
            "params": 2500,
            "info": {"algo": "ppo", "n_timesteps": 1000, "train_seconds": 60},
        },
        "runs": {
            "f0.04_kl_s0": run,
            "f0.04_kl_s1": {**run, "mean_return": -130.0, "return_ratio": {"value": -130.0 / -150.0}},
        },
    }
    return {**res, "random": random} if random else res


def test_tables_show_the_normalized_score_where_returns_are_negative() -> None:
    text, curves = sweep_report.task_section(
        _negative_task({"mean_return": -500.0, "ci95": [-510.0, -490.0]})
    )
    # (-135 + 500) / (-150 + 500) = 1.043: better than the teacher, where the ratio says 0.90
    assert (
        "Normalized score" in text
        and "| kl | 1.043 [" in text
        and curves["kl"][100.0] == pytest.approx(365 / 350)
    )
    # without a random baseline (or one the teacher does not beat) the ratio stays, as the results filed it
    for random in (None, {"mean_return": -150.0, "ci95": [-160.0, -140.0]}):
        text, _ = sweep_report.task_section(_negative_task(random))
        assert "Return ratio (student ÷ teacher" in text and "| kl | 0.900 [" in text


def test_the_committed_results_stay_readable() -> None:
    for path in sorted((EXPERIMENTS / "results").glob("*.json")):
        res = json.loads(path.read_text())
        if res.get("kind") == "multitask":
            assert tables.multitask_section(res).startswith("### Multi-task")
            continue
        text, _ = sweep_report.task_section(res, tables.RANDOM)
        if res.get("teacher") is None:
            # filed mid-run (the grid commits its results as each stage lands): no teacher evaluation yet
            assert text.endswith("(no evaluation yet)\n") and not res.get("runs"), path.name
            continue
        # LunarLander and the continuous tasks' returns can be negative: scored against the random baseline
        normalized = res["env"].startswith("LunarLander") or sweep_report._continuous(res)
        assert ("Normalized score" in text) == normalized and ("Return ratio" in text) != normalized, (
            path.name
        )


def _continuous_task(scores: dict[str, list[float]]) -> dict:
    """A continuous task (teacher trained by rl_zoo3, random -1000, teacher -100) with students at 4%."""
    res = _negative_task({"mean_return": -1000.0, "ci95": [-1010.0, -990.0]})
    res["config"] = {
        **res["config"],
        "losses": {loss: {} for loss in scores},
        "teacher": {"zoo": {"algo": "sac"}},
        "zoo_benchmark": {"env": "E-v2", "mean_return": -120.0, "std_return": 5.0, "n_timesteps": 20000},
    }
    info = {**res["teacher"]["info"], "algo": "sac"}
    res["teacher"] = {**res["teacher"], "mean_return": -100.0, "ci95": [-102.0, -98.0], "info": info}
    res["runs"] = {
        f"f0.04_{loss}_s{i}": {"kind": "grid", "params": 100, "mean_return": -1000.0 + 900.0 * x}
        for loss, xs in scores.items()
        for i, x in enumerate(xs)
    }
    return res


def test_continuous_goals_are_checked_on_normalized_scores() -> None:
    res = _continuous_task({"kl_fwd": [1.0, 1.01, 1.02], "nll": [0.99, 0.99, 0.99], "mse": [0.5, 0.5, 0.5]})
    text = tables.continuous_section([res])
    row = next(line for line in text.splitlines() if line.startswith("| Neg | kl_fwd"))
    # the best <= 5% cell by normalized score (its return ratio would rank the other way: returns are negative)
    assert "kl_fwd, 4%: 1.010" in row and "| yes |" in row and "1.010 / — / 0.990 / 0.500" in row
    teacher_row = next(line for line in text.splitlines() if line.startswith("| Neg | sac"))
    assert "-100.0 ± 10.0" in teacher_row and "-120.0 ± 5.0 (20,000 steps)" in teacher_row
    # kept out of the discrete goal table, whose KL-tau/NLL/MSE columns it has not
    assert "| Neg |" not in tables.goals_section([res])
    assert tables.continuous_section([_results("A", {"nll": [1.0]})]) == ""


@pytest.mark.parametrize("kind", ["deterministic", "squashed_gaussian"])
def test_a_continuous_teacher_without_a_published_figure_is_still_a_continuous_task(kind: str) -> None:
    # a TQC Pendulum teacher (the zoo publishes no figure for it) was filed in the discrete goal table, whose
    # per-game columns it has not: the buffer's teacher kind, not the benchmark, makes a task continuous
    res = _continuous_task({"mse": [1.0, 1.01, 1.02]})
    del res["config"]["zoo_benchmark"]
    res["buffer"] = {"rows": 10, "source": {"teacher": {"kind": kind, "algo": "td3"}}}
    text = tables.continuous_section([res])
    assert "| (none published) |" in next(x for x in text.splitlines() if x.startswith("| Neg | sac"))
    assert "mse, 4%: 1.010" in next(x for x in text.splitlines() if x.startswith("| Neg | mse"))
    assert "| Neg |" not in tables.goals_section([res])
    res["buffer"]["source"]["teacher"]["kind"] = "q_values"
    assert tables.continuous_section([res]) == ""
    # action-only data has a kind of either space: the published figure decides, as before kinds were read
    res["buffer"]["source"]["teacher"]["kind"] = "actions"
    assert tables.continuous_section([res]) == ""
    res["config"]["zoo_benchmark"] = _continuous_task({})["config"]["zoo_benchmark"]
    assert "| Neg | sac" in tables.continuous_section([res])


def test_a_zoo_teacher_is_read_from_its_run_folder_and_a_cut_run_is_not_retrained(tmp_path) -> None:
    from policy_kd.sweep import Sweep, teacher_info

    out = tmp_path / "sac" / "E-v0_1"
    (out / "E-v0").mkdir(parents=True)
    (out / "E-v0" / "config.yml").write_text(
        "!!python/object/apply:collections.OrderedDict\n- - - n_timesteps\n    - 20000.0\n"
    )
    raw = {"task": "t", "env": "E-v0", "sizes": [0.04], "losses": LOSSES, "buffer": {"path": str(tmp_path)}}
    cfg = SweepConfig.from_mapping({**raw, "teacher": {"path": str(out), "zoo": {"algo": "sac"}}})
    sweep = Sweep(cfg, root=tmp_path, results=tmp_path / "r.json")
    with pytest.raises(PolicyKDError, match="a cut zoo run"):
        sweep.teacher()  # a folder without E-v0.zip: the zoo would start a second run beside it
    (out / "train.json").write_text(json.dumps({"algo": "sac", "command": "c", "train_seconds": 12.5}))
    info = teacher_info(out)
    assert info is not None
    assert info["algo"] == "sac" and info["n_timesteps"] == 20000 and info["train_seconds"] == 12.5
    # an older train.json, written without the algo
    (out / "train.json").write_text(json.dumps({"command": "c", "train_seconds": 12.5}))
    assert teacher_info(out)["algo"] == "sac"  # from the zoo's folder name, <algo>/<env>_1
    (out / "E-v0.zip").write_text("")
    sweep.teacher()  # trained: nothing to do (no subprocess)


def test_a_zoo_teacher_without_rl_zoo3_or_with_a_failed_train_is_one_line(tmp_path, monkeypatch) -> None:
    """rl_zoo3 is an extra: without it (or when its train fails) the grid stopped with a traceback."""
    import importlib.util
    import subprocess

    from policy_kd import sweep as sweep_mod

    out = tmp_path / "ppo" / "E-v0_1"
    raw = {"task": "t", "env": "E-v0", "sizes": [0.04], "losses": LOSSES, "buffer": {"path": str(tmp_path)}}
    cfg = SweepConfig.from_mapping({**raw, "teacher": {"path": str(out), "zoo": {"algo": "ppo"}}})
    sweep = sweep_mod.Sweep(cfg, root=tmp_path, results=tmp_path / "r.json")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "rl_zoo3" else find_spec(n, *a)
    )
    with pytest.raises(
        PolicyKDError, match=r"rl_zoo3, which is not installed: pip install 'policy-kd\[zoo\]'"
    ):
        sweep.teacher()
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: object() if n == "rl_zoo3" else find_spec(n, *a)
    )
    monkeypatch.setattr(subprocess, "run", lambda cmd, **k: subprocess.CompletedProcess(cmd, 3))
    with pytest.raises(PolicyKDError, match=r"rl_zoo3\.train failed with exit status 3") as err:
        sweep.teacher()
    assert "\n" not in str(err.value) and not (out / "train.json").exists()


def test_a_zoo_teacher_needs_its_run_folder_and_env() -> None:
    raw = {"task": "t", "sizes": [0.04], "losses": LOSSES}
    with pytest.raises(PolicyKDError, match=r"a zoo teacher needs env and teacher\.path"):
        SweepConfig.from_mapping({**raw, "env": "E-v0", "teacher": {"zoo": {"algo": "sac"}}})
    with pytest.raises(PolicyKDError, match=r"teacher\.zoo must be a mapping with an algo"):
        SweepConfig.from_mapping({**raw, "env": "E-v0", "teacher": {"path": "x", "zoo": "sac"}})


def test_grid_sigterm_is_one_line_and_leaves_the_teacher_checkpoint(tmp_path) -> None:
    """grid.py stopped by SIGTERM (a scheduler's kill) while it trains the teacher: one line, exit 143, and
    the checkpoint the teacher stage resumes from (that resume is train-teacher's, tested in test_teachers)."""
    from test_guarantees import ENV, _one_line, _terminate, _wait_for

    task = f"test_sigterm_{os.getpid()}"
    runs = EXPERIMENTS / "runs" / task
    config = tmp_path / "grid.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "task": task,
                "env": "CartPole-v1",
                "sizes": [0.5],
                "losses": {"kl": {"loss": "kl"}},
                "seeds": [0],
                "teacher": {"algo": "dqn", "n_timesteps": 10**6, "eval_freq": 500, "eval_episodes": 1},
            }
        )
    )
    cmd = [sys.executable, str(EXPERIMENTS / "grid.py"), str(config), "--only", "teacher"]
    try:
        proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _wait_for(lambda: (runs / "teacher" / "evaluations.npz").is_file(), proc)
            code, err = _terminate(proc)
        finally:
            proc.kill()
        assert code == 143, err
        _one_line(err, "grid.py: interrupted by SIGTERM", "checkpoint at step", "the same command continues")
        assert (runs / "teacher" / "checkpoint" / "state.json").is_file()
    finally:
        shutil.rmtree(runs, ignore_errors=True)
        (EXPERIMENTS / "results" / f"{task}.json").unlink(missing_ok=True)
