"""Teachers: train SB3 DQN/QR-DQN/PPO/A2C from the presets in ``agents/``, and load them to act and label.

A loaded :class:`Teacher` gives, in one forward pass, both the outputs the buffer records and the greedy
action taken from them, so what the teacher does and what it is recorded to know can never disagree.
What the outputs are (``Teacher.kind``):

========================  ===============================  ==============================================
kind                      teacher                          extra fields
========================  ===============================  ==============================================
``q_values`` (DQN)        Q-values ``(n_actions,)``        none
``quantiles`` (QR-DQN)    mean of the quantiles            ``teacher_quantiles`` ``(n_quantiles, n_actions)``
``logits`` (PPO/A2C)      action logits ``(n_actions,)``   none
``gaussian`` (PPO/A2C)    Gaussian mean ``(action_dim,)``  ``teacher_log_std`` ``(action_dim,)``
========================  ===============================  ==============================================

(``squashed_gaussian``: a Gaussian policy whose actions SB3 squashes with tanh, gSDE with
``squash_output``; the fields are the pre-squash mean and log std, as for ``gaussian``.)

Teachers load from a train-teacher run folder, an rl-baselines3-zoo run folder (also ``hf://ORG/REPO`` from
the Hugging Face Hub), or a plain SB3 ``.zip``; files SB3 1.x saved with OpenAI ``gym`` load without it.
Loading a ``.zip`` (and a ``vecnormalize.pkl``) unpickles code (SB3 stores classes and schedules with
cloudpickle): load only files you trust.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import pickle
import shutil
import sys
import time
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import yaml
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    VecEnv,
    VecFrameStack,
    VecNormalize,
    VecTransposeImage,
)
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn
from stable_baselines3.common.vec_env.stacked_observations import StackedObservations
from stable_baselines3.common.vec_env.util import dict_to_obs

from policy_kd.config import load_yaml_mapping
from policy_kd.envs import ensure_registered, features_extractor, make_env, make_env_from_spec, zoo_wrapper
from policy_kd.envs.atari import is_atari
from policy_kd.errors import PolicyKDError
from policy_kd.heads import sample_gaussian, sample_logits, to_bounds
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

ALGOS: tuple[str, ...] = ("dqn", "qrdqn", "ppo", "a2c")
CHECKPOINT_DIR = "checkpoint"
"""Teacher algorithms. ``qrdqn`` comes from sb3-contrib (the ``contrib`` extra), imported only when used."""
CONTRIB_HINT = "pip install 'policy-kd[contrib]'"
TEACHER_FILE = "teacher.json"
UNPICKLE_WARNING = "a .zip or .pkl teacher file is unpickled code: load only files you trust"
_ACTIVATIONS = {"ReLU", "Tanh", "ELU", "LeakyReLU", "GELU", "SiLU", "Sigmoid"}
_OPTIMIZERS = {"Adam", "AdamW", "RMSprop", "SGD"}
# Keys a preset may hold that are not constructor arguments of the SB3 algorithm.
_PRESET_EXTRAS = ("n_timesteps", "policy", "n_envs", "normalize", "frame_stack")


def algo_class(algo: str) -> type[BaseAlgorithm]:
    """The SB3 algorithm class for ``algo``; sb3-contrib's QR-DQN is imported only here, on demand."""
    if algo == "qrdqn":
        try:
            from sb3_contrib import QRDQN
        except ImportError:
            raise PolicyKDError(f"qrdqn teachers need sb3-contrib; install it with: {CONTRIB_HINT}") from None
        return QRDQN
    classes: dict[str, type[BaseAlgorithm]] = {"dqn": DQN, "ppo": PPO, "a2c": A2C}
    if algo not in classes:
        raise PolicyKDError(f"unknown algo {algo!r}; choose one of {', '.join(ALGOS)}")
    return classes[algo]


@dataclass(frozen=True)
class TrainTeacherConfig:
    """Train an SB3 teacher with a tuned preset, keeping the best model found by periodic evaluation."""

    algo: str = "dqn"
    """Teacher algorithm: dqn, qrdqn (needs the contrib extra), ppo or a2c."""
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


# --------------------------------------------------------------------------------------------- presets


def load_preset(algo: str, env_id: str, path: str | Path | None = None) -> dict[str, Any]:
    """The preset for ``env_id``, else the file's ``atari:`` (Atari ids) or ``default:`` entry."""
    if path is None:
        text = resources.files("policy_kd.agents").joinpath(f"{algo}.yml").read_text()
        presets = yaml.safe_load(text)
        source = f"agents/{algo}.yml"
    else:
        presets = load_yaml_mapping(path, what="preset file")
        source = str(path)
    entry = presets.get(env_id)
    if entry is None and is_atari(env_id):
        # An MLP default on 84x84 frames would train, slowly and badly: Atari needs its own entry.
        entry = presets.get("atari")
        if entry is None:
            raise PolicyKDError(
                f"{source} has no entry for {env_id} and no atari: entry; pass --preset FILE with one"
            )
    if entry is None:
        entry = presets.get("default")
    if entry is None:
        raise PolicyKDError(f"{source} has no entry for {env_id} and no default: entry; add one")
    if not isinstance(entry, dict):
        raise PolicyKDError(f"{source}: entry for {env_id} must be a mapping of hyperparameters")
    return dict(entry)


def _schedule(value: Any) -> Any:
    # rl-zoo writes linear schedules as "lin_<initial value>", decaying to 0 over training.
    if isinstance(value, str) and value.startswith("lin_"):
        try:
            start = float(value[4:])
        except ValueError:
            raise PolicyKDError(f"bad schedule {value!r}; write lin_<float>, e.g. lin_0.001") from None
        return LinearSchedule(start, 0.0, 1.0)
    return value


