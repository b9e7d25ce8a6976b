"""The Python API (policy_kd.api, exported by ``import policy_kd``): the jobs from keyword arguments, students
that SB3's evaluate_policy runs, and the README's example executed as written (budgets scaled down)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

import policy_kd
from policy_kd.errors import PolicyKDError

README = Path(__file__).resolve().parents[1] / "README.md"

#: The README example's budgets and what the test runs instead; each must appear exactly once, so an edit of
#: the example that drops one fails here instead of silently training for minutes.
README_BUDGETS = {
    "n_timesteps=50_000": "n_timesteps=2_000, eval_freq=1_000, eval_episodes=2, progress=False",
    "steps=50_000": "steps=2_000, progress=False",
    "steps=5_000": "steps=200, eval_every=100, eval_episodes=2, progress=False",
    "episodes=100": "episodes=3",
}


def test_every_api_name_survives_importing_the_modules() -> None:
    """``policy_kd.record_buffer`` etc. stay the functions after their modules are imported (a function named
    like its module, ``policy_kd.record``, would be replaced by the module on import)."""
    for module in ("teacher", "record", "buffer", "distill", "evaluate", "export", "students"):
        importlib.import_module(f"policy_kd.{module}")
    for name in policy_kd.__all__:
        obj = getattr(policy_kd, name)
        assert callable(obj) and obj.__doc__, name
        assert getattr(obj, "__module__", "").startswith("policy_kd"), name


def test_unknown_or_mistyped_option_is_one_clear_error(artifacts: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(PolicyKDError, match=r"distill_student\(\): unknown option\(s\) param_fraction"):
        policy_kd.distill_student(artifacts["buffer"], tmp_path / "s", param_fraction=0.01)
    with pytest.raises(PolicyKDError, match="option 'steps' must be int"):
        policy_kd.record_buffer(artifacts["teacher"], tmp_path / "b", steps="many")
    assert not (tmp_path / "s").exists() and not (tmp_path / "b").exists()


def test_api_jobs_match_the_cli_and_students_run_in_sb3_evaluate_policy(
    artifacts: dict[str, Path], tmp_path: Path
) -> None:
    buf_path = policy_kd.record_buffer(
        artifacts["teacher"], tmp_path / "buffer", steps=600, chunk_rows=200, progress=False
    )
    buf = policy_kd.open_buffer(buf_path)
    assert buf.rows == 600 and buf.field("teacher").shape == (600, 2)
    student = policy_kd.distill_student(
        buf_path, tmp_path / "student", hidden=[16], steps=100, eval_every=0, progress=False
    )
    assert student == tmp_path / "student" and (student / "student.json").is_file()
    # force is honoured through the API as on the command line
    with pytest.raises(PolicyKDError, match="--force"):
        policy_kd.distill_student(buf_path, student, hidden=[16], steps=100, eval_every=0, progress=False)

    result = policy_kd.evaluate_students(
        artifacts["teacher"], student, episodes=3, latency=False, random_baseline=False
    )
    exported = policy_kd.export_student(student, tmp_path / "numpy", format="numpy")

    for path in (student, exported):
        policy = policy_kd.load_student(path)
        # SB3's evaluate_policy on one env seeded s plays the episode evaluate starts with reset(seed=s)
        for seed, expected in enumerate(result["student"]["returns"]):
            env = DummyVecEnv([lambda: Monitor(gym.make("CartPole-v1"))])
            env.seed(seed)
            returns, _ = evaluate_policy(policy, env, n_eval_episodes=1, return_episode_rewards=True)
            assert returns[0] == pytest.approx(expected), (path, seed)
        # batched and single observations, as an SB3 model's predict takes both
        obs = buf.field("obs")[:32]
        actions, state = policy.predict(obs)
        net = policy_kd.load_student(student).student.net
        with torch.no_grad():
            np.testing.assert_array_equal(actions, net(torch.as_tensor(obs)).argmax(-1).numpy())
        single, _ = policy.predict(obs[0])
        assert state is None and np.ndim(single) == 0 and single == actions[0]

    with pytest.raises(PolicyKDError, match="student not found"):
        policy_kd.load_student(tmp_path / "nowhere")


def _readme_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no ```python example"
    return blocks[0]


def test_readme_python_example_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's first Python block, with only its budgets (README_BUDGETS) scaled down, runs in a fresh
    folder and leaves what it says: a teacher, a buffer, a student, an evaluation and an export."""
    code = _readme_example()
    for written, scaled in README_BUDGETS.items():
        assert len(re.findall(rf"\b{re.escape(written)}\b", code)) == 1, f"README example lost {written}"
        code = re.sub(rf"\b{re.escape(written)}\b", scaled, code)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(code, str(README), "exec"), namespace)
    result = namespace["result"]
    assert isinstance(result, dict) and len(result["student"]["returns"]) == 3
    runs = tmp_path / "runs" / "cartpole"  # where the example writes
    for marker in (
        "teacher/teacher.json",
        "buffer/manifest.json",
        "student/student.json",
        "student_onnx/export.json",
    ):
        assert (runs / marker).is_file(), marker
