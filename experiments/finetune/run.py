"""A distilled 5% LunarLander student fine-tuned with PPO, against the same network trained by PPO from scratch.

One command regenerates everything and resumes where it stopped (finished stages and runs are skipped)::

    .venv/bin/python experiments/finetune/run.py            # stages, then results.json and finetune_curve.png

Stages, all through the CLI except the fine-tuning itself, which is SB3's own ``learn()`` on the export:

1. the PPO LunarLander-v3 teacher (zoo preset, 1M steps), as ``policy-kd train-teacher`` trains it;
2. ``policy-kd record --values``: 100k teacher-driven rows with the teacher's logits and V(s);
3. ``policy-kd distill``: a student of 5% of the teacher's actor (KL at tau 1, the teacher's own
   distribution, so PPO starts from a policy that still explores like the teacher);
4. ``policy-kd export --format sb3 --algo ppo --value-target teacher --gamma 0.999``: a PPO ``.zip`` whose
   actor is the student and whose critic (same widths) is fitted to the teacher's values;
5. for each seed, ``PPO.load(export).learn(100k)`` with the zoo's LunarLander PPO hyperparameters, and
   ``PPO`` from scratch with the same ``net_arch`` (pi and vf = the student's widths) and hyperparameters;
   both evaluated greedily on the same 20 episode seeds before learning and after every PPO update
   (16 envs x 1024 steps: ``learn(100_000)`` runs 7 updates, 114,688 steps).

Runs go to ``experiments/runs/LunarLander-v3/finetune/`` (not committed); ``results.json`` and the plot here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CLI = [sys.executable, "-m", "policy_kd"]
RUNS = ROOT / "experiments/runs/LunarLander-v3/finetune"
TEACHER = ROOT / "experiments/runs/LunarLander-v3/ppo_teacher"
ENV = "LunarLander-v3"
SEEDS = (0, 1, 2)
STEPS = 100_000
EVAL_EPISODES = 20
EVAL_SEED = 100_000  # evaluation episodes use seeds EVAL_SEED + i, apart from the training envs' seeds
# the zoo's LunarLander-v3 PPO preset (agents/ppo.yml), used for both arms
PPO_KWARGS = {
    "n_steps": 1024,
    "batch_size": 64,
    "gae_lambda": 0.98,
    "gamma": 0.999,
    "n_epochs": 4,
    "ent_coef": 0.01,
    "learning_rate": 3e-4,
}
N_ENVS = 16
RECORD = ["--steps", "100000", "--behaviour", "teacher", "--values", "--n-envs", "8", "--seed", "0"]
DISTILL = ["--params-fraction", "0.05", "--layers", "2", "--loss", "kl", "--tau", "1.0", "--steps", "20000"]
DISTILL += ["--batch-size", "256", "--lr", "0.003", "--lr-schedule", "cosine", "--eval-every", "4000"]
DISTILL += ["--eval-episodes", "20", "--seed", "0"]
EXPORT = ["--format", "sb3", "--algo", "ppo", "--value-target", "teacher", "--gamma", "0.999"]


def cli(*args: str, log: Path) -> None:
    """One policy-kd command, its output in ``log``; a failure stops the experiment."""
    print(f"[finetune] policy-kd {' '.join(args)}", flush=True)
    with open(log, "w") as f:
        subprocess.run([*CLI, *args], check=True, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)


def prepare() -> Path:
    """Stages 1-4 (each skipped when its output exists); the export folder."""
    RUNS.mkdir(parents=True, exist_ok=True)
    if not (TEACHER / "teacher.json").is_file():
        cli("train-teacher", "--algo", "ppo", "--env", ENV, "--out", str(TEACHER), "--seed", "0",
            "--eval-freq", "50000", "--no-progress", "--force", log=RUNS / "teacher.log")  # fmt: skip
    buffer, student, export = RUNS / "buffer", RUNS / "student", RUNS / "export"
    if (
        not (buffer / "manifest.json").is_file()
        or not json.loads((buffer / "manifest.json").read_text())["complete"]
    ):
        cli("record", "--teacher", str(TEACHER), "--out", str(buffer), *RECORD, "--no-progress", "--force",
            log=RUNS / "record.log")  # fmt: skip
    if not (student / "student.json").is_file():
        cli("distill", "--buffer", str(buffer), "--out", str(student), *DISTILL, "--no-progress", "--force",
            log=RUNS / "distill.log")  # fmt: skip
    if not (export / "export.json").is_file():
        cli("export", str(student), "--out", str(export), *EXPORT, "--force", log=RUNS / "export.log")
    return export


def evaluate(model, episodes: int = EVAL_EPISODES) -> float:  # type: ignore[no-untyped-def]
    """Mean greedy return over the fixed evaluation seeds."""
    import gymnasium as gym

    env = gym.make(ENV)
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=EVAL_SEED + i)
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, term, trunc, _ = env.step(action)
            total += float(reward)
            done = term or trunc
        returns.append(total)
    env.close()
    return float(np.mean(returns))


def finetune(arm: str, seed: int, export: Path) -> dict:
    """One PPO run of ``STEPS`` steps from the distilled export (``distilled``) or from scratch; its curve."""
    out = RUNS / f"{arm}_s{seed}.json"
    if out.is_file():
        print(f"[finetune] {out.name}: done, skipped", flush=True)
        return json.loads(out.read_text())
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(1)
    env = make_vec_env(ENV, n_envs=N_ENVS, seed=seed)
    widths = json.loads((RUNS / "student" / "student.json").read_text())["spec"]["hidden"]
    if arm == "distilled":
        model = PPO.load(export / "policy.zip", env=env, device="cpu", **PPO_KWARGS)
        model.set_random_seed(seed)
    else:
        kwargs = {"net_arch": {"pi": list(widths), "vf": list(widths)}}
        model = PPO("MlpPolicy", env, policy_kwargs=kwargs, device="cpu", seed=seed, **PPO_KWARGS)
    curve = {"timesteps": [0], "mean_return": [evaluate(model)]}
    print(f"[finetune] {arm} s{seed}: step 0 return {curve['mean_return'][0]:.1f}", flush=True)

    class AfterEachUpdate(BaseCallback):
        """Evaluate at the start of every rollout after the first: after each PPO update (16k steps each)."""

        def _on_step(self) -> bool:
            return True

        def _on_rollout_start(self) -> None:
            if self.num_timesteps > 0:
                curve["timesteps"].append(int(self.num_timesteps))
                curve["mean_return"].append(evaluate(self.model))
                print(
                    f"[finetune] {arm} s{seed}: step {self.num_timesteps} return {curve['mean_return'][-1]:.1f}",
                    flush=True,
                )

    start = time.perf_counter()
    model.learn(STEPS, callback=AfterEachUpdate())
    curve["timesteps"].append(int(model.num_timesteps))
    curve["mean_return"].append(evaluate(model))
    result = {
        "arm": arm,
        "seed": seed,
        "params_actor": sum(
            p.numel()
            for m in (model.policy.mlp_extractor.policy_net, model.policy.action_net)
            for p in m.parameters()
        ),
        "seconds": time.perf_counter() - start,
        "curve": curve,
    }
    out.write_text(json.dumps(result, indent=2))
    return result


def summarise(runs: list[dict]) -> dict:
    teacher = json.loads((TEACHER / "teacher.json").read_text())
    student = json.loads((RUNS / "student" / "student.json").read_text())
    metrics = json.loads((RUNS / "student" / "metrics.json").read_text())
    export = json.loads((RUNS / "export" / "export.json").read_text())
    from stable_baselines3 import PPO

    # the teacher on the same evaluation episodes as the curves (its best_eval_mean_return is on others)
    teacher_same_episodes = evaluate(PPO.load(TEACHER / teacher["model"], device="cpu"))
    summary = {}
    for arm in ("distilled", "scratch"):
        mine = [r for r in runs if r["arm"] == arm]
        summary[arm] = {
            "start_mean_return": float(np.mean([r["curve"]["mean_return"][0] for r in mine])),
            "final_mean_return": float(np.mean([r["curve"]["mean_return"][-1] for r in mine])),
            "final_per_seed": [r["curve"]["mean_return"][-1] for r in mine],
            "best_mean_return": float(np.mean([max(r["curve"]["mean_return"]) for r in mine])),
        }
    return {
        "env": ENV,
        "teacher": {
            "path": str(TEACHER.relative_to(ROOT)),
            "best_eval_mean_return": teacher.get("best_eval_mean_return"),
            "mean_return_on_the_curves_episodes": teacher_same_episodes,
            "policy_params": teacher.get("policy_params"),
        },
        "student": {
            "hidden": student["spec"]["hidden"],
            "params": student["params"],
            "params_ratio": student["params_ratio"],
            "distill_best_eval_mean_return": metrics.get("best_eval_mean_return"),
        },
        "critic_fit": export["details"]["critic"],
        "ppo_hyperparameters": {**PPO_KWARGS, "n_envs": N_ENVS},
        "steps": STEPS,
        "evaluation": f"{EVAL_EPISODES} greedy episodes on seeds {EVAL_SEED}..{EVAL_SEED + EVAL_EPISODES - 1}, "
        f"before learning and after every PPO update ({N_ENVS} x {PPO_KWARGS['n_steps']} steps each)",
        "commands": {"record": RECORD, "distill": DISTILL, "export": EXPORT},
        "summary": summary,
        "runs": runs,
    }


def plot(results: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"distilled": "tab:blue", "scratch": "tab:gray"}
    labels = {"distilled": "distilled 5% student + PPO", "scratch": "same network, PPO from scratch"}
    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=110)
    for arm in colors:
        mine = [r for r in results["runs"] if r["arm"] == arm]
        for r in mine:
            c = r["curve"]
            ax.plot(c["timesteps"], c["mean_return"], color=colors[arm], alpha=0.35, lw=1)
        steps = mine[0]["curve"]["timesteps"]
        if all(r["curve"]["timesteps"] == steps for r in mine):
            mean = np.mean([r["curve"]["mean_return"] for r in mine], axis=0)
            ax.plot(
                steps, mean, color=colors[arm], lw=2.2, label=f"{labels[arm]} (mean of {len(mine)} seeds)"
            )
    teacher = results["teacher"]["mean_return_on_the_curves_episodes"]
    ax.axhline(teacher, color="k", ls="--", lw=1, label=f"teacher ({teacher:.1f} on the same episodes)")
    ax.axhline(200, color="tab:green", ls=":", lw=1, label="solved (200)")
    ax.set_xlabel("PPO environment steps")
    ax.set_ylabel(f"mean greedy return ({EVAL_EPISODES} episodes)")
    ax.set_title(f"{ENV}: fine-tuning a distilled 5% student vs training it from scratch")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = HERE / "finetune_curve.png"
    fig.savefig(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs",
        nargs="*",
        metavar="ARM:SEED",
        help="only these fine-tuning runs (e.g. scratch:1), to run several in parallel; no summary",
    )
    args = parser.parse_args()
    export = prepare()
    if args.runs:
        for item in args.runs:
            arm, seed = item.split(":")
            finetune(arm, int(seed), export)
        return
    runs = [finetune(arm, seed, export) for arm in ("distilled", "scratch") for seed in SEEDS]
    results = summarise(runs)
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["summary"], indent=2))
    print(f"[finetune] plot: {plot(results)}")


if __name__ == "__main__":
    main()
