"""Students of one shape trained together (issue 24): the grouping rule and the group trainer.

A sweep distils many students from one buffer: sizes x losses x temperatures x learning rates x seeds.
Students that share an architecture and a loop shape (:func:`group_key`) train in one process as one
stacked model (``policy_kd.stacked``): one forward and backward pass and one optimiser step per
minibatch serve all K of them, so a step's fixed cost (Python, dispatch, small-matrix overhead) is paid
once instead of K times.

Each student still comes out as if trained alone by ``policy-kd distill``:

- its network is initialised by distill's own code (seeded), and its minibatches are drawn by its own
  generator seeded as distill seeds it, the same rows in the same order;
- its loss, tau, learning rate, schedule, weight decay and gradient clip are its own;
- its folder is an ordinary student folder (config, command line, versions, TensorBoard scalars,
  ``metrics.json``, ``student.json``, ``best.pt``/``last.pt``), and its checkpoint is the very
  ``checkpoint.pt`` distill writes, so a group resumes bit for bit and ``policy-kd distill --resume``
  can continue one of its students alone (and a group can continue students distill started).

The weights agree with distill's to float rounding, not bit for bit: a batched matmul sums in another
order than K single ones. Optimiser, schedule and sampling are the same operations on the same numbers.

Students whose run depends on more than the shared minibatch loop train alone, by distill itself
(:func:`alone_reason` says why): DAgger rounds, hint losses, early stopping, continuous actions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from policy_kd.buffer import Sampler
from policy_kd.buffer_format import read_manifest
from policy_kd.distill import (
    CHECKPOINT,
    DIVERGED,
    _fields_for_loss,
    _Run,
    _saved_config,
    distill,
    log_now,
    start_run,
)
from policy_kd.distill_config import DistillConfig
from policy_kd.errors import PolicyKDError
from policy_kd.run import check_interrupted, job
from policy_kd.stacked import StackedAdamW, StackedStudents, stacked_fidelity, stacked_loss
from policy_kd.students import hidden_widths
from policy_kd.training import LogWindow

__all__ = ["alone_reason", "distill_group", "group_key"]

#: Steps of minibatch indices drawn ahead per student (one generator call per chunk, not per step).
DRAW_AHEAD = 64


def _resolved(config: DistillConfig) -> DistillConfig:
    """The config a run will use: a ``resume`` run's saved one (still marked ``resume``)."""
    if config.resume and config.out is not None and (Path(config.out) / "config.yaml").is_file():
        return _saved_config(Path(config.out), progress=config.progress)
    return config


def alone_reason(config: DistillConfig) -> str | None:
    """Why ``config``'s student cannot share a stacked model with others (None: it can)."""
    config = _resolved(config)
    if config.rounds > 1:
        return "DAgger rounds (--rounds > 1) record new data with each student's own policy"
    if config.hint_weight > 0:
        return "a hint loss (--hint-weight) runs the teacher on every minibatch and trains a projection"
    if config.patience or config.target_return is not None:
        return "early stopping (--patience, --target-return) ends each student at its own step"
    if config.buffer is None:
        return "no buffer"
    if config.loss == "gaussian_kl":
        return "continuous actions (a Gaussian head) train alone"
    try:
        meta = read_manifest(Path(config.buffer)).get("meta", {})
    except PolicyKDError:
        return "its buffer cannot be read (distill alone reports why)"
    space = meta.get("action_space", {}).get("type")
    if space != "Discrete":  # stacked heads are plain logits: Box and per-component heads train alone
        return f"{space} actions ({'a Gaussian or deterministic' if space == 'Box' else 'a per-component'} head) train alone"
    return None


