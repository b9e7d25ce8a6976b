"""train-teacher: train an SB3 teacher from a preset, with periodic evaluation keeping the best model and
resumable atomic checkpoints."""

from __future__ import annotations

import json
import pickle
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import yaml
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first
from stable_baselines3.common.vec_env import VecEnv, VecNormalize, VecTransposeImage

from policy_kd.envs import ensure_registered
from policy_kd.errors import PolicyKDError
from policy_kd.run import (
    atomic_save,
    atomic_write_bytes,
    atomic_write_text,
    check_interrupted,
    job,
    lock_out_dir,
    prepare_out_dir,
    read_run_config,
    write_json,
    write_run_config,
    write_run_info,
)
from policy_kd.teachers.presets import _normalize_kwargs, action_noise, algo_kwargs, load_preset
from policy_kd.teachers.sb3 import ALGOS, algo_class, policy_param_count
from policy_kd.teachers.sources import TEACHER_FILE
from policy_kd.teachers.vec_env import _make_env_stack, _make_eval_env_stack

CHECKPOINT_DIR = "checkpoint"


@runtime_checkable
class CheckpointedCallback(Protocol):
    """An ``extra_callbacks`` entry whose own state a checkpoint keeps beside the model's, so that a resumed
    run continues it (kickstarting's minibatch RNG and log); keyed in ``state.json`` by its class name."""

    def checkpoint_state(self) -> dict[str, Any]:
        """What a resumed run needs, as JSON-able values."""
        ...

    def restore_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Continue from ``checkpoint_state()``'s output, before the resumed training starts."""
        ...


def _stateful(callbacks: Sequence[BaseCallback]) -> dict[str, CheckpointedCallback]:
    return {type(cb).__name__: cb for cb in callbacks if isinstance(cb, CheckpointedCallback)}


@dataclass(frozen=True)
class TrainTeacherConfig:
    """Train an SB3 teacher with a tuned preset, keeping the best model found by periodic evaluation."""

    algo: str = "dqn"
    """Teacher algorithm: dqn, qrdqn (needs the contrib extra), ppo, a2c, sac, tqc (contrib extra), td3 or ddpg."""
    env: str = "CartPole-v1"
    """Gymnasium environment id (MinAtar/... needs the minatar extra, ALE/... the atari extra, LunarLander-v3 the box2d extra)."""
    out: str | None = None
    """Run folder to create (refused if it exists, unless --force)."""
    seed: int = 0
    """Seed for the model, the training envs and the evaluation envs."""
    n_timesteps: int | None = None
    """Training steps; default: the preset's n_timesteps."""
    preset: str | None = None
    """YAML file of presets in the agents/ format (env id -> hyperparameters, with a default: entry); default: the packaged agents/<algo>.yml."""
    eval_freq: int = 5000
    """Environment steps (summed over parallel envs) between evaluations that select the best model."""
    eval_episodes: int = 10
    """Episodes per periodic evaluation."""
    threads: int = 1
    """torch CPU threads (small networks run fastest on one)."""
    device: str = "cpu"
    """torch device for training (cpu, cuda, auto)."""
    checkpoint_freq: int = 100_000
    """Environment steps between resumable checkpoints (model, replay buffer, VecNormalize, evaluation
    history) in checkpoint/; 0: none."""
    resume: bool = False
    """Continue the interrupted run in --out from its checkpoint, with its saved options (--n-timesteps
    may change the total budget: stop a long run earlier, or extend it). The checkpoint's .zip and .pkl
    files are unpickled code: resume only runs you trust."""
    progress: bool = True
    """Show a progress bar."""
    force: bool = False
    """Replace an existing --out folder."""

    def validate(self) -> None:
        if self.resume:
            if self.out is None:
                raise PolicyKDError("--resume needs --out RUN_DIR (the interrupted train-teacher run)")
            if self.n_timesteps is not None and self.n_timesteps <= 0:
                raise PolicyKDError(f"--n-timesteps must be > 0, got {self.n_timesteps}")
            return
        if self.checkpoint_freq < 0:
            raise PolicyKDError(f"--checkpoint-freq must be >= 0, got {self.checkpoint_freq}")
        if self.algo not in ALGOS:
            raise PolicyKDError(f"unknown algo {self.algo!r}; choose one of {', '.join(ALGOS)}")
        if self.n_timesteps is not None and self.n_timesteps <= 0:
            raise PolicyKDError(f"--n-timesteps must be > 0, got {self.n_timesteps}")
        if self.eval_freq <= 0 or self.eval_episodes <= 0:
            raise PolicyKDError("--eval-freq and --eval-episodes must be > 0")
        if self.threads <= 0:
            raise PolicyKDError(f"--threads must be > 0, got {self.threads}")


