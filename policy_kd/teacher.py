"""Teachers: train SB3 DQN/PPO/A2C from the presets in ``agents/``, and load them to act and label.

A loaded :class:`Teacher` gives, in one forward pass, both the outputs the buffer records (Q-values for
DQN, action logits for PPO/A2C) and the greedy action taken from them, so what the teacher does and what
it is recorded to know can never disagree.

Loading a ``.zip`` unpickles code (SB3 stores classes and schedules with cloudpickle): load only files
you trust.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, replace
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
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import VecEnv, VecFrameStack, VecNormalize
from stable_baselines3.dqn.policies import DQNPolicy

from policy_kd.config import load_yaml_mapping
from policy_kd.envs import ensure_registered, make_env
from policy_kd.errors import PolicyKDError
from policy_kd.run import prepare_out_dir, write_json, write_run_info

ALGOS: dict[str, type[BaseAlgorithm]] = {"dqn": DQN, "ppo": PPO, "a2c": A2C}
TEACHER_FILE = "teacher.json"
_ACTIVATIONS = {"ReLU", "Tanh", "ELU", "LeakyReLU", "GELU", "SiLU", "Sigmoid"}
# Keys a preset may hold that are not constructor arguments of the SB3 algorithm.
_PRESET_EXTRAS = ("n_timesteps", "policy", "n_envs", "normalize", "frame_stack")


@dataclass(frozen=True)
class TrainTeacherConfig:
    """Train an SB3 teacher with a tuned preset, keeping the best model found by periodic evaluation."""

    algo: str = "dqn"
    """Teacher algorithm: dqn, ppo or a2c."""
    env: str = "CartPole-v1"
    """Gymnasium environment id (MinAtar/... needs the minatar extra, LunarLander-v3 the box2d extra)."""
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
    progress: bool = True
    """Show a progress bar."""
    force: bool = False
    """Replace an existing --out folder."""

    def validate(self) -> None:
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
    """The preset for ``env_id`` (or the file's ``default:`` entry), as plain YAML values."""
    if path is None:
        text = resources.files("policy_kd.agents").joinpath(f"{algo}.yml").read_text()
        presets = yaml.safe_load(text)
        source = f"agents/{algo}.yml"
    else:
        presets = load_yaml_mapping(path, what="preset file")
        source = str(path)
    entry = presets.get(env_id, presets.get("default"))
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
    """Turn a preset's YAML values into SB3 constructor keyword arguments (no eval of strings)."""
    kwargs = {k: v for k, v in preset.items() if k not in _PRESET_EXTRAS}
    for key in ("learning_rate", "clip_range"):
        if key in kwargs:
            kwargs[key] = _schedule(kwargs[key])
    if isinstance(kwargs.get("train_freq"), list):
        kwargs["train_freq"] = tuple(kwargs["train_freq"])
    pk = dict(kwargs.get("policy_kwargs") or {})
    if "activation_fn" in pk:
        name = pk["activation_fn"]
        if name not in _ACTIVATIONS:
            raise PolicyKDError(f"activation_fn {name!r} is not one of {', '.join(sorted(_ACTIVATIONS))}")
        pk["activation_fn"] = getattr(torch.nn, name)
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


def _make_env_stack(env_id: str, n_envs: int, seed: int, frame_stack: int | None) -> VecEnv:
    ensure_registered(env_id)
    env = make_vec_env(lambda **_: make_env(env_id), n_envs=n_envs, seed=seed)
    if frame_stack:
        env = VecFrameStack(env, frame_stack)
    return env


class _SaveVecNormalizeOnBest(BaseCallback):
    """Save VecNormalize statistics whenever EvalCallback saves a new best model (as rl-zoo does)."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def _on_step(self) -> bool:
        venv = self.model.get_vec_normalize_env()
        if venv is not None:
            venv.save(str(self.path))
        return True


def train_teacher(config: TrainTeacherConfig) -> Path:
    """Train a teacher into ``config.out``; return the run folder. ``teacher.json`` is written last."""
    config.validate()
    ensure_registered(config.env)
    preset = load_preset(config.algo, config.env, config.preset)
    n_timesteps = int(config.n_timesteps or preset.get("n_timesteps", 100_000))
    config = replace(config, n_timesteps=n_timesteps)
    out = prepare_out_dir(config.out, force=config.force)
    torch.set_num_threads(config.threads)
    write_run_info(out, config, job="train-teacher")
    (out / "preset.yaml").write_text(yaml.safe_dump({config.env: preset}, sort_keys=False))

    n_envs = int(preset.get("n_envs", 1))
    frame_stack = preset.get("frame_stack")
    norm = _normalize_kwargs(preset.get("normalize"))
    env = _make_env_stack(config.env, n_envs, config.seed, frame_stack)
    eval_env = _make_env_stack(config.env, 1, config.seed + 10_000, frame_stack)
    if norm is not None:
        gamma = preset.get("gamma", 0.99)
        env = VecNormalize(env, gamma=gamma, **norm)
        # Evaluation sees observations normalised with the training statistics, and raw rewards.
        eval_env = VecNormalize(
            eval_env,
            gamma=gamma,
            training=False,
            norm_reward=False,
            **{k: v for k, v in norm.items() if k not in ("norm_reward",)},
        )

    cls = ALGOS[config.algo]
    try:
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

    on_best = _SaveVecNormalizeOnBest(out / "best_vecnormalize.pkl") if norm is not None else None
    eval_cb = EvalCallback(
        eval_env,
        callback_on_new_best=on_best,
        n_eval_episodes=config.eval_episodes,
        eval_freq=max(config.eval_freq // n_envs, 1),
        log_path=str(out),
        best_model_save_path=str(out),
        deterministic=True,
        verbose=0,
    )
    start = time.perf_counter()
    model.learn(
        total_timesteps=n_timesteps, callback=eval_cb, progress_bar=config.progress, tb_log_name="teacher"
    )
    wall = time.perf_counter() - start
    model.save(out / "last_model.zip")
    if norm is not None:
        assert isinstance(env, VecNormalize)
        env.save(str(out / "last_vecnormalize.pkl"))
    best = out / "best_model.zip"
    if not best.exists():  # no evaluation ran (budget below eval_freq): the last model is the teacher
        shutil.copyfile(out / "last_model.zip", best)
        if norm is not None:
            shutil.copyfile(out / "last_vecnormalize.pkl", out / "best_vecnormalize.pkl")
    env.close()
    eval_env.close()

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
        },
    )
    return out


# --------------------------------------------------------------------------------------------- loading


def _detect_algo(zip_path: Path) -> str:
    from stable_baselines3.common.save_util import load_from_zip_file

    try:
        data, _, _ = load_from_zip_file(zip_path, load_data=True, device="cpu")
    except Exception as exc:
        raise PolicyKDError(
            f"could not read SB3 model {zip_path}: {type(exc).__name__}: {exc}".splitlines()[0]
        ) from None
    policy_class = (data or {}).get("policy_class")
    if isinstance(policy_class, type):
        if issubclass(policy_class, DQNPolicy):
            return "dqn"
        if issubclass(policy_class, ActorCriticPolicy):
            return "ppo" if "clip_range" in data else "a2c"
    raise PolicyKDError(
        f"{zip_path} holds a {policy_class!r} policy; supported teachers are {', '.join(ALGOS)}"
    )


def policy_param_count(model: BaseAlgorithm, algo: str) -> int:
    """Parameters of the modules that choose actions: DQN's q_net (not its target), PPO/A2C's actor
    (features extractor, policy MLP, action head, and log_std for Gaussian policies; not the value head)."""
    policy = model.policy
    if algo == "dqn":
        modules: list[torch.nn.Module] = [policy.q_net]
        extra: list[torch.nn.Parameter] = []
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


@dataclass
class Teacher:
    """A loaded SB3 teacher with one-forward-pass access to its outputs and greedy actions."""

    model: BaseAlgorithm
    algo: str
    env_id: str
    path: str
    vec_normalize: VecNormalize | None = None
    frame_stack: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model.action_space, gym.spaces.Discrete):
            raise PolicyKDError(
                f"teacher {self.path} acts in {self.model.action_space}; only discrete-action teachers are supported so far"
            )
        self.model.policy.set_training_mode(False)

    @property
    def kind(self) -> str:
        """What the recorded outputs are: ``q_values`` (DQN) or ``logits`` (PPO/A2C)."""
        return "q_values" if self.algo == "dqn" else "logits"

    @property
    def observation_space(self) -> gym.Space:
        return self.model.observation_space

    @property
    def action_space(self) -> gym.spaces.Discrete:
        return self.model.action_space  # type: ignore[return-value]

    @property
    def n_outputs(self) -> int:
        return int(self.action_space.n)

    @property
    def policy_params(self) -> int:
        return policy_param_count(self.model, self.algo)

    def make_vec_env(self, n_envs: int, seed: int) -> VecEnv:
        """Envs as the teacher saw them (frame stacking), with raw (unnormalised) observations."""
        return _make_env_stack(self.env_id, n_envs, seed, self.frame_stack)

    def output_fields(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Buffer fields this teacher labels each state with: name -> (dtype, per-row shape).

        ``teacher`` is always there: the output a student is distilled toward (Q-values or logits).
        """
        return {"teacher": ("float32", (self.n_outputs,))}

    @torch.no_grad()
    def label(self, obs: np.ndarray) -> Labels:
        """One forward pass over a batch of raw observations: the recorded outputs and the greedy action."""
        if self.vec_normalize is not None:
            obs = self.vec_normalize.normalize_obs(obs)
        policy = self.model.policy
        obs_t, _ = policy.obs_to_tensor(obs)
        if self.algo == "dqn":
            out = policy.q_net(obs_t)
        else:
            features = policy.extract_features(obs_t, policy.pi_features_extractor)
            out = policy.action_net(policy.mlp_extractor.forward_actor(features))
        q = out.cpu().numpy().astype(np.float32, copy=False)  # (batch, n_actions)
        return Labels(outputs={"teacher": q}, greedy=q.argmax(axis=-1))

    def sample(self, labels: Labels, rng: np.random.Generator) -> np.ndarray:
        """Actions drawn from the teacher's own distribution (softmax of logits); DQN acts greedily."""
        if self.algo == "dqn":
            return labels.greedy
        return _sample_logits(labels.outputs["teacher"], rng)

    def outputs(self, obs: np.ndarray) -> np.ndarray:
        """The ``teacher`` field for a batch of raw observations: ``(batch, n_actions)`` float32."""
        return self.label(obs).outputs["teacher"]

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Actions for a batch of observations (the same protocol students follow)."""
        labels = self.label(obs)
        return labels.greedy if deterministic else self.sample(labels, np.random.default_rng())

    def file_bytes(self) -> int:
        return Path(self.path).stat().st_size


def _sample_logits(logits: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    rng = rng or np.random.default_rng()
    z = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    u = rng.random((p.shape[0], 1))
    return (p.cumsum(axis=-1) < u).sum(axis=-1).clip(max=p.shape[-1] - 1)


def load_teacher(path: str | Path, env_id: str | None = None, *, algo: str | None = None) -> Teacher:
    """Load a teacher from a train-teacher run folder, or from a plain SB3 ``.zip`` plus ``env_id``."""
    path = Path(path)
    vecnorm_path: Path | None = None
    frame_stack = None
    if path.is_dir():
        meta_path = path / TEACHER_FILE
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
                algo = algo or meta["algo"]
                run_env = meta["env_id"]
                zip_path = path / meta["model"]
                vecnorm_path = path / meta["vecnormalize"] if meta.get("vecnormalize") else None
                frame_stack = meta.get("frame_stack")
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise PolicyKDError(
                    f"{meta_path} is damaged ({exc}); retrain the teacher or pass its .zip with --env"
                ) from None
            if env_id is not None and env_id != run_env:
                raise PolicyKDError(
                    f"teacher {path} was trained on {run_env}, not {env_id}; drop --env or pick another teacher"
                )
            env_id = run_env
        elif (path / "best_model.zip").is_file():
            raise PolicyKDError(
                f"{path} has no {TEACHER_FILE} (training did not finish); pass {path / 'best_model.zip'} with --env"
            )
        else:
            raise PolicyKDError(
                f"{path} is not a teacher run folder (no {TEACHER_FILE}); pass a train-teacher --out folder or an SB3 .zip with --env"
            )
    elif path.is_file():
        zip_path = path
        if env_id is None:
            raise PolicyKDError(
                f"{path} is a plain SB3 model; say which environment it acts in with --env ENV_ID"
            )
    else:
        raise PolicyKDError(f"teacher not found: {path} (expected a train-teacher run folder or an SB3 .zip)")

    if not zip_path.is_file():
        raise PolicyKDError(f"teacher model file missing: {zip_path}; retrain the teacher")
    algo = algo or _detect_algo(zip_path)
    if algo not in ALGOS:
        raise PolicyKDError(f"unknown algo {algo!r}; choose one of {', '.join(ALGOS)}")
    ensure_registered(env_id)
    try:
        model = ALGOS[algo].load(zip_path, device="cpu")
    except Exception as exc:
        raise PolicyKDError(
            f"could not load teacher {zip_path}: {type(exc).__name__}: {exc}".splitlines()[0]
        ) from None

    probe = make_env(env_id)
    obs_space, act_space = probe.observation_space, probe.action_space
    probe.close()
    if frame_stack:
        obs_space = VecFrameStack(
            make_vec_env(lambda **_: make_env(env_id), n_envs=1), frame_stack
        ).observation_space
    if model.observation_space.shape != obs_space.shape or model.action_space != act_space:
        raise PolicyKDError(
            f"teacher {zip_path} expects observations {model.observation_space.shape} and actions {model.action_space}, "
            f"but {env_id} has {obs_space.shape} and {act_space}; pass the environment it was trained on"
        )
    vec_normalize = None
    if vecnorm_path is not None:
        if not vecnorm_path.is_file():
            raise PolicyKDError(f"normalisation statistics missing: {vecnorm_path}; retrain the teacher")
        dummy = make_vec_env(lambda **_: make_env(env_id), n_envs=1)
        if frame_stack:
            dummy = VecFrameStack(dummy, frame_stack)
        vec_normalize = VecNormalize.load(str(vecnorm_path), dummy)
        vec_normalize.training = False
    return Teacher(
        model=model,
        algo=algo,
        env_id=env_id,
        path=str(zip_path),
        vec_normalize=vec_normalize,
        frame_stack=frame_stack,
    )
