"""Teachers that are not SB3 models, on CartPole-v1 (issue 27 items 1 and 3).

1. A CleanRL-style DQN (``policy_kd.teachers.examples.train_cleanrl_dqn``: CleanRL's ``dqn.py`` defaults,
   500k steps; and the same stopped at 50k steps, a teacher that still fails episodes) is the teacher through
   ``--teacher py:experiments.custom_teachers.teachers:cleanrl_dqn`` (``..._weak``):
   record 50k states, distil 5% students with KL (tau 0.01, soft targets) and with NLL on the same buffer
   (its greedy actions only: behaviour cloning), 3 distillation seeds each, evaluate on 100 episode seeds.
2. Behaviour cloning from a Minari dataset: the same teacher's greedy episodes (seeds 1000+, >= 50k steps)
   saved with Minari under a local MINARI_DATASETS_PATH, imported with ``policy-kd import minari``, 5%
   students distilled with ``--loss nll`` (3 seeds), evaluated on 100 seeds against the dataset's mean return
   and against the teacher on the same seeds.
3. The scripted controller (``py:policy_kd.teachers.examples:cartpole_controller``, kind actions): record,
   clone with NLL (3 seeds), evaluate.

One command, resumable (finished stages are skipped)::

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python experiments/custom_teachers/run.py

Runs go to ``experiments/runs/CartPole-v1/custom_teachers/`` (not committed); ``results.json`` is written here.
Ratios: per distillation seed, the student's mean return over the 100 seeds divided by the teacher's on the
same seeds; reported as the mean over seeds with a 95% bootstrap CI over seeds (``policy_kd.stats.aggregate_runs``,
as ``experiments/tables.py`` does).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # policy_kd and experiments.custom_teachers from this checkout

from experiments.custom_teachers.teachers import CLEANRL_MODEL, RUNS, WEAK_MODEL  # noqa: E402
from policy_kd.stats import aggregate_runs  # noqa: E402

POLICY_KD = [sys.executable, "-m", "policy_kd"]
CLEANRL = "py:experiments.custom_teachers.teachers:cleanrl_dqn"
# name -> (py: spec, model file, CleanRL training steps, Minari dataset id)
TEACHERS = {
    "cleanrl": (CLEANRL, CLEANRL_MODEL, 500_000, "cartpole/cleanrl-dqn-v0"),
    "cleanrl_weak": (f"{CLEANRL}_weak", WEAK_MODEL, 50_000, "cartpole/cleanrl-dqn-weak-v0"),
}
CONTROLLER = "py:policy_kd.teachers.examples:cartpole_controller"
SEEDS = (0, 1, 2)
EPISODES = 100
RECORD_STEPS = 50_000
FRACTION = "0.05"
DISTILL = ["--params-fraction", FRACTION, "--steps", "5000", "--threads", "1", "--no-progress"]
MINARI_PATH = RUNS / "minari"
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "MINARI_DATASETS_PATH": str(MINARI_PATH),
    "PYTHONPATH": str(ROOT),
}


def cli(*args: str, log: str) -> None:
    RUNS.mkdir(parents=True, exist_ok=True)
    cmd = [*POLICY_KD, *map(str, args)]
    print(f"[custom_teachers] policy-kd {' '.join(map(str, args))}", flush=True)
    start = time.perf_counter()
    with open(RUNS / f"{log}.log", "w") as f:
        subprocess.run(cmd, check=True, cwd=ROOT, env=ENV, stdout=f, stderr=subprocess.STDOUT)
    print(f"[custom_teachers]   {log}: {time.perf_counter() - start:.0f} s", flush=True)


def done(path: Path) -> bool:
    return path.is_file()


def train_teacher(name: str) -> float:
    _, model, steps, _ = TEACHERS[name]
    seconds = RUNS / f"{name}_seconds.txt"
    if not model.is_file():
        from policy_kd.teachers.examples import train_cleanrl_dqn

        start = time.perf_counter()
        train_cleanrl_dqn(model.with_suffix(".tmp"), total_timesteps=steps, seed=1)
        model.with_suffix(".tmp").rename(model)
        seconds.write_text(f"{time.perf_counter() - start:.1f}\n")
    return float(seconds.read_text())


def distill_arm(buffer: Path, arm: str, loss: list[str]) -> list[Path]:
    outs = []
    for seed in SEEDS:
        out = RUNS / f"{arm}_s{seed}"
        if not done(out / "student.json"):
            cli("distill", "--buffer", buffer, "--out", out, "--seed", seed, *loss, *DISTILL, "--force",
                log=f"{arm}_s{seed}")  # fmt: skip
        outs.append(out)
    return outs


def evaluate_arm(teacher: str, students: list[Path], arm: str) -> dict:
    out = RUNS / f"eval_{arm}"
    if not done(out / "eval.json"):
        args = [
            "evaluate",
            "--teacher",
            teacher,
            "--episodes",
            EPISODES,
            "--out",
            out,
            "--force",
            "--aggregate",
        ]
        for s in students:
            args += ["--student", s]
        cli(*args, log=f"eval_{arm}")
    return json.loads((out / "eval.json").read_text())


def summary(result: dict, reference: float | None = None) -> dict:
    """Per-seed ratios to the teacher (same seeds) and, with ``reference``, to another mean return."""
    per_seed = [s["return_ratio"]["value"] for s in result["students"]]
    agg = aggregate_runs(np.asarray(per_seed), statistic="mean")
    out = {
        "teacher_mean_return": result["teacher"]["mean_return"],
        "student_mean_returns": [s["mean_return"] for s in result["students"]],
        "student_params": result["students"][0]["params"],
        "teacher_params": result["teacher"]["params"],
        "return_ratio_per_seed": per_seed,
        "return_ratio": {"mean": agg["value"], "ci95": agg["ci"]},
        "agreement_own_states": [s["agreement"] for s in result["students"]],
    }
    if reference is not None:
        vs = [m / reference for m in out["student_mean_returns"]]
        a = aggregate_runs(np.asarray(vs), statistic="mean")
        out["reference_mean_return"] = reference
        out["ratio_to_reference_per_seed"] = vs
        out["ratio_to_reference"] = {"mean": a["value"], "ci95": a["ci"]}
    return out


def make_minari_dataset(name: str) -> dict:
    """The teacher's greedy episodes (env seeds 1000, 1001, ...) until RECORD_STEPS steps, as Minari."""
    minari_id = TEACHERS[name][3]
    info_path = RUNS / ("minari_dataset.json" if name == "cleanrl" else f"minari_dataset_{name}.json")
    if info_path.is_file():
        return json.loads(info_path.read_text())
    os.environ["MINARI_DATASETS_PATH"] = str(MINARI_PATH)
    import gymnasium as gym
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    from policy_kd.teachers import load_teacher

    teacher = load_teacher(TEACHERS[name][0])
    env = gym.make("CartPole-v1")
    episodes, steps, i = [], 0, 0
    while steps < RECORD_STEPS:
        o, _ = env.reset(seed=1000 + i)
        obs, acts, rews, terms, truncs = [o], [], [], [], []
        while True:
            a = int(teacher.predict(o[None])[0])
            o, r, te, tr, _ = env.step(a)
            obs.append(o), acts.append(a), rews.append(r), terms.append(te), truncs.append(tr)
            if te or tr:
                break
        episodes.append(
            EpisodeBuffer(
                id=i,
                seed=1000 + i,
                observations=np.array(obs),
                actions=np.array(acts),
                rewards=np.array(rews),
                terminations=np.array(terms),
                truncations=np.array(truncs),
                infos={},
            )
        )
        steps += len(acts)
        i += 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers(
            minari_id,
            episodes,
            env="CartPole-v1",
            algorithm_name="CleanRL-style DQN (greedy)",
            data_format="hdf5",
        )
    returns = [float(e.rewards.sum()) for e in episodes]
    info = {
        "dataset_id": minari_id,
        "episodes": len(episodes),
        "steps": steps,
        "mean_return": float(np.mean(returns)),
    }
    info_path.write_text(json.dumps(info, indent=1))
    return info