def save_model(model: BaseAlgorithm, path: Path) -> None:
    """``model.save`` atomically: a kill or a full disk leaves the previous file whole, never a torn zip."""
    atomic_save(path, model.save)


def save_vecnormalize(venv: VecNormalize, path: Path) -> None:
    """``VecNormalize.save`` (a pickle of the statistics) atomically."""
    atomic_save(path, lambda f: pickle.dump(venv, f))


class _SaveBest(BaseCallback):
    """EvalCallback's ``callback_on_new_best``: save the new best model (and its VecNormalize statistics,
    as rl-zoo does) atomically. EvalCallback's own ``best_model_save_path`` is left unset because it calls
    ``model.save`` in place, which a kill or a full disk tears."""

    def __init__(self, out: Path):
        super().__init__()
        self.out = out

    def _on_step(self) -> bool:
        save_model(self.model, self.out / "best_model.zip")
        venv = self.model.get_vec_normalize_env()
        if venv is not None:
            save_vecnormalize(venv, self.out / "best_vecnormalize.pkl")
        return True


class _Checkpoint(BaseCallback):
    """Every ``freq`` env steps (0: never), save what a resumed run needs into ``out/checkpoint/``
    atomically: the model, the replay buffer (off-policy algorithms), VecNormalize statistics and the
    evaluation history. On SIGINT/SIGTERM, save one more and stop.

    Files go to ``checkpoint.new/`` first, which then replaces ``checkpoint/`` by two renames, so a kill at
    any moment leaves one complete checkpoint (``checkpoint/``, or ``checkpoint.old/`` between the renames).
    """

    def __init__(
        self,
        out: Path,
        freq: int,
        eval_cb: EvalCallback,
        seconds_before: float,
        *,
        extras: dict[str, CheckpointedCallback],
        resume_command: str,
    ):
        super().__init__()
        self.out, self.freq, self.eval_cb = out, freq, eval_cb
        self.seconds_before, self.start = seconds_before, time.perf_counter()
        self.extras, self.resume_command = extras, resume_command
        self.last = 0

    def _on_training_start(self) -> None:
        self.last = self.num_timesteps

    def _save(self) -> None:
        seconds = self.seconds_before + time.perf_counter() - self.start
        extra = {name: cb.checkpoint_state() for name, cb in self.extras.items()}
        save_checkpoint(
            self.out, self.model, self.eval_cb, seconds, extra=extra, resume_command=self.resume_command
        )

    def _on_stop(self) -> str:
        if not self.freq:
            return (
                # no option named: distill-online trains without checkpoints that its users did not ask for
                f"this run keeps no checkpoint: {self.out} cannot be resumed; start over with --force"
            )
        self._save()
        return f"checkpoint at step {self.num_timesteps} saved; continue with: {self.resume_command}"

    def _on_step(self) -> bool:
        check_interrupted(self._on_stop)
        if self.freq and self.num_timesteps - self.last >= self.freq:
            self.last = self.num_timesteps
            self._save()
        return True


