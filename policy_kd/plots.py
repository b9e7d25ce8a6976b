"""The PNG plots of an evaluation report (matplotlib, the ``[report]`` extra): return distributions, return
vs size and the students' distillation learning curves. :func:`policy_kd.report.write_report` calls
:func:`plot_all`; like the rest of the report, they read only the result dictionary (``eval.json``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Panels of the learning-curve plot: title -> the TensorBoard tags that hold it (first found is used; the
#: distill engine's current names first, then the pipeline's first ones).
LEARNING_CURVE_PANELS = {
    "distillation loss": ("loss/total", "distill/loss"),
    "agreement with the teacher (train batch)": ("fidelity/agreement", "distill/agreement"),
    "evaluation return": ("eval/mean_return",),
}


def _students(result: dict[str, Any]) -> list[dict[str, Any]]:
    # schema 1 results hold one "student"; a teacher-only evaluation holds none
    students = result.get("students")
    if students is None:
        students = [result["student"]] if result.get("student") else []
    return list(students)


def _policies(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [result["teacher"], *_students(result)]


def learning_curves(tb_dir: str | Path, tags: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Scalars of a TensorBoard folder (every event file below it; all tags, or only ``tags``):
    tag -> ``(n, 2)`` array of (step, value) sorted by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(Path(tb_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            if tags is None or tag in tags:
                curves.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {t: np.asarray(sorted(v), dtype=np.float64) for t, v in curves.items()}


def plot_all(result: dict[str, Any], out: Path) -> list[str]:
    """Write the PNG plots; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = _policies(result)
    mode = result.get("modes", ["deterministic"])[0]
    return [
        *_plot_returns(plt, result, policies, mode, out),
        *_plot_return_vs_params(plt, result, policies, mode, out),
        *_plot_learning_curves(plt, result, out),
    ]


def _plot_returns(
    plt: Any, result: dict[str, Any], policies: list[dict[str, Any]], mode: str, out: Path
) -> list[str]:
    """Return distributions: one box + jittered points per policy."""
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(policies) + 1), 3.6))
    data = [np.asarray(p.get("modes", {}).get(mode, p)["returns"]) for p in policies]
    labels = [p.get("name", "teacher") for p in policies]
    ax.boxplot(data, showfliers=False, widths=0.5)
    ax.set_xticks(range(1, len(labels) + 1), labels, rotation=15)
    rng = np.random.default_rng(0)
    for i, d in enumerate(data, start=1):
        ax.scatter(i + rng.uniform(-0.15, 0.15, len(d)), d, s=8, alpha=0.5)
    ax.set_ylabel("episode return")
    ax.set_title(f"{result['env_id']}: return over {result['episodes']} seeds ({mode})")
    fig.tight_layout()
    fig.savefig(out / "returns.png", dpi=110)
    plt.close(fig)
    return ["returns.png"]


def _plot_return_vs_params(
    plt: Any, result: dict[str, Any], policies: list[dict[str, Any]], mode: str, out: Path
) -> list[str]:
    """Return vs parameter count (log x), mean with its 95% CI."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for p in policies:
        m = p.get("modes", {}).get(mode, p)
        lo, hi = m["ci95"]
        ax.errorbar(
            p["params"],
            m["mean_return"],
            yerr=[[m["mean_return"] - lo], [hi - m["mean_return"]]],
            fmt="*" if p is result["teacher"] else "o",
            markersize=10 if p is result["teacher"] else 6,
            capsize=3,
            label=p.get("name", "teacher"),
        )
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("mean return (95% CI)")
    ax.legend(fontsize=8)
    ax.set_title("return vs size")
    fig.tight_layout()
    fig.savefig(out / "return_vs_params.png", dpi=110)
    plt.close(fig)
    return ["return_vs_params.png"]


def _plot_learning_curves(plt: Any, result: dict[str, Any], out: Path) -> list[str]:
    """Distillation learning curves from each student's TensorBoard folder (none: no plot)."""
    curves = {}
    for s in _students(result):
        # exports of a student share its distillation run: plot each run once
        if (
            s.get("tb")
            and Path(s["tb"]).is_dir()
            and Path(s["tb"]).resolve() not in {c[0] for c in curves.values()}
        ):
            got = learning_curves(s["tb"])
            if got:
                curves[s["name"]] = (Path(s["tb"]).resolve(), got)
    panels = {
        title: [
            (name, next(c[t] for t in tags if t in c))
            for name, (_, c) in curves.items()
            if any(t in c for t in tags)
        ]
        for title, tags in LEARNING_CURVE_PANELS.items()
    }
    panels = {k: v for k, v in panels.items() if v}
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
        for ax, (title, lines) in zip(axes[0], panels.items(), strict=True):
            for name, xy in lines:
                ax.plot(xy[:, 0], xy[:, 1], marker="." if len(xy) < 30 else None, label=name)
            if title == "evaluation return":
                ax.axhline(result["teacher"]["mean_return"], color="k", ls="--", lw=1, label="teacher")
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("distillation step")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "learning_curves.png", dpi=110)
        plt.close(fig)
        return ["learning_curves.png"]
    return []
