"""Multi-task distillation: a shared trunk with a head per task, from MinAtar teachers of different games."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from stable_baselines3 import DQN

from policy_kd import envs
from policy_kd.students import load_student
from policy_kd.teacher import algo_kwargs, load_preset

pytestmark = pytest.mark.skipif(importlib.util.find_spec("minatar") is None, reason="minatar extra")
GAMES = ("MinAtar/Breakout-v1", "MinAtar/SpaceInvaders-v1")  # 4 and 6 channels, 3 and 4 actions


@pytest.fixture(scope="module")
def buffers(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("multitask")
    out = []
    for game in GAMES:
        kwargs = algo_kwargs(load_preset("dqn", game))
        kwargs["buffer_size"] = 1000
        model = DQN("CnnPolicy", envs.make_env(game), seed=0, **kwargs)  # random weights: shapes only
        zip_path = root / f"{game.split('/')[1]}.zip"
        model.save(zip_path)
        buf = root / f"buf_{game.split('/')[1]}"
        args = [
            "record",
            "--teacher",
            zip_path,
            "--env",
            game,
            "--out",
            buf,
            "--steps",
            "300",
            "--no-progress",
        ]
        assert run_cli(*args) == 0
        out.append(buf)
    return out


def test_shared_trunk_padded_channels_and_one_head_per_task(buffers, tmp_path):
    out = tmp_path / "mt"
    args = ["distill-multitask", "--buffer", buffers[0], "--buffer", buffers[1], "--out", out, "--hidden", "16",
            "--channels", "4", "--steps", "60", "--eval-every", "30", "--eval-episodes", "1", "--no-progress"]  # fmt: skip
    assert run_cli(*args) == 0
    summary = json.loads((out / "multitask.json").read_text())
    assert [t["task"] for t in summary["tasks"]] == ["MinAtar_Breakout-v1", "MinAtar_SpaceInvaders-v1"]
    a, b = (load_student(out / t["task"]) for t in summary["tasks"])
    assert a.net.spec.n_outputs == 3 and b.net.spec.n_outputs == 4
    # the trunk is the same weights in both task students; the heads differ in size
    wa, wb = torch.load(a.weights_path, weights_only=True), torch.load(b.weights_path, weights_only=True)
    trunk = [k for k in wa if k.startswith("net.") and not k.startswith(f"net.{len(a.net.net) - 1}.")]
    assert trunk and all(torch.equal(wa[k], wb[k]) for k in trunk)
    # Conv(6 -> 4, 3x3) + Linear(4*8*8 -> 16) + heads 16->3 and 16->4
    assert summary["params"] == (6 * 9 * 4 + 4) + (256 * 16 + 16) + (16 * 3 + 3) + (16 * 4 + 4)
    assert a.info["params"] == summary["params"] and a.info["params_ratio"] == pytest.approx(
        summary["params"] / a.info["teacher_params"]
    )
    obs = torch.zeros(2, 4, 10, 10)
    assert a.net(obs).shape == (2, 3)  # Breakout's 4 channels padded to the trunk's 6
    assert len(summary["history"]) == 2 and set(summary["history"][0]["eval_mean_return"]) == {
        "MinAtar_Breakout-v1",
        "MinAtar_SpaceInvaders-v1",
    }
    # each task's student is an ordinary student: evaluate compares it with that task's teacher
    teacher = Path(a.info["teacher"]["path"])
    assert run_cli("evaluate", "--teacher", teacher, "--env", GAMES[0], "--student", out / summary["tasks"][0]["task"],
                   "--episodes", "2", "--no-latency") == 0  # fmt: skip


def test_multitask_needs_two_buffers_of_different_envs(buffers, tmp_path, capsys):
    assert run_cli("distill-multitask", "--buffer", buffers[0], "--out", tmp_path / "x") == 2
    assert "two or more buffers" in capsys.readouterr().err
    assert (
        run_cli("distill-multitask", "--buffer", buffers[0], "--buffer", buffers[0], "--out", tmp_path / "y")
        == 2
    )
    assert "same env" in capsys.readouterr().err


def test_select_min_scores_the_worst_task(buffers, tmp_path, capsys):
    from policy_kd.buffer import Buffer

    out = tmp_path / "mt_min"
    args = ["distill-multitask", "--buffer", buffers[0], "--buffer", buffers[1], "--out", out, "--hidden", "8",
            "--channels", "2", "--steps", "40", "--eval-every", "20", "--eval-episodes", "2", "--select", "min",
            "--no-progress"]  # fmt: skip
    assert run_cli(*args) == 0
    summary = json.loads((out / "multitask.json").read_text())
    refs = [max(abs(Buffer.open(b).sources[0]["episode_return_mean"]), 1e-6) for b in buffers]
    for entry in summary["history"]:  # (these barely trained students score 0: see the test below for min)
        ratios = [r / x for r, x in zip(entry["eval_mean_return"].values(), refs, strict=True)]
        assert entry["score"] == pytest.approx(min(ratios))
    assert summary["best_score"] == max(e["score"] for e in summary["history"])
    assert run_cli(*args[:-2], "median", "--force") == 2
    assert "unknown --select 'median'; choose mean or min" in capsys.readouterr().err


def test_selection_score_is_the_mean_or_the_worst_tasks_ratio():
    from policy_kd.multitask import selection_score

    returns, teachers = [3.0, 1.0, 8.0], [2.0, 4.0, 8.0]  # ratios 1.5, 0.25, 1.0
    assert selection_score(returns, teachers, "mean") == pytest.approx(2.75 / 3)
    assert selection_score(returns, teachers, "min") == pytest.approx(0.25)