def save_checkpoint(
    out: Path,
    model: BaseAlgorithm,
    eval_cb: EvalCallback,
    seconds: float,
    *,
    extra: dict[str, dict[str, Any]] | None = None,
    resume_command: str | None = None,
) -> None:
    """Write ``out/checkpoint/`` atomically; ``extra``: the state of the run's checkpointed callbacks,
    ``resume_command``: how this run continues (a job that trains through train-teacher resumes as itself)."""
    new, cur, old = out / "checkpoint.new", out / CHECKPOINT_DIR, out / "checkpoint.old"
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir()
    try:
        model.save(new / "model.zip")
        if hasattr(model, "replay_buffer") and model.replay_buffer is not None:
            model.save_replay_buffer(new / "replay_buffer.pkl")  # type: ignore[attr-defined]
        venv = model.get_env()
        if isinstance(venv, VecNormalize):
            venv.save(str(new / "vecnormalize.pkl"))
    except BaseException:  # a full disk (or a second signal): no half-written checkpoint left behind
        shutil.rmtree(new, ignore_errors=True)
        raise
    state = {
        "num_timesteps": int(model.num_timesteps),
        "best_mean_reward": float(eval_cb.best_mean_reward),
        "evaluations_timesteps": [int(t) for t in eval_cb.evaluations_timesteps],
        "evaluations_results": [[float(r) for r in rs] for rs in eval_cb.evaluations_results],
        "evaluations_length": [[int(n) for n in ns] for ns in eval_cb.evaluations_length],
        "train_seconds": round(seconds, 2),
        "callbacks": extra or {},
        "resume_command": resume_command,
    }
    write_json(new / "state.json", state)
    shutil.rmtree(old, ignore_errors=True)
    if cur.exists():
        cur.rename(old)
    new.rename(cur)
    shutil.rmtree(old, ignore_errors=True)


def _restore_callbacks(out: Path, state: dict[str, Any], extras: dict[str, CheckpointedCallback]) -> None:
    """Hand each checkpointed callback its saved state; refuse a checkpoint whose callbacks differ (a
    kickstart run resumed by train-teacher would lose its distillation term without a word)."""
    saved: dict[str, Any] = state.get("callbacks") or {}
    if saved.keys() != extras.keys():
        how = state.get("resume_command") or "the job that started it, with --resume"
        raise PolicyKDError(f"{out} was checkpointed by another job; continue it with: {how}")
    for name, cb in extras.items():
        cb.restore_checkpoint_state(saved[name])


def _checkpoint_dir(out: Path) -> Path | None:
    for name in (CHECKPOINT_DIR, "checkpoint.old"):
        if (out / name / "state.json").is_file():
            return out / name
    return None


def _saved_train_config(out: Path, progress: bool) -> TrainTeacherConfig:
    if (out / TEACHER_FILE).is_file():
        raise PolicyKDError(f"{out} holds a finished teacher; nothing to resume")
    if _checkpoint_dir(out) is None:
        raise PolicyKDError(f"{out} has no checkpoint to resume from; train again with --force to start over")
    return read_run_config(TrainTeacherConfig, out, progress=progress)


def _resume_state(
    config: TrainTeacherConfig,
) -> tuple[TrainTeacherConfig, Path, Path, dict[str, Any], dict[str, Any]]:
    """``--resume``: the run's saved options (with a new --n-timesteps budget, if given), its folder, the
    checkpoint to continue, the checkpoint's state and the preset the run was started with."""
    out = Path(config.out)  # type: ignore[arg-type]
    lock_out_dir(out, what="teacher folder")
    new_budget = config.n_timesteps
    # the folder as given now: a run folder moved since it started records where it is
    config = replace(_saved_train_config(out, config.progress), out=str(out))
    resume_from = _checkpoint_dir(out)
    state = json.loads((resume_from / "state.json").read_text())  # type: ignore[operator]
    if new_budget is not None:
        if int(state["num_timesteps"]) >= new_budget:
            raise PolicyKDError(
                f"{out} has already trained {state['num_timesteps']} steps; "
                "pass --n-timesteps above that to extend it"
            )
        config = replace(config, n_timesteps=new_budget)
        # a later --resume must keep the new budget
        write_run_config(out, replace(config, resume=False), job="train-teacher")
    preset = yaml.safe_load((out / "preset.yaml").read_text())[config.env]
    return config, out, resume_from, state, preset  # type: ignore[return-value]


