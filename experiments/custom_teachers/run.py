"""Teachers that are not SB3 models, on CartPole-v1 (issue 27 items 1 and 3).

1. A CleanRL-style DQN (``policy_kd.teachers.examples.train_cleanrl_dqn``: CleanRL's ``dqn.py`` defaults,
   500k steps) is the teacher through ``--teacher py:experiments.custom_teachers.teachers:cleanrl_dqn``:
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

from experiments.custom_teachers.teachers import CLEANRL_MODEL, RUNS  # noqa: E402
from policy_kd.stats import aggregate_runs  # noqa: E402

POLICY_KD = [sys.executable, "-m", "policy_kd"]
CLEANRL = "py:experiments.custom_teachers.teachers:cleanrl_dqn"
CONTROLLER = "py:policy_kd.teachers.examples:cartpole_controller"
SEEDS = (0, 1, 2)
EPISODES = 100
RECORD_STEPS = 50_000
FRACTION = "0.05"
DISTILL = ["--params-fraction", FRACTION, "--steps", "5000", "--threads", "1", "--no-progress"]
MINARI_ID = "cartpole/cleanrl-dqn-v0"
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


def train_teacher() -> float:
    if not CLEANRL_MODEL.is_file():
        from policy_kd.teachers.examples import train_cleanrl_dqn

        start = time.perf_counter()
        train_cleanrl_dqn(CLEANRL_MODEL.with_suffix(".tmp"), total_timesteps=500_000, seed=1)
        CLEANRL_MODEL.with_suffix(".tmp").rename(CLEANRL_MODEL)
        (RUNS / "cleanrl_seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
    return float((RUNS / "cleanrl_seconds.txt").read_text())


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


def make_minari_dataset() -> dict:
    """The CleanRL teacher's greedy episodes (env seeds 1000, 1001, ...) until RECORD_STEPS steps, as Minari."""
    info_path = RUNS / "minari_dataset.json"
    if info_path.is_file():
        return json.loads(info_path.read_text())
    os.environ["MINARI_DATASETS_PATH"] = str(MINARI_PATH)
    import gymnasium as gym
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    from experiments.custom_teachers.teachers import cleanrl_dqn

    teacher = cleanrl_dqn()
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
            MINARI_ID,
            episodes,
            env="CartPole-v1",
            algorithm_name="CleanRL-style DQN (greedy)",
            data_format="hdf5",
        )
    returns = [float(e.rewards.sum()) for e in episodes]
    info = {
        "dataset_id": MINARI_ID,
        "episodes": len(episodes),
        "steps": steps,
        "mean_return": float(np.mean(returns)),
    }
    info_path.write_text(json.dumps(info, indent=1))
    return info


def main() -> None:
    started = time.perf_counter()
    teacher_seconds = train_teacher()
    # 1. CleanRL-style DQN through py:
    buf = RUNS / "buffer_cleanrl"
    if not done(buf / "manifest.json") or '"complete": true' not in (buf / "manifest.json").read_text():
        cli("record", "--teacher", CLEANRL, "--out", buf, "--steps", RECORD_STEPS, "--no-progress", "--force",
            log="record_cleanrl")  # fmt: skip
    kl = distill_arm(buf, "cleanrl_kl", ["--loss", "kl", "--tau", "0.01"])
    nll = distill_arm(buf, "cleanrl_nll", ["--loss", "nll"])
    # 2. Minari dataset of the same teacher, imported, cloned
    ds = make_minari_dataset()
    mbuf = RUNS / "buffer_minari"
    if not done(mbuf / "manifest.json"):
        cli("import", "minari", MINARI_ID, "--out", mbuf, "--force", log="import_minari")
    bc = distill_arm(mbuf, "minari_nll", ["--loss", "nll"])
    # 3. the scripted controller (kind actions)
    cbuf = RUNS / "buffer_controller"
    if not done(cbuf / "manifest.json") or '"complete": true' not in (cbuf / "manifest.json").read_text():
        cli("record", "--teacher", CONTROLLER, "--out", cbuf, "--steps", RECORD_STEPS, "--no-progress", "--force",
            log="record_controller")  # fmt: skip
    ctrl = distill_arm(cbuf, "controller_nll", ["--loss", "nll"])
    results = {
        "env": "CartPole-v1",
        "episodes": EPISODES,
        "evaluation_seeds": f"0..{EPISODES - 1}",
        "distillation_seeds": list(SEEDS),
        "params_fraction": float(FRACTION),
        "distill_options": DISTILL,
        "teacher": {
            "what": "CleanRL-style DQN (policy_kd.teachers.examples.train_cleanrl_dqn, CleanRL dqn.py defaults, "
            "500k steps, seed 1)",
            "spec": CLEANRL,
            "train_seconds": teacher_seconds,
        },
        "cleanrl_kl": summary(evaluate_arm(CLEANRL, kl, "cleanrl_kl")),
        "cleanrl_nll": summary(evaluate_arm(CLEANRL, nll, "cleanrl_nll")),
        "minari_dataset": ds,
        "minari_bc": summary(evaluate_arm(CLEANRL, bc, "minari_nll"), reference=ds["mean_return"]),
        "controller_bc": summary(evaluate_arm(CONTROLLER, ctrl, "controller_nll")),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (HERE / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    for k in ("cleanrl_kl", "cleanrl_nll", "minari_bc", "controller_bc"):
        r = results[k]["return_ratio"]
        print(f"{k}: return ratio {r['mean']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]")
    print(f"minari_bc vs the dataset's mean return: {results['minari_bc']['ratio_to_reference']}")


if __name__ == "__main__":
    main()
