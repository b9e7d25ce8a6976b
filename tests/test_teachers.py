"""Every teacher kind: what it records equals what SB3 computes, its greedy action is SB3's, and it records.

Models are randomly initialised SB3 models saved to a tmp ``.zip`` (no training), except the zoo run, which
the zoo's own CLI trains for one rollout when rl_zoo3 is installed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from conftest import run_cli
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecFrameStack, VecNormalize

from policy_kd import envs
from policy_kd.buffer import Buffer, Sampler
from policy_kd.errors import PolicyKDError
from policy_kd.students import load_student
from policy_kd.teacher import (
    Teacher,
    TrainTeacherConfig,
    algo_kwargs,
    load_preset,
    load_teacher,
    read_zoo_yaml,
    train_teacher,
)

HAS_CONTRIB = importlib.util.find_spec("sb3_contrib") is not None
HAS_MINATAR = importlib.util.find_spec("minatar") is not None
HAS_ZOO = importlib.util.find_spec("rl_zoo3") is not None
needs_contrib = pytest.mark.skipif(not HAS_CONTRIB, reason="sb3-contrib not installed (contrib extra)")
needs_minatar = pytest.mark.skipif(not HAS_MINATAR, reason="MinAtar not installed (minatar extra)")


# ------------------------------------------------------------------------------------------- the models


def _qrdqn(env: str) -> Any:
    from sb3_contrib import QRDQN

    return QRDQN("MlpPolicy", env, policy_kwargs={"net_arch": [32], "n_quantiles": 7}, seed=0)


def _minatar_dqn(env_id: str) -> DQN:
    kwargs = algo_kwargs(load_preset("dqn", env_id))  # the packaged preset: minatar_cnn extractor
    kwargs["buffer_size"] = 1000
    return DQN("CnnPolicy", envs.make_env(env_id), seed=0, **kwargs)


def small(**extra: Any) -> dict[str, Any]:
    """Small policy kwargs; a fresh dict each time (SB3 adds keys to the dict it is given)."""
    return {"net_arch": [32], **extra}


# name -> (env id, model factory, expected kind)
KINDS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "dqn": ("CartPole-v1", lambda e: DQN("MlpPolicy", e, policy_kwargs=small(), seed=0), "q_values"),
    "qrdqn": ("CartPole-v1", _qrdqn, "quantiles"),
    "ppo": ("CartPole-v1", lambda e: PPO("MlpPolicy", e, policy_kwargs=small(), seed=0), "logits"),
    "a2c": ("Acrobot-v1", lambda e: A2C("MlpPolicy", e, policy_kwargs=small(), seed=0), "logits"),
    "ppo-box": ("Pendulum-v1", lambda e: PPO("MlpPolicy", e, policy_kwargs=small(), seed=0), "gaussian"),
    "a2c-box": ("Pendulum-v1", lambda e: A2C("MlpPolicy", e, policy_kwargs=small(), seed=0), "gaussian"),
    "ppo-gsde": (
        "Pendulum-v1",
        lambda e: PPO("MlpPolicy", e, use_sde=True, policy_kwargs=small(), seed=0),
        "gaussian",
    ),
    "ppo-gsde-squash": (
        "Pendulum-v1",
        lambda e: PPO("MlpPolicy", e, use_sde=True, policy_kwargs=small(squash_output=True), seed=0),
        "squashed_gaussian",
    ),
    "minatar-dqn": ("MinAtar/Breakout-v1", _minatar_dqn, "q_values"),
}
DISCRETE = {"dqn", "qrdqn", "ppo", "a2c", "minatar-dqn"}


def _marks(name: str) -> list[pytest.MarkDecorator]:
    return {"qrdqn": [needs_contrib], "minatar-dqn": [needs_minatar]}.get(name, [])


PARAMS = [pytest.param(name, id=name, marks=_marks(name)) for name in KINDS]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, str, Any]]:
    """name -> (zip path, env id, the SB3 model that was saved), built once per module."""
    cache: dict[str, tuple[Path, str, Any]] = {}

    def get(name: str) -> tuple[Path, str, Any]:
        if name not in cache:
            env_id, factory, _ = KINDS[name]
            envs.ensure_registered(env_id)
            model = factory(env_id)
            path = tmp_path_factory.mktemp("zips") / f"{name}.zip"
            model.save(path)
            cache[name] = (path, env_id, model)
        return cache[name]

    return get


def _states(teacher: Teacher, n_envs: int = 4, steps: int = 6) -> np.ndarray:
    """Raw observations the teacher would see, from a few random steps in its own envs."""
    venv = teacher.make_vec_env(n_envs, seed=0)
    obs, states = venv.reset(), []
    for _ in range(steps):
        states.append(obs)
        obs, *_ = venv.step(np.stack([venv.action_space.sample() for _ in range(n_envs)]))
    venv.close()
    return np.concatenate(states)


@torch.no_grad()
def _sb3_outputs(model: Any, kind: str, obs: np.ndarray) -> dict[str, np.ndarray]:
    """What the teacher's fields should hold, computed through SB3's own entry points."""
    obs_t, _ = model.policy.obs_to_tensor(obs)
    if kind == "q_values":
        return {"teacher": model.q_net(obs_t).numpy()}
    if kind == "quantiles":
        quantiles = model.policy.quantile_net(obs_t).numpy()
        return {"teacher": quantiles.mean(axis=1), "teacher_quantiles": quantiles}
    dist = model.policy.get_distribution(obs_t).distribution
    if kind == "logits":
        return {"probs": dist.probs.numpy()}
    return {"teacher": dist.mean.numpy(), "teacher_log_std": dist.stddev.log().numpy()}


# ------------------------------------------------------------------------------------ one test per kind


@pytest.mark.parametrize("name", PARAMS)
def test_label_matches_sb3(name: str, saved) -> None:
    path, env_id, model = saved(name)
    kind = KINDS[name][2]
    teacher = load_teacher(path, env_id)
    assert teacher.kind == kind and teacher.env_id == env_id and teacher.path == str(path)
    space = teacher.action_space
    n = int(np.prod(space.shape)) if isinstance(space, gym.spaces.Box) else int(space.n)
    assert teacher.n_outputs == n

    fields = teacher.output_fields()
    expected_fields = {"teacher": ("float32", (n,))}
    if kind == "quantiles":
        expected_fields["teacher_quantiles"] = ("float32", (7, n))
    elif kind.endswith("gaussian"):
        expected_fields["teacher_log_std"] = ("float32", (n,))
    assert fields == expected_fields

    obs = _states(teacher)
    labels = teacher.label(obs)
    assert set(labels.outputs) == set(fields)
    for key, (dtype, shape) in fields.items():
        assert labels.outputs[key].dtype == np.dtype(dtype) and labels.outputs[key].shape == (
            len(obs),
            *shape,
        )
    want = _sb3_outputs(model, kind, obs)
    if kind == "logits":
        probs = torch.softmax(torch.from_numpy(labels.outputs["teacher"]), -1).numpy()
        np.testing.assert_allclose(probs, want["probs"], rtol=1e-5, atol=1e-6)
    else:
        for key, value in want.items():
            np.testing.assert_allclose(labels.outputs[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    sb3_greedy = model.predict(obs, deterministic=True)[0]
    assert labels.greedy.shape == sb3_greedy.shape
    np.testing.assert_allclose(labels.greedy, sb3_greedy, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(teacher.predict(obs), labels.greedy)


@pytest.mark.parametrize("name", PARAMS)
def test_record_and_distill(name: str, saved, tmp_path: Path) -> None:
    path, env_id, _ = saved(name)
    teacher = load_teacher(path, env_id)
    buf_dir = tmp_path / "buffer"
    args = ["record", "--teacher", path, "--env", env_id, "--out", buf_dir, "--steps", "300", "--no-progress"]
    assert run_cli(*args) == 0
    buf = Buffer.open(buf_dir)
    assert buf.rows == 300 and buf.meta["teacher"]["kind"] == KINDS[name][2]
    for key, (dtype, shape) in teacher.output_fields().items():
        values = buf.field(key)
        assert values.dtype == np.dtype(dtype) and values.shape == (300, *shape), key
    obs = buf.field("obs")
    assert obs.shape == (300, *teacher.observation_space.shape)
    np.testing.assert_allclose(teacher.outputs(obs[:64]), buf.field("teacher")[:64], rtol=1e-5, atol=1e-5)
    action = buf.field("action")
    if isinstance(teacher.action_space, gym.spaces.Box):
        assert action.shape == (300, *teacher.action_space.shape) and action.dtype == np.float32
        assert (action >= teacher.action_space.low).all() and (action <= teacher.action_space.high).all()
    else:
        assert action.shape == (300,) and action.dtype == np.int64
    # every kind round-trips through distill: Gaussian teachers with gaussian_kl, image teachers into a CNN
    out = tmp_path / "student"
    loss = "kl" if name in DISCRETE else "gaussian_kl"
    arch = "minatar_cnn" if name == "minatar-dqn" else "mlp"
    cmd = ["distill", "--buffer", buf_dir, "--steps", "20", "--eval-every", "10", "--eval-episodes", "1"]
    cmd += ["--hidden", "8", "--loss", loss, "--student", arch, "--no-progress", "--out", out]
    assert run_cli(*cmd) == 0
    student = load_student(out)
    assert student.info["spec"]["arch"] == arch
    actions = student.predict(obs[:5])
    if isinstance(teacher.action_space, gym.spaces.Box):
        assert student.info["spec"]["head"] == KINDS[name][2]
        assert actions.shape == (5, *teacher.action_space.shape)
        assert (actions >= teacher.action_space.low).all() and (actions <= teacher.action_space.high).all()
    else:
        assert actions.shape == (5,) and set(actions.tolist()) <= set(range(teacher.action_space.n))


# ------------------------------------------------------------------------------------------ kind details


def test_gaussian_sample_is_mean_plus_std_noise(tmp_path: Path) -> None:
    model = PPO("MlpPolicy", "Pendulum-v1", policy_kwargs=small(log_std_init=-2.0), seed=0)
    model.save(tmp_path / "m.zip")
    teacher = load_teacher(tmp_path / "m.zip", "Pendulum-v1")
    obs = np.repeat(_states(teacher, n_envs=1, steps=1), 20_000, axis=0)
    labels = teacher.label(obs)
    np.testing.assert_allclose(labels.outputs["teacher_log_std"], -2.0, atol=1e-6)
    actions = teacher.sample(labels, np.random.default_rng(0))
    assert actions.shape == (20_000, 1) and actions.dtype == np.float32
    mean = labels.outputs["teacher"][0]
    assert abs(actions.mean() - mean[0]) < 0.01 and abs(actions.std() - np.exp(-2.0)) < 0.01
    again = teacher.sample(labels, np.random.default_rng(0))
    np.testing.assert_array_equal(actions, again)


def test_gaussian_greedy_is_clipped_to_bounds(tmp_path: Path) -> None:
    model = PPO("MlpPolicy", "Pendulum-v1", policy_kwargs=small(), seed=0)
    with torch.no_grad():
        model.policy.action_net.bias.fill_(10.0)  # a mean far outside [-2, 2]
    model.save(tmp_path / "m.zip")
    teacher = load_teacher(tmp_path / "m.zip", "Pendulum-v1")
    labels = teacher.label(_states(teacher))
    assert (labels.outputs["teacher"] > 2.0).all() and (labels.greedy == 2.0).all()


@needs_contrib
def test_train_teacher_qrdqn(tmp_path: Path) -> None:
    out = tmp_path / "t"
    cmd = ["train-teacher", "--algo", "qrdqn", "--env", "CartPole-v1", "--n-timesteps", "300", "--out", out]
    assert run_cli(*cmd, "--eval-freq", "200", "--eval-episodes", "1", "--no-progress") == 0
    teacher = load_teacher(out)
    assert teacher.algo == "qrdqn" and teacher.kind == "quantiles"
    # the zoo preset: 256x256 MLP, 10 quantiles per action
    assert teacher.output_fields()["teacher_quantiles"] == ("float32", (10, 2))
    assert teacher.policy_params == 4 * 256 + 256 + 256 * 256 + 256 + 256 * 20 + 20


@needs_minatar
def test_train_teacher_minatar(tmp_path: Path) -> None:
    out = tmp_path / "t"
    cmd = [
        "train-teacher",
        "--algo",
        "dqn",
        "--env",
        "MinAtar/Breakout-v1",
        "--n-timesteps",
        "200",
        "--out",
        out,
    ]
    assert run_cli(*cmd, "--eval-freq", "100", "--eval-episodes", "1", "--no-progress") == 0
    teacher = load_teacher(out)
    # Conv(4->16, 3x3) + Linear(1024->128) + Linear(128->3): the MinAtar paper's network
    assert teacher.policy_params == (4 * 16 * 9 + 16) + (1024 * 128 + 128) + (128 * 3 + 3)
    assert teacher.observation_space == gym.spaces.Box(0, 1, (4, 10, 10), np.uint8)
    obs = _states(teacher)
    assert obs.dtype == np.uint8 and set(np.unique(obs)) <= {0, 1}


# ------------------------------------------------------------------------------------ zoo run folders


def _dump_zoo_yaml(path: Path, items: dict[str, Any]) -> None:
    # As the zoo writes them: a yaml.dump of an OrderedDict (python/... tags included).
    path.write_text(yaml.dump(OrderedDict(sorted(items.items()))))


def test_read_zoo_yaml_ignores_python_tags(tmp_path: Path) -> None:
    f = tmp_path / "config.yml"
    _dump_zoo_yaml(f, {"train_freq": (4, "step"), "normalize": True, "env_wrapper": ["a.B"]})
    assert "!!python/tuple" in f.read_text() and "OrderedDict" in f.read_text()
    assert read_zoo_yaml(f) == {"env_wrapper": ["a.B"], "normalize": True, "train_freq": [4, "step"]}
    f.write_text("!!python/object/apply:os.system ['echo pwned']\n")  # never executed, just read as data
    with pytest.raises(PolicyKDError, match="not a zoo config"):
        read_zoo_yaml(f)


def _fake_zoo_run(root: Path, config: dict[str, Any], algo: str = "ppo") -> Path:
    """A zoo-style run folder for Pendulum-v1 with TimeFeatureWrapper, VecNormalize, then frame stack 2,
    in the zoo's order (normalise each frame, then stack). Returns the run folder."""
    from sb3_contrib.common.wrappers import TimeFeatureWrapper

    run, params = root / "ppo" / "Pendulum-v1_1", root / "ppo" / "Pendulum-v1_1" / "Pendulum-v1"
    params.mkdir(parents=True)
    venv = VecNormalize(make_vec_env(lambda: TimeFeatureWrapper(gym.make("Pendulum-v1")), n_envs=2, seed=1))
    venv.reset()
    for _ in range(50):  # non-trivial statistics
        venv.step(np.stack([venv.action_space.sample() for _ in range(2)]))
    venv.save(str(params / "vecnormalize.pkl"))
    PPO("MlpPolicy", VecFrameStack(venv, 2), policy_kwargs=small(), seed=0).save(run / "Pendulum-v1.zip")
    _dump_zoo_yaml(params / "args.yml", {"algo": algo, "env": "Pendulum-v1", "env_kwargs": None, "seed": 0})
    _dump_zoo_yaml(params / "config.yml", config)
    return run


