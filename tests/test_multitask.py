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


#: Scripted return ÷ teacher return per evaluation (steps 20, 40, 60) and task, chosen so that mean and min
#: pick different steps: mean 0.55 / 0.5 / 0.25 (best: step 20), min 0.1 / 0.5 / 0.2 (best: step 40).
SCRIPTED_RATIOS = [(1.0, 0.1), (0.5, 0.5), (0.2, 0.3)]


@pytest.mark.parametrize(("select", "best_eval"), [("mean", 0), ("min", 1)])
def test_select_keeps_the_step_with_the_best_mean_or_worst_task(
    buffers, tmp_path, monkeypatch, capsys, select, best_eval
):
    """Real students score 0 on every task here (min = mean), so the evaluation is scripted: each task's return
    is a set fraction of its teacher's, and each task's best.pt must be the weights evaluated at the step that
    --select picks (the two rules pick different steps)."""
    import policy_kd.multitask as mt
    from policy_kd.buffer import Buffer

    # each teacher's yardstick as distill-multitask takes it: its return in its buffer (1 where that is 0)
    sources = {Buffer.open(b).meta["env_id"]: Buffer.open(b).sources[0] for b in buffers}
    refs = {e: max(abs(float(s["episode_return_mean"] or 1.0)), 1e-6) for e, s in sources.items()}
    calls: dict[str, int] = {}
    snapshots: dict[str, list[dict[str, torch.Tensor]]] = {}

    def scripted(net, meta, episodes):
        env_id = meta["env_id"]
        k = calls.get(env_id, 0)
        calls[env_id] = k + 1
        snapshots.setdefault(env_id, []).append({n: v.clone() for n, v in net.state_dict().items()})
        return SCRIPTED_RATIOS[k][list(refs).index(env_id)] * refs[env_id]

    # TODO(issue23-core): patch where the training core looks up the evaluation, if it moves
    monkeypatch.setattr(mt, "selection_return", scripted)
    out = tmp_path / f"mt_{select}"
    args = ["distill-multitask", "--buffer", buffers[0], "--buffer", buffers[1], "--out", out, "--hidden", "8",
            "--channels", "2", "--steps", "60", "--eval-every", "20", "--select", select, "--no-progress"]  # fmt: skip
    assert run_cli(*args) == 0
    summary = json.loads((out / "multitask.json").read_text())
    scores = [sum(r) / len(r) if select == "mean" else min(r) for r in SCRIPTED_RATIOS]
    assert [e["step"] for e in summary["history"]] == [20, 40, 60]
    assert [e["score"] for e in summary["history"]] == pytest.approx(scores)
    assert summary["best_score"] == pytest.approx(scores[best_eval])
    for task in summary["tasks"]:
        best = torch.load(out / task["task"] / "best.pt", weights_only=True)
        kept = snapshots[task["env_id"]]
        assert all(torch.equal(best[k], kept[best_eval][k]) for k in best), task["task"]
        other = 1 - best_eval  # the step the other rule would have kept holds different weights
        assert not all(torch.equal(best[k], kept[other][k]) for k in best)
    assert run_cli(*args[:-2], "median", "--force") == 2
    assert "unknown --select 'median'; choose mean or min" in capsys.readouterr().err


def test_resume_after_kill9_reproduces_the_uninterrupted_run(buffers, tmp_path):
    """distill-multitask --resume: killed (-9) after a checkpoint, resumed, it ends on the weights of a run
    that was never interrupted, bit for bit, for every task."""
    import os
    import signal
    import subprocess
    import sys
    import time

    common = ["--buffer", buffers[0], "--buffer", buffers[1], "--hidden", "8", "--channels", "2", "--steps", "400",
              "--eval-every", "0", "--checkpoint-every", "25", "--no-progress"]  # fmt: skip
    cut, full = tmp_path / "cut", tmp_path / "full"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "policy_kd", "distill-multitask", *map(str, common), "--out", str(cut)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 180
        while not (cut / "checkpoint.pt").is_file():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1]
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (cut / "multitask.json").exists(), "finished before kill -9; raise --steps"
    stopped_at = torch.load(cut / "checkpoint.pt", weights_only=True)["step"]
    assert 0 < stopped_at < 400
    assert run_cli("distill-multitask", "--resume", "--out", cut, "--no-progress") == 0
    assert run_cli("distill-multitask", *common, "--out", full) == 0
    for task in json.loads((full / "multitask.json").read_text())["tasks"]:
        a, b = (torch.load(d / task["task"] / "last.pt", weights_only=True) for d in (full, cut))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), task["task"]
    assert not (cut / "checkpoint.pt").exists()


def test_selection_score_is_the_mean_or_the_worst_tasks_ratio():
    from policy_kd.multitask import selection_score

    returns, teachers = [3.0, 1.0, 8.0], [2.0, 4.0, 8.0]  # ratios 1.5, 0.25, 1.0
    assert selection_score(returns, teachers, "mean") == pytest.approx(2.75 / 3)
    assert selection_score(returns, teachers, "min") == pytest.approx(0.25)
