"""Shared fixtures: one throwaway teacher, buffer and student per test session, all made in-process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from policy_kd.cli import main

torch.set_num_threads(1)


def run_cli(*args: str) -> int:
    """Run ``policy-kd ARGS`` in-process and return its exit status."""
    return main([str(a) for a in args])


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
