"""Teacher factories for ``--teacher py:experiments.custom_teachers.teachers:NAME`` (run from the repository
root, which Python then finds ``experiments`` in). Importing this module runs no training: ``run.py`` trains."""

from __future__ import annotations

from pathlib import Path

from policy_kd.teachers import CustomTeacher
from policy_kd.teachers.examples import from_cleanrl_dqn

RUNS = Path(__file__).resolve().parents[1] / "runs" / "CartPole-v1" / "custom_teachers"
CLEANRL_MODEL = RUNS / "cleanrl_dqn.cleanrl_model"


def cleanrl_dqn() -> CustomTeacher:
    """The CleanRL-style DQN ``run.py`` trained (CleanRL's dqn.py defaults on CartPole-v1)."""
    return from_cleanrl_dqn(CLEANRL_MODEL, "CartPole-v1")


WEAK_MODEL = RUNS / "cleanrl_weak_dqn.cleanrl_model"


def cleanrl_dqn_weak() -> CustomTeacher:
    """The same CleanRL-style DQN stopped at 50k steps (a teacher that still fails episodes)."""
    return from_cleanrl_dqn(WEAK_MODEL, "CartPole-v1")
