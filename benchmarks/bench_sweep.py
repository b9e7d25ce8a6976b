"""Students of one shape trained together (``policy_kd.group``) against the same students one after another.

For each case and each group size K, the same K students (seeds 0..K-1, tau and learning rate varied
across them, as a sweep varies them) are distilled twice from one synthetic buffer, one thread:
one after another by ``distill`` (the sequential baseline), and as one stacked model by the group trainer
(forced for K = 1 too, to show its own overhead). Evaluation and checkpoints are off, so that the
training loops are timed. samples/s is rows trained on (K x steps x batch) per second of training loop,
summed over the students' ``metrics.json`` ``seconds`` (setup excluded: the buffer is opened and the
students built before the loop starts); the end-to-end ratio (setup and folder writing included) is
printed beside it.

Cases (issue 24's goals): CartPole-size MLP students at 1% and 4% of a 67,586-parameter DQN teacher
(goal: >= 5x at K = 36), MinAtar CNN students at 4% of a 132,179-parameter Breakout teacher (goal: >= 2x
at K = 12). The last line is ``vectorised/sequential K=36: <ratio>`` for the 4% MLP case (the harder of
the two MLP cases).

    python benchmarks/bench_sweep.py [--steps 500] [--ks 1 4 12 36] [--dir /tmp/pkd_bench_sweep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from policy_kd.buffer import write_synthetic_q_buffer
from policy_kd.distill import DistillConfig, distill
from policy_kd.group import _distill_together

ROWS = 100_000
CASES = {
    # name: (obs shape (uint8 for an image), actions, teacher params, env id, student, params fraction, Ks)
    "cartpole_mlp_1pct": ((4,), 2, 67_586, "CartPole-v1", "mlp", 0.01, None),
    "cartpole_mlp_4pct": ((4,), 2, 67_586, "CartPole-v1", "mlp", 0.04, None),
    "minatar_cnn_4pct": (
        (10, 10, 4),
        3,
        132_179,
        "MinAtar/Breakout-v1",
        "minatar_cnn",
        0.04,
        (1, 4, 12),
    ),
}


def make_buffer(
    path: Path, obs_shape: tuple[int, ...], n_actions: int, teacher_params: int, env_id: str
) -> Path:
    if (path / "manifest.json").is_file():
        return path
    shutil.rmtree(path, ignore_errors=True)
    return write_synthetic_q_buffer(
        path, obs_shape, n_actions, ROWS, env_id=env_id, teacher_params=teacher_params, teacher_scale=10.0
    )


def configs(
    buffer: Path, root: Path, k: int, student: str, fraction: float, steps: int
) -> list[DistillConfig]:
    """K students of one shape, as a sweep makes them: seeds, tau and learning rates differ."""
    taus, lrs = (0.01, 0.1, 1.0), (1e-3, 3e-3)
    return [
        DistillConfig(
            buffer=str(buffer),
            out=str(root / f"s{i}"),
            student=student,
            params_fraction=fraction,
            seed=i,
            tau=taus[i % len(taus)],
            lr=lrs[i % len(lrs)],
            steps=steps,
            eval_every=0,
            checkpoint_every=0,
            progress=False,
            force=True,
        )
        for i in range(k)
    ]


def loop_seconds(folders: list[Path], *, shared: bool) -> float:
    """Training-loop seconds: summed over students trained one after another, one group's otherwise."""
    seconds = [json.loads((f / "metrics.json").read_text())["seconds"] for f in folders]
    return seconds[0] if shared else sum(seconds)


def run_case(name: str, root: Path, ks: tuple[int, ...], steps: int, batch: int = 256) -> dict[int, float]:
    shape, n_actions, teacher_params, env_id, student, fraction, case_ks = CASES[name]
    buffer = make_buffer(root / f"buffer_{name}", shape, n_actions, teacher_params, env_id)
    params = None
    ratios: dict[int, float] = {}
    # warm-up: the first run in a process pays for lazy imports and first calls; time neither with it
    for c in configs(buffer, root / name / "warmup", 2, student, fraction, 20):
        distill(c)
    _distill_together(configs(buffer, root / name / "warmup", 2, student, fraction, 20), progress=False)
    print(f"\n{name}: {steps} steps, batch {batch}")
    print(f"{'K':>4} {'sequential':>14} {'vectorised':>14} {'ratio':>7} {'end-to-end':>11}")
    for k in case_ks or ks:
        seq = configs(buffer, root / name / "seq", k, student, fraction, steps)
        vec = configs(buffer, root / name / "vec", k, student, fraction, steps)
        t0 = time.perf_counter()
        seq_folders = [distill(c) for c in seq]
        t1 = time.perf_counter()
        vec_folders = _distill_together(vec, progress=False)
        t2 = time.perf_counter()
        samples = k * steps * batch
        s_rate = samples / loop_seconds(seq_folders, shared=False)
        v_rate = samples / loop_seconds(vec_folders, shared=True)
        ratios[k] = v_rate / s_rate
        params = json.loads((vec_folders[0] / "student.json").read_text())["params"]
        print(
            f"{k:>4} {s_rate:>10,.0f} s/s {v_rate:>10,.0f} s/s {ratios[k]:>6.2f}x {(t1 - t0) / (t2 - t1):>10.2f}x"
        )
    print(f"  (students of {params:,} parameters, {params / teacher_params:.1%} of the teacher)")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 12, 36])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--dir", type=Path, default=Path("/tmp/pkd_bench_sweep"))
    args = parser.parse_args()
    if args.steps < 50:  # shorter loops round to 0 s in metrics.json, and a rate of 0 s divides by zero
        parser.error(f"--steps {args.steps} is too short to time; use --steps 50 or more")
    torch.set_num_threads(1)
    results = {name: run_case(name, args.dir, tuple(args.ks), args.steps) for name in args.cases}
    print("\ngoals: >= 5x at K = 36 (MLP, 1-5% students), >= 2x at K = 12 (MinAtar CNN, 4%)")
    for name, ratios in results.items():
        goal_k, goal = (12, 2.0) if "cnn" in name else (36, 5.0)
        if goal_k in ratios:
            verdict = "met" if ratios[goal_k] >= goal else "missed"
            print(f"  {name}: {ratios[goal_k]:.2f}x at K = {goal_k} ({verdict})")
    last = results.get("cartpole_mlp_4pct", results.get("cartpole_mlp_1pct", {}))
    if 36 in last:
        print(f"vectorised/sequential K=36: {last[36]:.2f}")


if __name__ == "__main__":
    main()
