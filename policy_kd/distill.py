"""Distil a student from recorded teacher outputs: teacher-driven (a fixed buffer) or student-driven rounds.

One training loop serves both regimes. Teacher-driven: minibatches from ``--buffer``. Student-driven
(DAgger, Ross et al. 2011; Czarnecki et al. 2019): ``--rounds K`` alternates distilling with recording
``--round-steps`` new states in which the current student acts (or a mixture with probability beta that
the teacher acts) while the teacher labels every state; each round's data joins the training set.

Everything that influences the weights (network, projection, optimiser, schedule, sampler generator, torch
RNG, round) is checkpointed every ``--checkpoint-every`` steps, so ``--resume`` after a kill reproduces
the uninterrupted run's weights bit for bit on CPU.

The options live in ``policy_kd.distill_config`` (``from policy_kd.distill import DistillConfig`` still
works) and the rounds in ``policy_kd.dagger``.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from policy_kd.buffer import Buffer, Sampler
from policy_kd.config import absolute_paths
from policy_kd.dagger import Rounds
from policy_kd.distill_config import DistillConfig
from policy_kd.envs import make_env_from_spec
from policy_kd.errors import PolicyKDError
from policy_kd.heads import head_for_teacher
from policy_kd.losses import (
    check_loss_for_kind,
    compute_loss,
    critic_guidance,
    hint,
    kl,
    per_component,
)
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
from policy_kd.spaces import action_nvec
from policy_kd.students import (
    Student,
    build_student,
    check_fits_in_memory,
    count_nonfinite,
    count_params,
    save_student,
)
from policy_kd.training import (
    BEST,
    INPUT_STATS_ROWS,
    BestKeeper,
    DistillMetrics,
    LogWindow,
    make_optimizer,
    optimizer_step,
    save_final_weights,
    selection_return,
    student_info,
)

CHECKPOINT = "checkpoint.pt"
#: A loss this many times its first value means training diverged (a sound run's loss falls).
DIVERGED = 1e4


@job(resumable=True)
def distill(config: DistillConfig) -> Path:
    """Distil a student into ``config.out``; return the folder. ``student.json`` is written last."""
    config, out = start_run(config)
    torch.set_num_threads(config.threads)
    return _Run(config, out).train()


def start_run(config: DistillConfig) -> tuple[DistillConfig, Path]:
    """Validate ``config`` and lock its student folder: a new run's folder is created (refused if it holds
    something, unless ``force``) with its resolved config, command line and versions; ``resume`` reads the
    saved config back. Returns the config to run and the folder (also what a group of students does)."""
    config.validate()
    if config.resume:
        out = Path(config.out)  # type: ignore[arg-type]
        lock_out_dir(out, what="student folder")
        return _saved_config(out, progress=config.progress), out
    # saved in config.yaml (what --resume reads): absolute, so it resumes from any working directory
    config = absolute_paths(config, "buffer", "teacher")
    if config.buffer:  # refuse a loss the buffer cannot take before its folder exists (no --force to retry)
        buffer = Buffer.open(config.buffer)
        _check_meta(buffer)
        _fields_for_loss(config, buffer.meta)
    inputs = (config.buffer, config.teacher)
    out = prepare_out_dir(config.out, force=config.force, what="student folder", inputs=inputs)
    write_run_info(out, config, job="distill")
    return config, out


def _saved_config(out: Path, *, progress: bool) -> DistillConfig:
    if not (out / CHECKPOINT).is_file():
        if (out / "student.json").is_file():
            raise PolicyKDError(f"{out} holds a finished student; nothing to resume")
        raise PolicyKDError(
            f"{out} has no {CHECKPOINT} to resume from; run distill again with --force to start over"
        )
    return read_run_config(DistillConfig, out, progress=progress)


def _check_meta(buffer: Buffer) -> None:
    """Refuse a buffer whose metadata lacks what distill reads (its env, spaces and teacher)."""
    meta, wrong = buffer.meta, []
    if not isinstance(meta.get("env_id"), str):
        wrong.append("env_id")
    wrong += [
        k for k in ("observation_space", "action_space", "teacher") if not isinstance(meta.get(k), dict)
    ]
    if not wrong:
        t, space = meta["teacher"], meta["action_space"]
        if not isinstance(t.get("kind"), str):
            wrong.append("teacher.kind")
        if not (isinstance(t.get("policy_params"), int) and t["policy_params"] > 0):
            wrong.append("teacher.policy_params")
        if space.get("type") not in ("Discrete", "Box", "MultiDiscrete", "MultiBinary"):
            wrong.append("action_space.type")
        bounds = [space.get(k) for k in ("low", "high") if k in space]
        if not all(isinstance(b, list) and all(isinstance(x, int | float) for x in b) for b in bounds):
            wrong.append("action_space.low/high")
    if meta.get("env_spec") is not None and not isinstance(meta.get("env_spec"), dict):
        wrong.append("env_spec")
    if wrong:
        raise PolicyKDError(
            f"buffer {buffer.path} has no valid {', '.join(wrong)} in its manifest's meta; re-record it with policy-kd record"
        )


def _fields_for_loss(config: DistillConfig, meta: dict[str, Any]) -> tuple[str, ...]:
    """Refuse a loss the teacher's kind of outputs cannot take; return the buffer fields it reads."""
    kind = meta["teacher"]["kind"]
    check_loss_for_kind(
        config.loss,
        kind,
        meta.get("action_space", {}).get("type") == "Box",
        only_actions="the buffer holds only the teacher's actions (kind actions: behaviour cloning)",
    )
    if config.critic_weight > 0 and kind not in ("deterministic", "squashed_gaussian"):
        raise PolicyKDError(
            f"--critic-weight needs a TD3/DDPG/SAC/TQC teacher's critic, not a {kind} teacher; drop it"
        )
    return ("obs", "teacher", "teacher_log_std") if config.loss == "gaussian_kl" else ("obs", "teacher")


