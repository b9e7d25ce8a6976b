"""Online distillation (Rusu et al. 2016, §4): distil a student while its teacher is still learning.

The teacher trains with SB3 as ``train-teacher`` trains it; :class:`OnlineDistillation`, an SB3 callback,
hooks into that training. Every ``every`` teacher updates (SB3's own ``_n_updates`` count: gradient steps
for DQN, epochs for PPO/A2C) or env steps, the student takes ``steps`` gradient steps, each on a minibatch
of states drawn from the teacher's own data (DQN: its replay buffer; PPO/A2C: its latest rollout), labelled
by the teacher's *current* network. The student is evaluated every ``student_eval_every`` teacher env
steps on the same episode seeds as the current teacher, so its return can be read against the teacher's
as training goes on (TensorBoard, ``metrics.json``).

``policy-kd distill-online`` writes teacher and student side by side::

    OUT/teacher/   a train-teacher run folder (teacher.json, best_model.zip, evaluations.npz, tb/)
    OUT/student/   a distill-style student folder (student.json, best.pt, last.pt, metrics.json, tb/)

The student folder is what ``policy-kd distill`` writes, so ``policy-kd evaluate --teacher OUT/teacher
--student OUT/student`` compares them. Online runs do not resume: a killed run starts over with --force.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecFrameStack, unwrap_vec_wrapper
from torch.utils.tensorboard import SummaryWriter

from policy_kd.envs import make_env_from_spec
from policy_kd.evaluate import run_episodes
from policy_kd.fidelity import compare_actions
from policy_kd.heads import actions_from_outputs
from policy_kd.losses import (
    CONTINUOUS_LOSSES,
    DETERMINISTIC_LOSSES,
    DISCRETE_LOSSES,
    LOSSES,
    check_loss_for_kind,
    compute_loss,
)
from policy_kd.options import (
    LossOptions,
    RunOptions,
    StudentOptions,
    TeacherTrainingOptions,
    check_choice,
    check_ranges,
)
from policy_kd.record import space_json
from policy_kd.run import job, prepare_out_dir, write_json, write_run_info
from policy_kd.spaces import action_range
from policy_kd.students import Student, build_student, count_params, save_student
from policy_kd.teacher import Teacher, policy_param_count, train_teacher
from policy_kd.teachers.sb3 import algo_name, check_supported, sample_states
from policy_kd.training import (
    BEST,
    SELECTION_SEED,
    BestKeeper,
    optimizer_step,
    save_final_weights,
    student_info,
)

UNITS = ("updates", "steps")
LOSSES_FOR_ALGO = {
    "dqn": tuple(DISCRETE_LOSSES),
    "sac": CONTINUOUS_LOSSES,
    "tqc": CONTINUOUS_LOSSES,
    "td3": DETERMINISTIC_LOSSES,
    "ddpg": DETERMINISTIC_LOSSES,
}
ONLINE_ALGOS = ("dqn", "ppo", "a2c", "sac", "tqc", "td3", "ddpg")
# Student evaluations start where distill's model selection does, away from evaluate's seeds 0..N.
EVAL_SEED = SELECTION_SEED
# States used to refresh the student's input standardisation before each distillation phase.
STATS_ROWS = 10_000


# -------------------------------------- the live teacher (the states it trains on: teachers.sb3.sample_states)


def live_teacher(model: BaseAlgorithm, env_id: str, path: str) -> Teacher:
    """A :class:`Teacher` view of a model that is still training: labels come from its current network,
    and raw observations are normalised with its live ``VecNormalize`` statistics, if any."""
    env = model.get_env()
    stack = unwrap_vec_wrapper(env, VecFrameStack) if env is not None else None
    return Teacher(
        model=model,
        algo=algo_name(model),
        path=path,
        env_id=env_id,
        frame_stack=stack.stacked_obs.n_stack if isinstance(stack, VecFrameStack) else None,
        vec_normalize=model.get_vec_normalize_env(),
    )


# ------------------------------------------------------------------------------------------------ the job


@dataclass(frozen=True)
class DistillOnlineConfig(TeacherTrainingOptions, StudentOptions, LossOptions, RunOptions):
    """Train an SB3 teacher (as train-teacher does) and distil a student from it while it trains."""

    algo: str = "dqn"
    """Teacher algorithm: dqn, ppo or a2c; for Box actions ppo, a2c (Gaussian students), sac, tqc (squashed
    Gaussian students), td3 or ddpg (deterministic students). The teacher's preset comes from agents/<algo>.yml."""
    env: str = "CartPole-v1"
    """Gymnasium environment id."""
    out: str | None = None
    """Run folder to create, holding teacher/ and student/ (refused if it exists, unless --force)."""
    seed: int = 0
    """Seed for the teacher, the student's weights and its minibatches."""
    params_fraction: float = 0.01
    """Student size as a fraction of the teacher's policy parameters."""
    activation: str = "relu"
    """Student hidden activation: relu, tanh, elu, gelu."""
    normalize_obs: bool = True
    """Standardise the student's inputs with the mean/std of the teacher's stored states (refreshed before
    every distillation phase, since the teacher's data drifts as it learns)."""
    every: int = 128
    """Distil every this many teacher updates (or env steps, see --unit)."""
    unit: str = "updates"
    """What --every counts: updates (SB3's update counter: DQN gradient steps, PPO/A2C epochs) or steps
    (teacher env steps, summed over its parallel envs)."""
    distill_steps: int = 32
    """Student gradient steps per --every (M): the student takes M steps each K teacher updates."""
    batch_size: int = 256
    """Student minibatch size (states drawn with replacement from the teacher's buffer)."""
    lr: float = 1e-3
    """Student Adam learning rate."""
    student_eval_every: int | None = None
    """Teacher env steps between evaluations of the student (and of the current teacher, on the same
    seeds); default: --eval-freq."""

    def validate(self) -> None:
        check_choice("algo", self.algo, ONLINE_ALGOS, what="algo")
        # dqn acts on Discrete actions, sac/tqc/td3/ddpg on Box ones; ppo/a2c on either, so their loss is
        # checked against the action space once the teacher exists
        self.validate_loss(LOSSES_FOR_ALGO.get(self.algo, LOSSES))
        self.validate_student()
        self.validate_run()
        self.validate_training()
        check_choice("unit", self.unit, UNITS)
        check_ranges(
            self,
            positive=("lr", "every", "distill_steps", "batch_size", "student_eval_every"),
        )


