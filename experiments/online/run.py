"""An online-distilled student tracking its DQN teacher's return while the teacher trains on CartPole-v1.

One command regenerates everything and resumes where it stopped (a run with ``student/student.json`` is
skipped; an unfinished one is redone)::

    .venv/bin/python experiments/online/run.py

``policy-kd distill-online`` trains the zoo DQN teacher (50k steps, the same options as train-teacher) and
every 128 teacher gradient steps distils 32 steps of a 1% student (22x22) on the teacher's replay buffer,
labelled by the teacher's current Q-network. Every 2,500 teacher steps the student and the current teacher
play the same 10 seeded episodes. Runs go to ``experiments/runs/CartPole-v1/online/`` (not committed);
``results.json`` and ``tracking.png`` are written here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
POLICY_KD = str(ROOT / ".venv" / "bin" / "policy-kd")
RUNS = ROOT / "experiments/runs/CartPole-v1/online"
OPTIONS = ["--algo", "dqn", "--env", "CartPole-v1", "--params-fraction", "0.01", "--every", "128"]
OPTIONS += [
    "--unit",
    "updates",
    "--distill-steps",
    "32",
    "--student-eval-every",
    "2500",
    "--eval-episodes",
    "10",
]
OPTIONS += ["--threads", "1", "--no-progress"]


def run(seed: int) -> Path:
    out = RUNS / f"dqn_s{seed}"
    if (out / "student" / "student.json").is_file():
        print(f"[online] {out.name}: done, skipped", flush=True)
        return out
    cmd = [POLICY_KD, "distill-online", "--out", str(out), "--seed", str(seed), *OPTIONS, "--force"]
    print(f"[online] {out.name}: {' '.join(cmd[1:])}", flush=True)
    RUNS.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(RUNS / f"dqn_s{seed}.log", "w") as log:
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    print(f"[online] {out.name}: finished in {time.perf_counter() - start:.0f} s", flush=True)
    return out


def summarise(seeds: list[int]) -> dict:
    runs = []
    for seed in seeds:
        out = RUNS / f"dqn_s{seed}"
        metrics = json.loads((out / "student" / "metrics.json").read_text())
        student = json.loads((out / "student" / "student.json").read_text())
        teacher = json.loads((out / "teacher" / "teacher.json").read_text())
        hist = metrics["history"]
        gaps = [h["teacher_return"] - h["student_return"] for h in hist]
        runs.append(
            {
                "seed": seed,
                "student_hidden": student["spec"]["hidden"],
                "student_params": student["params"],
                "teacher_params": student["teacher_params"],
                "student_steps": metrics["student_steps"],
                "teacher_steps": metrics["teacher_steps"],
                "teacher_updates": metrics["teacher_updates"],
                "teacher_train_seconds": teacher["train_seconds"],
                "student_seconds": metrics["seconds"],
                "teacher_best_eval_mean_return": teacher["best_eval_mean_return"],
                "student_best_eval_mean_return": metrics["best_eval_mean_return"],
                "mean_abs_gap": sum(abs(g) for g in gaps) / len(gaps),
                "evals_with_student_within_5pct_of_teacher": sum(
                    abs(h["teacher_return"] - h["student_return"]) <= 0.05 * max(h["teacher_return"], 1.0)
                    for h in hist
                ),
                "evals_with_student_at_or_above_teacher": sum(
                    h["student_return"] >= h["teacher_return"] for h in hist
                ),
                "evals": len(hist),
                "history": [
                    {
                        k: h[k]
                        for k in (
                            "teacher_steps",
                            "teacher_return",
                            "student_return",
                            "student_steps",
                            "distill_loss",
                        )
                    }
                    for h in hist
                ],
            }
        )
    return {"env": "CartPole-v1", "options": OPTIONS, "runs": runs}


def plot(results: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=110)
    for i, r in enumerate(results["runs"]):
        h = r["history"]
        t = [e["teacher_steps"] for e in h]
        ax.plot(
            t,
            [e["teacher_return"] for e in h],
            color="k",
            lw=1.6,
            label="teacher (current network)" if i == 0 else None,
        )
        ax.plot(
            t,
            [e["student_return"] for e in h],
            color="tab:orange",
            lw=1.6,
            ls="--",
            label=f"online student {r['student_hidden']} ({r['student_params']} params)" if i == 0 else None,
        )
    r0 = results["runs"][0]
    ax.set_title(
        f"CartPole-v1: online distillation from a training DQN teacher ({r0['teacher_params']:,} params)",
        fontsize=10,
    )
    ax.set_xlabel("teacher env steps")
    ax.set_ylabel("eval return (same 10 seeds, greedy)")
    ax.set_ylim(0, 520)
    # below the axes: the curves fill the whole plot area
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    path = HERE / "tracking.png"
    fig.savefig(path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="teacher/student seeds")
    args = parser.parse_args()
    for seed in args.seeds:
        run(seed)
    results = summarise(args.seeds)
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    for r in results["runs"]:
        print({k: v for k, v in r.items() if k != "history"})
    print(f"wrote {HERE / 'results.json'} and {plot(results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