def group_key(config: DistillConfig) -> tuple | None:
    """Students with equal keys can train as one stacked model; None when this one must train alone.

    The key holds what every student of a group shares: the buffer, the network's shape (architecture,
    widths or size fraction, activation, input standardisation), the loop's shape (steps, batch size,
    evaluation, logging and checkpoint intervals, sampling, threads) and, for a resumed run, the step
    its checkpoint holds. Seeds, losses and their settings, learning rates, schedules, weight decay and
    gradient clipping may differ within a group."""
    if alone_reason(config) is not None:
        return None
    config = _resolved(config)
    step = _checkpoint_step(Path(config.out)) if config.resume and config.out else 0  # type: ignore[arg-type]
    hidden = hidden_widths(config.hidden)
    # the size comes from --params-fraction unless the widths are given (--hidden 0 leaves a CNN's channels
    # to the fraction)
    by_fraction = hidden is None or (hidden == () and config.student != "mlp" and config.channels is None)
    return (
        str(Path(config.buffer).resolve()),  # type: ignore[arg-type]
        config.teacher and str(Path(config.teacher).resolve()),
        config.student,
        hidden,
        config.params_fraction if by_fraction else None,
        config.layers,
        config.activation,
        config.channels,
        config.conv,
        config.conv_stride,
        config.normalize_obs,
        config.steps,
        config.batch_size,
        config.eval_every,
        config.eval_episodes,
        config.log_every,
        config.checkpoint_every,
        config.source_weights,
        config.in_memory,
        config.threads,
        config.resume,
        step,
    )


def _checkpoint_step(out: Path) -> int:
    try:
        return int(torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)["step"])
    except Exception:  # distill --resume reports a missing or damaged checkpoint in its own words
        return -1


def distill_group(
    configs: Sequence[DistillConfig], *, vectorised: bool = True, progress: bool = False
) -> list[Path]:
    """Train every student in ``configs`` and return their folders, in order.

    With ``vectorised``, students with equal :func:`group_key` train together as one stacked model (a
    group of one, and every student with an :func:`alone_reason`, runs ``distill`` itself); without it,
    each runs ``distill`` one after another. ``progress`` shows one bar per group (a student trained
    alone follows its own config's ``progress``)."""
    out: list[Path | None] = [None] * len(configs)
    groups: dict[Any, list[int]] = {}
    for i, config in enumerate(configs):
        key = group_key(config) if vectorised else None
        groups.setdefault(("alone", i) if key is None else key, []).append(i)
    for members in groups.values():
        if len(members) == 1:
            out[members[0]] = distill(configs[members[0]])
        else:
            paths = _distill_together([configs[i] for i in members], progress=progress)
            for i, path in zip(members, paths, strict=True):
                out[i] = path
    return out  # type: ignore[return-value]


@job(resumable=True)
def _distill_together(configs: Sequence[DistillConfig], *, progress: bool) -> list[Path]:
    """Train students of one :func:`group_key` as one stacked model; return their folders."""
    for config in configs:  # refuse a bad config before any folder is made
        config.validate()
    started = [start_run(config) for config in configs]
    torch.set_num_threads(started[0][0].threads)
    first = _Member(*started[0], shared=None)
    members = [first] + [_Member(c, o, shared=first) for c, o in started[1:]]
    return _Group(members, progress=progress).train()


class _Member(_Run):
    """One student of a group: distill's own run object (its folder, network, optimiser and scheduler for
    checkpoints, evaluation, selection and the finished folder), with the buffer opened once per group."""

    def __init__(self, config: DistillConfig, out: Path, *, shared: _Member | None):
        self._shared = shared
        self._stats: torch.Tensor | None = None
        super().__init__(config, out)
        # distill's checkpoint keeps torch's RNG, which nothing draws from after the student is built
        self.torch_rng = torch.get_rng_state()

    def _open_data(self) -> None:
        s = self._shared
        if s is None:
            super()._open_data()
            return
        self.buffers, self.meta, self._teacher = s.buffers, s.meta, s._teacher
        self.teacher_path = self.cfg.teacher
        self.teacher_params, self.continuous, self.nvec = s.teacher_params, s.continuous, s.nvec
        self.names = _fields_for_loss(self.cfg, self.meta)

    def _input_sample(self) -> torch.Tensor:
        if self._shared is not None:
            return self._shared._input_sample()
        if self._stats is None:
            self._stats = super()._input_sample()
        return self._stats

    def _state(self, sampler: Any) -> dict[str, Any]:
        state = super()._state(sampler)
        state["torch_rng"] = self.torch_rng
        return state