ZOO_CONFIG = {
    "env_wrapper": ["sb3_contrib.common.wrappers.TimeFeatureWrapper"],
    "frame_stack": 2,
    "normalize": True,
    "policy": "MlpPolicy",
    "policy_kwargs": "dict(net_arch=[32])",
    "train_freq": (1, "step"),  # a python/tuple tag, as zoo configs have
}


@needs_contrib
def test_zoo_folder_normalises_each_frame_before_stacking(tmp_path: Path) -> None:
    from sb3_contrib.common.wrappers import TimeFeatureWrapper

    run = _fake_zoo_run(tmp_path, ZOO_CONFIG)
    teacher = load_teacher(run)
    assert teacher.algo == "ppo" and teacher.env_id == "Pendulum-v1" and teacher.kind == "gaussian"
    assert teacher.path == str(run / "Pendulum-v1.zip") and teacher.vec_normalize is not None
    # The zoo's own pipeline: wrapper, VecNormalize (frozen), then VecFrameStack; same seed and actions.
    zoo = VecNormalize.load(
        str(run / "Pendulum-v1" / "vecnormalize.pkl"),
        make_vec_env(lambda: TimeFeatureWrapper(gym.make("Pendulum-v1")), n_envs=1, seed=5),
    )
    zoo.training = False
    zoo_env, raw_env = VecFrameStack(zoo, 2), teacher.make_vec_env(1, seed=5)
    # One plain env, stacked the same way (for episode-by-episode evaluation), rebuilt from JSON alone.
    spec = json.loads(json.dumps(teacher.env_spec))
    assert spec["wrappers"] == [["sb3_contrib.common.wrappers.TimeFeatureWrapper", {}]]
    assert spec["frame_stack"] == 2 and spec["raw"] is True
    single = envs.make_env_from_spec(spec)
    zoo_obs, raw_obs = zoo_env.reset(), raw_env.reset()
    np.testing.assert_array_equal(single.reset(seed=5)[0], raw_obs[0])
    rng = np.random.default_rng(0)
    for _ in range(5):
        action = rng.uniform(-2, 2, size=(1, 1)).astype(np.float32)
        (zoo_obs, *_), (raw_obs, *_) = zoo_env.step(action), raw_env.step(action)
        assert raw_obs.shape == (1, 8)
        np.testing.assert_array_equal(single.step(action[0])[0], raw_obs[0])
        np.testing.assert_allclose(teacher.normalize_obs(raw_obs), zoo_obs, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            teacher.label(raw_obs).outputs["teacher"],
            _sb3_outputs(teacher.model, "gaussian", zoo_obs)["teacher"],
            rtol=1e-5,
            atol=1e-6,
        )