def teacher_arms(name: str) -> dict:
    """KL and NLL students of one CleanRL-style teacher, and BC from a Minari dataset of its episodes."""
    spec, _, steps, minari_id = TEACHERS[name]
    seconds = train_teacher(name)
    buf = RUNS / f"buffer_{name}"
    if not done(buf / "manifest.json") or '"complete": true' not in (buf / "manifest.json").read_text():
        cli("record", "--teacher", spec, "--out", buf, "--steps", RECORD_STEPS, "--no-progress", "--force",
            log=f"record_{name}")  # fmt: skip
    kl = distill_arm(buf, f"{name}_kl", ["--loss", "kl", "--tau", "0.01"])
    nll = distill_arm(buf, f"{name}_nll", ["--loss", "nll"])
    ds = make_minari_dataset(name)
    mbuf = RUNS / ("buffer_minari" if name == "cleanrl" else f"buffer_minari_{name}")
    if not done(mbuf / "manifest.json"):
        cli("import", "minari", minari_id, "--out", mbuf, "--force", log=f"import_minari_{name}")
    arm = "minari_nll" if name == "cleanrl" else f"minari_{name}_nll"
    bc = distill_arm(mbuf, arm, ["--loss", "nll"])
    return {
        "teacher": {
            "what": f"CleanRL-style DQN (policy_kd.teachers.examples.train_cleanrl_dqn, CleanRL dqn.py defaults, "
            f"{steps:,} steps, seed 1)",
            "spec": spec,
            "train_seconds": seconds,
        },
        "kl": summary(evaluate_arm(spec, kl, f"{name}_kl")),
        "nll": summary(evaluate_arm(spec, nll, f"{name}_nll")),
        "minari_dataset": ds,
        "minari_bc": summary(evaluate_arm(spec, bc, arm), reference=ds["mean_return"]),
    }


