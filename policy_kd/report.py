"""Turn an evaluation result (``eval.json``) into tables, a Markdown report, PNG plots and videos.

Everything here reads the result dictionary ``policy_kd.evaluate.evaluate`` returns (the same content as
``eval.json``), so a report can be regenerated from a saved ``eval.json`` without playing again:
``write_report(json.loads(Path("eval/eval.json").read_text()), Path("eval"))``.

Plots need matplotlib (the ``[report]`` extra) and videos moviepy (the ``[video]`` extra); without them
the report says so in one line and the rest is written.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from policy_kd.plots import (  # learning_curves and the panels stay importable from here
    LEARNING_CURVE_PANELS,
    _policies,
    _students,
    learning_curves,
    plot_all,
)
from policy_kd.run import atomic_write_text

__all__ = ["LEARNING_CURVE_PANELS", "format_table", "learning_curves", "markdown", "write_report"]


def _num(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "n/a"
    return f"{x:.{digits}f}" if abs(x) < 1e4 else f"{x:.3g}"


def _ci(ci: Sequence[float] | None, digits: int = 1) -> str:
    return "n/a" if not ci else f"[{_num(ci[0], digits)}, {_num(ci[1], digits)}]"


def _score(ns: dict[str, Any] | None) -> str:
    """A normalized score with its CI; ``n/a`` where the teacher does not beat random (see its note)."""
    if ns is None:
        return "—"
    if ns.get("value") is None:
        return "n/a (teacher ≈ random)"
    return f"{ns['value']:.3f} {_ci(ns['ci'], 3)}"


def return_rows(result: dict[str, Any]) -> list[list[str]]:
    """One row per policy and mode (and one for the random policy): the normalized score, return statistics
    and the paired comparison with the teacher."""
    rows = [
        [
            "policy",
            "mode",
            "normalized [95% CI]",
            "mean ± std",
            "95% CI",
            "median",
            "IQM [95% CI]",
            "Δ vs teacher [95% CI]",
            "ratio [95% CI]",
        ]
    ]
    policies = _policies(result)
    if result.get("random"):  # played once, whatever the modes: random actions have no greedy mode
        policies.insert(1, {**result["random"], "modes": {"uniform": result["random"]}})
    for p in policies:
        for mode, m in p.get("modes", {result.get("modes", ["deterministic"])[0]: p}).items():
            diff, ratio = m.get("paired_difference"), m.get("return_ratio")
            rows.append(
                [
                    p.get("name", "teacher"),
                    mode,
                    _score(m.get("normalized_score")),
                    f"{_num(m['mean_return'])} ± {_num(m['std_return'])}",
                    _ci(m["ci95"]),
                    _num(m["median_return"]),
                    f"{_num(m.get('iqm_return'))} {_ci(m.get('iqm_ci95'))}",
                    "—" if diff is None else f"{diff['mean']:+.1f} {_ci(diff['ci'])}",
                    "—" if ratio is None else f"{ratio['value']:.3f} {_ci(ratio['ci'], 3)}",
                ]
            )
    return rows


def _continuous(result: dict[str, Any]) -> bool:
    return any(
        "mean_action_diff" in ((s.get("fidelity") or {}).get("student_states") or {})
        for s in _students(result)
    )


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x * 100:.1f}%"


def fidelity_rows(result: dict[str, Any]) -> list[list[str]]:
    """Agreement and KL with the teacher on the student's states and on the teacher's (buffer) states; for
    continuous actions also the mean absolute action difference as a fraction of the action range."""
    continuous = _continuous(result)
    diff_cols = ["|Δaction|/range (own states)", "|Δaction|/range (teacher states)"] if continuous else []
    rows = [
        [
            "student",
            "agreement (own states)",
            "KL (own states)",
            "agreement (teacher states)",
            "KL (teacher states)",
            *diff_cols,
            "episodes with a disagreement",
            "median first disagreement step",
        ]
    ]
    for s in _students(result):
        f = s.get("fidelity") or {}
        own, theirs = f.get("student_states") or {}, f.get("teacher_states") or {}
        agree = own.get("agreement", s.get("agreement"))
        diffs = (
            [_pct(own.get("mean_action_diff")), _pct(theirs.get("mean_action_diff"))] if continuous else []
        )
        rows.append(
            [
                s.get("name", "student"),
                "n/a" if agree is None else f"{agree * 100:.1f}%",
                _num(own.get("kl"), 4),
                "—" if not theirs else f"{theirs['agreement'] * 100:.1f}%",
                "—" if not theirs else _num(theirs.get("kl"), 4),
                *diffs,
                f"{own.get('episodes_with_disagreement', 'n/a')}/{result['episodes']}",
                _num(own.get("median_first_disagreement"), 0),
            ]
        )
    return rows


def cost_rows(result: dict[str, Any]) -> list[list[str]]:
    """Parameters, bytes on disk, FLOPs per step and CPU latency of every policy."""
    rows = [["policy", "format", "params", "bytes", "FLOPs/step", "batch-1 µs", "batch-256 µs"]]
    for p in _policies(result):
        lat = p.get("latency") or {}
        rows.append(
            [
                p.get("name", "teacher"),
                p.get("format", ""),
                f"{p['params']:,}",
                f"{p['bytes']:,}",
                "n/a" if p.get("flops") is None else f"{p['flops']:,}",
                _num(lat.get("batch1_us")),
                _num(lat.get("batch256_us")),
            ]
        )
    return rows


def aggregate_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = [
        [
            "mode",
            "runs",
            "IQM of normalized score [95% CI]",
            "IQM of mean return [95% CI]",
            "IQM of return ratio [95% CI]",
        ]
    ]
    for mode, a in (result.get("aggregate") or {}).items():
        r, ns = a.get("return_ratio"), a.get("normalized_score")
        rows.append(
            [
                mode,
                str(len(a["runs"])),
                "n/a" if ns is None else f"{ns['value']:.3f} {_ci(ns['ci'], 3)}",
                f"{_num(a['mean_return']['value'])} {_ci(a['mean_return']['ci'])}",
                "n/a" if r is None else f"{r['value']:.3f} {_ci(r['ci'], 3)}",
            ]
        )
    return rows


def _text_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _md_table(rows: list[list[str]]) -> str:
    head, *body = rows
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(out)


def _footer(result: dict[str, Any]) -> list[str]:
    where = f"env {result['env_id']}, {result['episodes']} episodes on seeds {result['seeds'][0]}..{result['seeds'][-1]}"
    s = result.get("student")
    if not s:
        return [where, "teacher only: pass --student DISTILL_DIR to compare a student with it"]
    ratio, ns = result["return_ratio"], result.get("normalized_score")
    lines = [where]
    if ns is not None:
        lines.append(
            "normalized score (student - random) / (teacher - random): "
            + (f"{ns['value']:.3f} {_ci(ns['ci'], 3)}" if ns["value"] is not None else ns["note"])
        )
    lines += [
        f"student/teacher return ratio: {ratio:.3f}"
        if ratio is not None
        else "student/teacher return ratio: n/a (teacher mean is 0)",
        f"student/teacher params ratio: {result['params_ratio']:.4f} ({result['params_ratio'] * 100:.2f}%)",
        f"action agreement with the teacher on the student's own states: {s['agreement'] * 100:.1f}%",
    ]
    if "agreement_teacher_states" in s:
        lines.append(
            "action agreement with the teacher on the teacher's recorded states: "
            f"{s['agreement_teacher_states'] * 100:.1f}%"
        )
    own = (s.get("fidelity") or {}).get("student_states") or {}
    if "tolerance" in own:
        lines[-1 - ("agreement_teacher_states" in s)] += (
            f" (within {own['tolerance'] * 100:g}% of the action range per dimension; mean |Δaction| "
            f"{own['mean_action_diff'] * 100:.1f}% of the range)"
        )
    if "component_agreement" in own:  # MultiDiscrete/MultiBinary: the whole action, then each component
        per = ", ".join(f"{a * 100:.1f}%" for a in own["component_agreement"])
        lines.append(f"agreement per action component on the student's own states: {per}")
    if len(result.get("students", [])) > 1:
        lines.insert(1, f"(first student: {s.get('name', 'student')})")
    return lines


def format_table(result: dict[str, Any]) -> str:
    """The tables ``policy-kd evaluate`` prints: returns, fidelity, cost (when measured), then a summary."""
    parts = [_text_table(return_rows(result))]
    if _students(result):
        parts += ["", _text_table(fidelity_rows(result))]
    if any(p.get("latency") or p.get("flops") for p in _policies(result)):
        parts += ["", _text_table(cost_rows(result))]
    if result.get("aggregate"):
        parts += ["", _text_table(aggregate_rows(result))]
    parts += ["", *_footer(result)]
    return "\n".join(parts)


def markdown(result: dict[str, Any], images: Sequence[str] = ()) -> str:
    """``report.md``: the same tables in Markdown, the plots, and how to read them."""
    stats = result.get("statistics", {})
    parts = [
        f"# Evaluation on {result['env_id']}",
        "",
        f"{result['episodes']} episodes per policy and mode, episode *i* of every policy from `reset(seed="
        f"{result['seeds'][0]} + i)`. CIs: {int(stats.get('confidence', 0.95) * 100)}% bootstrap "
        f"({stats.get('bootstrap', 'scipy.stats.bootstrap')}, {stats.get('n_resamples', 'n/a')} resamples); "
        "Δ and ratio are paired by seed. Normalized score = (student − random) / (teacher − random) on the "
        "same seeds (0: a uniformly random policy, 1: the teacher, above 1: better than the teacher, whatever "
        "the sign of the returns); n/a where the teacher does not beat random. The ratio (student ÷ teacher) "
        "reads backwards when returns are negative.",
        "",
        "## Return",
        "",
        _md_table(return_rows(result)),
        "",
    ]
    if _students(result):
        parts += [
            "## Fidelity",
            "",
            f"KL = mean KL(softmax(teacher / {result.get('kl_tau', 1.0)}) ‖ softmax(student)) per state "
            "(Gaussian heads: closed form). Own states: those the student visits acting greedily; teacher "
            "states: the buffer's. Continuous actions (inside the env's bounds) agree when every dimension is "
            "within the tolerance (default 5%) of its range; |Δaction|/range is the mean absolute difference.",
            "",
            _md_table(fidelity_rows(result)),
            "",
        ]
    parts += [
        "## Cost",
        "",
        "FLOPs = 2 × multiply-accumulates of Linear/Conv2d layers per step; latency: median of many calls, "
        "one CPU thread, warm-up excluded, numpy in and out.",
        "",
        _md_table(cost_rows(result)),
    ]
    if result.get("aggregate"):
        parts += ["", "## Runs aggregated (IQM, stratified bootstrap)", "", _md_table(aggregate_rows(result))]
    if images:
        parts += ["", "## Plots", ""] + [f"![{Path(i).stem}]({i})" for i in images]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------- video


def record_videos(teacher: Any, contenders: Sequence[Any], out: Path, seed: int, episodes: int) -> list[str]:
    """Record ``episodes`` greedy episodes (from ``seed``) of every policy with gymnasium's RecordVideo into
    ``out/videos/<name>/``, then (moviepy) ``side_by_side.mp4`` with the first episode of each.

    Returns the files written; an env without ``rgb_array`` rendering or a missing moviepy gets a one-line
    message on stderr and no video.
    """
    import gymnasium as gym

    from policy_kd.envs import make_env_from_spec, wrap_game
    from policy_kd.rollout import run_episodes

    spec = teacher.env_spec
    modes = (
        (gym.spec(spec["env_id"]).kwargs.get("render_modes") or []) if spec["env_id"] in gym.registry else []
    )
    try:
        probe = make_env_from_spec({**spec, "env_kwargs": {**spec["env_kwargs"], "render_mode": "rgb_array"}})
        can_render = probe.metadata.get("render_modes") and "rgb_array" in probe.metadata["render_modes"]
    except Exception:
        probe, can_render = None, "rgb_array" in modes
    if not can_render:
        print(f"policy-kd: no video: {spec['env_id']} cannot render rgb_array frames", file=sys.stderr)
        return []
    if probe is not None:
        # Draw one frame now: classic-control envs declare rgb_array but need pygame only when they render,
        # which would otherwise fail mid-recording with a traceback after the scores were computed.
        try:
            probe.reset(seed=seed)
            probe.render()
        except gym.error.DependencyNotInstalled as e:
            print(
                f"policy-kd: no video: {str(e).splitlines()[0]} (pip install 'policy-kd[video]')",
                file=sys.stderr,
            )
            return []
        finally:
            probe.close()
    try:
        import moviepy  # noqa: F401
    except ImportError:
        print("policy-kd: no video: recording needs moviepy: pip install 'policy-kd[video]'", file=sys.stderr)
        return []
    files: list[str] = []
    firsts = []
    for c in contenders:
        folder = out / "videos" / c.name.replace("/", "_").replace(" ", "_")

        def filmed(folder: Path = folder) -> gym.Env:
            env = make_env_from_spec(
                {**spec, "env_kwargs": {**spec["env_kwargs"], "render_mode": "rgb_array"}}
            )
            # on the game itself: an Atari video is a whole game, every emulator frame
            return wrap_game(
                env,
                lambda e: gym.wrappers.RecordVideo(
                    e, str(folder), episode_trigger=lambda _: True, name_prefix="episode", disable_logger=True
                ),
            )

        seeds = [seed + i for i in range(episodes)]
        policy = c.policy("deterministic", np.random.default_rng(seed))
        run_episodes(policy, spec["env_id"], seeds, n_parallel=1, env_factory=filmed)  # closes the env
        videos = sorted(folder.glob("*.mp4"))
        files += [str(v.relative_to(out)) for v in videos]
        if videos:
            firsts.append((c.name, videos[0]))
    if len(firsts) > 1:
        try:
            from moviepy import TextClip, VideoFileClip, clips_array  # noqa: F401

            clips = [VideoFileClip(str(v)) for _, v in firsts]
            clips_array([clips]).write_videofile(str(out / "videos" / "side_by_side.mp4"), logger=None)
            for clip in clips:
                clip.close()
            files.append("videos/side_by_side.mp4")
        except Exception as exc:  # the per-policy videos are still there
            print(f"policy-kd: no side-by-side video ({type(exc).__name__}: {exc})", file=sys.stderr)
    return files


def write_report(
    result: dict[str, Any],
    out: Path,
    *,
    plots: bool = True,
    video: tuple[Any, Sequence[Any], int] | None = None,
) -> list[str]:
    """Write ``report.md``, the plots and (``video=(teacher, contenders, episodes)``) videos into ``out``;
    returns the files written (``eval.json`` is written by the caller)."""
    files: list[str] = []
    images: list[str] = []
    if plots:
        try:
            images = plot_all(result, out)
        except ImportError:
            print(
                "policy-kd: no plots: they need matplotlib: pip install 'policy-kd[report]'", file=sys.stderr
            )
    files += images
    if video is not None:
        teacher, contenders, episodes = video
        files += record_videos(teacher, contenders, out, result["seeds"][0], episodes)
    atomic_write_text(out / "report.md", markdown(result, images))
    return ["eval.json", "report.md", *files]