@needs_contrib
@pytest.mark.parametrize(
    ("config", "algo", "message"),
    [
        ({**ZOO_CONFIG, "env_wrapper": "mypackage.wrappers.Evil"}, "ppo", "not one policy_kd will import"),
        ({**ZOO_CONFIG, "vec_env_wrapper": "x.Y"}, "ppo", "vec_env_wrapper"),
        (ZOO_CONFIG, "trpo", "supported teacher algorithms are dqn, qrdqn, ppo, a2c, sac, tqc, td3, ddpg"),
    ],
)
def test_zoo_folder_refusals(tmp_path: Path, config: dict[str, Any], algo: str, message: str) -> None:
    run = _fake_zoo_run(tmp_path, config, algo=algo)
    with pytest.raises(PolicyKDError, match=message):
        load_teacher(run)


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PPO teacher on Acrobot-v1, trained by rl-baselines3-zoo's own CLI for one rollout (normalize on)."""
    logs = tmp_path_factory.mktemp("zoo")
    cmd = [sys.executable, "-m", "rl_zoo3.train", "--algo", "ppo", "--env", "Acrobot-v1", "-n", "2000"]
    cmd += ["--seed", "0", "-f", str(logs), "--num-threads", "1", "--eval-freq", "-1", "--verbose", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return logs / "ppo" / "Acrobot-v1_1"


@pytest.mark.skipif(not HAS_ZOO, reason="rl_zoo3 not installed (zoo extra)")
def test_zoo_run_folder(zoo_run: Path, tmp_path: Path) -> None:
    teacher = load_teacher(zoo_run)
    assert teacher.algo == "ppo" and teacher.env_id == "Acrobot-v1" and teacher.kind == "logits"
    assert teacher.path == str(zoo_run / "Acrobot-v1.zip") and teacher.vec_normalize is not None
    # Independently: the zoo's statistics on a plain env, then SB3's predict.
    vn = VecNormalize.load(
        str(zoo_run / "Acrobot-v1" / "vecnormalize.pkl"), make_vec_env("Acrobot-v1", n_envs=1)
    )
    vn.training = False
    obs = _states(teacher)
    normalized = vn.normalize_obs(obs)
    assert not np.allclose(normalized, obs)
    labels = teacher.label(obs)
    np.testing.assert_array_equal(labels.greedy, teacher.model.predict(normalized, deterministic=True)[0])
    probs = torch.softmax(torch.from_numpy(labels.outputs["teacher"]), -1).numpy()
    np.testing.assert_allclose(probs, _sb3_outputs(teacher.model, "logits", normalized)["probs"], atol=1e-6)

    buf = tmp_path / "buffer"
    assert run_cli("record", "--teacher", zoo_run, "--out", buf, "--steps", "300", "--no-progress") == 0
    recorded = Buffer.open(buf)
    assert recorded.field("teacher").shape == (300, 3) and recorded.meta["env_id"] == "Acrobot-v1"
    # the buffer keeps raw observations; the teacher saw them normalised
    np.testing.assert_allclose(
        teacher.outputs(recorded.field("obs")[:50]), recorded.field("teacher")[:50], atol=1e-5
    )
    cmd = ["distill", "--buffer", buf, "--steps", "20", "--eval-every", "0", "--hidden", "8", "--no-progress"]
    assert run_cli(*cmd, "--out", tmp_path / "student") == 0


# ------------------------------------------------------------------------------------------ refusals


class _MultiDiscreteEnv(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.MultiDiscrete([2, 3])

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, True, False, {}


def test_multidiscrete_teacher_labels_each_component() -> None:
    """Issue 27: a MultiDiscrete PPO teacher is accepted (it was refused before); its outputs are every
    component's logits side by side and its greedy action one argmax per component."""
    model = PPO("MlpPolicy", _MultiDiscreteEnv(), policy_kwargs=small())
    teacher = Teacher(model=model, algo="ppo", env_id="x", path="x.zip")
    assert teacher.nvec == (2, 3) and teacher.n_outputs == 5
    labels = teacher.label(np.zeros((4, 2), np.float32))
    assert labels.outputs["teacher"].shape == (4, 5) and labels.greedy.shape == (4, 2)


def test_unsupported_action_space_is_refused() -> None:
    model = PPO("MlpPolicy", _MultiDiscreteEnv(), policy_kwargs=small())
    model.action_space = gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Discrete(3)))
    with pytest.raises(
        PolicyKDError, match="supported action spaces are Discrete, Box, MultiDiscrete and MultiBinary"
    ):
        Teacher(model=model, algo="ppo", env_id="x", path="x.zip")


