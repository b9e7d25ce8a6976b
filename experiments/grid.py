"""Run one task's experiment grid: teacher -> buffer -> students (sizes x losses x seeds) -> evaluation.

    python experiments/grid.py experiments/configs/cartpole_dqn.yaml [--only teacher,buffer,distill,eval,dagger]
                                                                     [--jobs 2]

Every stage skips what is finished and resumes what was interrupted (train-teacher and distill from their
checkpoints, record from its last chunk), so re-running the same command after a kill continues the grid.
``--jobs N`` distils up to N students of a size at once, each in its own process on one torch thread (a
student's result does not depend on it: every run is seeded and single-threaded either way).
Runs go under ``experiments/runs/<task>/`` (not committed); the per-run results are collected into
``experiments/results/<task>.json`` (committed) as each evaluation lands. ``experiments/tables.py`` turns
the results into the tables and plots of ``experiments/README.md``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from policy_kd.buffer import Buffer, read_manifest
from policy_kd.distill import CHECKPOINT, DistillConfig, distill
from policy_kd.evaluate import EvaluateConfig, evaluate
from policy_kd.record import RecordConfig, record
from policy_kd.run import versions
from policy_kd.teachers import TrainTeacherConfig, read_zoo_yaml, train_teacher

ROOT = Path(__file__).resolve().parent
STAGES = ("teacher", "buffer", "distill", "eval", "dagger", "curve")  # eval: what distill left unevaluated


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_distill(out: Path, options: dict[str, Any]) -> float:
    """Distil one student into ``out``, resuming its checkpoint if it has one; return the seconds taken.

    Module-level so that a process pool can run it (``--jobs``).
    """
    start = time.perf_counter()
    if (out / CHECKPOINT).is_file():
        log(f"distill: resuming {out.name}")
        distill(DistillConfig(out=str(out), resume=True, progress=False))
    else:
        log(f"distill: {out.name}")
        distill(DistillConfig(out=str(out), progress=False, force=True, **options))
    return time.perf_counter() - start


def _pool(jobs: int) -> Executor:
    # spawn, not fork: a forked child inherits torch's thread pools and locks mid-state
    return ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))


class Results:
    """``experiments/results/<name>.json``: read if it exists, written atomically after every change."""

    def __init__(self, name: str, **fields: Any):
        self.path = ROOT / "results" / f"{name}.json"
        self.data: dict[str, Any] = (
            json.loads(self.path.read_text()) if self.path.is_file() else {"task": name}
        )
        self.data.update(fields)
        self.data.setdefault("stage_seconds", {})
        self.data.setdefault("runs", {})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n")  # key order kept: the config's order
        tmp.replace(self.path)

    def timed(self, stage: str, seconds: float) -> None:
        stages = self.data["stage_seconds"]
        stages[stage] = round(stages.get(stage, 0.0) + seconds, 1)
        self.save()


class Grid:
    jobs: int = 1
    """Students distilled at once (``--jobs``)."""

    def __init__(self, cfg: dict[str, Any], jobs: int = 1):
        self.cfg = cfg
        self.jobs = jobs
        self.task = cfg["task"]
        self.runs = ROOT / "runs" / self.task
        self.store = Results(self.task, env=cfg["env"], config=cfg)
        self.results, self.results_path = self.store.data, self.store.path

    def save(self) -> None:
        self.store.save()

    def timed(self, stage: str, seconds: float) -> None:
        self.store.timed(stage, seconds)

    # -- stages ---------------------------------------------------------------------------------------------

    @property
    def teacher_dir(self) -> Path:
        t = self.cfg["teacher"]
        return Path(t["path"]) if "path" in t else self.runs / "teacher"

    def teacher(self) -> None:
        t, out = self.cfg["teacher"], self.teacher_dir
        if "zoo" in t:
            self.zoo_teacher()
            return
        if (out / "teacher.json").is_file():
            return
        start = time.perf_counter()
        resume = (out / "checkpoint").is_dir() or (out / "checkpoint.old").is_dir()
        log(f"teacher: {'resuming' if resume else 'training'} {t['algo']} on {self.cfg['env']} into {out}")
        if resume:
            train_teacher(TrainTeacherConfig(out=str(out), resume=True, progress=False))
        else:
            opts = {k: v for k, v in t.items() if k != "path"}
            train_teacher(
                TrainTeacherConfig(env=self.cfg["env"], out=str(out), progress=False, force=True, **opts)
            )
        self.timed("teacher", time.perf_counter() - start)

    def zoo_teacher(self) -> None:
        """Train the teacher with rl-baselines3-zoo's own ``train`` and its preset for the env and algo
        (``teacher: {path: <log folder>/<algo>/<env>_1, zoo: {algo: sac, seed: 0, args: [...]}}``).

        The zoo's run folder is what policy_kd loads; ``train.json`` beside it keeps the command and its wall
        time (the zoo records neither). A folder that exists without the final model is a cut run: it is
        not resumed (the zoo's ``-i`` restarts the schedules), so say so and stop.
        """
        z, out, env = self.cfg["teacher"]["zoo"], self.teacher_dir, self.cfg["env"]
        if (out / f"{env}.zip").is_file():
            return
        if out.exists():
            raise SystemExit(
                f"{out} holds no {env}.zip: a cut zoo run; use one of its rl_model_*_steps.zip checkpoints "
                f"as {env}.zip (and say so in train.json) or delete the folder to train again"
            )
        if out.name != f"{env}_1" or out.parent.name != z["algo"]:
            raise SystemExit(f"a zoo teacher's path must end in {z['algo']}/{env}_1 (the zoo names its runs)")
        cmd = [
            sys.executable, "-m", "rl_zoo3.train", "--algo", z["algo"], "--env", env,
            "--seed", str(z.get("seed", 0)), "-f", str(out.parent.parent), "--eval-freq", "-1",
            "--vec-env", "dummy", "--device", "cpu", *map(str, z.get("args", [])),
        ]  # fmt: skip
        log(f"teacher: {' '.join(cmd[1:])}")
        start = time.perf_counter()
        # one torch thread, as every other stage: the machine is shared and the run stays comparable
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        seconds = time.perf_counter() - start
        info = {"command": " ".join(cmd[1:]), "train_seconds": round(seconds, 1), "versions": versions()}
        (out / "train.json").write_text(json.dumps(info, indent=1) + "\n")
        self.timed("teacher", seconds)

    def teacher_info(self) -> dict[str, Any]:
        """What the teacher is (algo, training steps, wall time): train-teacher's ``teacher.json``, or for a
        zoo teacher its ``config.yml`` and grid.py's ``train.json``."""
        out = self.teacher_dir
        if (out / "teacher.json").is_file():
            return json.loads((out / "teacher.json").read_text())
        env, z = self.cfg["env"], self.cfg["teacher"]["zoo"]
        zoo_cfg = read_zoo_yaml(out / env / "config.yml")
        train = json.loads((out / "train.json").read_text()) if (out / "train.json").is_file() else {}
        # a cut run says in train.json where it stopped; a finished one ran its preset's n_timesteps
        steps = int(train.get("n_timesteps") or zoo_cfg.get("n_timesteps", 0))
        return {
            "algo": z["algo"],
            "source": "rl_zoo3",
            "n_timesteps": steps,
            "train_seconds": train.get("train_seconds"),
            "zoo_config": zoo_cfg,
            **{k: v for k, v in train.items() if k not in ("train_seconds", "n_timesteps")},
        }

    def _record(self, out: Path, opts: dict[str, Any]) -> None:
        if (out / "manifest.json").is_file():
            if read_manifest(out).get("complete"):
                return
            log(f"buffer: resuming {out}")
            record(RecordConfig(out=str(out), resume=True, progress=False))
            return
        log(f"buffer: recording {opts.get('steps')} steps into {out}")
        record(RecordConfig(teacher=str(self.teacher_dir), out=str(out), progress=False, force=True, **opts))

    def buffer(self) -> None:
        start = time.perf_counter()
        self._record(self.runs / "buffer", self.cfg["buffer"])
        self.timed("buffer", time.perf_counter() - start)
        b = Buffer.open(self.runs / "buffer", verify=False)
        self.results["buffer"] = {"rows": b.rows, "source": b.sources[0]}
        self.save()

    def cells(self) -> list[tuple[str, float, str, int]]:
        """(run name, params fraction, loss name, seed) of every grid cell.

        A config may restrict the sizes x losses product with ``cells``: a list of ``{sizes, losses}``
        groups (each with its own ``seeds`` if given) whose union is run (the MinAtar grids run most losses
        at one size only, for CPU time).
        """
        groups = self.cfg.get("cells") or [{"sizes": self.cfg["sizes"], "losses": list(self.cfg["losses"])}]
        for g in groups:
            unknown = [x for x in g["sizes"] if x not in self.cfg["sizes"]]
            unknown += [x for x in g["losses"] if x not in self.cfg["losses"]]
            if unknown:
                raise SystemExit(f"cells names {unknown}, which sizes/losses do not define; add them there")
        cells = []
        for size in self.cfg["sizes"]:
            for loss in self.cfg["losses"]:
                matching = [g for g in groups if size in g["sizes"] and loss in g["losses"]]
                seeds = sorted({s for g in matching for s in g.get("seeds", self.cfg["seeds"])})
                cells += [(f"f{size}_{loss}_s{seed}", size, loss, seed) for seed in seeds]
        return cells

    def shape(self, size: float) -> dict[str, Any]:
        """The widths a config pins for a size (``shapes: {0.01: {channels: [1], hidden: [10]}}``), else none.

        A pinned size keeps the students its results were made with when the library's solver for
        ``params_fraction`` changes; explicit widths win over the fraction.
        """
        pinned = self.cfg.get("shapes") or {}
        unknown = [s for s in pinned if s not in self.cfg["sizes"]]
        if unknown:
            raise SystemExit(f"shapes names sizes {unknown}, which sizes does not list; add them there")
        return dict(pinned.get(size, {}))

    def _pending(self, name: str) -> bool:
        # a run filed in the committed results is done: a fresh machine extends a grid, not redoes it
        out = self.runs / "students" / name
        return not ((out / "student.json").is_file() or name in self.results["runs"])

    def _distill(self, name: str, options: dict[str, Any]) -> Path:
        out = self.runs / "students" / name
        if self._pending(name):
            self.timed("distill", run_distill(out, options))
        return out

    def _distill_batch(self, todo: list[tuple[str, dict[str, Any]]]) -> None:
        """Distil ``todo`` (name, options) in this process, or ``self.jobs`` at a time in spawned ones (then
        the stage's time is the wall time of the batch: the runs overlap)."""
        if self.jobs == 1:
            for name, options in todo:
                self._distill(name, options)
            return
        todo = [(name, options) for name, options in todo if self._pending(name)]
        if not todo:
            return
        start = time.perf_counter()
        with _pool(self.jobs) as pool:
            futures = [pool.submit(run_distill, self.runs / "students" / n, o) for n, o in todo]
            for future in futures:
                future.result()  # a failed student stops the grid (after the others end), as in sequence
        self.timed("distill", time.perf_counter() - start)

    def teacher_option(self, options: dict[str, Any]) -> dict[str, str]:
        """``--teacher`` for a recipe that loads the teacher (rounds, hint loss): distill never takes it
        from the buffer."""
        needs = int(options.get("rounds", 1)) > 1 or float(options.get("hint_weight", 0)) > 0
        return {"teacher": str(self.teacher_dir)} if needs else {}

    def distill(self) -> None:
        """Students size by size, each size evaluated as soon as its students exist (results land early)."""
        for size in self.cfg["sizes"]:
            group = [(n, loss, seed) for n, s, loss, seed in self.cells() if s == size]
            todo = [
                (
                    name,
                    {
                        **self.cfg["distill"],
                        **self.shape(size),
                        **self.cfg["losses"][loss],
                        "buffer": str(self.runs / "buffer"),
                        "params_fraction": size,
                        "seed": seed,
                        **self.teacher_option(self.cfg["losses"][loss]),
                    },
                )
                for name, loss, seed in group
            ]
            self._distill_batch(todo)
            self._evaluate([n for n, _, _ in group], f"f{size}", "grid")

    def _evaluate(self, names: list[str], group: str, kind: str) -> None:
        """Evaluate ``names`` (with the teacher, once) and file each student's figures under runs[name]."""
        todo = [n for n in names if n not in self.results["runs"]]
        if not todo:
            return
        start = time.perf_counter()
        log(f"eval: {group} ({len(todo)} students)")
        result = evaluate(
            EvaluateConfig(
                teacher=str(self.teacher_dir),
                student=tuple(str(self.runs / "students" / n) for n in todo),
                out=str(self.runs / "evals" / group),
                episodes=self.cfg.get("episodes", 100),
                plots=False,
                force=True,
            )
        )
        self.timed("eval", time.perf_counter() - start)
        teacher = result["teacher"]
        self.results["teacher"] = {
            k: teacher.get(k)
            for k in ("mean_return", "std_return", "ci95", "iqm_return", "params", "latency")
        }
        self.results["teacher"]["info"] = self.teacher_info()
        # what the teacher was trained with, and what evaluated it: a retrain elsewhere is compared by these
        ver = self.teacher_dir / "versions.json"
        self.results["teacher"]["versions"] = json.loads(ver.read_text()) if ver.is_file() else None
        self.results["eval_versions"] = versions()
        if result.get("random"):  # the normalized score's 0, on the same seeds (tables.py reads it)
            self.results["random"] = {k: result["random"][k] for k in ("mean_return", "std_return", "ci95")}
        for name, st in zip(todo, result["students"], strict=True):
            metrics = json.loads((self.runs / "students" / name / "metrics.json").read_text())
            info = json.loads((self.runs / "students" / name / "student.json").read_text())
            self.results["runs"][name] = {
                "kind": kind,
                "loss": info["loss"],
                "hidden": info["spec"]["hidden"],
                "channels": info["spec"].get("channels", []),
                "params": st["params"],
                "params_ratio": st["params_ratio"],
                "mean_return": st["mean_return"],
                "std_return": st["std_return"],
                "ci95": st["ci95"],
                "return_ratio": st["return_ratio"],
                "normalized_score": st.get("normalized_score"),
                "agreement": st.get("agreement"),
                "latency": st.get("latency"),
                "teacher_labels": metrics.get("teacher_labels"),
                "distill_steps": metrics["steps"],
                "distill_seconds": metrics["seconds"],
            }
            self.save()

    def curve(self) -> None:
        """The teacher's training curve (its periodic evaluations) into the results, for the tables."""
        path = self.teacher_dir / "evaluations.npz"
        if not path.is_file():
            return
        with np.load(path) as ev:
            self.results["teacher_curve"] = {
                "timesteps": [int(t) for t in ev["timesteps"]],
                "mean_return": [round(float(r), 3) for r in ev["results"].mean(axis=1)],
                "episodes": int(ev["results"].shape[1]),
            }
        self.save()

    def eval(self) -> None:
        cells = self.cells()
        for size in self.cfg["sizes"]:
            self._evaluate([n for n, s, _, _ in cells if s == size], f"f{size}", "grid")

    def dagger(self) -> None:
        """Teacher-driven vs student-driven rounds at an equal number of teacher labels and steps."""
        d = self.cfg.get("dagger")
        if not d:
            return
        pairs = [(f"td_s{seed}", f"dagger_s{seed}", seed) for seed in self.cfg["seeds"]]
        if all(td in self.results["runs"] and sd in self.results["runs"] for td, sd, _ in pairs):
            return  # filed: do not re-record its two buffers
        labels, rounds = int(d["labels"]), int(d["rounds"])
        per_round = labels // (2 * (rounds - 1))  # half the labels from the teacher, half from the rounds
        teacher_part = labels - per_round * (rounds - 1)
        base = {
            **self.cfg["distill"],
            **self.shape(d["size"]),
            **self.cfg["losses"][d["loss"]],
            "params_fraction": d["size"],
        }
        steps = int(base.get("steps", 5000))
        opts = {k: v for k, v in self.cfg["buffer"].items() if k != "steps"}
        self._record(self.runs / "buffer_td", {**opts, "steps": labels, "seed": 101})
        self._record(self.runs / "buffer_half", {**opts, "steps": teacher_part, "seed": 102})
        names = []
        for td, sd, seed in pairs:
            self._distill(td, {**base, "buffer": str(self.runs / "buffer_td"), "seed": seed})
            self._distill(
                sd,
                {
                    **base,
                    "buffer": str(self.runs / "buffer_half"),
                    **self.teacher_option({"rounds": rounds}),
                    "seed": seed,
                    "steps": steps // rounds,
                    "eval_every": max(1, int(base.get("eval_every", 1000)) // rounds),
                    "rounds": rounds,
                    "round_steps": per_round,
                    "round_n_envs": int(opts.get("n_envs", 1)),
                    "behaviour": "mixture",
                    "beta": 1.0,
                    "beta_schedule": "linear",
                },
            )
            names += [td, sd]
        self._evaluate([n for n in names if n.startswith("td")], "teacher_driven", "teacher_driven")
        self._evaluate([n for n in names if n.startswith("dagger")], "student_driven", "student_driven")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--only", default=",".join(STAGES), help="comma-separated stages to run")
    ap.add_argument("--jobs", type=int, default=1, help="students distilled at once, one process each")
    args = ap.parse_args()
    if args.jobs < 1:
        print(f"--jobs must be >= 1, got {args.jobs}", file=sys.stderr)
        return 2
    grid = Grid(yaml.safe_load(args.config.read_text()), jobs=args.jobs)
    for stage in args.only.split(","):
        if stage not in STAGES:
            print(f"unknown stage {stage!r}; choose from {', '.join(STAGES)}", file=sys.stderr)
            return 2
        getattr(grid, stage)()
    log(f"{grid.task}: done; results in {grid.results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