@job(resumable=False)
def distill_online(config: DistillOnlineConfig) -> Path:
    """Train a teacher into ``OUT/teacher`` while distilling a student into ``OUT/student``; return OUT."""
    config.validate()
    root = prepare_out_dir(config.out, force=config.force, what="run folder")
    write_run_info(root, config, job="distill-online")
    torch.set_num_threads(config.threads)
    student_dir = root / "student"
    student_dir.mkdir()
    callback = OnlineDistillation(config, student_dir, teacher_dir=root / "teacher")
    teacher_config = config.train_teacher_config(
        algo=config.algo,
        env=config.env,
        out=str(root / "teacher"),
        seed=config.seed,
        threads=config.threads,
        progress=config.progress,
        # online runs do not resume: a teacher checkpoint would invite train-teacher --resume, which trains
        # on without the student; without one, SIGTERM's line says to start over with --force
        checkpoint_freq=0,
    )
    train_teacher(teacher_config, extra_callbacks=[callback])
    return root


# ------------------------------------------------------------------------------------------- the callback


class OnlineDistillation(BaseCallback):
    """Distil a student from the model being trained: ``distill_steps`` steps every ``every`` updates.

    Distillation is checked at the end of each rollout (DQN: every ``train_freq`` env steps; PPO: every
    ``n_steps``), where the stored data is complete, and once more when training ends; the steps owed for
    every ``every`` boundary passed since the last check are taken then, so after training the student has
    taken exactly ``distill_steps * (progress // every)`` steps, ``progress`` being the final update (or
    step) count. Attributes read by tests and the job: ``student_steps``, ``phases`` (one entry per
    distillation phase: teacher steps, updates, student steps taken, mean loss) and ``history`` (one entry
    per evaluation).
    """

    def __init__(self, config: DistillOnlineConfig, out: Path, *, teacher_dir: Path | None = None):
        super().__init__()
        config.validate()
        self.cfg, self.out, self.teacher_dir = config, Path(out), teacher_dir
        self.loss_cfg = config.loss_config
        self.eval_every = config.student_eval_every or config.eval_freq
        self.rng = np.random.default_rng(config.seed)
        self.student_steps = 0
        self.boundaries = 0  # multiples of --every already distilled for
        self.last_eval: int | None = None
        self.phases: list[dict[str, float]] = []
        self.history: list[dict[str, float]] = []
        self.keeper = BestKeeper(self.out, ties_to_later=True)
        self.seconds = 0.0
        self.last_loss: float | None = None

    # -- set-up ----------------------------------------------------------------------------------------------

    def _init_callback(self) -> None:
        model, cfg = self.model, self.cfg
        check_supported(model, "online distillation")
        path = str(self.teacher_dir.resolve()) if self.teacher_dir else "<training>"
        self.teacher = live_teacher(model, cfg.env, path)
        obs_shape = tuple(model.observation_space.shape or ())
        self.teacher_params = policy_param_count(model, self.teacher.algo)
        kind, continuous = self.teacher.kind, self.teacher.continuous
        check_loss_for_kind(
            cfg.loss, kind, continuous, only_actions=f"teacher {path} exposes only its actions"
        )
        self.width = action_range(model.action_space)  # None for discrete actions
        self.spec = cfg.student_spec(
            obs_shape,
            self.teacher.n_outputs,
            teacher_params=self.teacher_params,
            activation=cfg.activation,
            head=kind if continuous else "discrete",  # gaussian, squashed_gaussian or deterministic
        )
        # the student's initialisation must not draw from the global torch RNG the teacher's training uses:
        # with or without an online student, a seed gives the same teacher
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            self.net: Student = build_student(self.spec)
        if continuous:
            space = model.action_space
            self.net.set_action_bounds(space.low.reshape(-1), space.high.reshape(-1))  # type: ignore[attr-defined]
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        self.tb = SummaryWriter(str(self.out / "tb"))
        spec = self.teacher.env_spec
        self.make_eval_env = lambda: make_env_from_spec(spec)
        self.eval_seeds = [EVAL_SEED + i for i in range(cfg.eval_episodes)]

    # -- SB3 hooks -----------------------------------------------------------------------------------------------

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        self._catch_up()
        if self.last_eval is None or self.num_timesteps - self.last_eval >= self.eval_every:
            self.evaluate()

    def _on_training_end(self) -> None:
        self._catch_up()
        if self.last_eval != self.num_timesteps:
            self.evaluate()
        self._finish()
        self.tb.close()

    # -- distillation ---------------------------------------------------------------------------------------------

    def _progress(self) -> int:
        return int(self.model._n_updates if self.cfg.unit == "updates" else self.num_timesteps)

    def _catch_up(self) -> None:
        due = self._progress() // self.cfg.every - self.boundaries
        if due > 0:
            self.distill(due * self.cfg.distill_steps)
            self.boundaries += due

    def distill(self, n_steps: int) -> float:
        """Take ``n_steps`` student gradient steps on fresh teacher labels; return their mean loss."""
        start = time.perf_counter()
        cfg, net = self.cfg, self.net
        if cfg.normalize_obs:
            net.set_obs_stats(torch.from_numpy(sample_states(self.model, STATS_ROWS, self.rng)))
        net.train()
        total, agree = torch.zeros(()), torch.zeros(())
        for _ in range(n_steps):
            raw = sample_states(self.model, cfg.batch_size, self.rng)  # (batch, *obs_shape)
            labels = self.teacher.label(raw)
            target = torch.from_numpy(labels.outputs["teacher"])  # (batch, n_outputs)
            out = net(torch.from_numpy(raw))  # (batch, n_outputs)
            t_log_std = labels.outputs.get("teacher_log_std")
            loss = compute_loss(
                out,
                target,
                self.loss_cfg,
                student_log_std=getattr(net, "log_std", None),
                teacher_log_std=None if t_log_std is None else torch.from_numpy(t_log_std),
            )
            optimizer_step(loss, self.opt)
            total += loss.detach()
            if self.width is None:
                agree += (out.argmax(-1) == target.argmax(-1)).float().mean()
            else:  # actions within evaluate's tolerance of the range, as evaluate's agreement
                bounds = (net.action_low.numpy(), net.action_high.numpy())
                acted = actions_from_outputs(out.detach().numpy(), self.spec.head, bounds)
                bad, _ = compare_actions(labels.greedy, acted, self.width)
                agree += float(1.0 - bad.mean())
        self.student_steps += n_steps
        mean_loss, mean_agree = float(total) / n_steps, float(agree) / n_steps
        self.last_loss = mean_loss
        t = self.num_timesteps
        self.phases.append(
            {
                "teacher_steps": t,
                "teacher_updates": int(self.model._n_updates),
                "student_steps": n_steps,
                "loss": mean_loss,
                "agreement": mean_agree,
            }
        )
        # the teacher's env steps are the x axis of every student scalar, as of the teacher's own
        self.tb.add_scalar("distill/loss", mean_loss, t)
        self.tb.add_scalar("distill/agreement", mean_agree, t)
        self.tb.add_scalar("distill/student_steps", self.student_steps, t)
        self.seconds += time.perf_counter() - start
        return mean_loss

    def evaluate(self) -> dict[str, float]:
        """Play the student and the current teacher (greedy) on the same seeds; log and keep the best."""
        start = time.perf_counter()
        self.net.eval()
        env_id = self.cfg.env
        student = float(
            run_episodes(self.net, env_id, self.eval_seeds, env_factory=self.make_eval_env).returns.mean()
        )
        teacher = float(
            run_episodes(self.teacher, env_id, self.eval_seeds, env_factory=self.make_eval_env).returns.mean()
        )
        self.net.train()
        t = self.last_eval = self.num_timesteps
        # the same tag as SB3's EvalCallback in the teacher's tb/: TensorBoard overlays the two runs
        self.tb.add_scalar("eval/mean_reward", student, t)
        self.tb.add_scalar("eval/teacher_mean_reward", teacher, t)
        entry = {
            "teacher_steps": t,
            "teacher_updates": int(self.model._n_updates),
            "student_steps": self.student_steps,
            "student_return": student,
            "teacher_return": teacher,
            "distill_loss": self.last_loss,
        }
        self.history.append(entry)  # type: ignore[arg-type]
        # ties go to the later student: it has distilled from a teacher that trained longer
        if self.student_steps > 0:
            self.keeper.offer(student, self.net)
        self.seconds += time.perf_counter() - start
        write_json(self.out / "metrics.json", self._metrics())
        return entry  # type: ignore[return-value]

    # -- the student folder -------------------------------------------------------------------------------------

    def _metrics(self) -> dict[str, Any]:
        return {
            "student_steps": self.student_steps,
            "teacher_steps": int(self.num_timesteps),
            "teacher_updates": int(self.model._n_updates),
            "best_eval_mean_return": self.keeper.best,
            "history": self.history,
            "phases": self.phases,
            "seconds": round(self.seconds, 2),
        }

    def _info(self) -> dict[str, Any]:
        teacher = self.teacher
        meta = {
            "env_id": self.cfg.env,
            "action_space": space_json(self.model.action_space, all_bounds=True),
            "observation_space": space_json(self.model.observation_space),
            "env_spec": teacher.env_spec,
            "teacher": {
                "kind": teacher.kind,
                "algo": teacher.algo,
                "path": teacher.path,
                "policy_params": self.teacher_params,
                "n_outputs": teacher.n_outputs,
            },
        }
        online = {
            "every": self.cfg.every,
            "unit": self.cfg.unit,
            "distill_steps": self.cfg.distill_steps,
            "batch_size": self.cfg.batch_size,
        }
        return student_info(
            meta,
            loss=self.loss_cfg,
            params=count_params(self.net),
            teacher_params=self.teacher_params,
            extra={"online": online},
        )

    def _finish(self) -> None:
        save_final_weights(self.out, self.net)  # no best.pt: never evaluated after a distillation step
        write_json(self.out / "metrics.json", self._metrics())
        save_student(self.out, self.spec, {**self._info(), "weights": BEST})