@needs_contrib
def test_unsupported_algorithm_zip_is_refused(tmp_path: Path) -> None:
    # SAC is a teacher now (tests/test_offpolicy.py); sb3-contrib's TRPO shares PPO's policy class
    from sb3_contrib import TRPO

    TRPO("MlpPolicy", "Pendulum-v1", policy_kwargs=small()).save(tmp_path / "trpo.zip")
    with pytest.raises(PolicyKDError, match=r"'trpo'.*supported teachers are dqn, qrdqn, ppo, a2c, sac"):
        load_teacher(tmp_path / "trpo.zip", "Pendulum-v1")


def test_missing_contrib_gets_install_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    DQN("MlpPolicy", "CartPole-v1", policy_kwargs=small()).save(tmp_path / "dqn.zip")
    monkeypatch.setitem(sys.modules, "sb3_contrib", None)  # import fails as if not installed
    with pytest.raises(
        PolicyKDError,
        match=r"qrdqn teachers need sb3-contrib; install it with: pip install 'policy-kd\[contrib\]'",
    ):
        load_teacher(tmp_path / "dqn.zip", "CartPole-v1", algo="qrdqn")
    with pytest.raises(PolicyKDError, match=r"policy-kd\[contrib\]"):
        train_teacher(TrainTeacherConfig(algo="qrdqn", out=str(tmp_path / "t")))
    assert not (tmp_path / "t").exists()  # refused before making the run folder