def _train_envs(
    config: TrainTeacherConfig, preset: dict[str, Any], resume_from: Path | None
) -> tuple[VecEnv, VecEnv, dict[str, Any] | None]:
    """The training envs and the evaluation env, with the preset's VecNormalize (the checkpoint's
    statistics when resuming): ``(env, eval_env, normalize kwargs or None)``."""
    n_envs = int(preset.get("n_envs", 1))
    frame_stack = preset.get("frame_stack")
    norm = _normalize_kwargs(preset.get("normalize"))
    env = _make_env_stack(config.env, n_envs, config.seed, frame_stack, training=True)
    eval_env = _make_eval_env_stack(config.env, config.seed + 10_000, frame_stack)
    if is_image_space(eval_env.observation_space) and not is_image_space_channels_first(
        eval_env.observation_space  # type: ignore[arg-type]
    ):
        # SB3 transposes the training env's images to channels-first itself; the same for evaluation.
        eval_env = VecTransposeImage(eval_env)
    if norm is not None:
        gamma = preset.get("gamma", 0.99)
        if resume_from is not None and (resume_from / "vecnormalize.pkl").is_file():
            env = VecNormalize.load(str(resume_from / "vecnormalize.pkl"), env)
            env.training = True
        else:
            env = VecNormalize(env, gamma=gamma, **norm)
        # Evaluation sees observations normalised with the training statistics, and raw rewards.
        eval_env = VecNormalize(
            eval_env,
            gamma=gamma,
            training=False,
            norm_reward=False,
            **{k: v for k, v in norm.items() if k not in ("norm_reward",)},
        )
    return env, eval_env, norm


def _new_or_resumed_model(
    cls: type[BaseAlgorithm],
    config: TrainTeacherConfig,
    preset: dict[str, Any],
    env: VecEnv,
    out: Path,
    resume_from: Path | None,
) -> BaseAlgorithm:
    try:
        if resume_from is not None:
            # a resumed run continues the saved model and replay buffer; its envs start new episodes
            model = cls.load(
                resume_from / "model.zip", env=env, device=config.device, tensorboard_log=str(out / "tb")
            )
            if (resume_from / "replay_buffer.pkl").is_file():
                model.load_replay_buffer(resume_from / "replay_buffer.pkl")  # type: ignore[attr-defined]
        else:
            model = cls(
                preset.get("policy", "MlpPolicy"),
                env,
                seed=config.seed,
                device=config.device,
                tensorboard_log=str(out / "tb"),
                verbose=0,
                **algo_kwargs(preset),
                **_noise_kwargs(preset, env),
            )
    except TypeError as exc:
        raise PolicyKDError(
            f"preset for {config.env} has an option {config.algo} does not take: {exc}"
        ) from None
    return model


def _noise_kwargs(preset: dict[str, Any], env: VecEnv) -> dict[str, Any]:
    """``action_noise`` for the constructor when the preset names one (TD3/DDPG), else nothing."""
    noise = action_noise(preset, env.action_space)
    return {} if noise is None else {"action_noise": noise}


