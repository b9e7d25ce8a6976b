"""Batch-1 latency of a student's fastest export ÷ its teacher's eager PyTorch latency (goal ≤ 0.1), and the
wall time of evaluating 100 CartPole episodes of teacher + student (goal < 20 s).

    python benchmarks/bench_latency.py                                  # trains a tiny teacher/student
    python benchmarks/bench_latency.py --teacher runs/demo/teacher --student runs/demo/student \
        --more runs/minatar/teacher runs/minatar/student --more runs/lunar/teacher runs/lunar/student

Then the C export (``--format c``, needs a C compiler) of that student and of each ``--more`` pair
(e.g. a MinAtar CNN, a LunarLander MLP): compiled batch-1 latency ÷ teacher eager (goal ≤ 0.01), timed both
in a tight C loop (no Python) and through ctypes; ``--int8`` against float (weight bytes, file bytes,
latency, agreement with the float student on the buffer's states, goal ≥ 0.99); and whether the compiled
student's ``--episodes`` returns equal the eager student's on the same seeds.

Every runtime is timed the same way (``policy_kd.cost.measure_latency``): numpy observations in, numpy
outputs out, median of many calls after an untimed warm-up, one thread. The teacher is its bare action
network (``policy_kd.cost.teacher_module``) called eagerly on a tensor.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from policy_kd.c_runtime import c_loop_latency
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


def c_figures(t_path: Path, s_path: Path, root: Path, episodes: int) -> dict[str, object]:
    """C export figures of one teacher/student pair: float and int8 exports (c and numpy), latencies,
    sizes, int8 agreement, and the compiled students' returns against the eager student's."""
    teacher, student = load_teacher(t_path), load_student(s_path)
    obs = parity_observations(student, rows=1).astype(np.float32)  # a real state from the buffer
    net = teacher_module(teacher)
    row: dict[str, object] = {
        "env": teacher.env_id,
        "arch": student.info["spec"]["arch"],
        "teacher_params": int(teacher.policy_params),
        "student_params": int(sum(p.numel() for p in student.net.parameters())),
    }
    with single_thread(), torch.inference_mode():
        row["teacher_eager_us"] = measure_latency(lambda o: net(torch.from_numpy(o)).numpy(), obs)[
            "median_us"
        ]
        row["student_eager_us"] = measure_latency(lambda o: student.net(torch.from_numpy(o)).numpy(), obs)[
            "median_us"
        ]
    for fmt in ("c", "numpy"):
        for q in ("float", "int8"):
            out = root / f"{fmt}_{q}"
            if (
                cli(
                    [
                        "export",
                        str(s_path),
                        "--format",
                        fmt,
                        "--out",
                        str(out),
                        "--force",
                        *(["--int8", "--min-agreement", "0"] if q == "int8" else []),
                    ]
                )
                != 0
            ):
                sys.exit(f"export --format {fmt} ({q}) failed")
            meta = json.loads((out / "export.json").read_text())
            key = f"{fmt}_{q}"
            row[f"{key}_file_bytes"] = meta["bytes"]
            row[f"{key}_agreement"] = meta["parity"]["action_agreement"]
            row[f"{key}_max_abs_diff"] = meta["parity"]["max_abs_diff"]
            with single_thread():
                row[f"{key}_us"] = measure_latency(load_exported(out).run, obs)["median_us"]
            if fmt == "c":
                row[f"{key}_weight_bytes"] = meta["details"]["weight_bytes"]
                row[f"{key}_loop_us"] = c_loop_latency(out / "student.c", obs) / 1e3
    res = evaluate(
        EvaluateConfig(
            teacher=str(t_path),
            student=(str(s_path), str(root / "c_float"), str(root / "c_int8")),
            episodes=episodes,
            latency=False,
            random_baseline=False,
        )
    )
    eager, c_float, c_int8 = res["students"]
    row["teacher_return"] = res["teacher"]["mean_return"]
    row["eager_return"], row["c_return"], row["c_int8_return"] = (
        e["mean_return"] for e in (eager, c_float, c_int8)
    )
    row["c_returns_equal"] = eager["returns"] == c_float["returns"]
    row["c_int8_returns_equal"] = eager["returns"] == c_int8["returns"]
    return row


def print_c_tables(rows: list[dict[str, object]], episodes: int) -> None:
    def r(x: object, base: object) -> str:
        return f"{x:7.2f} ({x / base:.4f})"  # type: ignore[operator]

    print("\nC export, batch-1 median µs (one thread); (÷ teacher eager; goal ≤ 0.01)")
    print(
        f"  {'env':22s} {'arch':11s} {'params t/s':>16s} {'teacher':>8s} {'student':>8s} "
        f"{'C loop':>17s} {'C ctypes':>17s} {'int8 C loop':>17s} {'int8 ctypes':>17s} {'numpy':>17s}"
    )
    for x in rows:
        t = x["teacher_eager_us"]
        print(
            f"  {x['env']!s:22s} {x['arch']!s:11s} {x['teacher_params']:>8,}/{x['student_params']:<7,} "
            f"{t:8.1f} {x['student_eager_us']:8.1f} {r(x['c_float_loop_us'], t)} {r(x['c_float_us'], t)} "
            f"{r(x['c_int8_loop_us'], t)} {r(x['c_int8_us'], t)} {r(x['numpy_float_us'], t)}"
        )
    print("\nint8 (per-channel symmetric weights, float accumulation) against float; agreement goal >= 0.99")
    print(
        f"  {'env':22s} {'C weights B f/i8':>17s} {'C source B f/i8':>17s} {'npz B f/i8':>15s} "
        f"{'numpy µs f/i8':>14s} {'agree C/numpy':>14s} {'max|diff| C':>11s}"
    )
    for x in rows:
        print(
            f"  {x['env']!s:22s} {x['c_float_weight_bytes']:>8,}/{x['c_int8_weight_bytes']:<8,} "
            f"{x['c_float_file_bytes']:>8,}/{x['c_int8_file_bytes']:<8,} "
            f"{x['numpy_float_file_bytes']:>7,}/{x['numpy_int8_file_bytes']:<7,} "
            f"{x['numpy_float_us']:6.1f}/{x['numpy_int8_us']:<7.1f} "
            f"{x['c_int8_agreement']:.4f}/{x['numpy_int8_agreement']:.4f} {x['c_int8_max_abs_diff']:11.3g}"
        )
    print(f"\n{episodes}-episode returns on the same seeds (deterministic)")
    for x in rows:
        print(
            f"  {x['env']!s:22s} teacher {x['teacher_return']:8.2f}  eager student {x['eager_return']:8.2f}  "
            f"C {x['c_return']:8.2f} (every episode equal: {x['c_returns_equal']})  "
            f"C int8 {x['c_int8_return']:8.2f} (equal: {x['c_int8_returns_equal']})"
        )


if __name__ == "__main__":
    main()
