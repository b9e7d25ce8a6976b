"""Distil a student from a recorded buffer of teacher outputs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from policy_kd.buffer import Buffer, Sampler
from policy_kd.envs import make_env_from_spec
from policy_kd.errors import PolicyKDError
from policy_kd.evaluate import run_episodes
from policy_kd.losses import LOSSES, LossConfig, compute_loss
from policy_kd.run import prepare_out_dir, write_json, write_run_info
from policy_kd.students import STUDENTS, build_student, count_params, save_student, size_student

# Episodes used to pick the best checkpoint start here, far from evaluate's default seeds (0..N), so the
# final comparison is not made on the episodes that selected the student.
SELECTION_SEED = 1_000_000


@dataclass(frozen=True)
class DistillConfig:
    """Train a student to match the teacher outputs stored in a buffer."""

    buffer: str | None = None
    """Buffer folder written by policy-kd record."""
    out: str | None = None
    """Student folder to create (refused if it exists, unless --force)."""
    student: str = "mlp"
    """Student architecture (registry name): mlp."""
    hidden: tuple[int, ...] | None = None
    """Explicit hidden widths, e.g. --hidden 32 32; overrides --params-fraction."""
    params_fraction: float = 0.01
    """Student size as a fraction of the teacher's policy parameters (widths solved, actual count reported)."""
    layers: int = 2
    """Hidden layers when sizing by --params-fraction."""
    activation: str = "relu"
    """Hidden activation: relu, tanh, elu, gelu."""
    normalize_obs: bool = True
    """Standardise the student's inputs with the buffer's observation mean/std (stored with the student)."""
    loss: str = "kl"
    """Loss: kl (Rusu et al. 2016), nll (teacher argmax), mse (regress outputs), hinton (soft at T + hard)."""
    tau: float = 0.01
    """Teacher temperature for kl (low tau sharpens the target)."""
    temperature: float = 2.0
    """Temperature T for hinton (both sides softened, soft term scaled by T^2)."""
    lam: float = 0.5
    """hinton weight of the soft term; 1 - lam goes to the hard nll term."""
    steps: int = 5_000
    """Gradient steps."""
    batch_size: int = 256
    """Minibatch size (sampled uniformly with replacement from the buffer)."""
    lr: float = 1e-3
    """Adam learning rate."""
    lr_schedule: str = "constant"
    """Learning-rate schedule: constant, or cosine (decays to 0 at the last step, which steadies the final weights)."""
    eval_every: int = 1_000
    """Steps between environment evaluations that select the best checkpoint (0: never; last = best)."""
    eval_episodes: int = 10
    """Episodes per periodic evaluation (seeds from 1,000,000 on, apart from evaluate's)."""
    log_every: int = 100
    """Steps between TensorBoard scalars."""
    in_memory: bool | None = None
    """Hold the buffer's obs and teacher fields in RAM (fastest) or sample them memory-mapped; default: in RAM when under 2 GiB."""
    seed: int = 0
    """Seed for weight initialisation and minibatch sampling."""
    threads: int = 1
    """torch CPU threads."""
    progress: bool = True
    """Show a progress bar."""
    force: bool = False
    """Replace an existing --out folder."""

    def validate(self) -> None:
        if self.buffer is None:
            raise PolicyKDError("distill needs a buffer: pass --buffer DIR (written by policy-kd record)")
        if self.loss not in LOSSES:
            raise PolicyKDError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.student not in STUDENTS:
            raise PolicyKDError(f"unknown student {self.student!r}; choose one of {', '.join(STUDENTS)}")
        if self.tau <= 0:
            raise PolicyKDError(f"--tau must be > 0, got {self.tau}")
        if self.temperature <= 0:
            raise PolicyKDError(f"--temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.lam <= 1.0:
            raise PolicyKDError(f"--lam must lie in [0, 1], got {self.lam}")
        if self.params_fraction <= 0:
            raise PolicyKDError(f"--params-fraction must be > 0, got {self.params_fraction}")
        for name in ("steps", "batch_size", "eval_episodes", "log_every", "layers", "threads"):
            if getattr(self, name) <= 0:
                raise PolicyKDError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise PolicyKDError(f"unknown --lr-schedule {self.lr_schedule!r}; choose constant or cosine")
        if self.eval_every < 0 or self.lr <= 0:
            raise PolicyKDError("--eval-every must be >= 0 and --lr > 0")

    @property
    def loss_config(self) -> LossConfig:
        return LossConfig(name=self.loss, tau=self.tau, temperature=self.temperature, lam=self.lam)


def distill(config: DistillConfig) -> Path:
    """Distil a student into ``config.out``; return the folder. ``student.json`` is written last."""
    config.validate()
    buffer = Buffer.open(config.buffer)  # type: ignore[arg-type]
    meta = buffer.meta
    if meta.get("action_space", {}).get("type") != "Discrete":
        raise PolicyKDError(
            f"buffer {config.buffer} has actions {meta.get('action_space')}; only discrete actions are supported so far"
        )
    out = prepare_out_dir(config.out, force=config.force, what="student folder", inputs=(config.buffer,))
    torch.set_num_threads(config.threads)
    write_run_info(out, config, job="distill")

    sampler = Sampler(buffer, ("obs", "teacher"), seed=config.seed, in_memory=config.in_memory)
    obs_shape = buffer.fields["obs"].shape
    (n_actions,) = buffer.fields["teacher"].shape
    teacher_params = int(meta["teacher"]["policy_params"])
    spec = size_student(
        config.student,
        obs_shape,
        n_actions,
        hidden=config.hidden,
        params_fraction=config.params_fraction,
        teacher_params=teacher_params,
        layers=config.layers,
        activation=config.activation,
    )
    torch.manual_seed(config.seed)
    net = build_student(spec)
    if config.normalize_obs and hasattr(net, "set_obs_stats"):
        net.set_obs_stats(torch.from_numpy(buffer.spaced("obs", 200_000)))
    params = count_params(net)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.steps)
        if config.lr_schedule == "cosine"
        else None
    )
    loss_cfg = config.loss_config
    env_id = meta["env_id"]
    env_spec = meta.get("env_spec") or {"env_id": env_id}  # buffers without a spec: the plain registered env

    def make_eval_env() -> Any:
        return make_env_from_spec(env_spec)

    eval_seeds = [SELECTION_SEED + i for i in range(config.eval_episodes)]

    info: dict[str, Any] = {
        "env_id": env_id,
        "action_space": meta["action_space"],
        "observation_space": meta["observation_space"],
        "teacher": meta["teacher"],
        "buffer": str(Path(config.buffer).resolve()),  # type: ignore[arg-type]
        "loss": loss_cfg.__dict__,
        "params": params,
        "teacher_params": teacher_params,
        "params_ratio": params / teacher_params,
    }
    history: list[dict[str, Any]] = []
    best: tuple[float, float] | None = None  # (eval return, agreement) of the best checkpoint
    tb = SummaryWriter(str(out / "tb"))
    start = time.perf_counter()
    running_loss, running_agree, seen = 0.0, 0.0, 0
    bar = tqdm(range(1, config.steps + 1), disable=not config.progress, desc="distill", unit="step")
    try:
        for step in bar:
            batch = sampler.sample(config.batch_size)
            s_out = net(batch["obs"])  # (batch, n_actions)
            t_out = batch["teacher"]
            loss = compute_loss(s_out, t_out, loss_cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            with torch.no_grad():
                running_loss += loss.item()
                running_agree += (s_out.argmax(-1) == t_out.argmax(-1)).float().mean().item()
                seen += 1
            if step % config.log_every == 0 or step == config.steps:
                tb.add_scalar("distill/loss", running_loss / seen, step)
                tb.add_scalar("distill/agreement", running_agree / seen, step)
                bar.set_postfix(loss=f"{running_loss / seen:.4f}", agree=f"{running_agree / seen:.3f}")
                last_loss, last_agree = running_loss / seen, running_agree / seen
                running_loss, running_agree, seen = 0.0, 0.0, 0
            if config.eval_every and (step % config.eval_every == 0 or step == config.steps):
                net.eval()
                ret = float(
                    run_episodes(net, env_id, eval_seeds, env_factory=make_eval_env).returns.mean()  # type: ignore[arg-type]
                )
                net.train()
                tb.add_scalar("eval/mean_return", ret, step)
                history.append(
                    {
                        "step": step,
                        "eval_mean_return": ret,
                        "train_agreement": last_agree,
                        "train_loss": last_loss,
                    }
                )
                score = (ret, last_agree)
                if best is None or score > best:
                    best = score
                    torch.save(net.state_dict(), out / "best.pt")
    finally:
        bar.close()
        tb.close()
    wall = time.perf_counter() - start
    torch.save(net.state_dict(), out / "last.pt")
    if best is None:  # no evaluation: the last weights are the student
        torch.save(net.state_dict(), out / "best.pt")
    metrics = {
        "steps": config.steps,
        "final_train_loss": last_loss,
        "final_train_agreement": last_agree,
        "best_eval_mean_return": best[0] if best else None,
        "history": history,
        "seconds": round(wall, 2),
        "samples_per_second": round(config.steps * config.batch_size / wall, 1),
    }
    write_json(out / "metrics.json", metrics)
    save_student(out, spec, {**info, "weights": "best.pt"})
    return out
