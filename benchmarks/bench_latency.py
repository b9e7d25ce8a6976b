"""Batch-1 latency of a student's fastest export ÷ its teacher's eager PyTorch latency (goal ≤ 0.1), and the
wall time of evaluating 100 CartPole episodes of teacher + student (goal < 20 s).

    python benchmarks/bench_latency.py                                  # trains a tiny teacher/student
    python benchmarks/bench_latency.py --teacher runs/demo/teacher --student runs/demo/student

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

from policy_kd.cli import main as cli
from policy_kd.cost import measure_latency, single_thread, teacher_module
from policy_kd.evaluate import EvaluateConfig, evaluate
from policy_kd.export import FILES, load_exported
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
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"latency_us": figures, "fastest": fastest, "ratio": ratio, "evaluate_s": wall}, indent=2
            )
        )


if __name__ == "__main__":
    main()
