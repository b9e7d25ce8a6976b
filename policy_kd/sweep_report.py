"""Tables and plots of sweep results (``policy-kd sweep``, ``experiments/tables.py``).

Per sweep: the teacher; the student/teacher return ratio per loss and size (mean over seeds with a 95%
stratified-bootstrap CI over seeds, via ``policy_kd.stats.aggregate_runs``); parameters and batch-1 latency
per size; teacher- vs student-driven data at equal labels; wall time per stage; and a plot of return ratio
against student parameters, one line per loss.

Where returns can be negative (LunarLander) the ratio reads backwards, so those tasks show the normalized
score (student - random) / (teacher - random) instead, with ``random`` the mean return of a uniformly random
policy on the same episode seeds: the result's own ``random`` entry, else ``<random_dir>/<env>.json``
(results without either keep the ratio).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from policy_kd.stats import aggregate_runs


def _ratio(run: dict[str, Any]) -> float:
    r = run["return_ratio"]
    return float(r["value"] if isinstance(r, dict) else r)


def random_baseline(res: dict[str, Any], random_dir: Path | None = None) -> dict[str, Any] | None:
    """The random policy's mean return on this task's env and episode seeds, or None where there is none (or
    it was played on other seeds: not comparable). ``random_dir`` holds ``<env>.json`` baselines for results
    made before evaluate played one (experiments/results/random)."""
    if res.get("random"):  # filed by the sweep since evaluate plays one
        return res["random"]
    if random_dir is None:
        return None
    path = random_dir / f"{res.get('env')}.json"
    if not path.is_file():
        return None
    rb = json.loads(path.read_text())
    return rb if rb["seeds"] == list(range(res["config"].get("episodes", 100))) else None


def scorer(
    res: dict[str, Any], random_dir: Path | None = None
) -> tuple[str, Callable[[dict[str, Any]], float]]:
    """How this task's students are scored: (what the number is, run -> number). The normalized score where
    a random baseline exists and the teacher beats it (their 95% CIs apart), else the return ratio."""
    rb, t = random_baseline(res, random_dir), res.get("teacher")
    if rb is None or t is None or not t["ci95"][0] > rb["ci95"][1]:
        return "Return ratio (student ÷ teacher", _ratio
    r, gap = rb["mean_return"], t["mean_return"] - rb["mean_return"]
    what = (
        "Normalized score ((student − random) ÷ (teacher − random): 0 plays like a uniformly random policy, "
        f"1 like the teacher; random = {r:.1f} on these seeds, where returns can be negative and a "
        "student ÷ teacher ratio reads backwards"
    )
    return what, lambda run: (float(run["mean_return"]) - r) / gap


def _ratio_text(x: float) -> str:
    """Three decimals, or four where three would print a ratio just under (or over) 1 as 1.000."""
    return f"{x:.4f}" if f"{x:.3f}" == "1.000" and x != 1.0 else f"{x:.3f}"


def _agg(values: list[float]) -> str:
    if not values:
        return "—"
    a = aggregate_runs(np.asarray(values), statistic="mean")
    lo, hi = a["ci"]
    return f"{_ratio_text(a['value'])} [{_ratio_text(lo)}, {_ratio_text(hi)}]"


def _wall_time(res: dict[str, Any]) -> list[str]:
    stages = res.get("stage_seconds", {})
    if not stages:
        return []
    text = ", ".join(f"{k} {v / 60:.1f} min" for k, v in stages.items())
    return ["", f"Wall time (this machine, 2 cores shared): {text}."]


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, or None without matplotlib (the tables are still written)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _grid_cells(res: dict[str, Any]) -> dict[tuple[str, float], list[dict[str, Any]]]:
    """Grid runs by (loss, size), parsed from the sweep's run names ``f<size>_<loss>_s<seed>``."""
    by: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for name, run in res.get("runs", {}).items():
        if run["kind"] == "grid":
            head, rest = name.split("_", 1)
            by[(rest[: rest.rindex("_s")], float(head[1:]))].append(run)
    return by


