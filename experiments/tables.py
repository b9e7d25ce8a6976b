"""Regenerate the tables and plots of experiments/README.md from experiments/results/*.json.

    python experiments/tables.py            # rewrites the part of README.md between the RESULTS markers

The tables and plots are ``policy_kd.sweep_report``'s (what ``policy-kd sweep`` writes per sweep; its
docstring says what they show), per task and then across tasks (teachers' training curves, the goals,
continuous control). Random baselines for results made before evaluate played one come from
``results/random/<env>.json`` (``scripts/random_baseline.py``; results without either keep the ratio).
"""

from __future__ import annotations

import json
from pathlib import Path

from policy_kd.sweep_report import (
    continuous_section,
    goals_section,
    multitask_section,
    plot_curves,
    task_report,
)

ROOT = Path(__file__).resolve().parent
RANDOM = ROOT / "results" / "random"
BEGIN, END = "<!-- RESULTS:BEGIN (experiments/tables.py) -->", "<!-- RESULTS:END -->"


def sections(plots: Path) -> list[str]:
    """The Markdown sections of every committed result, their plots written into ``plots``."""
    out = []
    all_results = [json.loads(p.read_text()) for p in sorted((ROOT / "results").glob("*.json"))]
    for res in all_results:
        if res.get("kind") == "multitask":
            out.append(multitask_section(res))
            continue
        out.append(task_report(res, plots / f"{res['task']}_return_vs_params.png", RANDOM))
    if plot_curves(all_results, plots / "teacher_curves.png"):
        out.append(
            "### Teachers' training curves\n\nMean return of each periodic evaluation during training "
            "(the best one selects the teacher).\n\n![teacher curves](plots/teacher_curves.png)\n"
        )
    out.append(goals_section(all_results))
    if text := continuous_section(all_results, RANDOM):
        out.append(text)
    return out


def main() -> None:
    parts = sections(ROOT / "plots")
    readme = ROOT / "README.md"
    body = readme.read_text() if readme.is_file() else f"# Experiments\n\n{BEGIN}\n{END}\n"
    head, rest = body.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + BEGIN + "\n\n" + "\n".join(parts) + "\n" + END + tail)
    print(f"wrote {readme} ({len(parts)} task(s))")


if __name__ == "__main__":
    main()
