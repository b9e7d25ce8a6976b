"""Multi-task distillation (Rusu et al. 2016, §4.3): one student, a shared trunk and one head per task.

Each task is a buffer recorded by its own teacher. The student's trunk (a CNN or MLP body) is shared; each
task has its own linear head (tasks may have different action counts) and its own input standardisation;
image inputs with fewer channels than the widest task are zero-padded to it, so MinAtar games with 4 and 6
channels share one first convolution. Every step takes one minibatch per task and minimises the mean of
the tasks' losses.

The result is one folder per task (``<out>/<task>/``: a normal student folder, trunk + that task's head,
loadable by ``load_student`` and ``policy-kd evaluate``) plus ``multitask.json`` with the whole student's
parameter count. Checkpoints every ``--checkpoint-every`` steps; ``--resume`` continues a killed run.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import tyro
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from policy_kd.buffer import Buffer, Sampler
from policy_kd.errors import PolicyKDError
from policy_kd.losses import DISCRETE_LOSSES, LossConfig, compute_loss
from policy_kd.options import RunOptions, StudentOptions, check_choice, check_ranges
from policy_kd.run import (
    atomic_torch_save,
    check_interrupted,
    job,
    lock_out_dir,
    prepare_out_dir,
    read_run_config,
    write_json,
    write_run_info,
)
from policy_kd.students import Student, build_student, count_params, save_student
from policy_kd.training import (
    BEST,
    LR_SCHEDULES,
    TASK_INPUT_STATS_ROWS,
    BestKeeper,
    make_optimizer,
    optimizer_step,
    save_final_weights,
    selection_return,
    student_info,
)

CHECKPOINT = "checkpoint.pt"
#: Steps between TensorBoard scalars of the tasks' losses.
LOG_EVERY = 100


@dataclass(frozen=True)
class MultiTaskConfig(StudentOptions, RunOptions):
    """Distil one student with a shared trunk and a head per task from several teachers' buffers."""

    buffer: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """Buffer folders, one per task (repeat: --buffer A --buffer B)."""
    out: str | None = None
    """Folder to create (refused if it exists, unless --force or --resume)."""
    student: str = "minatar_cnn"
    """Trunk architecture: mlp, minatar_cnn or nature_cnn."""
    hidden: tuple[int, ...] | None = None
    """Explicit hidden widths of the trunk; overrides --params-fraction."""
    channels: tuple[int, ...] | None = None
    """Explicit conv channels of a CNN trunk."""
    params_fraction: float = 0.05
    """Trunk + one head sized to this fraction of the mean teacher's policy parameters."""
    loss: str = "kl"
    """Loss per task: kl, nll, mse, hinton or kl_entropy."""
    tau: float = 0.01
    """Teacher temperature for kl."""
    steps: int = 10_000
    """Gradient steps (each takes one minibatch per task)."""
    batch_size: int = 256
    """Minibatch size per task."""
    lr: float = 1e-3
    """AdamW learning rate."""
    lr_schedule: str = "cosine"
    """constant or cosine."""
    eval_every: int = 2_000
    """Steps between evaluations of every task (best checkpoint by --select); 0: never."""
    select: str = "mean"
    """Score that picks the best checkpoint from each task's return / its teacher's: ``mean`` over tasks, or
    ``min`` (the worst task: for a target such as "90% of every teacher", which one easy game's high score
    would otherwise hide)."""
    eval_episodes: int = 10
    """Episodes per task per evaluation."""
    checkpoint_every: int = 1_000
    """Steps between resumable checkpoints; 0: none."""
    resume: bool = False
    """Continue the interrupted run in --out from its checkpoint."""
    seed: int = 0
    """Seed for initialisation and sampling."""

    def validate(self) -> None:
        if self.resume:
            if self.out is None:
                raise PolicyKDError("--resume needs --out DIR")
            return
        if len(self.buffer) < 2:
            raise PolicyKDError("multi-task distillation needs two or more buffers: --buffer A --buffer B")
        check_choice("loss", self.loss, DISCRETE_LOSSES, what="loss")
        self.validate_student()
        self.validate_run()
        if self.select not in ("mean", "min"):  # this wording is what users and tests know
            raise PolicyKDError(f"unknown --select {self.select!r}; choose mean or min")
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_ranges(self, positive=("steps", "batch_size", "eval_episodes", "tau", "lr"))

    @property
    def loss_config(self) -> LossConfig:
        return LossConfig(name=self.loss, tau=self.tau)