def main() -> None:
    started = time.perf_counter()
    results: dict = {
        "env": "CartPole-v1",
        "episodes": EPISODES,
        "evaluation_seeds": f"0..{EPISODES - 1}",
        "distillation_seeds": list(SEEDS),
        "params_fraction": float(FRACTION),
        "distill_options": DISTILL,
        "record_steps": RECORD_STEPS,
    }
    for name in TEACHERS:
        results[name] = teacher_arms(name)
    # the scripted controller (kind actions)
    cbuf = RUNS / "buffer_controller"
    if not done(cbuf / "manifest.json") or '"complete": true' not in (cbuf / "manifest.json").read_text():
        cli("record", "--teacher", CONTROLLER, "--out", cbuf, "--steps", RECORD_STEPS, "--no-progress", "--force",
            log="record_controller")  # fmt: skip
    ctrl = distill_arm(cbuf, "controller_nll", ["--loss", "nll"])
    results["controller_bc"] = summary(evaluate_arm(CONTROLLER, ctrl, "controller_nll"))
    results["seconds"] = round(time.perf_counter() - started, 1)
    (HERE / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    for name in TEACHERS:
        for arm in ("kl", "nll", "minari_bc"):
            r = results[name][arm]["return_ratio"]
            print(f"{name} {arm}: return ratio {r['mean']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]")
        print(
            f"{name} minari_bc vs the dataset's mean return: {results[name]['minari_bc']['ratio_to_reference']}"
        )
    r = results["controller_bc"]["return_ratio"]
    print(f"controller_bc: return ratio {r['mean']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]")


if __name__ == "__main__":
    main()