class _GeneratorState:
    """What ``_Run._state`` asks of a sampler: its generator state."""

    def __init__(self, state: torch.Tensor):
        self._state = state

    def state(self) -> torch.Tensor:
        return self._state


class _GroupSampler:
    """Each student's minibatches as its own ``Sampler`` draws them (its generator, seeded as distill seeds
    it, the same rows in the same order), gathered for all K students at once: observations
    ``(K, batch, *obs_shape)`` and teacher outputs actions-major, ``(K, n_actions, batch)``.

    From an in-memory buffer, each generator draws ``DRAW_AHEAD`` steps of indices in one call (a
    generator gives the same numbers in one call as in several) and one ``take`` per field gathers all K
    minibatches; otherwise each student's batch is gathered by the sampler itself. ``standardize`` (vector
    observations only) precomputes the standardised observations beside the teacher outputs in one table,
    so one ``take`` gathers both, already laid out as the hand-written forward reads them: ``x``
    ``(K, obs_dim, batch)``."""

    def __init__(self, sampler: Sampler, seeds: Sequence[int], batch_size: int, *, standardize: Any = None):
        self.data, self.batch_size = sampler, batch_size
        self.gens = [torch.Generator().manual_seed(s) for s in seeds]
        self.fast = bool(sampler.in_memory and sampler.stack is None and sampler.weights is None)
        self.table: np.ndarray | None = None
        if self.fast and standardize is not None:
            obs, teacher = sampler.in_ram["obs"], sampler.in_ram["teacher"]
            if obs.ndim == 2:
                self.obs_dim = obs.shape[1]
                x = standardize(torch.from_numpy(obs)).numpy()
                self.table = np.concatenate([x, teacher.astype(np.float32)], axis=1)  # (rows, obs_dim + A)
        self._chunk: np.ndarray | None = None  # (steps, K * batch) indices drawn ahead
        self._starts: list[torch.Tensor] = []  # each generator's state before the chunk
        self._pos = 0

    def sample(self, ahead: int) -> dict[str, torch.Tensor]:
        """The next minibatch of every student; ``ahead``: steps that may be drawn ahead (up to the next
        checkpoint, whose generator states must be those after the steps taken)."""
        K, B = len(self.gens), self.batch_size
        if not self.fast:
            batches = []
            for g in self.gens:
                self.data.gen = g
                batches.append(self.data.sample(B))
            out = {k: torch.stack([b[k] for b in batches]) for k in batches[0]}
            out["teacher"] = out["teacher"].transpose(1, 2).contiguous()
            return out
        if self._chunk is None or self._pos == self._chunk.shape[0]:
            n = max(1, min(ahead, DRAW_AHEAD))
            self._starts = [g.get_state() for g in self.gens]
            drawn = torch.empty(K, n * B, dtype=torch.int64)
            for k, g in enumerate(self.gens):
                torch.randint(self.data.rows, (n * B,), generator=g, out=drawn[k])
            self._chunk = drawn.view(K, n, B).transpose(0, 1).reshape(n, K * B).numpy()
            self._pos = 0
        idx = self._chunk[self._pos]
        self._pos += 1
        if self.table is not None:
            # (K * B, obs_dim + A) -> (K, obs_dim + A, B): both halves feature-major
            rows = torch.from_numpy(self.table.take(idx, axis=0)).view(K, B, -1).transpose(1, 2).contiguous()
            return {"x": rows[:, : self.obs_dim], "teacher": rows[:, self.obs_dim :]}
        ram = self.data.in_ram
        obs = torch.from_numpy(ram["obs"].take(idx, axis=0))
        teacher = torch.from_numpy(ram["teacher"].take(idx, axis=0))
        return {
            "obs": obs.view(K, B, *obs.shape[1:]),
            "teacher": teacher.view(K, B, -1).transpose(1, 2).contiguous(),
        }

    def states(self) -> list[torch.Tensor]:
        """Each generator's state after the steps taken (not those drawn ahead)."""
        if self._chunk is None or self._pos == self._chunk.shape[0]:
            return [g.get_state() for g in self.gens]
        out = []
        for start in self._starts:  # replay the steps taken from the chunk's start
            g = torch.Generator()
            g.set_state(start)
            torch.randint(self.data.rows, (self._pos * self.batch_size,), generator=g)
            out.append(g.get_state())
        return out

    def set_states(self, states: Sequence[torch.Tensor]) -> None:
        for g, s in zip(self.gens, states, strict=True):
            g.set_state(s)
        self._chunk = None


