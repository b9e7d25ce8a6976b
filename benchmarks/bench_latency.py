"""Batch-1 latency of a student's fastest export ÷ its teacher's eager PyTorch latency (goal ≤ 0.1), and the
wall time of evaluating 100 CartPole episodes of teacher + student (goal < 20 s).

    python benchmarks/bench_latency.py                                  # trains a tiny teacher/student
    bash benchmarks/latency_pairs.sh runs/latency                       # the issue-26 pairs (~15 min), then:
    python benchmarks/bench_latency.py --teacher runs/latency/cp_teacher --student runs/latency/cp_student \
        --more runs/latency/ma_teacher runs/latency/ma_student --more runs/latency/ll_teacher runs/latency/ll_student

Then the C export (``--format c``, needs a C compiler) of that student and of each ``--more`` pair
(e.g. a MinAtar CNN, a LunarLander MLP), portable and ``--native``, float and ``--int8``: compiled batch-1
latency ÷ teacher eager (goal ≤ 0.01), timed in a tight C loop (no Python), through the generated CPython
extension (``act``, and ``forward`` as evaluate calls it) and through ctypes; ``--int8`` against float (weight
bytes, file bytes, latency, agreement with the float student on the buffer's states, goal ≥ 0.99); whether
the compiled students' ``--episodes`` returns equal the eager student's on the same seeds; and last, each
goal against its figures.

The first table's runtimes are timed with ``policy_kd.cost.measure_latency`` (each call timed on its own,
median). The C tables time every row, the teacher's and the eager student's included, as the C loop does:
the median over 201 batches of back-to-back calls (one clock read per batch: a sub-µs call is not
swamped by the clock's own cost), numpy observations in, one thread. The teacher is its bare action network
(``policy_kd.cost.teacher_module``) called eagerly on a tensor.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policy_kd.c_runtime import LIBRARY_FLAGS, NATIVE_FLAGS, CPolicy, c_loop_latency
from policy_kd.cli import main as cli
from policy_kd.cost import measure_latency, single_thread, teacher_module
from policy_kd.evaluate import EvaluateConfig, evaluate
from policy_kd.export import FILES, load_exported, parity_observations
from policy_kd.students import load_student
from policy_kd.teachers import load_teacher


def _run(*args: object) -> None:
    if cli([str(a) for a in args]) != 0:
        sys.exit(f"policy-kd {args[0]} failed")


def tiny_pipeline(root: Path) -> tuple[Path, Path]:
    """A small DQN teacher on CartPole (the zoo preset's 256x256 network, short training) and a student."""
    t, b, s = root / "teacher", root / "buffer", root / "student"
    _run(
        "train-teacher",
        "--algo",
        "dqn",
        "--env",
        "CartPole-v1",
        "--out",
        t,
        "--n-timesteps",
        "20000",
        "--no-progress",
    )
    _run("record", "--teacher", t, "--out", b, "--steps", "20000", "--no-progress")
    _run("distill", "--buffer", b, "--out", s, "--steps", "2000", "--eval-every", "1000", "--no-progress")
    return t, s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", help="teacher run folder (default: train a tiny one)")
    ap.add_argument("--student", help="student distill folder (default: distil a tiny one)")
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument(
        "--more",
        nargs=2,
        action="append",
        default=[],
        metavar=("TEACHER", "STUDENT"),
        help="another teacher/student pair for the C export figures (repeatable)",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_latency_"))
    if args.teacher and args.student:
        t_path, s_path = Path(args.teacher), Path(args.student)
    else:
        t_path, s_path = tiny_pipeline(tmp)

    teacher = load_teacher(t_path)
    student = load_student(s_path)
    obs = np.zeros((1, *student.info["spec"]["obs_shape"]), dtype=np.float32)
    net = teacher_module(teacher)
    figures: dict[str, float] = {}
    with single_thread(), torch.inference_mode():
        figures["teacher eager"] = measure_latency(lambda o: net(torch.from_numpy(o)).numpy(), obs)[
            "median_us"
        ]
        figures["student eager"] = measure_latency(lambda o: student.net(torch.from_numpy(o)).numpy(), obs)[
            "median_us"
        ]
    for fmt in FILES:
        out = tmp / f"export_{fmt}"
        if cli(["export", str(s_path), "--format", fmt, "--out", str(out), "--force"]) != 0:
            print(f"{fmt}: export failed (see above); skipped")
            continue
        run = load_exported(out).run
        with single_thread():
            figures[f"student {fmt}"] = measure_latency(run, obs)["median_us"]

    base = figures["teacher eager"]
    print(
        f"batch-1 latency, median µs (one thread), {teacher.env_id}; teacher {teacher.policy_params:,} params"
    )
    for name, us in figures.items():
        print(f"  {name:20s} {us:8.1f} µs   ÷ teacher eager = {us / base:.3f}")
    fastest = min((k for k in figures if k.startswith("student ") and k != "student eager"), key=figures.get)
    ratio = figures[fastest] / base
    print(
        f"fastest export: {fastest} -> ratio {ratio:.3f} (goal <= 0.1: {'met' if ratio <= 0.1 else 'missed'})"
    )

    start = time.perf_counter()
    res = evaluate(
        EvaluateConfig(teacher=str(t_path), student=(str(s_path),), episodes=args.episodes, latency=False)
    )
    wall = time.perf_counter() - start
    print(
        f"evaluate {args.episodes} episodes teacher + student: {wall:.1f} s wall "
        f"({res['play_seconds']:.1f} s playing; goal < 20 s: {'met' if wall < 20 else 'missed'}); "
        f"teacher {res['teacher']['mean_return']:.1f}, student {res['student']['mean_return']:.1f}"
    )
    c_rows = [c_figures(t_path, s_path, tmp / "c0", args.episodes)]
    c_rows += [
        c_figures(Path(t), Path(s), tmp / f"c{i + 1}", args.episodes) for i, (t, s) in enumerate(args.more)
    ]
    print_c_tables(c_rows, args.episodes)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "latency_us": figures,
                    "fastest": fastest,
                    "ratio": ratio,
                    "evaluate_s": wall,
                    "c_export": c_rows,
                },
                indent=2,
            )
        )