def _eval_callback(
    config: TrainTeacherConfig, eval_env: VecEnv, out: Path, n_envs: int, state: dict[str, Any]
) -> EvalCallback:
    """The periodic evaluation that keeps the best model, with its history restored from ``state`` (the
    checkpoint's, when resuming)."""
    eval_cb = EvalCallback(
        eval_env,
        callback_on_new_best=_SaveBest(out),
        n_eval_episodes=config.eval_episodes,
        eval_freq=max(config.eval_freq // n_envs, 1),
        log_path=str(out),
        best_model_save_path=None,  # _SaveBest saves best_model.zip, atomically
        deterministic=True,
        verbose=0,
    )
    if state:
        eval_cb.best_mean_reward = float(state["best_mean_reward"])
        eval_cb.evaluations_timesteps = list(state["evaluations_timesteps"])
        eval_cb.evaluations_results = [list(r) for r in state["evaluations_results"]]
        eval_cb.evaluations_length = [list(n) for n in state["evaluations_length"]]
    return eval_cb


def _save_final(out: Path, model: BaseAlgorithm, env: VecEnv, norm: dict[str, Any] | None) -> None:
    """The last model (and statistics); the best model falls back to it when no evaluation ran."""
    save_model(model, out / "last_model.zip")
    if norm is not None:
        assert isinstance(env, VecNormalize)
        save_vecnormalize(env, out / "last_vecnormalize.pkl")
    best = out / "best_model.zip"
    if not best.exists():  # no evaluation ran (budget below eval_freq): the last model is the teacher
        atomic_write_bytes(best, (out / "last_model.zip").read_bytes())
        if norm is not None:
            atomic_write_bytes(out / "best_vecnormalize.pkl", (out / "last_vecnormalize.pkl").read_bytes())


@job(resumable=True)
def train_teacher(
    config: TrainTeacherConfig,
    *,
    extra_callbacks: Sequence[BaseCallback] = (),
    resume_command: str | None = None,
) -> Path:
    """Train a teacher into ``config.out``; return the run folder. ``teacher.json`` is written last.

    ``extra_callbacks`` run after the evaluation callback on every step (online distillation and
    kickstarting hook into the training this way, see ``policy_kd.online`` and ``policy_kd.kickstart``);
    those that are :class:`CheckpointedCallback` are saved in each checkpoint and restored on ``--resume``.
    ``resume_command``: the command that continues an interrupted run, for the stop message and the
    checkpoint (default: ``policy-kd train-teacher --resume --out OUT``); a checkpoint with callback state
    can only be resumed by a call that passes the same callbacks, so ``train-teacher --resume`` refuses a
    kickstart run's model folder, which would go on without its distillation term.
    """
    config.validate()
    resume_from: Path | None = None
    state: dict[str, Any] = {}
    if config.resume:
        config, out, resume_from, state, preset = _resume_state(config)
    else:
        preset = load_preset(config.algo, config.env, config.preset)
    cls = algo_class(config.algo)
    ensure_registered(config.env)
    n_timesteps = int(config.n_timesteps or preset.get("n_timesteps", 100_000))
    config = replace(config, n_timesteps=n_timesteps)
    if resume_from is None:
        out = prepare_out_dir(config.out, force=config.force, what="teacher folder")
        write_run_info(out, config, job="train-teacher")
        atomic_write_text(out / "preset.yaml", yaml.safe_dump({config.env: preset}, sort_keys=False))
    torch.set_num_threads(config.threads)

    n_envs = int(preset.get("n_envs", 1))
    frame_stack = preset.get("frame_stack")
    env, eval_env, norm = _train_envs(config, preset, resume_from)
    model = _new_or_resumed_model(cls, config, preset, env, out, resume_from)
    eval_cb = _eval_callback(config, eval_env, out, n_envs, state)
    done_before = int(state.get("num_timesteps", 0))
    wall_before = float(state.get("train_seconds", 0.0))
    extras = _stateful(extra_callbacks)
    if resume_from is not None:
        _restore_callbacks(out, state, extras)
    callbacks: list[BaseCallback] = [eval_cb, *extra_callbacks]
    resume_command = resume_command or f"policy-kd train-teacher --resume --out {out}"
    callbacks.append(
        _Checkpoint(
            out, config.checkpoint_freq, eval_cb, wall_before, extras=extras, resume_command=resume_command
        )
    )
    start = time.perf_counter()
    model.learn(
        total_timesteps=n_timesteps - done_before,
        callback=callbacks,
        progress_bar=config.progress,
        tb_log_name="teacher",
        reset_num_timesteps=resume_from is None,
    )
    wall = time.perf_counter() - start + wall_before
    _save_final(out, model, env, norm)
    env.close()
    eval_env.close()
    for name in (CHECKPOINT_DIR, "checkpoint.old", "checkpoint.new"):  # finished: the teacher replaces them
        shutil.rmtree(out / name, ignore_errors=True)

    write_json(
        out / TEACHER_FILE,
        {
            "format": "policy_kd.teacher",
            "version": 1,
            "algo": config.algo,
            "env_id": config.env,
            "model": "best_model.zip",
            "vecnormalize": "best_vecnormalize.pkl" if norm is not None else None,
            "frame_stack": frame_stack,
            "seed": config.seed,
            "n_timesteps": n_timesteps,
            "best_eval_mean_return": float(eval_cb.best_mean_reward) if eval_cb.n_calls else None,
            "policy_params": policy_param_count(model, config.algo),
            "train_seconds": round(wall, 2),
            "resumed": resume_from is not None,
        },
    )
    return out