class _LrDriver:
    """The cosine schedules of a group's students: one ``CosineAnnealingLR`` over a stand-in optimiser
    with one parameter group per cosine student (torch's own arithmetic, one call per step); its state
    splits into (and is rebuilt from) each student's own scheduler state."""

    def __init__(self, members: Sequence[_Member], total: int):
        self.index = [k for k, m in enumerate(members) if m.sched is not None]
        self.members = [members[k] for k in self.index]
        if not self.index:
            return
        groups = [{"params": [torch.zeros(1)], "lr": m.opt.param_groups[0]["lr"]} for m in self.members]
        self.opt = torch.optim.SGD(groups, lr=1.0)
        for g, m in zip(self.opt.param_groups, self.members, strict=True):
            g["initial_lr"] = m.opt.param_groups[0].get("initial_lr", g["lr"])
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=total)
        self.opt.step()  # no gradients: changes nothing, but the scheduler no longer warns of its order
        states = [m.sched.state_dict() for m in self.members]  # type: ignore[union-attr]
        merged = dict(states[0])
        for key, value in states[0].items():
            if isinstance(value, list) and len(value) == 1:
                merged[key] = [s[key][0] for s in states]
        self.sched.load_state_dict(merged)
        for g, m in zip(self.opt.param_groups, self.members, strict=True):
            g["lr"] = m.opt.param_groups[0]["lr"]

    def step(self, lrs: list[float]) -> bool:
        """Advance the schedules; write the new learning rates into ``lrs``. True if any changed."""
        if not self.index:
            return False
        self.sched.step()
        for k, g in zip(self.index, self.opt.param_groups, strict=True):
            lrs[k] = g["lr"]
        return True

    def to_members(self) -> None:
        """Each cosine student's scheduler set to its slice of the driver's state."""
        if not self.index:
            return
        state = self.sched.state_dict()
        for j, m in enumerate(self.members):
            own = {
                key: [value[j]] if isinstance(value, list) and len(value) == len(self.members) else value
                for key, value in state.items()
            }
            m.sched.load_state_dict(own)  # type: ignore[union-attr]
            m.opt.param_groups[0]["initial_lr"] = self.opt.param_groups[j]["initial_lr"]


