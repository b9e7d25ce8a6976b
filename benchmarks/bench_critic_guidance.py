"""Critic guidance against plain action MSE, for a TD3/DDPG (or SAC/TQC) teacher: same buffer, same student
sizes and seeds, ``--critic-weight W`` on or off.

For each (student size, weight, seed) it distils a student, then measures on held-out teacher states the
student's action error (mean |Δaction| / range) and the teacher critic's mean value of the student's
actions relative to the teacher's own (``Q(s, a_student) - Q(s, a_teacher)``, averaged), and plays
``--episodes`` evaluation episodes. Everything lands in one JSON (``--out``/results.json), resumable: runs
already in it are skipped.

    python benchmarks/bench_critic_guidance.py --teacher runs/td3_pendulum --out /tmp/pkd_critic \\
        [--env ENV_ID] [--hidden 4 16] [--weights 0 0.1 1] [--seeds 0 1 2] [--steps 5000] [--episodes 20]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from policy_kd.buffer import Buffer
from policy_kd.cli import main as policy_kd
from policy_kd.evaluate import run_episodes
from policy_kd.students import load_student
from policy_kd.teacher import load_teacher


def _cli(*args: object) -> None:
    code = policy_kd([str(a) for a in args])
    if code != 0:
        raise SystemExit(f"policy-kd {' '.join(map(str, args[:1]))} failed ({code})")


def _critic_gap(teacher, student, obs: np.ndarray) -> tuple[float, float]:
    """(mean |Δaction| / range, mean Q(s, a_student) - Q(s, a_teacher)) on ``obs``, the critic's own scale."""
    space = teacher.action_space
    low, high = space.low.reshape(-1), space.high.reshape(-1)
    a_t, a_s = teacher.predict(obs), student.predict(obs)
    scale = lambda a: torch.as_tensor(2 * (a - low) / (high - low) - 1, dtype=torch.float32)  # noqa: E731
    with torch.no_grad():
        q_t = teacher.critic_value(obs, scale(a_t)).numpy()
        q_s = teacher.critic_value(obs, scale(a_s)).numpy()
    return float((np.abs(a_t - a_s) / (high - low)).mean()), float((q_s - q_t).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--env", default=None, help="environment id, for a plain .zip teacher")
    ap.add_argument("--record-steps", type=int, default=20_000)
    ap.add_argument("--hidden", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.1, 1.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=5_000)
    ap.add_argument("--episodes", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    buffer, held_out = out / "buffer", out / "held_out"
    env = ["--env", args.env] if args.env else []
    for path, seed in ((buffer, 0), (held_out, 1)):
        if not (path / "manifest.json").is_file():
            _cli("record", "--teacher", args.teacher, "--out", path, "--steps", args.record_steps, "--seed", seed,
                 "--record-q", "--force", "--no-progress", *env)  # fmt: skip
    teacher = load_teacher(args.teacher, args.env)
    obs = Buffer.open(held_out).spaced("obs", 5_000)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    seeds = [10_000 + i for i in range(args.episodes)]
    play = lambda policy: float(  # noqa: E731
        run_episodes(policy, teacher.env_id, seeds, env_factory=teacher.make_env).returns.mean()
    )
    results.setdefault("teacher_return", play(teacher))
    for hidden in args.hidden:
        for weight in args.weights:
            for seed in args.seeds:
                key = f"h{hidden}_w{weight:g}_s{seed}"
                if key in results:
                    continue
                student_dir = out / key
                guidance = ["--critic-weight", weight, "--teacher", args.teacher, *env] if weight > 0 else []
                _cli("distill", "--buffer", buffer, "--out", student_dir, "--loss", "mse", "--hidden", hidden,
                     "--steps", args.steps, "--seed", seed, "--eval-every", "0", "--force", "--no-progress",
                     *guidance)  # fmt: skip
                student = load_student(student_dir)
                diff, q_gap = _critic_gap(teacher, student, obs)
                ret = play(student)
                results[key] = {"hidden": hidden, "weight": weight, "seed": seed, "action_diff": diff,
                                "q_gap": q_gap, "return": ret}  # fmt: skip
                results_path.write_text(json.dumps(results, indent=1))
                print(key, results[key], flush=True)
    for hidden in args.hidden:
        for weight in args.weights:
            rows = [
                r
                for k, r in results.items()
                if isinstance(r, dict) and r["hidden"] == hidden and r["weight"] == weight
            ]
            if rows:
                mean = {m: float(np.mean([r[m] for r in rows])) for m in ("action_diff", "q_gap", "return")}
                print(f"hidden {hidden} weight {weight:g} ({len(rows)} seeds): {mean}")
    print(f"teacher return {results['teacher_return']:.1f}")


if __name__ == "__main__":
    main()
