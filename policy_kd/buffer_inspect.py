"""Human-readable summaries of a buffer: ``describe`` (``policy-kd inspect``) and its non-finite values."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from policy_kd.buffer_format import _describe

if TYPE_CHECKING:
    from policy_kd.buffer import Buffer


def describe_nonfinite(bad: dict[str, tuple[int, int, int]]) -> str:
    return ", ".join(
        f"{k}: {n:,} NaN/Inf value(s) in {rows:,} row(s), first at row {first}"
        for k, (n, rows, first) in bad.items()
    )


#: What describe reads besides the teacher's outputs.
STANDARD_FIELDS = ("obs", "action", "reward", "first", "terminated", "truncated", "env", "source", "teacher")


def describe(buffer: Buffer) -> str:
    """A human-readable summary of a buffer: schema, counts, sources, episodes, actions, non-finite values."""
    buffer.require(*STANDARD_FIELDS)
    m, meta = buffer.manifest, buffer.meta
    n_chunks = sum(len(s["chunks"]) for s in buffer.segments)
    state = "complete" if buffer.complete else "INCOMPLETE (resume with: policy-kd record --resume --out ...)"
    t = meta.get("teacher") if isinstance(meta.get("teacher"), dict) else {}
    lines = [
        f"buffer {buffer.path}: schema {m['schema_version']}, {state}",
        f"  {buffer.rows:,} rows in {len(buffer.segments)} segment(s), {n_chunks} chunk(s), "
        f"{buffer.nbytes() / 1e6:.1f} MB of field data",
        f"env {meta.get('env_id')}: observations {meta.get('observation_space')}, actions {meta.get('action_space')}",
        f"teacher {t.get('algo')} ({t.get('kind')}), {t.get('policy_params')} policy parameters, {t.get('path')}",
        "fields: " + _describe(buffer.fields),
        "sources:",
    ]
    lines += [_source_line(buffer, i, src) for i, src in enumerate(buffer.sources)]
    returns = buffer.episode_returns()
    if len(returns):
        lines.append(
            f"episodes finished in the buffer: {len(returns)}, return mean {returns.mean():.2f} ± {returns.std():.2f} "
            f"(min {returns.min():.1f}, max {returns.max():.1f})"
        )
    else:
        lines.append("episodes finished in the buffer: 0")
    if "game_reward" in buffer.fields:
        game_scores = buffer.game_returns()
        lines.append(
            f"games finished in the buffer: {len(game_scores)}"
            + (f", score mean {game_scores.mean():.2f} ± {game_scores.std():.2f}" if len(game_scores) else "")
        )
    lines.append(_action_line(buffer))
    bad = buffer.nonfinite()
    lines.append("non-finite values: " + (describe_nonfinite(bad) if bad else "none"))
    return "\n".join(lines)


def _source_line(buffer: Buffer, i: int, src: dict[str, Any]) -> str:
    """One line of ``describe`` per source: behaviour, rows, episodes, returns."""
    # a source's statistics are informative only (nothing is computed from them): shown as found
    rows = sum(s["rows"] for s in buffer.segments if s["source"] == i)
    cfg = src.get("config") if isinstance(src.get("config"), dict) else {}
    how = str(src.get("behaviour"))
    if how == "epsilon":
        how += f"({cfg.get('epsilon')})"
    elif how == "mixture":
        how += f"(beta={cfg.get('beta')})"
    ret, std = _number(src.get("episode_return_mean")), _number(src.get("episode_return_std")) or 0.0
    ret_txt = f"return {ret:.1f} ± {std:.1f}" if ret is not None else "no finished episode"
    acted = _number(src.get("teacher_action_fraction"))
    acted_txt = f", teacher acted {acted * 100:.1f}%" if acted is not None else ""
    games, score, score_std = (
        src.get("games"),
        _number(src.get("game_return_mean")),
        _number(src.get("game_return_std")),
    )
    if score is not None:  # Atari: episodes are lives, games are scored apart
        ret_txt += f", {games} games, score {score:.1f} ± {score_std or 0.0:.1f}"
    return f"  [{i}] {how}: {rows:,} rows, {src.get('episodes', 0)} episodes, {ret_txt}{acted_txt}"


def _action_line(buffer: Buffer) -> str:
    """``describe``'s line on the actions: a histogram of discrete actions, else their mean and std."""
    if buffer.rows == 0:
        return "no actions recorded yet"
    elif buffer.fields["action"].shape == () and np.dtype(buffer.fields["action"].dtype).kind in "iu":
        counts: dict[int, int] = {}
        for i in range(len(buffer.segments)):
            values, n = np.unique(np.asarray(buffer.segment_array(i, "action")), return_counts=True)
            for a, c in zip(values.tolist(), n.tolist(), strict=True):
                counts[a] = counts.get(a, 0) + c
        return "action histogram: " + "  ".join(
            f"{a}: {counts.get(a, 0) / buffer.rows * 100:.1f}%"
            # actions never taken show as 0% (up to a sane action count)
            for a in sorted(set(counts) | set(range(min(max(counts) + 1, 1024))))
        )
    else:
        act = buffer.spaced("action", 100_000)
        return f"action mean {np.round(act.mean(0), 3).tolist()}, std {np.round(act.std(0), 3).tolist()}"


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None