def algo_kwargs(preset: dict[str, Any]) -> dict[str, Any]:
    """Turn a preset's YAML values into SB3 constructor keyword arguments (no eval of strings).

    In ``policy_kwargs``, classes are named, never written as code: ``activation_fn`` and
    ``optimizer_class`` by their ``torch.nn`` / ``torch.optim`` class name, and ``features_extractor`` by
    its name in ``policy_kd.envs.FEATURES_EXTRACTORS`` (its ``features_dim`` beside it).
    """
    kwargs = {k: v for k, v in preset.items() if k not in _PRESET_EXTRAS}
    for key in ("learning_rate", "clip_range"):
        if key in kwargs:
            kwargs[key] = _schedule(kwargs[key])
    if isinstance(kwargs.get("train_freq"), list):
        kwargs["train_freq"] = tuple(kwargs["train_freq"])
    if not isinstance(kwargs.get("policy_kwargs") or {}, dict):
        raise PolicyKDError(
            f"preset policy_kwargs must be a YAML mapping such as {{net_arch: [64, 64]}}, got "
            f"{kwargs['policy_kwargs']!r} (python expressions are never evaluated)"
        )
    pk = dict(kwargs.get("policy_kwargs") or {})
    if "activation_fn" in pk:
        name = pk["activation_fn"]
        if name not in _ACTIVATIONS:
            raise PolicyKDError(f"activation_fn {name!r} is not one of {', '.join(sorted(_ACTIVATIONS))}")
        pk["activation_fn"] = getattr(torch.nn, name)
    if "optimizer_class" in pk:
        name = pk["optimizer_class"]
        if name not in _OPTIMIZERS:
            raise PolicyKDError(f"optimizer_class {name!r} is not one of {', '.join(sorted(_OPTIMIZERS))}")
        pk["optimizer_class"] = getattr(torch.optim, name)
    if "features_extractor" in pk:
        pk["features_extractor_class"] = features_extractor(pk.pop("features_extractor"))
        extractor_kwargs = dict(pk.get("features_extractor_kwargs") or {})
        if "features_dim" in pk:
            extractor_kwargs["features_dim"] = pk.pop("features_dim")
        if extractor_kwargs:
            pk["features_extractor_kwargs"] = extractor_kwargs
    elif "features_dim" in pk:
        raise PolicyKDError("policy_kwargs features_dim needs a features_extractor beside it; name one")
    if pk:
        kwargs["policy_kwargs"] = pk
    return kwargs


def _normalize_kwargs(value: Any) -> dict[str, Any] | None:
    if value in (None, False):
        return None
    if value is True:
        return {}
    if isinstance(value, dict):
        return dict(value)
    raise PolicyKDError(f"preset normalize must be true/false or a mapping, got {value!r}")


class _DummyVecEnv(DummyVecEnv):
    """SB3's DummyVecEnv, minus the deepcopies of every step's info dicts and observation buffer.

    Each ``env.step`` returns a fresh info dict and nothing downstream mutates it, so a shallow copy of
    the list is as safe; the deepcopy cost about as much as a CartPole step. The observation buffer holds
    plain arrays, so ``ndarray.copy`` gives the same independent copy as SB3's ``deepcopy`` at a fifth of
    the cost. Same semantics as SB3 2.x's ``step_wait`` otherwise (auto-reset, ``terminal_observation``,
    ``TimeLimit.truncated``).
    """

    def _obs_from_buf(self) -> Any:
        return dict_to_obs(self.observation_space, {k: v.copy() for k, v in self.buf_obs.items()})

    def step_wait(self) -> VecEnvStepReturn:
        for i in range(self.num_envs):
            obs, self.buf_rews[i], terminated, truncated, self.buf_infos[i] = self.envs[i].step(
                self.actions[i]
            )
            self.buf_dones[i] = terminated or truncated
            self.buf_infos[i]["TimeLimit.truncated"] = truncated and not terminated
            if self.buf_dones[i]:
                self.buf_infos[i]["terminal_observation"] = obs
                obs, self.reset_infos[i] = self.envs[i].reset()
            self._save_obs(i, obs)
        return self._obs_from_buf(), np.copy(self.buf_rews), np.copy(self.buf_dones), list(self.buf_infos)


def _vec_env(make: Callable[[], gym.Env], n_envs: int, seed: int | None, frame_stack: int | None) -> VecEnv:
    env = make_vec_env(lambda **_: make(), n_envs=n_envs, seed=seed, vec_env_cls=_DummyVecEnv)
    if frame_stack:
        env = VecFrameStack(env, frame_stack)
    return env


def _make_env_stack(
    env_id: str, n_envs: int, seed: int, frame_stack: int | None, *, training: bool = False
) -> VecEnv:
    ensure_registered(env_id)
    return _vec_env(lambda: make_env(env_id, training=training), n_envs, seed, frame_stack)


def _make_eval_env_stack(env_id: str, seed: int, frame_stack: int | None) -> VecEnv:
    """train-teacher's evaluation env. Atari: the training env (a lost life ends an episode, the frame stack
    restarts, FIRE is pressed) with no Monitor above its ``GameMonitor``, as the zoo's eval env: SB3's
    ``EvalCallback`` then scores whole games with their real score while the teacher sees its training
    observations."""
    if not is_atari(env_id):
        return _make_env_stack(env_id, 1, seed, frame_stack)
    ensure_registered(env_id)
    env: VecEnv = _DummyVecEnv([lambda: make_env(env_id, training=True)])
    env.seed(seed)
    return VecFrameStack(env, frame_stack) if frame_stack else env


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

    def __init__(self, out: Path, freq: int, eval_cb: EvalCallback, seconds_before: float):
        super().__init__()
        self.out, self.freq, self.eval_cb = out, freq, eval_cb
        self.seconds_before, self.start = seconds_before, time.perf_counter()
        self.last = 0

    def _on_training_start(self) -> None:
        self.last = self.num_timesteps

    def _save(self) -> None:
        seconds = self.seconds_before + time.perf_counter() - self.start
        save_checkpoint(self.out, self.model, self.eval_cb, seconds)

    def _on_stop(self) -> str:
        if not self.freq:
            return (
                f"no checkpoint (--checkpoint-freq 0): {self.out} cannot be resumed; start over with --force"
            )
        self._save()
        return (
            f"checkpoint at step {self.num_timesteps} saved; "
            f"continue with: policy-kd train-teacher --resume --out {self.out}"
        )

    def _on_step(self) -> bool:
        check_interrupted(self._on_stop)
        if self.freq and self.num_timesteps - self.last >= self.freq:
            self.last = self.num_timesteps
            self._save()
        return True