#: The C exports measured per pair: (key, export flags).
C_EXPORTS = (
    ("c_float", ()),
    ("c_native", ("--native",)),
    ("c_int8", ("--int8", "--min-agreement", "0")),
    ("c_int8_native", ("--int8", "--min-agreement", "0", "--native")),
)
GOAL_C = 0.01
GOAL_AGREEMENT = 0.99


def per_call_us(fn: Callable[[Any], Any], x: Any, batches: int = 201) -> float:
    """Median µs per call of ``fn(x)`` over ``batches`` batches of back-to-back calls (each batch ~25 µs
    or more, as the C loop's batches of 100 calls): one clock read per batch, not per call, so a 0.1 µs
    call is not swamped by the clock's own ~0.05 µs."""
    for _ in range(20):
        fn(x)
    t0 = time.perf_counter_ns()
    for _ in range(50):
        fn(x)
    n = int(min(1000, max(1, 25e3 / max((time.perf_counter_ns() - t0) / 50, 1.0))))
    times = []
    for _ in range(batches):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn(x)
        times.append((time.perf_counter_ns() - t0) / n)
    return float(np.median(times)) / 1e3


def _export(s_path: Path, out: Path, fmt: str, flags: tuple[str, ...]) -> dict[str, Any]:
    if cli(["export", str(s_path), "--format", fmt, "--out", str(out), "--force", *flags]) != 0:
        sys.exit(f"export --format {fmt} {' '.join(flags)} failed")
    return json.loads((out / "export.json").read_text())


