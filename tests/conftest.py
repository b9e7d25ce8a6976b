"""Shared fixtures: one throwaway teacher, buffer and student per test session, all made in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from policy_kd.cli import main

torch.set_num_threads(1)


def run_cli(*args: str) -> int:
    """Run ``policy-kd ARGS`` in-process and return its exit status."""
    return main([str(a) for a in args])


def write_sweep_file(folder: Path, artifacts: dict[str, Path], **changes: Any) -> Path:
    """``folder/sweep.yaml``: a tiny CartPole sweep over the session's teacher and buffer, ``changes`` on top."""
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


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny DQN teacher on CartPole-v1 (a few seconds of training), a buffer it recorded and a student."""
    root = tmp_path_factory.mktemp("pipeline")
    paths = {k: root / k for k in ("teacher", "buffer", "student")}
    assert (
        run_cli(
            "train-teacher",
            "--algo",
            "dqn",
            "--env",
            "CartPole-v1",
            "--out",
            paths["teacher"],
            "--n-timesteps",
            "2000",
            "--eval-freq",
            "1000",
            "--eval-episodes",
            "3",
            "--no-progress",
        )
        == 0
    )
    assert (
        run_cli(
            "record",
            "--teacher",
            paths["teacher"],
            "--out",
            paths["buffer"],
            "--steps",
            "3000",
            "--chunk-rows",
            "1000",
            "--no-progress",
        )
        == 0
    )
    assert (
        run_cli(
            "distill",
            "--buffer",
            paths["buffer"],
            "--out",
            paths["student"],
            "--steps",
            "300",
            "--eval-every",
            "150",
            "--eval-episodes",
            "2",
            "--no-progress",
        )
        == 0
    )
    return paths