def save_checkpoint(out: Path, model: BaseAlgorithm, eval_cb: EvalCallback, seconds: float) -> None:
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
    }
    write_json(new / "state.json", state)
    shutil.rmtree(old, ignore_errors=True)
    if cur.exists():
        cur.rename(old)
    new.rename(cur)
    shutil.rmtree(old, ignore_errors=True)


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


@job(resumable=True)
def train_teacher(config: TrainTeacherConfig, *, extra_callbacks: Sequence[BaseCallback] = ()) -> Path:
    """Train a teacher into ``config.out``; return the run folder. ``teacher.json`` is written last.

    ``extra_callbacks`` run after the evaluation callback on every step (online distillation and
    kickstarting hook into the training this way, see ``policy_kd.online`` and ``policy_kd.kickstart``).
    """
    config.validate()
    resume_from: Path | None = None
    state: dict[str, Any] = {}
    if config.resume:
        out = Path(config.out)  # type: ignore[arg-type]
        lock_out_dir(out, what="teacher folder")
        new_budget = config.n_timesteps
        config = _saved_train_config(out, config.progress)
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
            )
    except TypeError as exc:
        raise PolicyKDError(
            f"preset for {config.env} has an option {config.algo} does not take: {exc}"
        ) from None

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
    done_before, wall_before = 0, 0.0
    if resume_from is not None:
        done_before = int(state["num_timesteps"])
        wall_before = float(state.get("train_seconds", 0.0))
        eval_cb.best_mean_reward = float(state["best_mean_reward"])
        eval_cb.evaluations_timesteps = list(state["evaluations_timesteps"])
        eval_cb.evaluations_results = [list(r) for r in state["evaluations_results"]]
        eval_cb.evaluations_length = [list(n) for n in state["evaluations_length"]]
    callbacks: list[BaseCallback] = [eval_cb, *extra_callbacks]
    callbacks.append(_Checkpoint(out, config.checkpoint_freq, eval_cb, wall_before))
    start = time.perf_counter()
    model.learn(
        total_timesteps=n_timesteps - done_before,
        callback=callbacks,
        progress_bar=config.progress,
        tb_log_name="teacher",
        reset_num_timesteps=resume_from is None,
    )
    wall = time.perf_counter() - start + wall_before
    save_model(model, out / "last_model.zip")
    if norm is not None:
        assert isinstance(env, VecNormalize)
        save_vecnormalize(env, out / "last_vecnormalize.pkl")
    best = out / "best_model.zip"
    if not best.exists():  # no evaluation ran (budget below eval_freq): the last model is the teacher
        atomic_write_bytes(best, (out / "last_model.zip").read_bytes())
        if norm is not None:
            atomic_write_bytes(out / "best_vecnormalize.pkl", (out / "last_vecnormalize.pkl").read_bytes())
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


# --------------------------------------------------------------------------------------------- loading


def _zip_data(zip_path: Path) -> dict[str, Any]:
    """The JSON ``data`` entry of an SB3 ``.zip``, read without unpickling anything."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            data = json.loads(archive.read("data"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise PolicyKDError(
            f"could not read SB3 model {zip_path} ({type(exc).__name__}: {exc})".splitlines()[0]
        ) from None
    if not isinstance(data, dict):
        raise PolicyKDError(f"could not read SB3 model {zip_path} (its data entry is not a mapping)")
    return data


def _detect_algo(zip_path: Path) -> str:
    """Which algorithm saved ``zip_path``, from its policy class's module (nothing is unpickled)."""
    data = _zip_data(zip_path)
    policy_class = data.get("policy_class")
    module = policy_class.get("__module__", "") if isinstance(policy_class, dict) else ""
    if module.startswith("stable_baselines3.dqn."):
        return "dqn"
    if module.startswith("sb3_contrib.qrdqn."):
        return "qrdqn"
    if module == "stable_baselines3.common.policies":  # ActorCriticPolicy and its Cnn/MultiInput variants
        if "cg_max_steps" in data:
            algo = "trpo"  # sb3-contrib's TRPO shares the policy class
        else:
            return "ppo" if "clip_range" in data else "a2c"
    else:
        # e.g. stable_baselines3.sac.policies -> sac, sb3_contrib.common.recurrent.policies -> recurrent
        parts = module.split(".")
        algo = (parts[2] if parts[1:2] == ["common"] else parts[1]) if len(parts) > 2 else "unknown"
    raise PolicyKDError(
        f"{zip_path} was saved by {algo!r} (policy class from {module or 'an unknown module'}); "
        f"supported teachers are {', '.join(ALGOS)}"
    )


def policy_param_count(model: BaseAlgorithm, algo: str) -> int:
    """Parameters of the modules that choose actions: DQN's q_net and QR-DQN's quantile_net (not their
    targets), PPO/A2C's actor (features extractor, policy MLP, action head, and log_std for Gaussian
    policies; not the value head)."""
    policy = model.policy
    extra: list[torch.nn.Parameter] = []
    if algo == "dqn":
        modules: list[torch.nn.Module] = [policy.q_net]
    elif algo == "qrdqn":
        modules = [policy.quantile_net]
    else:
        modules = [policy.pi_features_extractor, policy.mlp_extractor.policy_net, policy.action_net]
        extra = [policy.log_std] if isinstance(getattr(policy, "log_std", None), torch.nn.Parameter) else []
    params = {id(p): p for m in modules for p in m.parameters()} | {id(p): p for p in extra}
    return sum(p.numel() for p in params.values())


@dataclass(frozen=True)
class Labels:
    """What one teacher forward pass gives for a batch of states."""

    outputs: dict[str, np.ndarray]
    """Buffer field name -> array ``(batch, *shape)`` (see ``Teacher.output_fields``)."""
    greedy: np.ndarray
    """The teacher's deterministic action per state ``(batch, *action_shape)``."""