def test_unknown_features_extractor_lists_valid_names() -> None:
    preset = {"policy_kwargs": {"features_extractor": "resnet50", "features_dim": 128}}
    with pytest.raises(
        PolicyKDError, match="unknown features_extractor 'resnet50'; choose one of minatar_cnn"
    ):
        algo_kwargs(preset)


def test_atari_preset_never_falls_back_to_the_mlp_default() -> None:
    assert load_preset("dqn", "ALE/Pong-v5")["frame_stack"] == 4
    with pytest.raises(PolicyKDError, match="no atari: entry"):
        load_preset("a2c", "ALE/Pong-v5")


def test_atari_without_ale_py_gets_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ale_py", None)  # as if not installed (the dev extra installs it)
    monkeypatch.delitem(gym.registry, "ALE/Pong-v5", raising=False)
    with pytest.raises(
        PolicyKDError, match=r"needs ale-py; install it with: pip install 'policy-kd\[atari\]'"
    ):
        envs.ensure_registered("ALE/Pong-v5")


@needs_contrib
def test_stacked_frames_are_stored_once_and_rebuilt_exactly(tmp_path: Path) -> None:
    """A frame-stacking teacher (zoo run, frame_stack 2): each row stores one frame; every reader rebuilds
    the stack the teacher saw, which the teacher's recorded outputs confirm (they were computed on it)."""
    run = _fake_zoo_run(tmp_path, ZOO_CONFIG)
    teacher = load_teacher(run)
    buf_dir = tmp_path / "buffer"
    # 3 envs and 7-row chunks: chunk boundaries fall mid-step
    args = [
        "record",
        "--teacher",
        run,
        "--out",
        buf_dir,
        "--steps",
        "400",
        "--n-envs",
        "3",
        "--chunk-rows",
        "7",
    ]
    assert run_cli(*args, "--no-progress") == 0
    buf = Buffer.open(buf_dir)
    frame = teacher.make_env(stacked=False).observation_space.shape
    assert buf.fields["obs"].shape == frame and buf.obs_shape == teacher.observation_space.shape
    assert buf.meta["frame_stack"]["k"] == 2
    obs = buf.field("obs")
    assert obs.shape == (400, *teacher.observation_space.shape)
    np.testing.assert_allclose(teacher.outputs(obs), buf.field("teacher"), rtol=1e-5, atol=1e-5)
    first = buf.field("first")
    assert (obs[first][:, : frame[0]] == 0).all()  # before an episode's first frame: zeros, as VecFrameStack
    idx = np.array([3, 50, 51, 399])
    np.testing.assert_array_equal(buf.take("obs", idx), obs[idx])
    for in_memory in (True, False):
        sampler = Sampler(buf, ("obs", "teacher"), seed=0, in_memory=in_memory)
        batch = sampler.sample(64)
        np.testing.assert_allclose(
            teacher.outputs(batch["obs"].numpy()), batch["teacher"].numpy(), rtol=1e-5, atol=1e-5
        )
    # an appended recording with another env count rebuilds with its own stride
    args = ["record", "--teacher", run, "--out", buf_dir, "--steps", "90", "--n-envs", "2", "--append"]
    assert run_cli(*args, "--no-progress") == 0
    buf = Buffer.open(buf_dir)
    np.testing.assert_allclose(teacher.outputs(buf.field("obs")), buf.field("teacher"), rtol=1e-5, atol=1e-5)


