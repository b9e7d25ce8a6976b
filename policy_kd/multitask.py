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
from policy_kd.distill import selection_return
from policy_kd.errors import PolicyKDError
from policy_kd.losses import DISCRETE_LOSSES, LossConfig, compute_loss
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
from policy_kd.students import STUDENTS, Student, build_student, count_params, save_student, size_student

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class MultiTaskConfig:
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
    layers: int = 2
    """Hidden layers of an mlp trunk sized by --params-fraction."""
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
    threads: int = 1
    """torch CPU threads."""
    progress: bool = True
    """Show a progress bar."""
    force: bool = False
    """Replace an existing --out folder."""

    def validate(self) -> None:
        if self.resume:
            if self.out is None:
                raise PolicyKDError("--resume needs --out DIR")
            return
        if len(self.buffer) < 2:
            raise PolicyKDError("multi-task distillation needs two or more buffers: --buffer A --buffer B")
        if self.loss not in DISCRETE_LOSSES:
            raise PolicyKDError(f"unknown loss {self.loss!r}; choose one of {', '.join(DISCRETE_LOSSES)}")
        if self.student not in STUDENTS:
            raise PolicyKDError(f"unknown student {self.student!r}; choose one of {', '.join(STUDENTS)}")
        if self.select not in ("mean", "min"):
            raise PolicyKDError(f"unknown --select {self.select!r}; choose mean or min")
        if self.lr_schedule not in ("constant", "cosine"):
            raise PolicyKDError(f"unknown --lr-schedule {self.lr_schedule!r}; choose constant or cosine")
        for name in ("steps", "batch_size", "eval_episodes", "tau", "lr", "params_fraction"):
            if not getattr(self, name) > 0:
                raise PolicyKDError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")


def selection_score(returns: list[float], teacher_returns: list[float], select: str) -> float:
    """The score that picks the best checkpoint: each task's return ÷ its teacher's, then their mean or min."""
    ratios = [r / t for r, t in zip(returns, teacher_returns, strict=True)]
    return float(np.mean(ratios) if select == "mean" else np.min(ratios))