@dataclass(kw_only=True)
class _EnvRecipe:
    """How to rebuild the environment a teacher saw; shared by what load_teacher finds and the Teacher."""

    env_id: str
    frame_stack: int | None = None
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    env_wrappers: tuple[tuple[str, dict[str, Any]], ...] = ()
    raw_env: bool = False
    normalize_before_stack: bool = False
    trained_env_id: str | None = None
    """The env id the teacher was trained on, when it runs on another version of it (``env_id``)."""

    def recipe(self) -> dict[str, Any]:
        """The recipe's fields as keyword arguments (to pass from a _Source to a Teacher)."""
        return {f.name: getattr(self, f.name) for f in fields(_EnvRecipe)}

    @property
    def env_spec(self) -> dict[str, Any]:
        """How to rebuild the teacher's env, as JSON-able data: ``policy_kd.envs.make_env_from_spec(spec)``
        makes it without loading the teacher (e.g. for a student distilled from its buffer)."""
        return {
            "env_id": self.env_id,
            "raw": self.raw_env,
            "env_kwargs": dict(self.env_kwargs),
            "wrappers": [[name, dict(kwargs)] for name, kwargs in self.env_wrappers],
            "frame_stack": self.frame_stack,
        }

    def make_env(self, *, stacked: bool = True) -> gym.Env:
        """One environment as the teacher saw it, with raw (unnormalised) observations: its wrappers, and
        frame stacking laid out as ``VecFrameStack`` does (unless ``stacked=False``)."""
        return make_env_from_spec(self.env_spec, stacked=stacked)

    def make_vec_env(self, n_envs: int, seed: int | None) -> VecEnv:
        """Envs as the teacher saw them (wrappers, frame stacking), with raw (unnormalised) observations."""
        return _vec_env(lambda: self.make_env(stacked=False), n_envs, seed, self.frame_stack)