def test_train_teacher_resumes_after_kill9(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    out, preset = tmp_path / "teacher", tmp_path / "preset.yml"
    small_dqn = {
        "policy": "MlpPolicy",
        "learning_starts": 500,
        "train_freq": 4,
        "policy_kwargs": {"net_arch": [32]},
    }
    preset.write_text(yaml.safe_dump({"default": small_dqn}))
    cmd = [sys.executable, "-m", "policy_kd", "train-teacher", "--algo", "dqn", "--env", "CartPole-v1", "--out",
           str(out), "--n-timesteps", "12000", "--checkpoint-freq", "2000", "--eval-freq", "1000",
           "--eval-episodes", "2", "--preset", str(preset), "--no-progress"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "checkpoint" / "state.json").exists():
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "teacher.json").exists(), "finished before the kill; raise --n-timesteps"
    ckpt = out / "checkpoint" if (out / "checkpoint").exists() else out / "checkpoint.old"
    state = json.loads((ckpt / "state.json").read_text())
    assert 2000 <= state["num_timesteps"] < 12000 and (ckpt / "replay_buffer.pkl").is_file()
    assert run_cli("train-teacher", "--out", out, "--no-progress") == 2  # exists: refused without --force
    moved = tmp_path / "moved"  # a run folder moved after the kill resumes where it is now
    out.rename(moved)
    out = moved
    done = state["num_timesteps"]
    resume = ("train-teacher", "--resume", "--out", out, "--no-progress")
    assert run_cli(*resume, "--n-timesteps", str(done)) == 2  # a budget already spent: refused
    assert yaml.safe_load((out / "config.yaml").read_text())["n_timesteps"] == 12000  # and not saved
    budget = done + 2000  # a new total budget (shorter than the saved 12000 unless killed late)
    assert run_cli(*resume, "--n-timesteps", str(budget)) == 0
    info = json.loads((out / "teacher.json").read_text())
    assert info["resumed"] and info["n_timesteps"] == budget
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["n_timesteps"] == budget and saved["out"] == str(moved)
    # SB3 stops at the first rollout (train_freq steps) that reaches the budget, as an uninterrupted run does
    assert budget <= DQN.load(out / "last_model.zip").num_timesteps < budget + 4
    evals = np.load(out / "evaluations.npz")["timesteps"]
    assert list(evals) == sorted(evals) and evals[0] == 1000 and evals[-1] >= budget - 1000  # history kept
    assert not (out / "checkpoint").exists()
    assert run_cli("train-teacher", "--resume", "--out", out, "--no-progress") == 2  # finished


def test_preset_policy_kwargs_as_python_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    preset = tmp_path / "p.yml"
    preset.write_text("default:\n  policy: MlpPolicy\n  policy_kwargs: dict(net_arch=[32])\n")
    assert run_cli("train-teacher", "--out", tmp_path / "t", "--preset", preset, "--no-progress") == 2
    err = capsys.readouterr().err.strip()
    assert "YAML mapping" in err and "never evaluated" in err and len(err.splitlines()) == 1
