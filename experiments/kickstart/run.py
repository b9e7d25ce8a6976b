"""Kickstarted vs from-scratch DQN students on CartPole-v1: steps to the teacher's return, 3 seeds each.

One command regenerates everything and resumes where it stopped (finished runs, those with a
``kickstart.json``, are skipped; unfinished ones are redone)::

    .venv/bin/python experiments/kickstart/run.py            # runs, then results.json and learning_curves.png
    .venv/bin/python experiments/kickstart/run.py --jobs 1   # one run at a time

Both arms are ``policy-kd kickstart`` with the same student (1% of the teacher's Q-network, 22x22), the
same zoo DQN preset and the same seeds; the baseline only sets ``--weight 0``. Runs go to
``experiments/runs/CartPole-v1/kickstart/`` (not committed); ``results.json`` and the plot are written
here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
POLICY_KD = str(ROOT / ".venv" / "bin" / "policy-kd")
TEACHER = ROOT / "experiments/runs/CartPole-v1/dqn_teacher"
RUNS = ROOT / "experiments/runs/CartPole-v1/kickstart"
SEEDS = (0, 1, 2)
ARMS = {
    "kickstart": ["--weight", "1.0", "--anneal", "linear", "--anneal-fraction", "0.5"],
    # the same, with the weight reaching 0 only at the end of training: does the student stay at 500?
    "kickstart_slow": ["--weight", "1.0", "--anneal", "linear", "--anneal-fraction", "1.0"],
    "scratch": ["--weight", "0"],
}
COMMON = ["--algo", "dqn", "--params-fraction", "0.01", "--loss", "kl", "--tau", "0.01"]
COMMON += ["--eval-freq", "2500", "--eval-episodes", "10", "--threads", "1", "--no-progress"]
TARGET = 500.0


def ensure_teacher() -> None:
    if (TEACHER / "teacher.json").is_file():
        return
    cmd = [POLICY_KD, "train-teacher", "--algo", "dqn", "--env", "CartPole-v1", "--out", str(TEACHER)]
    subprocess.run([*cmd, "--no-progress", "--force"], check=True, cwd=ROOT)


def run(arm: str, seed: int) -> Path:
    out = RUNS / f"{arm}_s{seed}"
    if (out / "kickstart.json").is_file():
        print(f"[kickstart] {out.name}: done, skipped", flush=True)
        return out
    cmd = [POLICY_KD, "kickstart", "--teacher", str(TEACHER), "--out", str(out), "--seed", str(seed)]
    cmd += [*COMMON, *ARMS[arm], "--force"]  # --force: an unfinished folder is redone from the start
    print(f"[kickstart] {out.name}: {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    RUNS.mkdir(parents=True, exist_ok=True)
    with open(RUNS / f"{arm}_s{seed}.log", "w") as log:
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    print(f"[kickstart] {out.name}: finished in {time.perf_counter() - start:.0f} s", flush=True)
    return out


def steps_to(curve: dict[str, list[float]], target: float) -> int | None:
    """The first evaluation step whose mean return reaches ``target`` (None: never within the budget)."""
    for t, r in zip(curve["timesteps"], curve["mean_return"], strict=True):
        if r >= target:
            return int(t)
    return None


def summarise() -> dict:
    teacher = json.loads((TEACHER / "teacher.json").read_text())
    runs = []
    for arm in ARMS:
        for seed in SEEDS:
            info = json.loads((RUNS / f"{arm}_s{seed}" / "kickstart.json").read_text())
            curve = info["curve"]
            reached = steps_to(curve, TARGET)
            after = [
                r
                for t, r in zip(curve["timesteps"], curve["mean_return"], strict=True)
                if reached and t >= reached
            ]
            runs.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "steps_to_500": reached,
                    "best_eval_mean_return": info["best_eval_mean_return"],
                    "final_eval_mean_return": curve["mean_return"][-1],
                    "evals_at_500_after_reaching_it": f"{sum(r >= TARGET for r in after)}/{len(after)}"
                    if after
                    else None,
                    "student_hidden": info["student_hidden"],
                    "student_params": info["student_params"],
                    "params_ratio": info["params_ratio"],
                    "n_timesteps": info["n_timesteps"],
                    "anneal_horizon": info["horizon"],
                    "distill_updates": info["distill_updates"],
                    "seconds": info["seconds"],
                    "curve": curve,
                }
            )
    summary = {}
    for arm in ARMS:
        mine = [r for r in runs if r["arm"] == arm]
        steps = [r["steps_to_500"] for r in mine]
        summary[arm] = {
            "steps_to_500": steps,
            "reached": sum(s is not None for s in steps),
            "mean_final_return": sum(r["final_eval_mean_return"] for r in mine) / len(mine),
            "seconds": [r["seconds"] for r in mine],
        }
    return {
        "env": "CartPole-v1",
        "teacher": {
            "path": str(TEACHER.relative_to(ROOT)),
            "best_eval_mean_return": teacher["best_eval_mean_return"],
            "policy_params": teacher["policy_params"],
        },
        "target_return": TARGET,
        "criterion": "first evaluation (10 greedy episodes, every 2,500 env steps) with mean return >= 500",
        "common_options": COMMON,
        "arms": ARMS,
        "summary": summary,
        "runs": runs,
    }


def plot(results: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"kickstart": "tab:blue", "kickstart_slow": "tab:green", "scratch": "tab:gray"}
    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=110)
    for r in results["runs"]:
        c = r["curve"]
        label = f"{r['arm']} (seeds {', '.join(map(str, SEEDS))})" if r["seed"] == SEEDS[0] else None
        ax.plot(c["timesteps"], c["mean_return"], color=colors[r["arm"]], alpha=0.85, lw=1.4, label=label)
        if r["steps_to_500"] is not None:
            ax.plot(r["steps_to_500"], TARGET, "o", color=colors[r["arm"]], ms=5)
    horizon = next(r["anneal_horizon"] for r in results["runs"] if r["arm"] == "kickstart")
    ax.axhline(
        results["teacher"]["best_eval_mean_return"], ls="--", color="k", lw=1, label="teacher (67,586 params)"
    )
    ax.axvline(horizon, ls=":", color="tab:blue", lw=1)
    ax.text(
        horizon,
        20,
        " kickstart: distillation\n weight reaches 0\n (kickstart_slow: at 50k)",
        color="tab:blue",
        fontsize=8,
        va="bottom",
    )
    p = results["runs"][0]
    ax.set_title(
        f"CartPole-v1: DQN student {p['student_hidden']} ({p['student_params']} params, "
        f"{100 * p['params_ratio']:.1f}% of the teacher)",
        fontsize=10,
    )
    ax.set_xlabel("student env steps")
    ax.set_ylabel("eval return (10 episodes, greedy)")
    ax.set_ylim(0, 520)
    # below the axes: the curves fill the whole plot area
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    path = HERE / "learning_curves.png"
    fig.savefig(path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (each uses one CPU thread)")
    args = parser.parse_args()
    ensure_teacher()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(lambda job: run(*job), [(arm, seed) for seed in SEEDS for arm in ARMS]))
    results = summarise()
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["summary"], indent=2))
    print(f"wrote {HERE / 'results.json'} and {plot(results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