@dataclass(kw_only=True)
class Teacher(_EnvRecipe):
    """A loaded SB3 teacher with one-forward-pass access to its outputs and greedy actions.

    The environment is rebuilt as the teacher saw it (:attr:`env_spec`): ``make_env(env_id, raw=raw_env,
    **env_kwargs)``, then ``env_wrappers`` (allow-listed import path, kwargs) in order, then frame stacking. Observations stay raw (what a buffer records);
    ``vec_normalize`` statistics, if any, are applied inside :meth:`label`, before stacking when
    ``normalize_before_stack`` (rl-baselines3-zoo's order) and after it otherwise (train-teacher's).
    """

    model: BaseAlgorithm
    algo: str
    path: str
    vec_normalize: VecNormalize | None = None
    source: str | None = None
    """What ``load_teacher`` was given (run folder, ``.zip`` or ``hf://`` address): load it again from this."""

    def __post_init__(self) -> None:
        # SB3's policy.device walks the parameters on every access (~50 µs): look it up once
        self._device = self.model.policy.device
        space = self.model.action_space
        if not isinstance(space, (gym.spaces.Discrete, gym.spaces.Box)):
            raise PolicyKDError(
                f"teacher {self.path} acts in {space}; supported action spaces are Discrete and Box"
            )
        self.model.policy.set_training_mode(False)

    @property
    def continuous(self) -> bool:
        return isinstance(self.model.action_space, gym.spaces.Box)

    @property
    def kind(self) -> str:
        """What ``teacher`` holds: ``q_values`` (DQN), ``quantiles`` (QR-DQN: the quantiles' mean),
        ``logits`` (PPO/A2C, discrete), ``gaussian`` or ``squashed_gaussian`` (PPO/A2C, Box: the mean)."""
        if self.algo == "dqn":
            return "q_values"
        if self.algo == "qrdqn":
            return "quantiles"
        if not self.continuous:
            return "logits"
        return "squashed_gaussian" if self.model.policy.squash_output else "gaussian"

    @property
    def observation_space(self) -> gym.Space:
        return self.model.observation_space

    @property
    def action_space(self) -> gym.spaces.Discrete | gym.spaces.Box:
        return self.model.action_space  # type: ignore[return-value]

    @property
    def n_outputs(self) -> int:
        """Discrete: the number of actions. Box: the action dimension (the flattened action shape)."""
        space = self.action_space
        return int(np.prod(space.shape)) if isinstance(space, gym.spaces.Box) else int(space.n)

    @property
    def policy_params(self) -> int:
        return policy_param_count(self.model, self.algo)

    def meta(self) -> dict[str, Any]:
        """What a buffer or run records about its teacher (JSON-able)."""
        return {
            "kind": self.kind,
            "algo": self.algo,
            "path": str(Path(self.path).resolve()),
            "source": self.source,
            "trained_env_id": self.trained_env_id,
            "policy_params": self.policy_params,
            "n_outputs": self.n_outputs,
        }

    def output_fields(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Buffer fields this teacher labels each state with: name -> (dtype, per-row shape).

        ``teacher`` is always there: the output a student is distilled toward (see the module docstring).
        """
        out = {"teacher": ("float32", (self.n_outputs,))}
        if self.algo == "qrdqn":
            out["teacher_quantiles"] = ("float32", (int(self.model.policy.n_quantiles), self.n_outputs))
        elif self.continuous:
            out["teacher_log_std"] = ("float32", (self.n_outputs,))
        return out

    def normalize_obs(self, obs: np.ndarray) -> np.ndarray:
        """Raw observations as the teacher's network takes them (VecNormalize statistics applied)."""
        vn = self.vec_normalize
        if vn is None:
            return obs
        if not (self.normalize_before_stack and self.frame_stack):
            return vn.normalize_obs(obs)
        # rl-baselines3-zoo normalises each frame, then stacks: undo the stack, normalise, restack.
        space = vn.observation_space  # one frame's
        _, axis, _, _ = StackedObservations.compute_stacking(self.frame_stack, space)  # type: ignore[arg-type]
        frames = np.split(np.asarray(obs), self.frame_stack, axis=axis)
        return np.concatenate([vn.normalize_obs(f) for f in frames], axis=axis)

    @torch.no_grad()
    def label(self, obs: np.ndarray) -> Labels:
        """One forward pass over a batch of raw observations: the recorded outputs and the greedy action."""
        policy = self.model.policy
        obs = self.normalize_obs(obs)
        if obs.shape[1:] == policy.observation_space.shape:
            # Already a batch in the network's layout: skip obs_to_tensor's per-call checks (~60 µs a
            # step, as much as the forward pass of a small MLP). Scaling happens inside the network.
            obs_t = torch.as_tensor(obs, device=self._device)
        else:  # e.g. channel-last images SB3 transposes for the network
            obs_t, _ = policy.obs_to_tensor(obs)
        if self.algo == "dqn":
            q = _numpy(policy.q_net(obs_t))  # (batch, n_actions)
            return Labels(outputs={"teacher": q}, greedy=q.argmax(axis=-1))
        if self.algo == "qrdqn":
            quantiles = _numpy(policy.quantile_net(obs_t))  # (batch, n_quantiles, n_actions)
            q = quantiles.mean(axis=1)  # (batch, n_actions): what QR-DQN acts on
            return Labels(outputs={"teacher": q, "teacher_quantiles": quantiles}, greedy=q.argmax(axis=-1))
        features = policy.extract_features(obs_t, policy.pi_features_extractor)
        latent_pi = policy.mlp_extractor.forward_actor(features)
        if not self.continuous:
            logits = _numpy(policy.action_net(latent_pi))  # (batch, n_actions)
            return Labels(outputs={"teacher": logits}, greedy=logits.argmax(axis=-1))
        # The action distribution (diagonal Gaussian, or gSDE's state-dependent one) in one pass.
        normal = policy._get_action_dist_from_latent(latent_pi).distribution
        mean, log_std = _numpy(normal.mean), _numpy(normal.stddev.log())  # (batch, action_dim) each
        return Labels(outputs={"teacher": mean, "teacher_log_std": log_std}, greedy=self._to_action(mean))

    def head_module(self) -> torch.nn.Module:
        """The teacher's final linear layer: its input is the feature layer hint distillation matches."""
        policy = self.model.policy
        if self.algo == "dqn":
            return policy.q_net.q_net[-1]
        if self.algo == "qrdqn":
            return policy.quantile_net.quantile_net[-1]
        return policy.action_net

    @property
    def feature_dim(self) -> int:
        return int(self.head_module().in_features)

    def features(self, obs: np.ndarray) -> np.ndarray:
        """The input of the teacher's output layer for a batch of raw observations ``(batch, feature_dim)``.

        Captured by a forward pre-hook during the usual labelling pass, so it is exactly what the
        teacher's head saw, whatever the feature extractor (MLP, NatureCNN, MinAtar CNN).
        """
        captured: list[torch.Tensor] = []
        handle = self.head_module().register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            self.label(obs)
        finally:
            handle.remove()
        return _numpy(captured[0].reshape(len(captured[0]), -1))

    def _to_action(self, pre_squash: np.ndarray) -> np.ndarray:
        """A Gaussian sample or mean -> the action SB3 takes: clipped to the bounds, or tanh-squashed and
        scaled to them."""
        space = self.action_space
        assert isinstance(space, gym.spaces.Box)
        squash = bool(self.model.policy.squash_output)
        action = to_bounds(pre_squash.reshape(-1, *space.shape), space.low, space.high, squash=squash)
        return action.astype(space.dtype, copy=False)

    def sample(self, labels: Labels, rng: np.random.Generator) -> np.ndarray:
        """Actions drawn from the teacher's own distribution: softmax of logits, or mean + std * N(0, 1)
        (clipped or squashed as SB3 does); DQN and QR-DQN act greedily."""
        if self.algo in ("dqn", "qrdqn"):
            return labels.greedy
        if not self.continuous:
            return sample_logits(labels.outputs["teacher"], rng)
        mean, log_std = labels.outputs["teacher"], labels.outputs["teacher_log_std"]
        return self._to_action(sample_gaussian(mean, log_std, rng, noise_dtype=np.float32))

    def outputs(self, obs: np.ndarray) -> np.ndarray:
        """The ``teacher`` field for a batch of raw observations: ``(batch, n_outputs)`` float32."""
        return self.label(obs).outputs["teacher"]

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Actions for a batch of observations (the same protocol students follow)."""
        labels = self.label(obs)
        return labels.greedy if deterministic else self.sample(labels, np.random.default_rng())

    def file_bytes(self) -> int:
        return Path(self.path).stat().st_size


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.cpu().numpy().astype(np.float32, copy=False)


# ------------------------------------------------------------------------------- where a teacher lives


@dataclass(kw_only=True)
class _Source(_EnvRecipe):
    """What load_teacher found: the model file, and how to rebuild the env the teacher saw."""

    zip_path: Path
    algo: str | None = None
    vecnorm_path: Path | None = None


def _resolve_env_id(trained_on: str, requested: str | None, what: str) -> tuple[str, str | None]:
    """Where a teacher trained on ``trained_on`` runs: ``(env_id, trained_env_id)``.

    ``--env`` may name another version of the same env (``LunarLander-v3`` for a ``LunarLander-v2``
    teacher, a version Gymnasium 1.x retired): it runs there, ``trained_env_id`` remembering where it
    was trained, if its observation and action spaces match (``_load_source`` checks them).
    """
    if requested is None or requested == trained_on:
        try:
            ensure_registered(trained_on)
        except PolicyKDError:
            others = _other_versions(trained_on)
            if requested is not None or not others:
                raise
            raise PolicyKDError(
                f"{what} was trained on {trained_on}, which this Gymnasium does not register (it has "
                f"{', '.join(others)}); run it there with --env {others[-1]} (its spaces are checked)"
            ) from None
        return trained_on, None
    if _env_family(requested) != _env_family(trained_on):
        raise PolicyKDError(
            f"{what} was trained on {trained_on}, not {requested}; drop --env or pick another teacher"
        )
    return requested, trained_on


def _env_family(env_id: str) -> tuple[str | None, str]:
    namespace, name, _ = gym.envs.registration.parse_env_id(env_id)
    return namespace, name


def _other_versions(env_id: str) -> list[str]:
    """The registered ids of ``env_id``'s env under another version, oldest first."""
    try:
        family = _env_family(env_id)
    except gym.error.Error:
        return []
    specs = [s for s in gym.registry.values() if (s.namespace, s.name) == family and s.id != env_id]
    return [s.id for s in sorted(specs, key=lambda s: s.version or 0)]


def _run_folder_source(path: Path, env_id: str | None, algo: str | None) -> _Source:
    meta_path = path / TEACHER_FILE
    try:
        meta = json.loads(meta_path.read_text())
        source = _Source(
            zip_path=path / meta["model"],
            env_id=meta["env_id"],
            algo=algo or meta["algo"],
            vecnorm_path=path / meta["vecnormalize"] if meta.get("vecnormalize") else None,
            frame_stack=meta.get("frame_stack"),
        )
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise PolicyKDError(
            f"{meta_path} is damaged ({exc}); retrain the teacher or pass its .zip with --env"
        ) from None
    source.env_id, source.trained_env_id = _resolve_env_id(source.env_id, env_id, f"teacher {path}")
    return source


class _ZooLoader(yaml.SafeLoader):
    """SafeLoader that reads the ``!!python/...`` tags PyYAML writes (rl-baselines3-zoo's ``config.yml``
    and ``args.yml`` are dumped OrderedDicts, possibly with tuples) as plain lists, mappings and strings.
    It never constructs a Python object nor imports anything."""


def _plain(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


_ZooLoader.add_constructor(None, _plain)  # type: ignore[arg-type]


def read_zoo_yaml(path: Path) -> dict[str, Any]:
    """A zoo ``config.yml``/``args.yml`` as a plain dict (a dumped OrderedDict is a list of [key, value])."""
    try:
        data = yaml.load(path.read_text(), Loader=_ZooLoader)  # _ZooLoader is a SafeLoader
    except (OSError, yaml.YAMLError) as exc:
        raise PolicyKDError(
            f"{path} is not readable YAML ({type(exc).__name__}); pass another run folder"
        ) from None
    # !!python/object/apply:collections.OrderedDict holds one argument: the list of [key, value] pairs.
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], list):
        data = data[0]
    if isinstance(data, list) and all(isinstance(p, list) and len(p) == 2 for p in data):
        data = {k: v for k, v in data}
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyKDError(f"{path} is not a zoo config (expected a mapping); pass another run folder")
    return data