def selection_score(returns: list[float], teacher_returns: list[float], select: str) -> float:
    """The score that picks the best checkpoint: each task's return ÷ its teacher's, then their mean or min."""
    ratios = [r / t for r, t in zip(returns, teacher_returns, strict=True)]
    return float(np.mean(ratios) if select == "mean" else np.min(ratios))


def task_name(env_id: str) -> str:
    """A folder name for a task: ``MinAtar/Breakout-v1`` -> ``MinAtar_Breakout-v1``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", env_id)


@job(resumable=True)
def distill_multitask(config: MultiTaskConfig) -> Path:
    """Distil one multi-task student into ``config.out`` (a student folder per task); return the folder."""
    config.validate()
    if config.resume:
        out = Path(config.out)  # type: ignore[arg-type]
        lock_out_dir(out, what="multi-task folder")
        if not (out / CHECKPOINT).is_file():
            raise PolicyKDError(f"{out} has no {CHECKPOINT} to resume from; start over with --force")
        config = read_run_config(MultiTaskConfig, out, progress=config.progress)
    else:
        out = prepare_out_dir(config.out, force=config.force, what="multi-task folder", inputs=config.buffer)
        write_run_info(out, config, job="distill-multitask")
    torch.set_num_threads(config.threads)
    run = _MultiTaskRun(config, out)
    run.train()
    return run.finish()


def _open_tasks(config: MultiTaskConfig) -> tuple[list[Buffer], list[str]]:
    """The tasks' buffers and folder names, refused unless they can share one trunk."""
    buffers = [Buffer.open(b) for b in config.buffer]
    names = [task_name(b.meta["env_id"]) for b in buffers]
    if len(set(names)) != len(names):
        raise PolicyKDError(f"two buffers are of the same env ({', '.join(names)}); give one buffer per task")
    for b in buffers:
        if b.meta.get("action_space", {}).get("type") != "Discrete":
            raise PolicyKDError(
                f"buffer {b.path} has continuous actions; multi-task distillation is discrete-only"
            )
    shapes = [b.obs_shape for b in buffers]
    if config.student != "mlp" and len({(s[1:] if len(s) == 3 else s) for s in shapes}) != 1:
        raise PolicyKDError(f"tasks must share the image size to share a CNN trunk; got {shapes}")
    if config.student == "mlp" and len(set(shapes)) != 1:
        raise PolicyKDError(f"an mlp trunk needs one observation shape across tasks; got {shapes}")
    return buffers, names