class _Run(Rounds):
    """One distillation run: data, networks, optimiser, and the loop with its checkpoints."""

    def __init__(self, config: DistillConfig, out: Path):
        self.cfg, self.out = config, out
        self._teacher: Any = None
        self._open_data()
        self._build_student()
        self.proj: nn.Linear | None = None
        if config.hint_weight > 0:
            self.proj = nn.Linear(self.net.feature_dim, self.teacher.feature_dim)
        self.params = list(self.net.parameters()) + (list(self.proj.parameters()) if self.proj else [])
        self.opt, self.sched = make_optimizer(
            self.params,
            lr=config.lr,
            weight_decay=config.weight_decay,
            lr_schedule=config.lr_schedule,
            total_steps=config.steps * config.rounds,
        )
        self.loss_cfg = config.loss_config
        # training state (all of it checkpointed)
        self.step = 0
        self.round = 0
        self.history: list[dict[str, Any]] = []
        self.keeper = BestKeeper(out)  # best score: (eval return, fidelity)
        self.stopped: str | None = None
        self.window = LogWindow()
        self.wall = 0.0
        self.first_loss: float | None = None  # the reference divergence is judged against

    def _open_data(self) -> None:
        """Open the buffer (or record round 0 with the teacher), check it and choose the fields to read."""
        config = self.cfg
        self.buffers: list[Buffer] = [Buffer.open(config.buffer)] if config.buffer else []
        if self.buffers:
            self.meta = self.buffers[0].meta
            if not self.buffers[0].complete and not config.resume:
                b = self.buffers[0]
                print(
                    f"policy-kd: warning: buffer {b.path} is unfinished ({b.rows:,} of "
                    f"{sum(s['capacity'] for s in b.manifest['segments']):,} rows, its recording was interrupted); "
                    f"distilling from what it holds (complete it first with: policy-kd record --resume --out {b.path})",
                    file=sys.stderr,
                )
        else:  # rounds only: the first round is recorded by the teacher itself
            self.meta = {}
        self.teacher_path = config.teacher
        if self.buffers and self.teacher_path is not None:
            _ = self.teacher  # refuse another teacher than the buffer's now, not after a round's training
        if not self.buffers:
            self._record_round(0, student_dir=None)
            self.meta = self.buffers[0].meta
        meta = self.meta
        _check_meta(self.buffers[0])
        self.teacher_params = int(meta["teacher"]["policy_params"])
        self.continuous = meta.get("action_space", {}).get("type") == "Box"
        # MultiDiscrete/MultiBinary: the logits of each component side by side; losses per component, summed
        self.nvec = action_nvec(meta.get("action_space", {}))
        self.names = _fields_for_loss(config, meta)
        for b in self.buffers:
            b.require(*self.names)
            b.check_finite(
                self.names,
                "a student trained on them learns NaN: re-record the buffer with a sound teacher",
            )

    def _input_sample(self) -> torch.Tensor:
        """The buffer's observations that set the student's input standardisation (evenly spaced rows)."""
        return torch.from_numpy(self.buffers[0].spaced("obs", INPUT_STATS_ROWS))

    def _build_student(self) -> None:
        """Size and build the student; set its input statistics, action bounds and starting spread."""
        config, meta, buffer = self.cfg, self.meta, self.buffers[0]
        spec = config.student_spec(
            buffer.obs_shape,
            buffer.fields["teacher"].shape[0],
            teacher_params=self.teacher_params,
            activation=config.activation,
            channels=config.channels,
            conv=config.conv,
            conv_stride=config.conv_stride,
            head=self._head(),
            **({"nvec": self.nvec} if self.nvec else {}),
        )
        self.spec = spec
        check_fits_in_memory(spec, config.batch_size)
        torch.manual_seed(config.seed)
        self.net: Student = build_student(spec)
        if config.normalize_obs:
            self.net.set_obs_stats(self._input_sample())
        if self.continuous:
            space = meta["action_space"]
            if "low" not in space:  # recorded before action bounds were kept at any size: ask the env
                env = make_env_from_spec(meta.get("env_spec") or {"env_id": meta["env_id"]})
                space = {"low": env.action_space.low.reshape(-1), "high": env.action_space.high.reshape(-1)}
                env.close()
            self.net.set_action_bounds(np.array(space["low"]), np.array(space["high"]))
            if hasattr(self.net, "log_std") and "teacher_log_std" in buffer.fields:
                with torch.no_grad():  # start from the teacher's average spread, not from std 1
                    self.net.log_std.copy_(torch.from_numpy(buffer.spaced("teacher_log_std", 10_000).mean(0)))

    def _head(self) -> str:
        """The student's head: the teacher's Gaussian kind, one logit block per component, or logits."""
        return head_for_teacher(str(self.meta["teacher"]["kind"]), continuous=self.continuous, nvec=self.nvec)

    def _sampler(self) -> Sampler:
        return Sampler(
            self.buffers,
            self.names,
            seed=self.cfg.seed + self.round,
            in_memory=self.cfg.in_memory,
            source_weights=self.cfg.source_weights,
            prefetch=True,
        )

    # -- checkpoints --------------------------------------------------------------------------------------------

    def _state(self, sampler: Sampler) -> dict[str, Any]:
        return {
            "step": self.step,
            "round": self.round,
            "net": self.net.state_dict(),
            "proj": self.proj.state_dict() if self.proj else None,
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict() if self.sched else None,
            "sampler": sampler.state(),
            "torch_rng": torch.get_rng_state(),
            "history": self.history,
            "best": list(self.keeper.best) if self.keeper.best else None,
            "since_best": self.keeper.since_best,
            "sums": self.window.sums,
            "count": self.window.count,
            "last": self.window.last,
            "wall": self.wall,
            "first_loss": self.first_loss,
        }

    def _save_checkpoint(self, sampler: Sampler) -> None:
        atomic_torch_save(self._state(sampler), self.out / CHECKPOINT)

    def _load_checkpoint(self) -> torch.Tensor:
        try:
            state = torch.load(self.out / CHECKPOINT, map_location="cpu", weights_only=True)
            self.net.load_state_dict(state["net"])
            if self.proj is not None:
                self.proj.load_state_dict(state["proj"])
            self.opt.load_state_dict(state["opt"])
            if self.sched is not None:
                self.sched.load_state_dict(state["sched"])
        except Exception as exc:
            raise PolicyKDError(
                f"{self.out / CHECKPOINT} is damaged ({type(exc).__name__}); start over with --force"
            ) from None
        torch.set_rng_state(state["torch_rng"])
        self.step, self.round = int(state["step"]), int(state["round"])
        self.history = state["history"]
        self.keeper.best = tuple(state["best"]) if state["best"] else None
        self.keeper.since_best = state["since_best"]
        self.window = LogWindow(state["sums"], state["count"], state["last"])
        self.wall = state["wall"]
        self.first_loss = state.get("first_loss")
        return state["sampler"]

    # -- the loop -------------------------------------------------------------------------------------------------

    def _info(self) -> dict[str, Any]:
        return student_info(
            self.meta,
            loss=self.loss_cfg,
            params=count_params(self.net),
            teacher_params=self.teacher_params,
            buffer=str(Path(self.cfg.buffer).resolve()) if self.cfg.buffer else None,
        )

    def _loss(
        self, batch: dict[str, torch.Tensor], measure: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss and its terms; ``measure`` adds fidelity metrics (on logging steps only: they
        cost a few per cent of a small student's step)."""
        obs, t_out = batch["obs"], batch["teacher"]
        feats = self.net.features(obs)
        s_out = self.net.head_outputs(feats)  # a deterministic head's tanh included
        terms: dict[str, torch.Tensor] = {}
        if self.continuous:
            output = compute_loss(
                s_out,
                t_out,
                self.loss_cfg,
                student_log_std=getattr(self.net, "log_std", None),
                teacher_log_std=batch.get("teacher_log_std"),
            )
        else:
            output = compute_loss(s_out, t_out, self.loss_cfg, nvec=self.nvec)
        terms["loss/output"] = output
        total = output
        if self.cfg.critic_weight > 0:
            guidance = self._critic_guidance(obs, s_out, t_out)
            terms["loss/critic"] = guidance
            total = total + self.cfg.critic_weight * guidance
        if self.proj is not None:
            t_feat = torch.from_numpy(self.teacher.features(obs.numpy()))
            h = hint(self.proj(feats), t_feat)
            terms["loss/hint"] = h
            total = total + self.cfg.hint_weight * h
        terms["loss/total"] = total
        if not measure:
            return total, {k: v.detach() for k, v in terms.items()}
        with torch.no_grad():
            if self.continuous:
                terms["fidelity/mean_abs_diff"] = (s_out - t_out).abs().mean()
            elif self.nvec:  # the whole action agrees when every component does
                parts = zip(s_out.split(self.nvec, -1), t_out.split(self.nvec, -1), strict=True)
                same = torch.stack([s.argmax(-1) == t.argmax(-1) for s, t in parts], dim=-1)
                terms["fidelity/agreement"] = same.all(dim=-1).float().mean()
                terms["fidelity/component_agreement"] = same.float().mean()
                terms["fidelity/kl_tau"] = per_component(
                    lambda s, t: kl(s, t, tau=self.cfg.tau), s_out, t_out, self.nvec
                )
            else:
                terms["fidelity/agreement"] = (s_out.argmax(-1) == t_out.argmax(-1)).float().mean()
                terms["fidelity/kl_tau"] = kl(s_out, t_out, tau=self.cfg.tau)
        return total, {k: v.detach() for k, v in terms.items()}

    def _critic_guidance(self, obs: torch.Tensor, s_out: torch.Tensor, t_out: torch.Tensor) -> torch.Tensor:
        """``critic_guidance`` of the student's action against the teacher's, both valued by the teacher's
        critic in the ``[-1, 1]`` action scale it takes (a squashed head's mean goes through tanh)."""
        squash = self.spec.head == "squashed_gaussian"
        s_act = torch.tanh(s_out) if squash else s_out
        t_act = torch.tanh(t_out) if squash else t_out
        obs_np = obs.numpy()
        q_s = self.teacher.critic_value(obs_np, s_act).cpu()
        with torch.no_grad():
            q_t = self.teacher.critic_value(obs_np, t_act).cpu()
        return critic_guidance(q_s, q_t)

    def _evaluate(self) -> float:
        return selection_return(self.net, self.meta, self.cfg.eval_episodes)

    def train(self) -> Path:
        cfg, out = self.cfg, self.out
        sampler_state = self._load_checkpoint() if cfg.resume else None
        # rounds already finished before a resume: their buffers are on disk, complete
        for r in range(1, self.round + 1):
            self.buffers.append(Buffer.open(self._round_dir(r) / "buffer"))
        self.sampler = self._sampler()
        if sampler_state is not None:
            self.sampler.set_state(sampler_state)
        total = cfg.steps * cfg.rounds
        tb = SummaryWriter(str(out / "tb"), purge_step=self.step + 1 if cfg.resume else None)
        bar = tqdm(total=total, initial=self.step, disable=not cfg.progress, desc="distill", unit="step")
        start = time.perf_counter() - self.wall

        # also what SIGINT/SIGTERM runs between two steps: checkpoint this step, as --resume expects
        def checkpoint() -> str:
            self.wall = time.perf_counter() - start
            self._save_checkpoint(self.sampler)
            return (
                f"checkpoint at step {self.step} saved; continue with: policy-kd distill --resume --out {out}"
            )

        try:
            while self.step < total and self.stopped is None:
                check_interrupted(checkpoint)
                if self.step > 0 and self.step % cfg.steps == 0 and self.step // cfg.steps > self.round:
                    self._next_round(tb)
                self._train_step(tb, total)
                bar.update(1)
                if log_now(self.step, cfg.log_every, total):
                    bar.set_postfix(loss=f"{self.window.last['loss/total']:.4f}")
                if cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == total):
                    self._eval_and_select(tb)
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < total:
                    checkpoint()
        finally:
            self.sampler.close()
            bar.close()
            tb.close()
        self.wall = time.perf_counter() - start
        return self._finish()

    def _train_step(self, tb: SummaryWriter, total: int) -> None:
        """One gradient step; on logging steps, write the window's scalars to TensorBoard."""
        cfg = self.cfg
        self.step += 1
        logging = log_now(self.step, cfg.log_every, total)
        loss, terms = self._loss(self.sampler.sample(cfg.batch_size), measure=logging)
        self._check_loss(float(loss.detach()))  # a CPU tensor: no device sync to pay
        norm = optimizer_step(loss, self.opt, self.sched, params=self.params, max_grad_norm=cfg.max_grad_norm)
        if norm is not None:
            terms["grad_norm"] = norm
        self.window.add(terms)  # tensors, not .item(): no sync per step
        if logging:
            # losses are means over the logging window; fidelity is measured on its last batch
            for k, v in self.window.close().items():
                tb.add_scalar(k, v, self.step)
            tb.add_scalar("lr", self.opt.param_groups[0]["lr"], self.step)

    def _check_loss(self, value: float) -> None:
        """Stop at the first non-finite loss, or at one ``DIVERGED`` times the first step's: the weights
        are garbage from there on, and saving them as a student would report success on a wrong result."""
        if self.first_loss is None and math.isfinite(value):
            self.first_loss = value
        if math.isfinite(value) and value <= DIVERGED * max(abs(self.first_loss or 0.0), 1.0):
            return
        cfg = self.cfg
        what = (
            f"became {value}"
            if not math.isfinite(value)
            else f"reached {value:.3g}, {value / max(abs(self.first_loss or 0.0), 1e-12):.2g}x its first value"
        )
        raise PolicyKDError(
            f"distill diverged at step {self.step}: the {cfg.loss} loss {what} (the buffer's targets are finite, "
            f"so the optimisation blew up); likely cause: --lr {cfg.lr:g} is too high"
            f"{'' if cfg.max_grad_norm else ' with no gradient clipping'} (or --tau/--temperature extreme): "
            "lower --lr (or set --max-grad-norm 1) "
            f"and start over with --force; no student was saved"
        )

    def _check_weights(self) -> None:
        """Refuse to save a student whose weights hold NaN or Inf (an optimiser step after the last loss)."""
        if count_nonfinite(self.net):
            raise PolicyKDError(
                f"distill diverged at step {self.step}: the student's weights are no longer finite; "
                f"lower --lr (now {self.cfg.lr:g}) or set --max-grad-norm, and start over with --force; no student was saved"
            )

    def _fidelity(self) -> float:
        key = "fidelity/mean_abs_diff" if self.continuous else "fidelity/agreement"
        value = self.window.last.get(key, 0.0)
        return -value if self.continuous else value

    def _eval_and_select(self, tb: SummaryWriter) -> None:
        last = self.window.report()
        ret = self._evaluate()
        tb.add_scalar("eval/mean_return", ret, self.step)
        self.history.append(
            {
                "step": self.step,
                "round": self.round,
                "eval_mean_return": ret,
                **last,
            }
        )
        self.keeper.offer((ret, self._fidelity()), self.net, before_save=self._check_weights)
        if self.cfg.target_return is not None and ret >= self.cfg.target_return:
            self.stopped = f"eval return {ret:.2f} reached --target-return {self.cfg.target_return}"
        elif self.cfg.patience and self.keeper.since_best >= self.cfg.patience:
            self.stopped = f"no better evaluation in {self.keeper.since_best} evaluations (--patience)"

    def _finish(self) -> Path:
        cfg, out = self.cfg, self.out
        self._check_weights()
        save_final_weights(out, self.net)
        best = self.keeper.best
        metrics = DistillMetrics(
            steps=self.step,
            rounds=self.round + 1,
            teacher_labels=sum(b.rows for b in self.buffers),
            stopped_early=self.stopped,
            final=self.window.last,
            best_eval_mean_return=best[0] if best else None,
            history=self.history,
            seconds=round(self.wall, 2),
            samples_per_second=round(self.step * cfg.batch_size / max(self.wall, 1e-9), 1),
        )
        write_json(out / "metrics.json", metrics.to_json())
        save_student(out, self.spec, {**self._info(), "weights": BEST})
        (out / CHECKPOINT).unlink(missing_ok=True)
        return out


def log_now(step: int, log_every: int, total: int) -> bool:
    """Whether ``step`` closes a logging window (every ``log_every`` steps, and the last step)."""
    return step % log_every == 0 or step == total
