"""Kickstarted vs from-scratch PPO students at 5% of the BipedalWalker-v3 PPO teacher (issue 25's missed goal).

Offline distillation leaves every student of <= 5% of this teacher's 6,024-parameter actor falling (best
0.27 normalized; experiments/README.md, *BipedalWalker PPO*). Is that the student's capacity to *walk*, or
only its capacity to *imitate this teacher*? Here the same budget (one hidden layer of 10 tanh units, 298
parameters, 4.95%) is trained by PPO on the env reward, with (kickstart) and without (scratch) an annealed
forward Gaussian KL toward the teacher (Schmitt et al. 2018), and scored like the grid's students.

One command regenerates everything and resumes where it stopped (runs with a ``kickstart.json`` and an
``eval/eval.json`` are skipped; an unfinished kickstart run is redone, since a kickstart run cannot resume)::

    .venv/bin/python experiments/kickstart/bipedalwalker_ppo.py             # 2 runs at a time
    .venv/bin/python experiments/kickstart/bipedalwalker_ppo.py --seeds 0   # one seed per arm
    .venv/bin/python experiments/kickstart/bipedalwalker_ppo.py --arms ks_1x10 --seeds 3 4   # more seeds of one arm

The summary holds every finished and evaluated run of each arm, whichever command ran it.

Both arms are ``policy-kd kickstart`` with the zoo's BipedalWalker PPO preset (32 envs, VecNormalize) cut to
3M steps, the actor [10] and a [64, 64] critic (only the actor is deployed and counted); the baseline only
sets ``--weight 0``. Each run's best checkpoint (10-episode evaluations every 250k steps, as the teacher's)
is then evaluated by ``policy-kd evaluate`` on episode seeds 0..99, the grid's seeds, and its greedy (mean)
actions scored against the grid's teacher and random policy on those seeds
(``experiments/results/BipedalWalker-v3_ppo.json``), as every grid student is; its sampled actions are
reported beside, unscored.
The teacher is the grid's (``experiments/grid.py experiments/configs/bipedalwalker_ppo.yaml`` trains it).
Runs go to ``experiments/runs/BipedalWalker-v3_ppo/kickstart/`` (not committed); ``bipedalwalker_ppo.json``
and ``bipedalwalker_ppo.png`` are written here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from policy_kd.stats import aggregate_runs

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
POLICY_KD = str(ROOT / ".venv" / "bin" / "policy-kd")
GRID = ROOT / "experiments/runs/BipedalWalker-v3_ppo"
TEACHER = GRID / "teacher"
RUNS = GRID / "kickstart"
GRID_RESULTS = ROOT / "experiments/results/BipedalWalker-v3_ppo.json"
ARMS = {
    "ks_1x10": ["--weight", "1.0", "--anneal", "linear", "--anneal-fraction", "0.5"],
    "scratch_1x10": ["--weight", "0"],
}
COMMON = ["--algo", "ppo", "--student-hidden", "10", "--critic-hidden", "64", "64", "--loss", "gaussian_kl"]
COMMON += ["--n-timesteps", "3000000", "--eval-freq", "250000", "--eval-episodes", "10"]
COMMON += ["--threads", "1", "--no-progress"]
EPISODES = 100


def run(arm: str, seed: int) -> Path:
    """Train one arm's student (skipped when finished) and evaluate it on the grid's episode seeds."""
    out = RUNS / f"{arm}_s{seed}"
    RUNS.mkdir(parents=True, exist_ok=True)
    if not (out / "kickstart.json").is_file():
        cmd = [POLICY_KD, "kickstart", "--teacher", str(TEACHER), "--out", str(out), "--seed", str(seed)]
        cmd += [*COMMON, *ARMS[arm], "--force"]  # --force: an unfinished folder is redone from the start
        print(f"[kickstart] {out.name}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        with open(RUNS / f"{arm}_s{seed}.log", "w") as log:
            subprocess.run(cmd, check=True, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        print(f"[kickstart] {out.name}: trained in {time.perf_counter() - start:.0f} s", flush=True)
    if not (out / "eval" / "eval.json").is_file():
        # the student keeps its own VecNormalize statistics, so it is evaluated as an SB3 run folder
        cmd = [POLICY_KD, "evaluate", "--teacher", str(out / "model"), "--episodes", str(EPISODES)]
        cmd += ["--mode", "both", "--out", str(out / "eval"), "--force"]  # scored greedy; sampled shown too
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        print(f"[kickstart] {out.name}: evaluated", flush=True)
    return out


def _finished_seeds(arm: str) -> list[int]:
    """The seeds of ``arm`` whose run is trained and evaluated."""
    done = RUNS.glob(f"{arm}_s*/eval/eval.json")
    return sorted(int(p.parent.parent.name.rsplit("_s", 1)[1]) for p in done)


def summarise() -> dict:
    grid = json.loads(GRID_RESULTS.read_text())
    teacher, random = grid["teacher"]["mean_return"], grid["random"]["mean_return"]

    def score(x: float) -> float:
        return (x - random) / (teacher - random)

    runs = []
    for arm in ARMS:
        for seed in _finished_seeds(arm):
            out = RUNS / f"{arm}_s{seed}"
            info = json.loads((out / "kickstart.json").read_text())
            ev = json.loads((out / "eval" / "eval.json").read_text())
            assert ev["seeds"] == list(range(EPISODES)), "evaluated on other seeds than the grid's"
            ret = ev["teacher"]  # evaluate's "teacher" role: the student run folder played alone
            runs.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "mean_return": ret["mean_return"],
                    "std_return": ret["std_return"],
                    "ci95": ret["ci95"],
                    "normalized_score": score(ret["mean_return"]),
                    "normalized_ci95": [score(x) for x in ret["ci95"]],
                    "mean_length": ret["mean_length"],
                    "sampled_mean_return": ret["modes"]["sampled"]["mean_return"],
                    "sampled_ci95": ret["modes"]["sampled"]["ci95"],
                    "best_eval_mean_return": info["best_eval_mean_return"],
                    "student_hidden": info["student_hidden"],
                    "student_params": info["student_params"],
                    "params_ratio": info["params_ratio"],
                    "n_timesteps": info["n_timesteps"],
                    "anneal_horizon": info["horizon"],
                    "distill_updates": info["distill_updates"],
                    "seconds": info["seconds"],
                    "curve": info["curve"],
                }
            )
    summary = {}
    for arm in ARMS:
        scores = [r["normalized_score"] for r in runs if r["arm"] == arm]
        agg = aggregate_runs(np.asarray(scores), statistic="mean")
        summary[arm] = {"normalized_score": agg["value"], "ci95_over_seeds": agg["ci"], "per_seed": scores}
    return {
        "env": "BipedalWalker-v3",
        "teacher": {
            "path": str(TEACHER.relative_to(ROOT)),
            "mean_return": teacher,
            "params": grid["teacher"]["params"],
        },
        "random": {"mean_return": random},
        "score": "normalized on episode seeds 0..99: (R - random) / (teacher - random), the grid's baselines",
        "common_options": COMMON,
        "arms": ARMS,
        "summary": summary,
        "runs": runs,
    }


def plot(results: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"ks_1x10": "tab:blue", "scratch_1x10": "tab:gray"}
    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=110)
    for r in results["runs"]:
        c = r["curve"]
        label = r["arm"] if r["seed"] == results["runs"][0]["seed"] else None
        ax.plot(c["timesteps"], c["mean_return"], color=colors[r["arm"]], alpha=0.85, lw=1.4, label=label)
    t = results["teacher"]
    ax.axhline(t["mean_return"], ls="--", color="k", lw=1, label=f"teacher ({t['params']:,} params)")
    horizon = next(r["anneal_horizon"] for r in results["runs"] if r["arm"] == "ks_1x10")
    ax.axvline(horizon, ls=":", color="tab:blue", lw=1, label="distillation weight reaches 0")
    p = results["runs"][0]
    ax.set_title(
        f"BipedalWalker-v3: PPO student {p['student_hidden']} ({p['student_params']} params, "
        f"{100 * p['params_ratio']:.2f}% of the teacher)",
        fontsize=10,
    )
    ax.set_xlabel("student env steps")
    ax.set_ylabel("eval return (10 episodes, greedy)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = HERE / "bipedalwalker_ppo.png"
    fig.savefig(path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (each uses one CPU thread)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS), help="arms to run")
    args = parser.parse_args()
    if not (TEACHER / "teacher.json").is_file():
        print(f"no teacher at {TEACHER}: run experiments/grid.py experiments/configs/bipedalwalker_ppo.yaml")
        return 2
    seeds = tuple(args.seeds)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(lambda job: run(*job), [(arm, seed) for seed in seeds for arm in args.arms]))
    results = summarise()
    (HERE / "bipedalwalker_ppo.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["summary"], indent=2))
    print(f"wrote {HERE / 'bipedalwalker_ppo.json'} and {plot(results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
