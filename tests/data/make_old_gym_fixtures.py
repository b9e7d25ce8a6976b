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

Usage (from the repository root, with the old venv's python)::

    /tmp/oldgym/bin/python tests/data/make_old_gym_fixtures.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch as th

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
]


def train(algo: str, env_id: str, steps: int, overrides: list[str], logs: Path) -> Path:
    cmd = [sys.executable, "-m", "rl_zoo3.train", "--algo", algo, "--env", env_id, "-n", str(steps)]
    cmd += ["--seed", "0", "-f", str(logs), "--num-threads", "1", "--eval-freq", "-1", "--verbose", "0"]
    cmd += ["--hyperparams", *overrides]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
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
    import gym
    import stable_baselines3

    assert gym.__version__ == "0.21.0" and stable_baselines3.__version__ == "1.8.0"
    with tempfile.TemporaryDirectory() as tmp:
        for algo, env_id, steps, overrides in TEACHERS:
            run = train(algo, env_id, steps, overrides, Path(tmp) / f"{algo}-{env_id}")
            dest = OUT / algo / f"{env_id}_1"
            shutil.rmtree(dest, ignore_errors=True)
            (dest / env_id).mkdir(parents=True)
            # what the zoo's enjoy reads; best_model.zip, monitor and evaluation logs are left out
            shutil.copy(run / f"{env_id}.zip", dest)
            for name in ("args.yml", "config.yml", "vecnormalize.pkl"):
                if (run / env_id / name).is_file():
                    shutil.copy(run / env_id / name, dest / env_id)
            np.savez(dest / "expected.npz", **expected(dest, algo, env_id))
            print(
                f"{dest.relative_to(OUT.parent)}: {sum(f.stat().st_size for f in dest.rglob('*') if f.is_file())} bytes"
            )


if __name__ == "__main__":
    main()