def task_name(env_id: str) -> str:
    """A folder name for a task: ``MinAtar/Breakout-v1`` -> ``MinAtar_Breakout-v1``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", env_id)


@job(resumable=True)
def distill_multitask(config: MultiTaskConfig) -> Path:
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
    image = config.student != "mlp"
    if image and len({(s[1:] if len(s) == 3 else s) for s in shapes}) != 1:
        raise PolicyKDError(f"tasks must share the image size to share a CNN trunk; got {shapes}")
    if not image and len({s for s in shapes}) != 1:
        raise PolicyKDError(f"an mlp trunk needs one observation shape across tasks; got {shapes}")
    pad = max(s[0] for s in shapes) if image else 0
    teacher_params = [int(b.meta["teacher"]["policy_params"]) for b in buffers]

    torch.manual_seed(config.seed)
    students: list[Student] = []
    for b in buffers:
        spec = size_student(
            config.student,
            b.obs_shape,
            b.fields["teacher"].shape[0],
            hidden=config.hidden,
            channels=config.channels,
            params_fraction=config.params_fraction,
            teacher_params=int(np.mean(teacher_params)),
            layers=config.layers,
            pad_channels=pad,
        )
        net = build_student(spec)
        if students:  # share the first task's trunk; keep this task's head
            net.net = nn.Sequential(*students[0].net[:-1], net.net[-1])
        net.set_obs_stats(torch.from_numpy(b.spaced("obs", 100_000)))
        students.append(net)
    unique = list({id(p): p for s in students for p in s.parameters()}.values())
    total_params = sum(p.numel() for p in unique)
    opt = torch.optim.AdamW(unique, lr=config.lr, weight_decay=0.0)
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.steps)
        if config.lr_schedule == "cosine"
        else None
    )
    samplers = [Sampler(b, ("obs", "teacher"), seed=config.seed + i) for i, b in enumerate(buffers)]
    loss_cfg = LossConfig(name=config.loss, tau=config.tau)
    # return of each teacher in its own buffer: the yardstick for the score that picks the best step
    ref = [max(abs(float(b.sources[0].get("episode_return_mean") or 1.0)), 1e-6) for b in buffers]
    step, best, history = 0, None, []
    if config.resume:
        state = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)
        for s, sd in zip(students, state["students"], strict=True):
            s.load_state_dict(sd)
        opt.load_state_dict(state["opt"])
        if sched is not None:
            sched.load_state_dict(state["sched"])
        for smp, g in zip(samplers, state["samplers"], strict=True):
            smp.set_state(g)
        step, history = int(state["step"]), state["history"]
        best = state["best"]

    def save(folder: Path, net: Student, weights: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(net.state_dict(), folder / weights)  # best.pt is rewritten mid-run

    tb = SummaryWriter(str(out / "tb"), purge_step=step + 1 if config.resume else None)
    bar = tqdm(total=config.steps, initial=step, disable=not config.progress, desc="multitask", unit="step")
    start = time.perf_counter()

    def checkpoint() -> str:
        state = {
            "step": step,
            "students": [s.state_dict() for s in students],
            "opt": opt.state_dict(),
            "sched": sched.state_dict() if sched else None,
            "samplers": [smp.state() for smp in samplers],
            "history": history,
            "best": best,
        }
        atomic_torch_save(state, out / CHECKPOINT)
        return f"checkpoint at step {step} saved; continue with: policy-kd distill-multitask --resume --out {out}"

    try:
        while step < config.steps:
            check_interrupted(checkpoint)  # SIGINT/SIGTERM: checkpoint between two steps and stop
            step += 1
            losses = [
                compute_loss(s(b["obs"]), b["teacher"], loss_cfg)
                for s, b in zip(students, (smp.sample(config.batch_size) for smp in samplers), strict=True)
            ]
            loss = torch.stack(losses).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            bar.update(1)
            if step % 100 == 0 or step == config.steps:
                for n, lo in zip(names, losses, strict=True):
                    tb.add_scalar(f"loss/{n}", lo.item(), step)
            if config.eval_every and (step % config.eval_every == 0 or step == config.steps):
                rets = []
                for s, b, n in zip(students, buffers, names, strict=True):
                    r = selection_return(s, b.meta, config.eval_episodes)
                    tb.add_scalar(f"eval/{n}", r, step)
                    rets.append(r)
                score = selection_score(rets, ref, config.select)
                history.append(
                    {"step": step, "eval_mean_return": dict(zip(names, rets, strict=True)), "score": score}
                )
                if best is None or score > best:
                    best = score
                    for s, n in zip(students, names, strict=True):
                        save(out / n, s, "best.pt")
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.steps:
                checkpoint()
    finally:
        bar.close()
        tb.close()
    tasks = []
    for s, b, n, tp in zip(students, buffers, names, teacher_params, strict=True):
        save(out / n, s, "last.pt")
        if not (out / n / "best.pt").is_file():
            save(out / n, s, "best.pt")
        info = {
            "env_id": b.meta["env_id"],
            "action_space": b.meta["action_space"],
            "observation_space": b.meta["observation_space"],
            "env_spec": b.meta.get("env_spec"),
            "teacher": b.meta["teacher"],
            "buffer": str(b.path.resolve()),
            "loss": loss_cfg.__dict__,
            # the whole multi-task student is what replaces the teachers: its size is the trunk + every head
            "params": total_params,
            "task_params": count_params(s),
            "teacher_params": tp,
            "params_ratio": total_params / tp,
            "multitask": str(out.resolve()),
            "weights": "best.pt",
        }
        save_student(out / n, s.spec, info)
        tasks.append(
            {"task": n, "env_id": b.meta["env_id"], "teacher_params": tp, "task_params": count_params(s)}
        )
    write_json(
        out / "multitask.json",
        {
            "tasks": tasks,
            "params": total_params,
            "best_score": best,
            "history": history,
            "seconds": round(time.perf_counter() - start, 2),
        },
    )
    (out / CHECKPOINT).unlink(missing_ok=True)
    return out
