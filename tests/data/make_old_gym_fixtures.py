"""Make the old-format rl-baselines3-zoo teachers under tests/data/old_gym/ (run once, by hand; not by the suite).

Published zoo agents (rl-baselines3-zoo's ``logs/`` and the Hugging Face ``sb3/...`` repositories) were
saved by Stable-Baselines3 1.x with OpenAI ``gym`` spaces pickled inside their ``.zip`` and
``vecnormalize.pkl``. This script makes genuine files of that kind: it runs in a throwaway venv with the
old stack (see tests/data/README.md for how it was built) and trains each teacher with rl_zoo3 1.8.0's own
``train`` CLI, so the folder layout and ``args.yml``/``config.yml`` are the zoo's. Then, with the same
old stack, it plays each teacher deterministically in the zoo's test env (``rl_zoo3.utils.create_test_env``
with the run's saved hyperparameters and statistics) and stores in ``expected.npz`` what the suite checks
in a venv without ``gym``: the raw observations (before VecNormalize), the actions taken, and the
network's outputs on those states.

The Atari teacher (``a2c/BreakoutNoFrameskip-v4_1``): ale-py for gym 0.21 (0.7.x) has no wheel for Python
3.11, so the old venv has no emulator. ``StandInAtariEnv`` below takes Breakout's place there: an env with
Breakout's raw spaces (210x160 RGB frames, ``Discrete(4)``, NOOP/FIRE/RIGHT/LEFT, 5 lives) registered as
``BreakoutNoFrameskip-v4`` under an entry point naming ``AtariEnv``, so the zoo treats it as Atari: it trains
with the zoo's own ``atari`` config (AtariWrapper, frame stack 4, CnnPolicy) and SB3 saves the spaces its
network sees, ``Box(0, 255, (4, 84, 84), uint8)`` (VecTransposeImage's channel-first space) and
``Discrete(4)``, as gym objects. Weights are random-init (``n_timesteps: 0``: no update, so no optimizer
state) on one env (the zip holds its last stacked observation) with a small NatureCNN (``features_dim``
16) to keep the file small; its recorded states are the
stand-in's frames through the zoo's AtariWrapper and VecFrameStack. AtariWrapper needs OpenCV, which the old
venv lacks: it is put on ``PYTHONPATH`` (see tests/data/README.md).

Usage (from the repository root, with the old venv's python; name folders to remake only those)::

    PYTHONPATH=/tmp/oldgym-cv2 /tmp/oldgym/bin/python tests/data/make_old_gym_fixtures.py [a2c/CartPole-v1_1 ...]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import gym
import numpy as np
import torch as th
from gym import spaces

OUT = Path(__file__).resolve().parent / "old_gym"
STEPS = 40  # recorded states per teacher

# (algo, env id, training steps, zoo --hyperparams overrides): tiny networks, a few thousand steps.
TEACHERS: list[tuple[str, str, int, list[str]]] = [
    ("dqn", "CartPole-v1", 10_000, ["policy_kwargs:dict(net_arch=[16])", "learning_starts:500"]),
    (
        "qrdqn",
        "CartPole-v1",
        10_000,
        ["policy_kwargs:dict(net_arch=[16], n_quantiles=5)", "learning_starts:500"],
    ),
    # discrete actor-critic, frame-stacked (VecFrameStack of 3 observations)
    ("a2c", "CartPole-v1", 10_000, ["policy_kwargs:dict(net_arch=dict(pi=[16], vf=[16]))", "frame_stack:3"]),
    # Gaussian policy (no gSDE) with VecNormalize statistics
    (
        "a2c",
        "Pendulum-v1",
        8_000,
        [
            "policy_kwargs:dict(net_arch=dict(pi=[16], vf=[16]), activation_fn=nn.ReLU, log_std_init=-1)",
            "use_sde:False",
            "normalize:True",
        ],
    ),
    # gSDE policy (the zoo's PPO Pendulum config uses gSDE), as the zoo configures it otherwise
    (
        "ppo",
        "Pendulum-v1",
        8_000,
        ["policy_kwargs:dict(net_arch=dict(pi=[16], vf=[16]), activation_fn=nn.ReLU, log_std_init=-2)"],
    ),
    # an env version Gymnasium 1.x retired (it has LunarLander-v3)
    ("dqn", "LunarLander-v2", 3_000, ["policy_kwargs:dict(net_arch=[16])", "learning_starts:500"]),
    # the zoo's atari config (AtariWrapper, frame_stack 4, CnnPolicy, RMSpropTFLike) on the stand-in
    # Breakout, random-init: n_timesteps 0 (``-n 0`` means "the config's"), a 16-unit NatureCNN head
    (
        "a2c",
        "BreakoutNoFrameskip-v4",
        0,
        [
            "n_timesteps:0",
            "n_envs:1",  # the zoo's 16 would save 16 stacked observations (_last_obs) in the zip
            "policy_kwargs:dict(optimizer_class=RMSpropTFLike, optimizer_kwargs=dict(eps=1e-5),"
            " features_extractor_kwargs=dict(features_dim=16))",
        ],
    ),
]
ATARI = "BreakoutNoFrameskip-v4"


class _Lives:
    """What AtariWrapper's EpisodicLifeEnv reads: ``env.unwrapped.ale.lives()``."""

    def __init__(self) -> None:
        self.left = 5

    def lives(self) -> int:
        return self.left