def task_section(
    res: dict[str, Any], random_dir: Path | None = None
) -> tuple[str, dict[str, dict[float, float]]]:
    """One sweep's Markdown section (teacher, score per loss and size, sizes, DAgger, wall time) and its
    curves (loss -> {mean params: mean score}) for :func:`plot`."""
    cfg, runs = res["config"], res.get("runs", {})
    t = res.get("teacher")
    lines = [f"### {res['task']}", ""]
    if t is None:
        return "\n".join([*lines, "(no evaluation yet)", ""]), {}
    info = t.get("info", {})
    lines += [
        f"Teacher: {info.get('algo', '?')} on {res['env']}, {t['params']:,} policy parameters, "
        f"{info.get('n_timesteps', '?'):,} training steps ({info.get('train_seconds', 0) / 60:.1f} min); "
        f"return over {cfg.get('episodes', 100)} episodes (seeds 0..{cfg.get('episodes', 100) - 1}): "
        f"**{t['mean_return']:.1f} ± {t['std_return']:.1f}**, batch-1 latency "
        f"{(t.get('latency') or {}).get('batch1_us', float('nan')):.0f} µs.",
        "",
    ]
    sizes, losses = sorted(cfg["sizes"], reverse=True), list(cfg["losses"])
    by = _grid_cells(res)
    n_seeds = len(cfg["seeds"])
    what, score = scorer(res, random_dir)
    lines += [
        f"{what}, same {cfg.get('episodes', 100)} seeds), mean over {n_seeds} "
        "distillation seeds [95% bootstrap CI over seeds]:",
        "",
        "| loss | " + " | ".join(f"{s:.0%} of teacher" for s in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    curves: dict[str, dict[float, float]] = defaultdict(dict)
    for loss in losses:
        cells = []
        for s in sizes:
            rs = by.get((loss, float(s)), [])
            note = "" if len(rs) in (0, n_seeds) else f" ({len(rs)} runs)"  # 0: a cell the config skips
            cells.append(_agg([score(r) for r in rs]) + note)
            if rs:
                curves[loss][float(np.mean([r["params"] for r in rs]))] = float(
                    np.mean([score(r) for r in rs])
                )
        lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| size | params | % of teacher | batch-1 µs | agreement (own states) |",
        "|---|---|---|---|---|",
    ]
    for s in sizes:
        rs = [r for (_, size), v in by.items() if size == float(s) for r in v]
        if rs:
            lat = [((r.get("latency") or {}).get("batch1_us")) for r in rs]
            lat = [x for x in lat if x is not None]
            agree = [r["agreement"] for r in rs if r.get("agreement") is not None]
            lines.append(
                f"| {s:.0%} | {rs[0]['params']:,} | {100 * rs[0]['params_ratio']:.2f}% | "
                f"{np.median(lat) if lat else float('nan'):.0f} | {np.mean(agree):.3f} |"
            )
    td = [v for v in runs.values() if v["kind"] == "teacher_driven"]
    sd = [v for v in runs.values() if v["kind"] == "student_driven"]
    if td or sd:
        d = cfg["dagger"]
        lines += [
            "",
            f"Teacher-driven vs student-driven (DAgger, {d['rounds']} rounds, β linear 1 → 0) at {d['labels']:,} "
            f"teacher labels and equal gradient steps ({d['loss']}, {d['size']:.0%} of teacher):",
            "",
            f"| data | {what.split(' (')[0].lower()} [95% CI over seeds] | runs |",
            "|---|---|---|",
            f"| teacher-driven | {_agg([score(r) for r in td])} | {len(td)} |",
            f"| student-driven | {_agg([score(r) for r in sd])} | {len(sd)} |",
        ]
    lines += [*_wall_time(res), ""]
    return "\n".join(lines), curves


def _game_runs(res: dict[str, Any], task: str) -> list[dict[str, Any]]:
    """One game's figures from every seed of a multi-task result."""
    return [r["tasks"][task] for r in res.get("runs", {}).values() if task in r["tasks"]]


def multitask_section(res: dict[str, Any]) -> str:
    cfg, runs = res["config"], res.get("runs", {})
    d = cfg["distill"]
    lines = [
        f"### Multi-task MinAtar student ({res['task']})",
        "",
        f"One {d['student']} student, shared trunk + one head per game (sized to "
        f"{d.get('params_fraction', 0.05):.0%} of one teacher), {d['loss']} τ={d.get('tau')}, "
        f"{d['steps']:,} steps (one minibatch per game each), best checkpoint by the "
        f"{d.get('select', 'mean')} over games of return ÷ teacher's, {len(cfg['seeds'])} seeds; each head "
        f"evaluated against its game's teacher over {cfg.get('episodes', 100)} episodes (same seeds).",
        "",
    ]
    if not runs:
        return "\n".join([*lines, "(no evaluation yet)", ""])
    params = [r["params"] for r in runs.values()]
    lines += [
        f"Whole student: {params[0]:,} parameters ({len(runs)} seed(s) evaluated).",
        "",
        "| game | teacher return | teacher params | student ÷ that teacher (params) | return ratio [95% CI over seeds] | agreement |",
        "|---|---|---|---|---|---|",
    ]
    for task in cfg["tasks"]:
        rs = _game_runs(res, task)
        if not rs:
            continue
        agree = [r["agreement"] for r in rs if r.get("agreement") is not None]
        lines.append(
            f"| {task} | {rs[0]['teacher_return']:.2f} | {rs[0]['teacher_params']:,} | "
            f"{100 * rs[0]['params_ratio']:.1f}% | {_agg([_ratio(r) for r in rs])} | "
            f"{np.mean(agree) if agree else float('nan'):.3f} |"
        )
    lines += [*_wall_time(res), ""]
    return "\n".join(lines)


def _verdict(values: list[float]) -> str:
    """Whether a cell's mean over seeds reaches 1 (the teacher), and whether its CI says so clearly."""
    mean = float(np.mean(values))
    lo, hi = aggregate_runs(np.asarray(values), statistic="mean")["ci"]
    # A verdict whose CI reaches the other side of 1 is weak either way: say so. A CI that only touches 1
    # from above (every seed at the teacher's return) is a clean yes.
    met = mean >= 1.0
    crosses = lo < 1.0 if met else lo <= 1.0 <= hi
    return ("yes" if met else "no") + (" (CI includes 1)" if crosses else "")


def _best_small(
    cells: Iterable[tuple[str, float, list[dict[str, Any]]]], score: Callable[[dict[str, Any]], float]
) -> tuple[str, str]:
    """The goal's two columns for the best cell (highest mean ``score``; the first one on a tie) among cells
    ``(loss, size, runs)`` <= 5% of the teacher: ``"<loss>, <size>: <mean [CI]>"`` and its ``_verdict``, or
    two dashes without one. A cell counts by its students' actual parameter ratio where they record one, not
    only by the size it is filed under: a loss may give explicit widths (``hidden: [64, 64]``) under any size."""
    best: tuple[float, str, list[float]] | None = None
    for loss, size, runs in cells:
        values = [score(r) for r in runs]
        actual = [r["params_ratio"] for r in runs if r.get("params_ratio") is not None]
        small = size <= 0.05 and all(x <= 0.05 for x in actual)
        if small and values and (best is None or float(np.mean(values)) > best[0]):
            best = (float(np.mean(values)), f"{loss}, {size:.0%}", values)
    if best is None:
        return "—", "—"
    return f"{best[1]}: {_agg(best[2])}", _verdict(best[2])


def goals_section(results: list[dict[str, Any]]) -> str:
    """The issue's goals, checked from the results (mean return ratio over seeds)."""
    lines = [
        "### Goals, checked from the results",
        "",
        "Mean return ratio over the distillation seeds; a size counts for the first goal if it is ≤ 5% of the "
        "teacher's parameters.",
        "",
        "| task | best student ≤ 5% of teacher (loss, size: ratio) | ≥ 100%? | kl τ=0.01 / nll / mse at 4% | kl ≥ nll > mse? |",
        "|---|---|---|---|---|",
    ]
    n_order = n_tasks = 0
    for res in results:
        if res.get("kind") == "multitask" or not res.get("runs") or _continuous(res):
            continue  # continuous tasks: continuous_section, on normalized scores
        cells = _grid_cells(res)
        by = {cell: [_ratio(r) for r in runs] for cell, runs in cells.items()}
        best, reached = _best_small(
            (
                (loss, size, cells.get((loss, float(size)), []))
                for size in res["config"]["sizes"]
                for loss in res["config"]["losses"]
            ),
            _ratio,
        )
        kl, nll, mse = (
            float(np.mean(by[(k, 0.04)])) if by.get((k, 0.04)) else None for k in ("kl_t0.01", "nll", "mse")
        )
        order = None if None in (kl, nll, mse) else bool(kl >= nll > mse)  # type: ignore[operator]
        if order is not None:
            n_tasks += 1
            n_order += order
        fmt = lambda x: "—" if x is None else f"{x:.3f}"  # noqa: E731
        lines.append(
            f"| {res['task']} | {best} | {reached} | {fmt(kl)} / {fmt(nll)} / {fmt(mse)} | "
            f"{'—' if order is None else ('yes' if order else 'no')} |"
        )
    lines += ["", f"KL (τ=0.01) ≥ NLL > MSE holds on {n_order} of {n_tasks} single-task settings.", ""]
    multi = [r for r in results if r.get("kind") == "multitask" and r.get("runs")]
    if multi:
        lines += ["| multi-task student | return ratio per game (mean over seeds) | ≥ 90% of every teacher? |",
                  "|---|---|---|"]  # fmt: skip
        for res in multi:
            per_game = {
                t: float(np.mean([_ratio(r) for r in _game_runs(res, t)])) for t in res["config"]["tasks"]
            }
            shown = ", ".join(f"{t} {v:.3f}" for t, v in per_game.items())
            lines.append(f"| {res['task']} | {shown} | {'yes' if min(per_game.values()) >= 0.9 else 'no'} |")
        lines.append("")
    return "\n".join(lines)


def _continuous(res: dict[str, Any]) -> bool:
    """A continuous-control grid (issue 25): its buffer's teacher kind is a continuous one, or (results filed
    without a buffer entry, or action-only data, whose kind either space has) its config names the zoo's
    published figure."""
    from policy_kd.teachers.protocol import CONTINUOUS_KINDS, DISCRETE_KINDS

    kind = (((res.get("buffer") or {}).get("source") or {}).get("teacher") or {}).get("kind")
    if kind is not None and not (kind in CONTINUOUS_KINDS and kind in DISCRETE_KINDS):
        return kind in CONTINUOUS_KINDS
    return bool(res.get("config", {}).get("zoo_benchmark"))


CONTINUOUS_LOSSES = ("kl_fwd", "kl_rev", "nll", "mse")
"""The continuous grids' losses, in the order the goal table shows them at 4%."""


def continuous_section(results: list[dict[str, Any]], random_dir: Path | None = None) -> str:
    """Continuous control: the zoo-trained teachers against the zoo's published figures, and the goal (a
    student at <= 5% of the teacher's parameters reaching a normalized score of 1.0) per task."""
    tasks = [r for r in results if _continuous(r)]
    if not tasks:
        return ""
    lines = [
        "### Continuous control: teachers and goals",
        "",
        "Teachers trained with the zoo's preset by `rl_zoo3.train` (or by `policy-kd train-teacher` from "
        "its copy in `agents/`, which resumes a cut run; one run, seed 0, one torch thread on a "
        "shared 2-core machine), evaluated on episode seeds 0..99 with the mean action, against the zoo's "
        "published benchmark (its own evaluation, ~150k steps, Box2D envs at v2):",
        "",
        "| task | algo | training steps | wall time | return (100 episodes) | zoo benchmark | random |",
        "|---|---|---|---|---|---|---|",
    ]
    for res in tasks:
        t, b, rb = res.get("teacher"), res["config"].get("zoo_benchmark"), random_baseline(res, random_dir)
        info = (t or {}).get("info") or {}
        secs = info.get("train_seconds")
        algo = info.get("algo") or res["config"].get("teacher", {}).get("zoo", {}).get("algo", "?")
        lines.append(
            f"| {res['task']} | {algo} | {info.get('n_timesteps', 0):,} | "
            f"{'—' if secs is None else f'{secs / 60:.0f} min'} | "
            + ("(not evaluated)" if t is None else f"{t['mean_return']:.1f} ± {t['std_return']:.1f}")
            + (
                " | (none published) | "
                if not b
                else f" | {b['mean_return']:.1f} ± {b['std_return']:.1f} ({b['n_timesteps']:,} steps) | "
            )
            + ("—" if rb is None else f"{rb['mean_return']:.1f}")
            + " |"
        )
    lines += [
        "",
        "Normalized score (0 = uniformly random, 1 = the teacher), mean over seeds [95% CI]; the goal counts "
        "sizes ≤ 5% of the teacher's policy parameters.",
        "",
        "| task | best student ≤ 5% (loss, size: score) | ≥ 1.0? | "
        + " / ".join(CONTINUOUS_LOSSES)
        + " at 4% |",
        "|---|---|---|---|",
    ]
    for res in tasks:
        if not res.get("runs") or res.get("teacher") is None:
            lines.append(f"| {res['task']} | (no students yet) | — | — |")
            continue
        _, score = scorer(res, random_dir)
        by = _grid_cells(res)
        best, reached = _best_small(((loss, size, runs) for (loss, size), runs in by.items()), score)
        at4 = [by.get((loss, 0.04)) for loss in CONTINUOUS_LOSSES]
        shown = " / ".join(
            "—" if not rs else _ratio_text(float(np.mean([score(r) for r in rs]))) for rs in at4
        )
        lines.append(f"| {res['task']} | {best} | {reached} | {shown} |")
    return "\n".join([*lines, ""])


def plot(
    task: str,
    curves: dict[str, dict[float, float]],
    out: Path,
    ylabel: str = "return ratio (student / teacher)",
) -> bool:
    """Return ratio (or ``ylabel``) against student parameters, a line per loss; none for a grid of one size
    (points only)."""
    plt = _pyplot()
    if plt is None or max((len(pts) for pts in curves.values()), default=0) < 2:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for loss, pts in curves.items():
        xs = sorted(pts)
        ax.plot(xs, [pts[x] for x in xs], marker="o", label=loss)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("student parameters")
    ax.set_ylabel(ylabel)
    ax.set_title(task)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return True


def plot_curves(results: list[dict[str, Any]], out: Path) -> bool:
    """Teachers' training curves (periodic evaluation return against env steps), one panel per task."""
    curves = [r for r in results if r.get("teacher_curve")]
    if not curves:
        return False
    plt = _pyplot()
    if plt is None:
        return False
    cols = min(len(curves), 5)  # rows of five: a single row of every task reads as a strip
    rows = -(-len(curves) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3 * rows), squeeze=False)
    for ax in axes.flat[len(curves) :]:
        ax.set_visible(False)
    for ax, res in zip(axes.flat, curves, strict=False):
        c = res["teacher_curve"]
        ax.plot(c["timesteps"], c["mean_return"], marker=".")
        ax.set_title(res["task"], fontsize=8)
        ax.set_xlabel("env steps", fontsize=8)
        ax.tick_params(labelsize=7)
    for row in axes:
        row[0].set_ylabel("evaluation return (mean)", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return True


def task_report(res: dict[str, Any], png: Path, random_dir: Path | None = None) -> str:
    """``task_section``'s Markdown with its plot written to ``png`` (where matplotlib is installed and the
    sweep has two sizes or more) and linked as ``plots/<png's name>``."""
    text, curves = task_section(res, random_dir)
    ylabel = (
        "return ratio (student / teacher)" if scorer(res, random_dir)[1] is _ratio else "normalized score"
    )
    if curves and plot(res["task"], curves, png, ylabel):
        text += f"\n![{res['task']}](plots/{png.name})\n"
    return text


def write_report(res: dict[str, Any], out: Path, random_dir: Path | None = None) -> Path:
    """One sweep's table (``out/results.md``) and plot (``out/plots/return_vs_params.png``, where matplotlib
    is installed and the sweep has two sizes or more); returns the Markdown file."""
    md = out / "results.md"
    md.write_text(task_report(res, out / "plots" / "return_vs_params.png", random_dir))
    return md
