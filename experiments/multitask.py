"""Multi-task distillation on the three MinAtar games (Rusu et al. 2016, §4.3), resumable.

    python experiments/multitask.py [--config experiments/configs/minatar_multitask.yaml]

One student (a shared ``minatar_cnn`` trunk, observation channels zero-padded to the widest game, one head
per game) is distilled from the buffers the single-task grids recorded (run ``experiments/scripts/minatar.sh``
first), one student per seed; each game's head is then evaluated against that game's teacher on the same
episode seeds. Results go to ``experiments/results/multitask.json``; a killed run resumes from its
checkpoint when the command is repeated.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml
from grid import ROOT, Grid, Results, log

from policy_kd.evaluate import EvaluateConfig, evaluate
from policy_kd.multitask import CHECKPOINT, MultiTaskConfig, distill_multitask


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "minatar_multitask.yaml")
    cfg = yaml.safe_load(ap.parse_args().config.read_text())
    grids = {t: Grid(yaml.safe_load((ROOT / "configs" / f).read_text())) for t, f in cfg["tasks"].items()}
    buffers = [str(g.runs / "buffer") for g in grids.values()]
    name = cfg.get("name", "multitask")  # results/<name>.json, runs/<name>/
    store = Results(name, kind="multitask", config=cfg)
    results = store.data

    for seed in cfg["seeds"]:
        run_name = f"s{seed}"
        out = ROOT / "runs" / name / run_name
        if run_name in results["runs"]:
            continue
        start = time.perf_counter()
        if not (out / "multitask.json").is_file():
            resume = (out / CHECKPOINT).is_file()
            log(f"{name}: {'resuming' if resume else 'distilling'} {run_name}")
            if resume:
                distill_multitask(MultiTaskConfig(out=str(out), resume=True, progress=False))
            else:
                distill_multitask(
                    MultiTaskConfig(
                        buffer=tuple(buffers),
                        out=str(out),
                        seed=seed,
                        progress=False,
                        force=True,
                        **cfg["distill"],
                    )
                )
            store.timed("distill", time.perf_counter() - start)
        info = json.loads((out / "multitask.json").read_text())
        run = {"params": info["params"], "distill_seconds": info["seconds"], "tasks": {}}
        for task, spec in zip(cfg["tasks"], info["tasks"], strict=True):
            start = time.perf_counter()
            log(f"eval: {run_name} {task}")
            res = evaluate(
                EvaluateConfig(
                    teacher=str(grids[task].teacher_dir),
                    student=(str(out / spec["task"]),),
                    out=str(ROOT / "runs" / name / "evals" / f"{run_name}_{task}"),
                    episodes=cfg.get("episodes", 100),
                    plots=False,
                    force=True,
                )
            )
            store.timed("eval", time.perf_counter() - start)
            st, te = res["students"][0], res["teacher"]
            run["tasks"][task] = {
                "env": spec["env_id"],
                "teacher_params": spec["teacher_params"],
                "task_params": spec["task_params"],
                "params_ratio": info["params"] / spec["teacher_params"],
                "teacher_return": te["mean_return"],
                "teacher_ci95": te["ci95"],
                "mean_return": st["mean_return"],
                "std_return": st["std_return"],
                "ci95": st["ci95"],
                "return_ratio": st["return_ratio"],
                "agreement": st.get("agreement"),
            }
        results["runs"][run_name] = run
        store.save()
    store.save()  # the config, even when every seed was already done
    log(f"{name}: done; results in {store.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