class StandInAtariEnv(gym.Env):
    """Breakout's raw spaces and the ALE interface AtariWrapper uses (gym 0.21 API), without an emulator.

    Frames are seeded random 21x16 blocks scaled 10x (so downscaling to 84x84 keeps contrast); a life is
    lost every 60 frames and FIRE pays 1, so EpisodicLifeEnv, FireResetEnv and reward clipping all act.
    """

    observation_space = spaces.Box(0, 255, (210, 160, 3), np.uint8)
    action_space = spaces.Discrete(4)

    def __init__(self) -> None:
        self.ale = _Lives()
        self.seed()
        self._frames = 0

    def get_action_meanings(self) -> list[str]:
        return ["NOOP", "FIRE", "RIGHT", "LEFT"]

    def seed(self, seed: int | None = None) -> list[int]:
        self.np_random, seed = gym.utils.seeding.np_random(seed)
        return [seed]

    def _frame(self) -> np.ndarray:
        blocks = self.np_random.randint(0, 256, (21, 16, 3), dtype=np.uint8)
        return blocks.repeat(10, axis=0).repeat(10, axis=1)

    def reset(self) -> np.ndarray:
        self.ale.left, self._frames = 5, 0
        return self._frame()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, dict]:
        self._frames += 1
        if self._frames % 60 == 0:
            self.ale.left -= 1
        return self._frame(), float(action == 1), self.ale.left == 0, {}


# the zoo calls an env Atari when its entry point names AtariEnv (ExperimentManager.is_atari); rl_zoo3's
# train imports this module through --gym-packages, so its subprocess registers it too
if ATARI not in gym.envs.registry.env_specs:
    gym.envs.register(ATARI, entry_point=f"{Path(__file__).stem}:StandInAtariEnv")


def train(algo: str, env_id: str, steps: int, overrides: list[str], logs: Path) -> Path:
    cmd = [sys.executable, "-m", "rl_zoo3.train", "--algo", algo, "--env", env_id, "-n", str(steps)]
    cmd += ["--seed", "0", "-f", str(logs), "--num-threads", "1", "--eval-freq", "-1", "--verbose", "0"]
    cmd += ["--hyperparams", *overrides]
    if env_id == ATARI:
        cmd += ["--gym-packages", Path(__file__).stem]
    # the script's folder on the path: --gym-packages imports this module by name
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    }
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    return logs / algo / f"{env_id}_1"


def outputs(model, algo: str, obs: np.ndarray) -> dict[str, np.ndarray]:
    """The network's outputs on (normalised) observations, computed by SB3 1.x itself."""
    policy = model.policy
    obs_t, _ = policy.obs_to_tensor(obs)
    with th.no_grad():
        if algo == "dqn":
            return {"q_values": policy.q_net(obs_t).numpy()}
        if algo == "qrdqn":
            return {"quantiles": policy.quantile_net(obs_t).numpy()}
        dist = policy.get_distribution(obs_t).distribution
        if hasattr(dist, "probs"):
            return {"probs": dist.probs.numpy()}
        return {"mean": dist.mean.numpy(), "log_std": dist.stddev.log().numpy()}


def expected(run: Path, algo: str, env_id: str) -> dict[str, np.ndarray]:
    from rl_zoo3.utils import ALGOS, create_test_env, get_saved_hyperparams

    hyperparams, stats_path = get_saved_hyperparams(str(run / env_id), norm_reward=False, test_mode=True)
    env = create_test_env(env_id, n_envs=1, stats_path=stats_path, seed=0, hyperparams=hyperparams)
    model = ALGOS[algo].load(run / f"{env_id}.zip", device="cpu")
    normalized = hyperparams.get("normalize", False)
    rows: dict[str, list[np.ndarray]] = {"obs": [], "action": []}
    obs = env.reset()
    for _ in range(STEPS):
        action, _ = model.predict(obs, deterministic=True)
        rows["obs"].append(env.get_original_obs() if normalized else obs)
        rows["action"].append(action)
        for key, value in outputs(model, algo, obs).items():
            rows.setdefault(key, []).append(value)
        obs, _, _, _ = env.step(action)
    return {key: np.concatenate(values) for key, values in rows.items()}


def main() -> None:
    import stable_baselines3

    assert gym.__version__ == "0.21.0" and stable_baselines3.__version__ == "1.8.0"
    only = sys.argv[1:]  # e.g. a2c/BreakoutNoFrameskip-v4_1 to remake one folder; all by default
    with tempfile.TemporaryDirectory() as tmp:
        for algo, env_id, steps, overrides in TEACHERS:
            if only and f"{algo}/{env_id}_1" not in only:
                continue
            run = train(algo, env_id, steps, overrides, Path(tmp) / f"{algo}-{env_id}")
            dest = OUT / algo / f"{env_id}_1"
            shutil.rmtree(dest, ignore_errors=True)
            (dest / env_id).mkdir(parents=True)
            # what the zoo's enjoy reads; best_model.zip, monitor and evaluation logs are left out
            shutil.copy(run / f"{env_id}.zip", dest)
            for name in ("args.yml", "config.yml", "vecnormalize.pkl"):
                if (run / env_id / name).is_file():
                    shutil.copy(run / env_id / name, dest / env_id)
            # Atari's 84x84x4 image states are compressed (still plain arrays, no pickle)
            save = np.savez_compressed if env_id == ATARI else np.savez
            save(dest / "expected.npz", **expected(dest, algo, env_id))
            print(
                f"{dest.relative_to(OUT.parent)}: {sum(f.stat().st_size for f in dest.rglob('*') if f.is_file())} bytes"
            )


if __name__ == "__main__":
    main()