class _MultiTaskRun:
    """One multi-task run: a student per task sharing one trunk, one optimiser, the loop, checkpoints."""

    def __init__(self, config: MultiTaskConfig, out: Path):
        self.cfg, self.out = config, out
        self.buffers, self.names = _open_tasks(config)
        self.teacher_params = [int(b.meta["teacher"]["policy_params"]) for b in self.buffers]
        self.students = self._build_students()
        self.unique = list({id(p): p for s in self.students for p in s.parameters()}.values())
        self.opt, self.sched = make_optimizer(
            self.unique, lr=config.lr, lr_schedule=config.lr_schedule, total_steps=config.steps
        )
        self.samplers = [
            Sampler(b, ("obs", "teacher"), seed=config.seed + i) for i, b in enumerate(self.buffers)
        ]
        self.loss_cfg = config.loss_config
        # return of each teacher in its own buffer: the yardstick for the score that picks the best step
        self.ref = [
            max(abs(float(b.sources[0].get("episode_return_mean") or 1.0)), 1e-6) for b in self.buffers
        ]
        self.step, self.history = 0, []
        self.keeper = BestKeeper(out)
        self.start = time.perf_counter()
        if config.resume:
            self._load_checkpoint()

    def _build_students(self) -> list[Student]:
        cfg = self.cfg
        shapes = [b.obs_shape for b in self.buffers]
        pad = max(s[0] for s in shapes) if cfg.student != "mlp" else 0
        torch.manual_seed(cfg.seed)
        students: list[Student] = []
        for b in self.buffers:
            spec = cfg.student_spec(
                b.obs_shape,
                b.fields["teacher"].shape[0],
                teacher_params=int(np.mean(self.teacher_params)),
                channels=cfg.channels,
                pad_channels=pad,
            )
            net = build_student(spec)
            if students:  # share the first task's trunk; keep this task's head
                net.net = nn.Sequential(*students[0].net[:-1], net.net[-1])
            net.set_obs_stats(torch.from_numpy(b.spaced("obs", TASK_INPUT_STATS_ROWS)))
            students.append(net)
        return students

    def _load_checkpoint(self) -> None:
        state = torch.load(self.out / CHECKPOINT, map_location="cpu", weights_only=True)
        for s, sd in zip(self.students, state["students"], strict=True):
            s.load_state_dict(sd)
        self.opt.load_state_dict(state["opt"])
        if self.sched is not None:
            self.sched.load_state_dict(state["sched"])
        for smp, g in zip(self.samplers, state["samplers"], strict=True):
            smp.set_state(g)
        self.step, self.history = int(state["step"]), state["history"]
        self.keeper.best = state["best"]

    def checkpoint(self) -> str:
        state = {
            "step": self.step,
            "students": [s.state_dict() for s in self.students],
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict() if self.sched else None,
            "samplers": [smp.state() for smp in self.samplers],
            "history": self.history,
            "best": self.keeper.best,
        }
        atomic_torch_save(state, self.out / CHECKPOINT)
        return f"checkpoint at step {self.step} saved; continue with: policy-kd distill-multitask --resume --out {self.out}"

    def train(self) -> None:
        cfg = self.cfg
        tb = SummaryWriter(str(self.out / "tb"), purge_step=self.step + 1 if cfg.resume else None)
        bar = tqdm(
            total=cfg.steps, initial=self.step, disable=not cfg.progress, desc="multitask", unit="step"
        )
        try:
            while self.step < cfg.steps:
                check_interrupted(self.checkpoint)  # SIGINT/SIGTERM: checkpoint between two steps and stop
                self.step += 1
                batches = (smp.sample(cfg.batch_size) for smp in self.samplers)
                losses = [
                    compute_loss(s(b["obs"]), b["teacher"], self.loss_cfg)
                    for s, b in zip(self.students, batches, strict=True)
                ]
                optimizer_step(torch.stack(losses).mean(), self.opt, self.sched)
                bar.update(1)
                if self.step % LOG_EVERY == 0 or self.step == cfg.steps:
                    for n, lo in zip(self.names, losses, strict=True):
                        tb.add_scalar(f"loss/{n}", lo.item(), self.step)
                if cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == cfg.steps):
                    self._eval_and_select(tb)
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                    self.checkpoint()
        finally:
            bar.close()
            tb.close()

    def _eval_and_select(self, tb: SummaryWriter) -> None:
        rets = []
        for s, b, n in zip(self.students, self.buffers, self.names, strict=True):
            r = selection_return(s, b.meta, self.cfg.eval_episodes)
            tb.add_scalar(f"eval/{n}", r, self.step)
            rets.append(r)
        score = selection_score(rets, self.ref, self.cfg.select)
        self.history.append(
            {"step": self.step, "eval_mean_return": dict(zip(self.names, rets, strict=True)), "score": score}
        )
        self.keeper.offer(score, {self.out / n: s for s, n in zip(self.students, self.names, strict=True)})

    def finish(self) -> Path:
        out = self.out
        total_params = sum(p.numel() for p in self.unique)
        tasks = []
        for s, b, n, tp in zip(self.students, self.buffers, self.names, self.teacher_params, strict=True):
            save_final_weights(out / n, s)
            # the whole multi-task student is what replaces the teachers: its size is the trunk + every head
            info = student_info(
                b.meta,
                loss=self.loss_cfg,
                params=total_params,
                teacher_params=tp,
                buffer=str(b.path.resolve()),
            )
            info.update(task_params=count_params(s), multitask=str(out.resolve()), weights=BEST)
            save_student(out / n, s.spec, info)
            tasks.append(
                {"task": n, "env_id": b.meta["env_id"], "teacher_params": tp, "task_params": count_params(s)}
            )
        summary = {
            "tasks": tasks,
            "params": total_params,
            "best_score": self.keeper.best,
            "history": self.history,
            "seconds": round(time.perf_counter() - self.start, 2),
        }
        write_json(out / "multitask.json", summary)
        (out / CHECKPOINT).unlink(missing_ok=True)
        return out
