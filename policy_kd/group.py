"""Students of one shape trained together (issue 24): the grouping rule and the group trainer.

``distill_group`` trains a list of students; the vectorised trainer (one stacked model per group of
students that share an architecture) replaces the one-after-another loop below.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from policy_kd.distill import distill
from policy_kd.distill_config import DistillConfig


def distill_group(
    configs: Sequence[DistillConfig], *, vectorised: bool = True, progress: bool = False
) -> list[Path]:
    """Train every student in ``configs`` and return their folders, in order.

    ``vectorised`` asks for students of one shape to train as one stacked model; this version trains them
    one after another (each exactly as ``policy-kd distill`` would)."""
    del vectorised, progress
    return [distill(config) for config in configs]
