"""Students of MultiDiscrete and MultiBinary PPO teachers: return ratio and per-component agreement.

One command, a few minutes on one CPU thread, resumable (finished stages are skipped)::

    .venv/bin/python experiments/multi_discrete/run.py     # -> results.json here

The tasks are the test suite's (``tests/multi_envs.py``): ``TargetMatch-v0`` (MultiDiscrete [3, 4, 2]: match
one shown target per component) and ``BitMatch-v0`` (MultiBinary 4: copy the shown bits). Per task: a PPO
teacher (SB3's default 64x64 MlpPolicy, 30k steps), 30k teacher-driven rows, students of 5% and 10% of the
teacher's actor (KL at tau 0.1, 5k steps, 3 seeds), each evaluated against the teacher on 100 episodes.
Runs go to ``experiments/runs/multi_discrete/`` (not committed).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RUNS = ROOT / "experiments/runs/multi_discrete"
# the envs live with the tests; registering them in the policy-kd process needs a small launcher
LAUNCH = "import sys; sys.path.insert(0, 'tests'); import multi_envs; from policy_kd.cli import main; sys.exit(main(sys.argv[1:]))"
TASKS = ("TargetMatch-v0", "BitMatch-v0")
SIZES = (0.05, 0.10)
SEEDS = (0, 1, 2)
PRESET = """\
default:
  policy: MlpPolicy
  n_timesteps: 30000
  n_envs: 4
  normalize: false
  learning_rate: 1.0e-3
  n_steps: 128
  batch_size: 64
  n_epochs: 4
"""


def cli(*args: str, log: Path) -> None:
    print(f"[multi_discrete] policy-kd {' '.join(args)}", flush=True)
    with open(log, "w") as f:
        subprocess.run(
            [sys.executable, "-c", LAUNCH, *args], check=True, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT
        )


def run_task(env_id: str) -> dict:
    root = RUNS / env_id
    root.mkdir(parents=True, exist_ok=True)
    teacher, buffer = root / "teacher", root / "buffer"
    (root / "preset.yml").write_text(PRESET)
    if not (teacher / "teacher.json").is_file():
        cli("train-teacher", "--algo", "ppo", "--env", env_id, "--out", str(teacher), "--preset", str(root / "preset.yml"),
            "--eval-freq", "5000", "--no-progress", "--force", log=root / "teacher.log")  # fmt: skip
    if not (buffer / "manifest.json").is_file():
        cli("record", "--teacher", str(teacher), "--out", str(buffer), "--steps", "30000", "--behaviour", "teacher",
            "--no-progress", "--force", log=root / "record.log")  # fmt: skip
    rows = []
    for size in SIZES:
        for seed in SEEDS:
            student, ev = root / f"student_{size}_s{seed}", root / f"eval_{size}_s{seed}"
            if not (student / "student.json").is_file():
                cli("distill", "--buffer", str(buffer), "--out", str(student), "--params-fraction", str(size),
                    "--loss", "kl", "--tau", "0.1", "--steps", "5000", "--eval-every", "1000", "--eval-episodes", "10",
                    "--seed", str(seed), "--no-progress", "--force", log=root / f"distill_{size}_s{seed}.log")  # fmt: skip
            if not (ev / "eval.json").is_file():
                cli("evaluate", "--teacher", str(teacher), "--student", str(student), "--buffer", str(buffer),
                    "--episodes", "100", "--out", str(ev), "--force", log=root / f"eval_{size}_s{seed}.log")  # fmt: skip
            e = json.loads((ev / "eval.json").read_text())
            s = e["student"]
            rows.append(
                {
                    "size": size,
                    "seed": seed,
                    "params": s["params"],
                    "params_ratio": e["params_ratio"],
                    "teacher_return": e["teacher"]["mean_return"],
                    "random_return": e["random"]["mean_return"],
                    "student_return": s["mean_return"],
                    "return_ratio": e["return_ratio"],
                    "normalized_score": e["normalized_score"]["value"],
                    **{
                        f"{where}_{k}": s["fidelity"][where][k]
                        for where in ("student_states", "teacher_states")
                        for k in ("agreement", "component_agreement", "kl")
                    },
                }
            )
    summary = {}
    for size in SIZES:
        mine = [r for r in rows if r["size"] == size]
        summary[str(size)] = {
            "params": mine[0]["params"],
            "return_ratio_mean": float(np.mean([r["return_ratio"] for r in mine])),
            "return_ratio_per_seed": [r["return_ratio"] for r in mine],
            "normalized_score_mean": float(np.mean([r["normalized_score"] for r in mine])),
            "agreement_teacher_states_mean": float(np.mean([r["teacher_states_agreement"] for r in mine])),
            "component_agreement_teacher_states_mean": np.mean(
                [r["teacher_states_component_agreement"] for r in mine], axis=0
            ).tolist(),
        }
    t = json.loads((teacher / "teacher.json").read_text())
    return {"env": env_id, "teacher_policy_params": t.get("policy_params"), "summary": summary, "runs": rows}


def main() -> None:
    results = {"tasks": [run_task(env) for env in TASKS], "command": "experiments/multi_discrete/run.py"}
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    for task in results["tasks"]:
        print(task["env"], json.dumps(task["summary"]))


if __name__ == "__main__":
    main()
