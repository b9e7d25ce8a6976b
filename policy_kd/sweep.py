"""``policy-kd sweep CONFIG.yaml``: teacher -> buffer -> students (sizes x losses x seeds) -> evaluation.

Every stage skips what is finished and resumes what was interrupted (train-teacher and distill from their
checkpoints, record from its last chunk), so running the same command again after a kill continues the
sweep; a student already filed in the results is never retrained. Students that share an architecture are
trained together by :func:`policy_kd.group.distill_group` (one task per group; ``--no-vectorised``: one per
student), each size's students are evaluated against the teacher once they exist, and the driver files
every figure into one results JSON (written atomically after each change) and, at the end, a table and a
plot (:mod:`policy_kd.sweep_report`). Tasks run in this process, in local processes or on Ray
(:mod:`policy_kd.backends`); the sweep folder must be on a path every node sees.

Layout of a sweep folder (``--out``, default ``sweeps/<task>``)::

    results.json  results.md  plots/   sweep.yaml  config.yaml  command.txt  versions.json
    teacher/  buffer/  students/<f<size>_<loss>_s<seed>>/  evals/<f<size>>/
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tyro
import yaml

from policy_kd.backends import Backend, make_backend
from policy_kd.errors import PolicyKDError
from policy_kd.sweep_config import SweepConfig, needs_teacher

STAGES = ("teacher", "buffer", "distill", "eval", "dagger", "curve")
"""The stages in order; ``eval`` evaluates what ``distill`` left unevaluated."""
TIMING_KEYS = ("stage_seconds", "latency", "distill_seconds", "seconds")
"""Result entries that measure time: they differ between two runs of the same sweep (:func:`comparable`)."""


@dataclass(frozen=True)
class SweepRunConfig:
    """Run a sweep (students over sizes x losses x seeds from one teacher's buffer) from a YAML file; resumes."""

    file: tyro.conf.Positional[str | None] = None
    """The sweep's YAML file (see docs/sweep.md)."""
    out: str | None = None
    """Sweep folder (results.json, results.md, plots/, teacher/, buffer/, students/, evals/); default sweeps/TASK."""
    only: tuple[str, ...] = STAGES
    """Stages to run, in order: teacher, buffer, distill, eval, dagger, curve."""
    backend: str = "local"
    """Where tasks run: local (this machine; no Ray needed) or ray (a Ray cluster; the ray extra)."""
    address: str | None = None
    """Ray cluster address (ray://HOST:10001 or HOST:6379; default: start a local Ray with --jobs CPUs)."""
    jobs: int = 1
    """Tasks at once on this machine: local processes, or the CPUs of a local Ray."""
    gpus: float = 0.0
    """GPUs per training task (ray)."""
    max_retries: int = 3
    """Times a task whose worker died is run again (ray); it resumes from its checkpoints."""
    vectorised: bool = True
    """Train students of one architecture together as one stacked model (--no-vectorised: one by one)."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------- tasks


def train_students(students: Sequence[tuple[str, Mapping[str, Any]]], vectorised: bool) -> dict[str, Any]:
    """Task: distil ``students`` ((folder, distill options)) as one group, skipping finished ones and resuming
    interrupted ones from their checkpoints; return the seconds taken and the students resumed."""
    from policy_kd import group
    from policy_kd.config import config_from_mapping
    from policy_kd.distill import CHECKPOINT, DistillConfig

    start = time.perf_counter()
    configs, resumed = [], []
    for out, options in students:
        folder = Path(out)
        if (folder / "student.json").is_file():
            continue
        if (folder / CHECKPOINT).is_file():
            log(f"distill: resuming {folder.name}")
            resumed.append(folder.name)
            configs.append(DistillConfig(out=out, resume=True, progress=False))
        else:
            log(f"distill: {folder.name}")
            opts = {**options, "out": out, "progress": False, "force": True}
            configs.append(config_from_mapping(DistillConfig, opts, source=f"sweep student {folder.name}"))
    if configs:
        group.distill_group(configs, vectorised=vectorised, progress=False)
    return {"seconds": time.perf_counter() - start, "resumed": resumed}


def teacher_info(teacher_dir: Path) -> dict[str, Any] | None:
    """What the teacher is (algo, training steps, wall time): train-teacher's ``teacher.json``, or for a teacher
    the sweep trained with ``rl_zoo3.train`` its ``config.yml`` and the sweep's ``train.json``; None if neither."""
    from policy_kd.teachers import read_zoo_yaml

    info = teacher_dir / "teacher.json"
    if info.is_file():
        return json.loads(info.read_text())
    train_file = teacher_dir / "train.json"
    if not train_file.is_file():
        return None
    train = json.loads(train_file.read_text())
    configs = sorted(teacher_dir.glob("*/config.yml"))
    zoo_cfg = read_zoo_yaml(configs[0]) if configs else {}
    # a cut run says in train.json where it stopped; a finished one ran its preset's n_timesteps
    steps = int(train.get("n_timesteps") or zoo_cfg.get("n_timesteps", 0))
    return {
        "source": "rl_zoo3",
        # the zoo names its runs <log folder>/<algo>/<env>_<n>: a train.json written without it keeps its algo
        "algo": teacher_dir.parent.name,
        "n_timesteps": steps,
        "zoo_config": zoo_cfg,
        **{k: v for k, v in train.items() if k != "n_timesteps"},
    }


def evaluate_students(teacher: str, students: Sequence[str], out: str, episodes: int) -> dict[str, Any]:
    """Task: evaluate ``students`` (folders) and the teacher on the same ``episodes`` seeds into ``out``;
    return what the results file keeps of it (the driver files it)."""
    from policy_kd.evaluate import EvaluateConfig, evaluate
    from policy_kd.run import versions

    start = time.perf_counter()
    log(f"eval: {Path(out).name} ({len(students)} students)")
    result = evaluate(
        EvaluateConfig(
            teacher=teacher, student=tuple(students), out=out, episodes=episodes, plots=False, force=True
        )
    )
    t, teacher_dir = result["teacher"], Path(teacher)
    # weights_sha256: which teacher every filed student was measured against (Sweep refuses another)
    keep = ("mean_return", "std_return", "ci95", "iqm_return", "params", "latency", "weights_sha256")
    filed_teacher = {k: t.get(k) for k in keep}
    filed_teacher["info"] = teacher_info(teacher_dir)
    # what the teacher was trained with, and what evaluated it: a retrain elsewhere is compared by these
    ver = teacher_dir / "versions.json"
    filed_teacher["versions"] = json.loads(ver.read_text()) if ver.is_file() else None
    runs = []
    for folder, st in zip(students, result["students"], strict=True):
        metrics = json.loads((Path(folder) / "metrics.json").read_text())
        spec = json.loads((Path(folder) / "student.json").read_text())
        runs.append(
            {
                "loss": spec["loss"],
                "hidden": spec["spec"]["hidden"],
                "channels": spec["spec"].get("channels", []),
                "conv": spec["spec"].get("conv", "standard"),
                "conv_stride": spec["spec"].get("conv_stride", 1),
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
        )
    random = result.get("random")
    return {
        "teacher": filed_teacher,
        "random": {k: random[k] for k in ("mean_return", "std_return", "ci95")} if random else None,
        "runs": runs,
        "versions": versions(),
        "seconds": time.perf_counter() - start,
    }


# ---------------------------------------------------------------------------------------------- results


class Results:
    """The results JSON: read if it exists, written atomically after every change (by the driver only)."""

    def __init__(self, path: Path, **fields: Any):
        self.path = path
        self.original = path.read_bytes() if path.is_file() else None  # what restore() puts back
        self.data: dict[str, Any] = json.loads(self.original) if self.original is not None else {}
        self.data.update(fields)
        self.data.setdefault("stage_seconds", {})
        self.data.setdefault("runs", {})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n")  # key order kept: the config's order
        tmp.replace(self.path)

    def restore(self) -> None:
        """Put the file back as this run found it (its config and stage times included): a run refused
        midway leaves no trace of itself in results filed by another."""
        if self.original is None:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(self.original)
        tmp.replace(self.path)

    def timed(self, stage: str, seconds: float) -> None:
        stages = self.data["stage_seconds"]
        stages[stage] = round(stages.get(stage, 0.0) + seconds, 1)
        self.save()


def comparable(results: Mapping[str, Any]) -> Any:
    """``results`` without the entries that measure time (:data:`TIMING_KEYS`): two runs of one sweep, by
    any backend, give equal values."""

    def strip(v: Any) -> Any:
        if isinstance(v, Mapping):
            return {k: strip(x) for k, x in v.items() if k not in TIMING_KEYS}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v

    return strip(results)


def group_key(options: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """Students with equal keys train as one stacked model (:func:`policy_kd.group.group_key` on the
    student's distill options; None: it trains alone)."""
    from policy_kd import group
    from policy_kd.config import config_from_mapping
    from policy_kd.distill import DistillConfig

    return group.group_key(config_from_mapping(DistillConfig, dict(options), source="sweep student"))


# ---------------------------------------------------------------------------------------------- the sweep


class Sweep:
    """One sweep's stages over ``root`` (teacher/, buffer/, students/, evals/), filed into ``results``."""

    def __init__(
        self,
        config: SweepConfig,
        *,
        root: Path,
        results: Path,
        raw: Mapping[str, Any] | None = None,
        backend: Backend | None = None,
        vectorised: bool = True,
        gpus: float = 0.0,
        log: Callable[[str], None] = log,
    ):
        self.cfg, self.root = config, root
        self.backend = backend or make_backend("local")
        self.vectorised, self.gpus, self.log = vectorised, gpus, log
        fields: dict[str, Any] = {"task": config.task}
        if config.env is not None:
            fields["env"] = config.env
        fields["config"] = dict(raw) if raw is not None else _plain(config)
        self.store = Results(results, **fields)
        self.results = self.store.data

    def run(self, stages: Sequence[str] = STAGES) -> None:
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise PolicyKDError(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
        trains = [s for s in stages if s in ("distill", "eval", "dagger", "curve")]
        for stage in stages:
            if trains and stage == trains[0]:
                self._check_teacher()  # once, before any student trains (the teacher stage is done)
            getattr(self, stage)()

    def _check_teacher(self) -> None:
        """Refuse to add students to results measured against another teacher than ``teacher_dir``'s (a
        teacher retrained after its run folder was lost, say): the table would mix two teachers silently.
        Results filed before digests were kept are checked by :meth:`_check_filed` (the teacher's return)."""
        filed = self.results.get("teacher") or {}
        if filed.get("weights_sha256") is None or not self.results["runs"]:
            return
        from policy_kd.teachers import load_teacher, teacher_digest

        digest = teacher_digest(load_teacher(self.teacher_dir, self.cfg.env))
        self._check_filed({"weights_sha256": digest})

    def _check_filed(self, teacher: Mapping[str, Any]) -> None:
        """Compare ``teacher`` (an evaluation's entry, or just a digest) with the filed teacher: by weights,
        or by the return on the same seeds for results filed before digests were kept."""
        filed = self.results.get("teacher")
        if not filed or not self.results["runs"]:
            return
        key = "weights_sha256" if filed.get("weights_sha256") is not None else "mean_return"
        if key in teacher and filed.get(key) != teacher[key]:
            self.store.restore()  # earlier stages may have written their times and this run's config
            raise PolicyKDError(
                f"{self.store.path} holds students measured against another teacher than {self.teacher_dir} "
                f"({key.replace('_', ' ')} {str(filed.get(key))[:12]}, this teacher's {str(teacher[key])[:12]}); "
                "restore that teacher, or file these students apart (another task name, or move the results "
                "file aside)"
            )

    # -- teacher and buffer ---------------------------------------------------------------------------------

    @property
    def teacher_dir(self) -> Path:
        t = self.cfg.teacher
        return Path(t["path"]) if "path" in t else self.root / "teacher"

    @property
    def buffer_dir(self) -> Path:
        b = self.cfg.buffer
        return Path(b["path"]) if "path" in b else self.root / "buffer"

    def teacher(self) -> None:
        from policy_kd.config import config_from_mapping
        from policy_kd.teachers import TrainTeacherConfig, train_teacher

        out = self.teacher_dir
        if "zoo" in self.cfg.teacher:
            self._zoo_teacher()
            return
        if (out / "teacher.json").is_file() or out.suffix == ".zip":
            return
        options = {k: v for k, v in self.cfg.teacher.items() if k != "path"}
        if "path" in self.cfg.teacher and not options:
            if not out.exists():
                raise PolicyKDError(f"teacher {out} not found; fix teacher.path or give options to train one")
            return  # a zoo run folder or another layout: load_teacher checks it
        start = time.perf_counter()
        resume = (out / "checkpoint").is_dir() or (out / "checkpoint.old").is_dir()
        self.log(f"teacher: {'resuming' if resume else 'training'} on {self.cfg.env} into {out}")
        if resume:
            train_teacher(TrainTeacherConfig(out=str(out), resume=True, progress=False))
        else:
            opts = {**options, "env": self.cfg.env, "out": str(out), "progress": False, "force": True}
            train_teacher(config_from_mapping(TrainTeacherConfig, opts, source="sweep teacher"))
        self.store.timed("teacher", time.perf_counter() - start)

    def _zoo_teacher(self) -> None:
        """Train the teacher with rl-baselines3-zoo's own ``train`` and its preset for the env and algo
        (``teacher: {path: <log folder>/<algo>/<env>_1, zoo: {algo: sac, seed: 0, args: [...]}}``).

        The zoo's run folder is what policy_kd loads; ``train.json`` beside it keeps the command and its wall
        time (the zoo records neither). A folder that exists without the final model is a cut run: it is not
        resumed (the zoo's ``-i`` restarts the schedules), so say so and stop.
        """
        from policy_kd.run import versions

        z, out, env = self.cfg.teacher["zoo"], self.teacher_dir, str(self.cfg.env)
        if (out / f"{env}.zip").is_file():
            return
        if out.exists():
            raise PolicyKDError(
                f"{out} holds no {env}.zip: a cut zoo run; use one of its rl_model_*_steps.zip checkpoints "
                f"as {env}.zip (and say so in train.json) or delete the folder to train again"
            )
        if out.name != f"{env}_1" or out.parent.name != z["algo"]:
            raise PolicyKDError(
                f"a zoo teacher's path must end in {z['algo']}/{env}_1 (the zoo names its runs)"
            )
        cmd = [
            sys.executable, "-m", "rl_zoo3.train", "--algo", z["algo"], "--env", env,
            "--seed", str(z.get("seed", 0)), "-f", str(out.parent.parent), "--eval-freq", "-1",
            "--vec-env", "dummy", "--device", "cpu", *map(str, z.get("args", [])),
        ]  # fmt: skip
        if importlib.util.find_spec("rl_zoo3") is None:  # else: a traceback from python -m, then ours
            raise PolicyKDError(
                "teacher.zoo trains the teacher with rl_zoo3, which is not installed: "
                "pip install 'policy-kd[zoo]', or point teacher.path at a trained teacher without teacher.zoo"
            )
        self.log(f"teacher: {' '.join(cmd[1:])}")
        start = time.perf_counter()
        # one torch thread, as every other stage: the machine is shared and the run stays comparable
        proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        if proc.returncode != 0:
            raise PolicyKDError(
                f"rl_zoo3.train failed with exit status {proc.returncode} (its output is above); fix that, "
                f"delete {out} if it was created, and run again"
            )
        seconds = time.perf_counter() - start
        info = {
            "algo": z["algo"],
            "command": " ".join(cmd[1:]),
            "train_seconds": round(seconds, 1),
            "versions": versions(),
        }
        (out / "train.json").write_text(json.dumps(info, indent=1) + "\n")
        self.store.timed("teacher", seconds)

    def _record(self, out: Path, options: Mapping[str, Any]) -> None:
        from policy_kd.config import config_from_mapping
        from policy_kd.record import RecordConfig, record

        opts = {**options, "teacher": str(self.teacher_dir), "out": str(out), "progress": False}
        workers = int(opts.pop("workers", 1))
        cfg = config_from_mapping(RecordConfig, opts, source="sweep buffer")
        if workers > 1:
            from policy_kd.buffer import SHARDS, Buffer
            from policy_kd.shards import record_shards

            if (out / SHARDS).is_file() and Buffer.open(out, verify=False, allow_empty=True).complete:
                return

            self.log(f"buffer: recording {cfg.steps} steps in {workers} shards into {out}")
            record_shards(cfg, workers=workers, backend=self.backend)
            return
        if (out / "manifest.json").is_file():
            from policy_kd.buffer import read_manifest

            if read_manifest(out).get("complete"):
                return
            self.log(f"buffer: resuming {out}")
            record(RecordConfig(out=str(out), resume=True, progress=False))
            return
        self.log(f"buffer: recording {cfg.steps} steps into {out}")
        from dataclasses import replace

        record(replace(cfg, force=True))

    def buffer(self) -> None:
        from policy_kd.buffer import Buffer

        start = time.perf_counter()
        if "path" not in self.cfg.buffer:
            self._record(self.buffer_dir, self.cfg.buffer)
            self.store.timed("buffer", time.perf_counter() - start)
        b = Buffer.open(self.buffer_dir, verify=False)
        self.results["buffer"] = {"rows": b.rows, "source": b.sources[0]}
        self.results.setdefault("env", b.meta.get("env_id"))
        self.store.save()

    # -- students ---------------------------------------------------------------------------------------

    def _student_dir(self, name: str) -> Path:
        return self.root / "students" / name

    def _options(self, size: float, loss: str, seed: int) -> dict[str, Any]:
        opts = self.cfg.student_options(size, loss, seed=seed, buffer=str(self.buffer_dir))
        if needs_teacher(opts):
            opts["teacher"] = str(self.teacher_dir)
        return opts

    def _pending(self, name: str) -> bool:
        # a run filed in the results is done: a fresh machine extends a sweep, not redoes it
        return not ((self._student_dir(name) / "student.json").is_file() or name in self.results["runs"])

    def _train(self, todo: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Any]:
        """Submit ``todo`` (name, options) as training tasks: one per group of one architecture (one per
        student with ``--no-vectorised``); return their handles."""
        groups: dict[Any, list[tuple[str, Mapping[str, Any]]]] = {}
        for i, (name, opts) in enumerate(todo):
            if not self._pending(name):
                continue
            key = group_key(opts) if self.vectorised else None
            groups.setdefault(("alone", i) if key is None else key, []).append(
                (str(self._student_dir(name)), opts)
            )
        return [
            self.backend.submit(train_students, members, self.vectorised, gpus=self.gpus)
            for members in groups.values()
        ]

    def _submit_eval(self, names: Sequence[str], group: str, after: Sequence[Any]) -> Any:
        todo = [n for n in names if n not in self.results["runs"]]
        if not todo:
            return None
        args = (
            str(self.teacher_dir),
            [str(self._student_dir(n)) for n in todo],
            str(self.root / "evals" / group),
        )
        return todo, self.backend.submit(evaluate_students, *args, self.cfg.episodes, after=after)

    def _file(self, pending: tuple[list[str], Any] | None, kind: str) -> None:
        """Wait for one evaluation and file its figures under runs[name] (the driver alone writes)."""
        if pending is None:
            return
        names, handle = pending
        got = self.backend.result(handle)
        self._check_filed(got["teacher"])
        self.store.timed("eval", got["seconds"])
        self.results["teacher"] = got["teacher"]
        self.results["eval_versions"] = got["versions"]
        if got["random"]:  # the normalized score's 0, on the same seeds (the tables read it)
            self.results["random"] = got["random"]
        for name, run in zip(names, got["runs"], strict=True):
            self.results["runs"][name] = {"kind": kind, **run}
        self.store.save()

    def _train_and_evaluate(
        self, batches: Sequence[tuple[str, str, list[tuple[str, Mapping[str, Any]]]]]
    ) -> None:
        """Train every batch ((eval group, kind, students)), evaluate each batch once its students exist, and
        file the evaluations in order: sequentially that is batch by batch, in parallel everything overlaps."""
        start = time.perf_counter()
        trained = [self._train(todo) for _, _, todo in batches]
        evals = [
            (kind, self._submit_eval([n for n, _ in todo], group, after))
            for (group, kind, todo), after in zip(batches, trained, strict=True)
        ]
        if self.backend.parallel:
            for handles in trained:
                for h in handles:
                    self._trained(self.backend.result(h))
            if any(trained):
                self.store.timed("distill", time.perf_counter() - start)  # wall time: the tasks overlap
        for (kind, pending), handles in zip(evals, trained, strict=True):
            if not self.backend.parallel:
                for h in handles:
                    self.store.timed("distill", self._trained(self.backend.result(h)))
            self._file(pending, kind)

    def _trained(self, got: Mapping[str, Any]) -> float:
        for name in got["resumed"]:  # after a kill, or a lost worker's task run again
            self.log(f"distill: {name} resumed from its checkpoint")
        return float(got["seconds"])

    def distill(self) -> None:
        """Students size by size, each size evaluated once its students exist."""
        cells = self.cfg.cell_list()
        batches = [
            (
                f"f{size}",
                "grid",
                [(n, self._options(s, loss, seed)) for n, s, loss, seed in cells if s == size],
            )
            for size in self.cfg.sizes
        ]
        self._train_and_evaluate(batches)

    def eval(self) -> None:
        cells = self.cfg.cell_list()
        for size in self.cfg.sizes:
            names = [n for n, s, _, _ in cells if s == size and not self._pending(n)]
            self._file(self._submit_eval(names, f"f{size}", ()), "grid")

    def dagger(self) -> None:
        """Teacher-driven vs student-driven rounds at an equal number of teacher labels and steps."""
        d = self.cfg.dagger
        if not d:
            return
        pairs = [(f"td_s{seed}", f"dagger_s{seed}", seed) for seed in self.cfg.seeds]
        if all(td in self.results["runs"] and sd in self.results["runs"] for td, sd, _ in pairs):
            return  # filed: do not re-record its two buffers
        labels, rounds = int(d["labels"]), int(d["rounds"])
        per_round = labels // (2 * (rounds - 1))  # half the labels from the teacher, half from the rounds
        teacher_part = labels - per_round * (rounds - 1)
        base = {**self.cfg.distill, **self.cfg.shapes.get(d["size"], {}), **self.cfg.losses[d["loss"]]}
        base["params_fraction"] = d["size"]
        if needs_teacher(base):
            base["teacher"] = str(self.teacher_dir)
        steps = int(base.get("steps", 5000))
        opts = {k: v for k, v in self.cfg.buffer.items() if k not in ("steps", "path", "workers")}
        self._record(self.root / "buffer_td", {**opts, "steps": labels, "seed": 101})
        self._record(self.root / "buffer_half", {**opts, "steps": teacher_part, "seed": 102})
        td_runs = [
            (td, {**base, "buffer": str(self.root / "buffer_td"), "seed": seed}) for td, _, seed in pairs
        ]
        sd_runs = [
            (
                sd,
                {
                    **base,
                    "buffer": str(self.root / "buffer_half"),
                    "teacher": str(self.teacher_dir),
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
            for _, sd, seed in pairs
        ]
        self._train_and_evaluate(
            [("teacher_driven", "teacher_driven", td_runs), ("student_driven", "student_driven", sd_runs)]
        )

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
        self.store.save()


def _plain(config: SweepConfig) -> dict[str, Any]:
    from policy_kd.config import to_dict

    return to_dict(config)


def sweep(run: SweepRunConfig) -> Path:
    """Run (or continue) the sweep of ``run.file`` into ``run.out``; return its results JSON."""
    from policy_kd.config import load_yaml_mapping
    from policy_kd.run import atomic_write_text, job, lock_out_dir, write_run_info
    from policy_kd.sweep_report import write_report

    if run.file is None:
        raise PolicyKDError("sweep needs a config: policy-kd sweep CONFIG.yaml (see docs/sweep.md)")
    raw = load_yaml_mapping(run.file, what="sweep config")
    config = SweepConfig.from_mapping(raw, source=run.file)
    out = Path(run.out or Path("sweeps") / config.task)
    if run.gpus < 0:
        raise PolicyKDError(f"--gpus must be >= 0, got {run.gpus}")
    if run.gpus > 0 and run.backend != "ray":
        raise PolicyKDError("--gpus places tasks on a Ray cluster's GPUs; pass --backend ray with it")

    # not resumable itself: Ctrl-C stops the driver at once (each distill in it stops at its next checkpoint)
    @job(resumable=False)
    def go() -> Path:
        lock_out_dir(out, what="sweep folder", create=True)  # one driver per sweep folder
        write_run_info(out, run, job="sweep")
        # the sweep's own YAML beside it, as read: what a later run of this folder is compared with
        atomic_write_text(out / "sweep.yaml", yaml.safe_dump(raw, sort_keys=False))
        backend = make_backend(run.backend, jobs=run.jobs, address=run.address, max_retries=run.max_retries)
        try:
            s = Sweep(
                config,
                root=out,
                results=out / "results.json",
                raw=raw,
                backend=backend,
                vectorised=run.vectorised,
                gpus=run.gpus,
            )
            s.run(run.only)
        finally:
            backend.close()
        write_report(s.results, out)
        return s.store.path

    return go()