def _zoo_params_dir(path: Path) -> Path | None:
    """Where a zoo run keeps ``args.yml``: ``<env>/`` in a ``logs/<algo>/<env>_1`` run, the folder itself
    in a Hugging Face ``sb3/<algo>-<env>`` repository."""
    if (path / "args.yml").is_file():
        return path
    dirs = [p for p in sorted(path.iterdir()) if p.is_dir() and (p / "args.yml").is_file()]
    return dirs[0] if len(dirs) == 1 else None


def _zoo_wrappers(value: Any, config_path: Path) -> tuple[tuple[str, dict[str, Any]], ...]:
    # The zoo accepts one import path, or a list of paths and {path: {kwarg: value}} mappings.
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    wrappers = []
    for item in items:
        if isinstance(item, str):
            name, kwargs = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            ((name, kwargs),) = item.items()
            if kwargs is not None and not isinstance(kwargs, dict):
                raise PolicyKDError(
                    f"{config_path}: env_wrapper {name} arguments must be a mapping, got {kwargs!r}"
                )
            name, kwargs = str(name), dict(kwargs or {})
        else:
            raise PolicyKDError(
                f"{config_path}: cannot read env_wrapper entry {item!r}; expected an import path"
            )
        zoo_wrapper(name, kwargs)  # refuses names off the allow-list and non-plain arguments, now
        wrappers.append((name, kwargs))
    return tuple(wrappers)


def _zoo_source(path: Path, params: Path, env_id: str | None, algo: str | None) -> _Source:
    """An rl-baselines3-zoo run folder: ``<env>.zip`` (or ``best_model.zip``), ``<env>/{args,config}.yml``."""
    args = read_zoo_yaml(params / "args.yml")
    config = read_zoo_yaml(params / "config.yml") if (params / "config.yml").is_file() else {}
    zoo_env, zoo_algo = args.get("env"), args.get("algo")
    if not isinstance(zoo_env, str) or not isinstance(zoo_algo, str):
        raise PolicyKDError(f"{params / 'args.yml'} names no env or algo; pass a complete zoo run folder")
    if zoo_algo not in ALGOS:
        raise PolicyKDError(
            f"zoo teacher {path} is {zoo_algo}; supported teacher algorithms are {', '.join(ALGOS)}"
        )
    run_env, trained_env_id = _resolve_env_id(zoo_env, env_id, f"zoo teacher {path}")
    # logs/<algo>/<env>_1/<env>.zip (else the run's best_model.zip); <algo>-<env>.zip on the Hub
    names = [
        f"{params.name}.zip",
        "best_model.zip",
        f"{zoo_algo}-{zoo_env.replace('/', '-')}.zip",
    ]
    zip_path = next((path / n for n in names if (path / n).is_file()), None)
    if zip_path is None:
        raise PolicyKDError(f"zoo run folder {path} has none of {', '.join(names)}; finish or rerun training")
    if config.get("vec_env_wrapper"):
        raise PolicyKDError(
            f"{params / 'config.yml'} uses vec_env_wrapper {config['vec_env_wrapper']!r}, which policy_kd cannot rebuild; "
            "use a teacher trained without it"
        )
    env_kwargs = args.get("env_kwargs") or config.get("env_kwargs") or {}
    if not isinstance(env_kwargs, dict) or not all(
        isinstance(v, (bool, int, float, str, type(None))) for v in env_kwargs.values()
    ):
        raise PolicyKDError(f"zoo teacher {path}: env_kwargs {env_kwargs!r} must map names to plain values")
    frame_stack = config.get("frame_stack")
    if frame_stack is not None and (not isinstance(frame_stack, int) or frame_stack < 1):
        raise PolicyKDError(
            f"{params / 'config.yml'}: frame_stack must be a positive integer, got {frame_stack!r}"
        )
    # vecnormalize.pkl in a run, vec_normalize.pkl on the Hub
    vecnorm_path = next(
        (params / n for n in ("vecnormalize.pkl", "vec_normalize.pkl") if (params / n).is_file()), None
    )
    if vecnorm_path is None and config.get("normalize") not in (None, False, "False", "false"):
        raise PolicyKDError(
            f"zoo teacher {path} was trained with normalize but {params / 'vecnormalize.pkl'} is missing; copy it back or retrain"
        )
    return _Source(
        zip_path=zip_path,
        env_id=run_env,
        trained_env_id=trained_env_id,
        algo=algo or zoo_algo,
        vecnorm_path=vecnorm_path,
        frame_stack=frame_stack,
        env_kwargs=dict(env_kwargs),
        env_wrappers=_zoo_wrappers(config.get("env_wrapper"), params / "config.yml"),
        raw_env=True,  # the zoo makes envs with plain gym.make; its env_wrapper does the rest
        normalize_before_stack=True,
    )