def c_figures(t_path: Path, s_path: Path, root: Path, episodes: int) -> dict[str, Any]:
    """C export figures of one teacher/student pair: portable and --native builds, float and --int8, timed
    in a tight C loop, through the extension module (``act``: one observation -> the action; ``forward``:
    evaluate's path, a (1, n) array) and through ctypes; sizes, int8 agreement, and the compiled students'
    returns against the eager student's."""
    teacher, student = load_teacher(t_path), load_student(s_path)
    spec = student.info["spec"]
    obs = parity_observations(student, rows=1).astype(np.float32)  # a real state from the buffer
    net = teacher_module(teacher)
    row: dict[str, Any] = {
        "env": teacher.env_id,
        "arch": spec["arch"],
        "teacher_params": int(teacher.policy_params),
        "student_params": int(sum(p.numel() for p in student.net.parameters())),
    }
    with single_thread(), torch.inference_mode():
        row["teacher_eager_us"] = per_call_us(lambda o: net(torch.from_numpy(o)).numpy(), obs)
        row["student_eager_us"] = per_call_us(lambda o: student.net(torch.from_numpy(o)).numpy(), obs)
    args = (tuple(spec["obs_shape"]), int(spec["n_outputs"]))
    for key, flags in C_EXPORTS:
        meta = _export(s_path, root / key, "c", flags)
        source, native = root / key / "student.c", bool(meta["details"]["native"])
        row[f"{key}_weight_bytes"] = meta["details"]["weight_bytes"]
        row[f"{key}_file_bytes"] = meta["bytes"]
        row[f"{key}_agreement"] = meta["parity"]["action_agreement"]
        row[f"{key}_max_abs_diff"] = meta["parity"]["max_abs_diff"]
        build = LIBRARY_FLAGS + (NATIVE_FLAGS if native else ())
        row[f"{key}_loop_us"] = c_loop_latency(source, obs, flags=build) / 1e3
        ext = CPolicy(source, *args, head=str(spec.get("head", "discrete")), native=native)
        row[f"{key}_binding"] = ext.binding
        if ext.binding == "extension":
            row[f"{key}_act_us"] = per_call_us(ext.act, obs)
        row[f"{key}_forward_us"] = per_call_us(ext.forward, obs)
        if key == "c_float":
            lib = CPolicy(source, *args, binding="ctypes")
            row["ctypes_forward_us"] = per_call_us(lib.forward, obs)
            one, ptrs = lib._one, (lib._in.ctypes.data, lib._out.ctypes.data)
            row["ctypes_bare_us"] = per_call_us(lambda p, f=one: f(*p), ptrs)  # the foreign call alone
    for q, flags in (("float", ()), ("int8", ("--int8", "--min-agreement", "0"))):
        meta = _export(s_path, root / f"numpy_{q}", "numpy", flags)
        row[f"numpy_{q}_file_bytes"] = meta["bytes"]
        row[f"numpy_{q}_agreement"] = meta["parity"]["action_agreement"]
        row[f"numpy_{q}_us"] = per_call_us(load_exported(root / f"numpy_{q}").run, obs)
    played = ("c_float", "c_native", "c_int8")
    res = evaluate(
        EvaluateConfig(
            teacher=str(t_path),
            student=(str(s_path), *(str(root / k) for k in played)),
            episodes=episodes,
            latency=False,
            random_baseline=False,
        )
    )
    eager, *compiled = res["students"]
    row["teacher_return"] = res["teacher"]["mean_return"]
    row["eager_return"] = eager["mean_return"]
    for key, e in zip(played, compiled, strict=True):
        row[f"{key}_return"] = e["mean_return"]
        row[f"{key}_returns_equal"] = e["returns"] == eager["returns"]
    return row


def _r(x: Any, base: float) -> str:
    return f"{x:6.3f} ({x / base:.4f})" if isinstance(x, float) else f"{'-':>15s}"