class _Group:
    """The loop of ``distill`` over K students at once, with each student's own run object kept current
    whenever distill's own code reads it (checkpoints, evaluations, the finished folder)."""

    def __init__(self, members: list[_Member], *, progress: bool):
        self.members, self.progress = members, progress
        self.cfg = members[0].cfg
        self.K = len(members)
        resumed = self.cfg.resume
        sampler_states = [m._load_checkpoint() for m in members] if resumed else None
        self.step = members[0].step
        if any(m.step != self.step for m in members):
            raise PolicyKDError("the students of a group must resume from checkpoints of one step")
        self.stack = StackedStudents([m.net for m in members])
        self.lrs = [m.opt.param_groups[0]["lr"] for m in members]
        self.opt = StackedAdamW(
            self.stack,
            lrs=self.lrs,
            weight_decays=[m.cfg.weight_decay for m in members],
            max_grad_norms=[m.cfg.max_grad_norm for m in members],
        )
        if resumed and self.step > 0:
            moments = [[m.opt.state[p] for p in m.net.parameters()] for m in members]
            self.opt.exp_avg = self.stack.from_students([[s["exp_avg"] for s in ms] for ms in moments])
            self.opt.exp_avg_sq = self.stack.from_students([[s["exp_avg_sq"] for s in ms] for ms in moments])
            self.opt.steps = int(moments[0][0]["step"])
        self.lr_driver = _LrDriver(members, self.cfg.steps * self.cfg.rounds)
        self.losses = [m.loss_cfg for m in members]
        self.taus = [m.cfg.tau for m in members]
        shared = Sampler(
            members[0].buffers,
            members[0].names,
            seed=self.cfg.seed,
            in_memory=self.cfg.in_memory,
            source_weights=self.cfg.source_weights,
        )
        self.sampler = _GroupSampler(
            shared,
            [m.cfg.seed + m.round for m in members],
            self.cfg.batch_size,
            standardize=self.stack.standardize if self.stack.hand else None,
        )
        if sampler_states is not None:
            self.sampler.set_states(sampler_states)
        # the open logging window, as tensors over the students (see LogWindow)
        self.count = members[0].window.count
        self.loss_sum = torch.stack(
            [torch.as_tensor(m.window.sums.get("loss/total", 0.0), dtype=torch.float32) for m in members]
        )
        # the latest gradient norms (K,), kept (as distill keeps them) for the students that clip
        self.clips = [m.cfg.max_grad_norm > 0 for m in members]
        self.norm: torch.Tensor | None = None
        if any("grad_norm" in m.window.sums for m in members):
            self.norm = torch.stack(
                [torch.as_tensor(m.window.sums.get("grad_norm", 0.0), dtype=torch.float32) for m in members]
            )
        self.limit: torch.Tensor | None = None
        if members[0].first_loss is not None:
            self.limit = self._limit(torch.tensor([m.first_loss for m in members], dtype=torch.float32))
        self.wall = members[0].wall

    @staticmethod
    def _limit(first: torch.Tensor) -> torch.Tensor:
        return DIVERGED * first.abs().clamp(min=1.0)

    # -- keeping each student's run object current --------------------------------------------------------------

    def _sums(self, k: int) -> dict[str, torch.Tensor]:
        sums = {"loss/output": self.loss_sum[k].clone(), "loss/total": self.loss_sum[k].clone()}
        if self.norm is not None and self.clips[k]:
            sums["grad_norm"] = self.norm[k].clone()
        return sums

    def _sync(self, k: int, *, optimiser: bool) -> _Member:
        """Student ``k``'s run object with the group's current weights, window and counters (and, for a
        checkpoint, its optimiser and scheduler state)."""
        m = self.members[k]
        self.stack.load_into(k, m.net)
        m.step, m.wall = self.step, self.wall
        m.window = LogWindow(self._sums(k) if self.count else {}, self.count, m.window.last)
        if optimiser:
            m.opt.param_groups[0]["lr"] = self.lrs[k]
            if self.opt.steps:
                step = torch.tensor(float(self.opt.steps))
                avg = self.stack.student_tensors(self.opt.exp_avg, k)
                avg_sq = self.stack.student_tensors(self.opt.exp_avg_sq, k)
                for p, a, a2 in zip(m.net.parameters(), avg, avg_sq, strict=True):
                    m.opt.state[p] = {"step": step.clone(), "exp_avg": a, "exp_avg_sq": a2}
        return m

    def _checkpoint(self) -> str:
        self.lr_driver.to_members()
        states = self.sampler.states()
        for k in range(self.K):
            self._sync(k, optimiser=True)._save_checkpoint(_GeneratorState(states[k]))  # type: ignore[arg-type]
        return (
            f"checkpoint at step {self.step} of {self.K} students saved; continue with "
            f"policy_kd.distill_students(..., resume=True) or each with: policy-kd distill --resume --out DIR"
        )

    # -- the loop ---------------------------------------------------------------------------------------------

    def train(self) -> list[Path]:
        cfg, total = self.cfg, self.cfg.steps * self.cfg.rounds
        writers = [
            SummaryWriter(str(m.out / "tb"), purge_step=self.step + 1 if cfg.resume else None)
            for m in self.members
        ]
        bar = tqdm(
            total=total, initial=self.step, disable=not self.progress, desc=f"distill x{self.K}", unit="step"
        )
        start = time.perf_counter() - self.wall

        def checkpoint() -> str:
            self.wall = time.perf_counter() - start
            return self._checkpoint()

        try:
            while self.step < total:
                check_interrupted(checkpoint)
                every = cfg.checkpoint_every
                ahead = (every - self.step % every) if every else total - self.step
                self._train_step(writers, total, min(ahead, total - self.step))
                bar.update(1)
                if cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == total):
                    self.wall = time.perf_counter() - start
                    for k, tb in enumerate(writers):
                        self._sync(k, optimiser=False)._eval_and_select(tb)
                if every and self.step % every == 0 and self.step < total:
                    checkpoint()
        finally:
            bar.close()
            for tb in writers:
                tb.close()
        self.wall = time.perf_counter() - start
        return [self._sync(k, optimiser=False)._finish() for k in range(self.K)]

    def _train_step(self, writers: list[SummaryWriter], total: int, ahead: int) -> None:
        """One gradient step of every student; on logging steps, each student's window to TensorBoard."""
        self.step += 1
        logging = log_now(self.step, self.cfg.log_every, total)
        batch = self.sampler.sample(ahead)
        if "x" in batch:  # standardised, feature-major
            out = self.stack.forward(batch["x"], standardized=True)  # (K, n_actions, batch)
        else:
            out = self.stack.forward(batch["obs"])
        loss, grad = stacked_loss(out, batch["teacher"], self.losses)
        self._check_loss(loss)
        self.stack.backward(grad)
        norm = self.opt.clip()
        self.opt.step()
        if self.lr_driver.step(self.lrs):
            self.opt.set_lrs(self.lrs)
        self.loss_sum = self.loss_sum + loss if self.count else loss.clone()
        self.count += 1
        if norm is not None:
            self.norm = norm
        if logging:
            agreement, kl_tau = stacked_fidelity(out, batch["teacher"], self.taus)
            self._close_window(writers, agreement, kl_tau)

    def _close_window(
        self, writers: list[SummaryWriter], agreement: torch.Tensor, kl_tau: torch.Tensor
    ) -> None:
        """What ``LogWindow.close`` and distill's logging do, per student: the window's means (fidelity and
        gradient norm: their latest values) become ``window.last`` and go to TensorBoard."""
        fidelity = {"fidelity/agreement": agreement, "fidelity/kl_tau": kl_tau}
        for k, (m, tb) in enumerate(zip(self.members, writers, strict=True)):
            sums = {"loss/output": self.loss_sum[k], "loss/total": self.loss_sum[k]}
            # the keys in the order distill's window first saw them
            norm = {"grad_norm": self.norm[k]} if self.norm is not None and self.clips[k] else {}
            if self.count > 1:
                sums.update(norm)
            sums.update({key: v[k] for key, v in fidelity.items()})
            if self.count == 1:
                sums.update(norm)
            m.window = LogWindow(sums, self.count)
            for key, value in m.window.close().items():
                tb.add_scalar(key, value, self.step)
            tb.add_scalar("lr", self.lrs[k], self.step)
        self.count = 0

    def _check_loss(self, loss: torch.Tensor) -> None:
        """distill's divergence check, for every student in one comparison; a student that fails it raises
        distill's own error."""
        if self.limit is None:  # the first step: each student's reference loss
            self.limit = self._limit(loss)
            for m, value in zip(self.members, loss.tolist(), strict=True):
                m.first_loss = value if math.isfinite(value) else None
        if bool((loss <= self.limit).all()):  # NaN compares false
            return
        for m, value in zip(self.members, loss.tolist(), strict=True):
            m.step = self.step
            m._check_loss(value)