HUB_PREFIX = "hf://"
HUB_HINT = "pip install 'policy-kd[hub]'"
# What an sb3/<algo>-<env> repository holds beside the zoo's files: training curves and a video.
_HUB_SKIP = ["train_eval_metrics.zip", "*.mp4", "*.md", "*.json", "*.png", ".gitattributes"]


def _hub_folder(uri: str) -> Path:
    """The local snapshot of ``hf://ORG/REPO[@REVISION]`` in the Hugging Face cache, downloaded if missing."""
    repo_id, _, revision = uri[len(HUB_PREFIX) :].partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")) or (revision == "" and "@" in uri):
        raise PolicyKDError(f"bad Hub teacher {uri!r}; write hf://ORG/REPO or hf://ORG/REPO@REVISION")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise PolicyKDError(f"hf:// teachers need huggingface_hub; install it with: {HUB_HINT}") from None
    try:
        folder = snapshot_download(repo_id, revision=revision or None, ignore_patterns=_HUB_SKIP)
    except RepositoryNotFoundError:
        raise PolicyKDError(
            f"no Hugging Face model repository {repo_id} (or it is private: log in with `hf auth login`); "
            "check the name, e.g. hf://sb3/dqn-CartPole-v1"
        ) from None
    except RevisionNotFoundError:
        raise PolicyKDError(
            f"{repo_id} has no revision {revision!r} on the Hub; drop @{revision} or fix it"
        ) from None
    except LocalEntryNotFoundError:
        raise PolicyKDError(
            f"{uri} is not in the Hugging Face cache and the Hub cannot be reached (offline: HF_HUB_OFFLINE "
            "or no network); download it once with network access"
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        why = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise PolicyKDError(f"could not download {uri} from the Hugging Face Hub ({why})") from None
    return Path(folder)


def load_teacher(path: str | Path, env_id: str | None = None, *, algo: str | None = None) -> Teacher:
    """Load a teacher to act and label.

    ``path`` is one of:

    - a train-teacher run folder (``teacher.json`` names the model, env, normalisation and frame stack);
    - an rl-baselines3-zoo run folder such as ``logs/ppo/Acrobot-v1_1`` (``<env>.zip``, else
      ``best_model.zip``, and ``<env>/args.yml``, ``config.yml``, ``vecnormalize.pkl``): the algo and env come
      from ``args.yml``; ``normalize``, ``frame_stack``, ``env_kwargs`` and ``env_wrapper`` (an allow-list of
      known wrappers, see ``policy_kd.envs.ZOO_WRAPPERS``) from ``config.yml``, read as plain YAML (never
      evaluated). Like the zoo's own ``enjoy``, the final model is paired with ``vecnormalize.pkl``;
    - ``hf://ORG/REPO[@REVISION]``: a zoo agent on the Hugging Face Hub (``hf://sb3/dqn-CartPole-v1``),
      downloaded into the Hub cache (the ``hub`` extra) and loaded as a zoo run folder;
    - a plain SB3 ``.zip``, with ``env_id`` saying where it acts (no normalisation, no frame stacking).

    Files saved with OpenAI ``gym`` (the zoo's published agents, SB3 1.x) load without it. ``env_id`` may name
    another version of the env a folder's teacher was trained on (e.g. ``LunarLander-v3`` for
    ``LunarLander-v2``) if the spaces match; ``Teacher.trained_env_id`` then says where it was trained.

    ``algo`` overrides the detected algorithm (dqn, qrdqn, ppo, a2c). **Security: an SB3 ``.zip`` and a
    ``vecnormalize.pkl`` are unpickled, which runs code stored in them: load only files you trust.**
    """
    given = str(path)
    path = _hub_folder(given) if given.startswith(HUB_PREFIX) else Path(path)
    if path.is_dir():
        params = _zoo_params_dir(path)
        if (path / TEACHER_FILE).is_file():
            source = _run_folder_source(path, env_id, algo)
        elif params is not None:
            source = _zoo_source(path, params, env_id, algo)
        elif given.startswith(HUB_PREFIX):
            raise PolicyKDError(
                f"{given} holds no rl-baselines3-zoo agent (no args.yml); pass a repository such as hf://sb3/dqn-CartPole-v1"
            )
        elif (path / "best_model.zip").is_file():
            raise PolicyKDError(
                f"{path} has no {TEACHER_FILE} (training did not finish); pass {path / 'best_model.zip'} with --env"
            )
        else:
            raise PolicyKDError(
                f"{path} is not a teacher run folder (no {TEACHER_FILE}, no zoo <env>/args.yml); "
                "pass a train-teacher --out folder, a zoo run folder, or an SB3 .zip with --env"
            )
    elif path.is_file():
        if env_id is None:
            raise PolicyKDError(
                f"{path} is a plain SB3 model; say which environment it acts in with --env ENV_ID"
            )
        ensure_registered(env_id)
        source = _Source(zip_path=path, env_id=env_id, algo=algo)
    else:
        raise PolicyKDError(
            f"teacher not found: {path} (expected a train-teacher run folder, a zoo run folder, hf://ORG/REPO or an SB3 .zip)"
        )
    teacher = _load_source(source)
    teacher.source = given if given.startswith(HUB_PREFIX) else str(Path(given).resolve())
    return teacher


class _GymCompatUnpickler(pickle.Unpickler):
    """Unpickles files saved with OpenAI ``gym`` (SB3 1.x): its ``gym.spaces.*`` classes are read as
    Gymnasium's, which took them over with the same names and accept their pickled state (and numpy 1.x's
    ``numpy.core`` as numpy 2's ``numpy._core``, without its deprecation warning)."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "gym" or module.startswith("gym."):
            module = "gymnasium" + module[3:]
        elif module.startswith("numpy.core.") and hasattr(np, "_core"):  # numpy 1.x arrays, read by numpy 2
            module = "numpy._core." + module[len("numpy.core.") :]
        return super().find_class(module, name)


def _stored_space(data: dict[str, Any], key: str, zip_path: Path) -> gym.Space:
    """The ``observation_space``/``action_space`` pickled in an SB3 ``.zip``'s data, read without ``gym``."""
    entry = data.get(key)
    try:
        space = _GymCompatUnpickler(io.BytesIO(base64.b64decode(entry[":serialized:"]))).load()  # type: ignore[index]
    except (
        TypeError,
        KeyError,
        binascii.Error,
        pickle.UnpicklingError,
        ImportError,
        AttributeError,
        EOFError,
    ) as exc:
        why = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise PolicyKDError(
            f"could not read the {key} stored in {zip_path} ({why}); is it an SB3 model?"
        ) from None
    if not isinstance(space, gym.Space):
        raise PolicyKDError(f"{zip_path} stores {key} {space!r}, not a space; is it an SB3 model?")
    return space


def _network_obs_space(stored: gym.Space, env_space: gym.Space) -> gym.Space | None:
    """The env's observation space as the teacher's network takes it, or None if the teacher cannot take it.

    SB3 stores channel-last images transposed to channels-first (VecTransposeImage); preprocessing (uint8
    images are scaled by 1/255) must agree too. Bounds of non-image spaces may differ (a retired env version
    with tighter bounds): the network never reads them.
    """
    if not isinstance(stored, gym.spaces.Box) or not isinstance(env_space, gym.spaces.Box):
        return env_space if stored == env_space else None
    net_space = env_space
    if stored.shape != env_space.shape and is_image_space(env_space, check_channels=False):
        net_space = VecTransposeImage.transpose_space(env_space)
    same_kind = is_image_space(stored, check_channels=False) == is_image_space(
        net_space, check_channels=False
    )
    return net_space if stored.shape == net_space.shape and same_kind else None


def _load_source(src: _Source) -> Teacher:
    if not src.zip_path.is_file():
        raise PolicyKDError(f"teacher model file missing: {src.zip_path}; retrain the teacher")
    algo = src.algo or _detect_algo(src.zip_path)
    cls = algo_class(algo)
    probe = src.make_vec_env(1, None)
    obs_space, act_space = probe.observation_space, probe.action_space
    probe.close()
    data = _zip_data(src.zip_path)
    stored_obs = _stored_space(data, "observation_space", src.zip_path)
    stored_act = _stored_space(data, "action_space", src.zip_path)
    net_obs = _network_obs_space(stored_obs, obs_space)
    if net_obs is None or stored_act != act_space:
        trained = f" (trained on {src.trained_env_id})" if src.trained_env_id else ""
        raise PolicyKDError(
            f"teacher {src.zip_path}{trained} expects observations {stored_obs} and actions {stored_act}, "
            f"but {src.env_id} has {obs_space} and {act_space}; pass the environment it was trained on "
            "(a frame-stacked or normalised teacher loads from its run folder)"
        )
    # As rl_zoo3 loads old models: the spaces come from the env (SB3 1.x pickled gym's, which need gym),
    # and the training schedules, pickled functions that may not unpickle on another Python, become
    # constants (a teacher only acts).
    custom: dict[str, Any] = {"observation_space": net_obs, "action_space": act_space}
    custom |= {
        key: _frozen_schedule
        for key, value in data.items()
        if isinstance(value, dict) and value.get(":type:") == "<class 'function'>"
    }
    try:
        with warnings.catch_warnings():
            # SB3 >= 2.4 truncates the optimizer state of older DQN files, which a teacher never uses
            warnings.filterwarnings("ignore", "You are probably loading a DQN model saved with SB3 < 2.4")
            # arrays pickled by numpy 1.x name numpy.core, which numpy 2 reads with a deprecation warning
            warnings.filterwarnings("ignore", "numpy.core", DeprecationWarning)
            model = cls.load(src.zip_path, device="cpu", custom_objects=custom)
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise PolicyKDError(f"could not load teacher {src.zip_path} ({UNPICKLE_WARNING}): {why}") from None
    teacher = Teacher(model=model, algo=algo, path=str(src.zip_path), **src.recipe())
    if src.vecnorm_path is not None:
        teacher.vec_normalize = _load_vec_normalize(src.vecnorm_path, teacher)
    if src.trained_env_id is not None:
        print(
            f"policy-kd: warning: teacher trained on {src.trained_env_id} runs on {src.env_id} "
            "(same observation and action spaces)",
            file=sys.stderr,
        )
    return teacher


def _frozen_schedule(_progress_remaining: float) -> float:
    return 0.0


def _load_vec_normalize(path: Path, teacher: Teacher) -> VecNormalize:
    if not path.is_file():
        raise PolicyKDError(f"normalisation statistics missing: {path}; retrain the teacher")
    # The statistics cover one frame when the zoo normalised before stacking, the whole stack otherwise.
    stack = None if teacher.normalize_before_stack else teacher.frame_stack
    dummy = _vec_env(lambda: teacher.make_env(stacked=False), 1, None, stack)
    try:
        with path.open("rb") as f:
            vec_normalize = _GymCompatUnpickler(f).load()
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise PolicyKDError(
            f"could not load normalisation statistics {path} ({UNPICKLE_WARNING}): {why}"
        ) from None
    if not isinstance(vec_normalize, VecNormalize):
        raise PolicyKDError(f"{path} holds a {type(vec_normalize).__name__}, not VecNormalize statistics")
    stored = vec_normalize.observation_space
    if getattr(stored, "shape", None) != dummy.observation_space.shape:
        raise PolicyKDError(
            f"normalisation statistics {path} are for observations {getattr(stored, 'shape', stored)}, "
            f"but {teacher.env_id} has {dummy.observation_space.shape}; pass the teacher's own vecnormalize.pkl"
        )
    # the env's spaces, as for the model (the stored ones may be old gym's)
    vec_normalize.observation_space, vec_normalize.action_space = dummy.observation_space, dummy.action_space
    vec_normalize.set_venv(dummy)
    vec_normalize.training = False
    return vec_normalize