def print_c_tables(rows: list[dict[str, Any]], episodes: int) -> None:
    """The C export figures side by side, then each goal against its figures."""
    print("\nC export, batch-1 median µs per call (one thread; ÷ teacher eager in brackets; goal <= 0.01)")
    cols = (
        ("C loop", "c_float_loop_us"),
        ("C loop native", "c_native_loop_us"),
        ("ext act", "c_float_act_us"),
        ("ext act native", "c_native_act_us"),
        ("ext forward", "c_float_forward_us"),
        ("ctypes bare", "ctypes_bare_us"),
        ("ctypes forward", "ctypes_forward_us"),
        ("numpy", "numpy_float_us"),
    )
    print(
        f"  {'env':22s} {'params t/s':>15s} {'teacher':>7s} {'student':>7s} "
        + " ".join(f"{c:>15s}" for c, _ in cols)
    )
    for x in rows:
        t = x["teacher_eager_us"]
        print(
            f"  {x['env']:22s} {x['teacher_params']:>7,}/{x['student_params']:<7,} {t:7.1f} "
            f"{x['student_eager_us']:7.1f} " + " ".join(_r(x.get(k), t) for _, k in cols)
        )
    print(
        "  (ext: the generated CPython extension; act: one observation -> the action; forward: evaluate's path,"
    )
    print(
        "   a (1, n) array in and out; ctypes bare: the foreign call alone; native: export --native, -march=native)"
    )

    print("\nint8 (per-channel symmetric weights, float accumulation) against float")
    print(
        f"  {'env':22s} {'C weights B f/i8':>17s} {'C source B f/i8':>17s} {'npz B f/i8':>15s} "
        f"{'C loop µs f/i8':>15s} {'native f/i8':>13s} {'act µs f/i8':>13s} {'agree C/numpy':>14s}  pays?"
    )
    for x in rows:
        faster = (
            x["c_int8_loop_us"] < x["c_float_loop_us"] or x["c_int8_native_loop_us"] < x["c_native_loop_us"]
        )
        smaller = x["c_int8_weight_bytes"] / x["c_float_weight_bytes"]
        verdict = (
            f"{1 / smaller:.1f}x smaller weights; "
            + (
                "faster"
                if faster
                else f"{x['c_int8_loop_us'] / x['c_float_loop_us']:.1f}x slower (portable), "
            )
            + (
                ""
                if faster
                else f"{x['c_int8_native_loop_us'] / x['c_native_loop_us']:.1f}x (native): no latency gain"
            )
        )
        act = f"{x.get('c_float_act_us', float('nan')):5.3f}/{x.get('c_int8_act_us', float('nan')):<6.3f}"
        print(
            f"  {x['env']:22s} {x['c_float_weight_bytes']:>8,}/{x['c_int8_weight_bytes']:<8,} "
            f"{x['c_float_file_bytes']:>8,}/{x['c_int8_file_bytes']:<8,} "
            f"{x['numpy_float_file_bytes']:>7,}/{x['numpy_int8_file_bytes']:<7,} "
            f"{x['c_float_loop_us']:6.3f}/{x['c_int8_loop_us']:<7.3f} "
            f"{x['c_native_loop_us']:5.3f}/{x['c_int8_native_loop_us']:<6.3f} {act} "
            f"{x['c_int8_agreement']:.4f}/{x['numpy_int8_agreement']:.4f}  {verdict}"
        )

    print(f"\n{episodes}-episode returns on the same seeds (deterministic)")
    for x in rows:
        print(
            f"  {x['env']:22s} teacher {x['teacher_return']:8.2f}  eager student {x['eager_return']:8.2f}  "
            + "  ".join(
                f"{k.removeprefix('c_')} {x[f'{k}_return']:8.2f} (equal: {x[f'{k}_returns_equal']})"
                for k in ("c_float", "c_native", "c_int8")
            )
        )

    print(f"\nGoals: compiled C batch-1 latency ÷ teacher eager <= {GOAL_C} (C loop and Python call path)")
    for x in rows:
        t = x["teacher_eager_us"]
        for label, key in (
            ("C loop", "c_float_loop_us"),
            ("C loop --native", "c_native_loop_us"),
            ("Python ext act", "c_float_act_us"),
            ("Python ext act --native", "c_native_act_us"),
        ):
            if key in x:
                ratio = x[key] / t
                print(f"  {x['env']:22s} {label:24s} {ratio:.4f}  {'met' if ratio <= GOAL_C else 'MISSED'}")
    for x in rows:
        a = x["c_int8_agreement"]
        print(
            f"  {x['env']:22s} int8 agreement {a:.4f} (goal >= {GOAL_AGREEMENT}: {'met' if a >= GOAL_AGREEMENT else 'MISSED'})"
        )
    for x in rows:
        ok = all(x[f"{k}_returns_equal"] for k in ("c_float", "c_native"))
        print(f"  {x['env']:22s} C returns == eager returns on every episode: {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
