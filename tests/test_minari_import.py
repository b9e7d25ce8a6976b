"""``policy-kd import minari``: a Minari dataset made here, under a temporary MINARI_DATASETS_PATH, becomes a
buffer of kind actions that distils by behaviour cloning."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from conftest import run_cli
from test_errors import expect_error

from policy_kd.buffer import Buffer
from policy_kd.teachers.examples import cartpole_controller

minari = pytest.importorskip("minari")
h5py = pytest.importorskip("h5py")
from minari.data_collector.episode_buffer import EpisodeBuffer  # noqa: E402


def _episodes(
    env_id: str, policy, n: int, *, max_steps: int | None = None, first_id: int = 0
) -> list[EpisodeBuffer]:
    env = gym.make(env_id, max_episode_steps=max_steps) if max_steps else gym.make(env_id)
    out = []
    for i in range(n):
        o, _ = env.reset(seed=i)
        obs, acts, rews, terms, truncs = [o], [], [], [], []
        done = False
        while not done:
            a = policy(o)
            o, r, te, tr, _ = env.step(a)
            obs.append(o), acts.append(a), rews.append(r), terms.append(te), truncs.append(tr)
            done = te or tr
        out.append(
            EpisodeBuffer(
                id=first_id + i,  # Minari merges episodes that share an id
                observations=np.array(obs),
                actions=np.array(acts),
                rewards=np.array(rews, np.float64),
                terminations=np.array(terms),
                truncations=np.array(truncs),
                infos={},
            )
        )
    env.close()
    return out


def _create(dataset_id: str, episodes: list[EpisodeBuffer], env_id: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Minari asks for an author, a description...
        minari.create_dataset_from_buffers(dataset_id, episodes, env=env_id, data_format="hdf5")


@pytest.fixture
def datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def _controller(o: np.ndarray) -> int:
    return int(cartpole_controller().fn(o[None])[0])


def test_cartpole_dataset_imports_and_clones(tmp_path: Path, datasets: Path, capsys) -> None:
    eps = _episodes("CartPole-v1", _controller, 4, max_steps=200)  # truncated at 200 steps
    eps += _episodes("CartPole-v1", lambda o: 0, 2, first_id=4)  # always left: terminated early
    _create("cartpole/mixed-v0", eps, "CartPole-v1")
    out = tmp_path / "buf"
    assert run_cli("import", "minari", "cartpole/mixed-v0", "--out", out, "--chunk-rows", "300") == 0
    buf = Buffer.open(out, verify=True)
    steps = sum(len(e.actions) for e in eps)
    assert buf.rows == steps and buf.complete
    meta = buf.meta
    assert meta["env_id"] == "CartPole-v1" and meta["teacher"]["kind"] == "actions"
    assert meta["teacher"]["source"] == "minari:cartpole/mixed-v0"
    np.testing.assert_array_equal(buf.field("action"), np.concatenate([e.actions for e in eps]))
    np.testing.assert_array_equal(buf.field("teacher").argmax(1), buf.field("action"))
    np.testing.assert_array_equal(buf.field("obs"), np.concatenate([e.observations[:-1] for e in eps]))
    np.testing.assert_allclose(np.sort(buf.episode_returns()), np.sort([e.rewards.sum() for e in eps]))
    assert int(buf.field("truncated").sum()) == 4 and int(buf.field("terminated").sum()) == 2
    assert (out / "command.txt").is_file() and json.loads((out / "manifest.json").read_text())["complete"]
    capsys.readouterr()
    expect_error(
        capsys, ["distill", "--buffer", out, "--out", tmp_path / "kl"], "needs soft targets", "--loss nll"
    )
    assert run_cli("distill", "--buffer", out, "--out", tmp_path / "st", "--loss", "nll", "--steps", "200",
                   "--eval-every", "0", "--no-progress") == 0  # fmt: skip
    expect_error(capsys, ["import", "minari", "cartpole/mixed-v0", "--out", out], "already exists", "--force")


def test_box_dataset_imports_for_mse(tmp_path: Path, datasets: Path) -> None:
    eps = _episodes(
        "Pendulum-v1", lambda o: np.clip([-2.0 * o[2]], -2, 2).astype(np.float32), 2, max_steps=50
    )
    _create("pendulum/pd-v0", eps, "Pendulum-v1")
    out = tmp_path / "buf"
    assert run_cli("import", "minari", "pendulum/pd-v0", "--out", out) == 0
    buf = Buffer.open(out)
    assert buf.fields["teacher"].shape == (1,) and buf.fields["action"].shape == (1,)
    np.testing.assert_allclose(buf.field("teacher"), buf.field("action"))
    assert run_cli("distill", "--buffer", out, "--out", tmp_path / "st", "--loss", "mse", "--steps", "50",
                   "--eval-every", "0", "--no-progress") == 0  # fmt: skip


def test_damaged_datasets_are_refused_before_writing(tmp_path: Path, datasets: Path, capsys) -> None:
    good = _episodes("CartPole-v1", _controller, 2, max_steps=20)
    short = _episodes("CartPole-v1", _controller, 1, max_steps=20, first_id=2)[0]
    short = dataclasses.replace(short, rewards=short.rewards[:-3])
    _create("cartpole/short-v0", [*good, short], "CartPole-v1")
    out = tmp_path / "buf"
    expect_error(
        capsys,
        ["import", "minari", "cartpole/short-v0", "--out", out],
        "missing data",
        "rewards 17 (expected 20)",
    )
    assert not out.exists()
    # a stored array deleted from an episode
    _create("cartpole/cut-v0", good, "CartPole-v1")
    with h5py.File(datasets / "cartpole" / "cut-v0" / "data" / "main_data.hdf5", "a") as f:
        del f["episode_1"]["rewards"]
    expect_error(capsys, ["import", "minari", "cartpole/cut-v0", "--out", out], "episode 1", "missing data")
    nan = _episodes("CartPole-v1", _controller, 1, max_steps=10)
    nan[0].observations[3, 1] = np.nan  # the arrays are mutable, the EpisodeBuffer is not
    _create("cartpole/nan-v0", nan, "CartPole-v1")
    expect_error(capsys, ["import", "minari", "cartpole/nan-v0", "--out", out], "NaN or Inf observations")
    assert not out.exists()
    expect_error(
        capsys,
        ["import", "minari", "cartpole/absent-v0", "--out", out],
        "no Minari dataset",
        "MINARI_DATASETS_PATH",
    )
    expect_error(
        capsys,
        ["import", "minari", "cartpole/short-v0", "--env", "Acrobot-v1", "--out", out],
        "Acrobot-v1 has",
    )
    expect_error(capsys, ["import", "parquet", "x"], "choose one of minari")
    expect_error(capsys, ["import"], "import minari DATASET --out BUFFER")
    expect_error(capsys, ["import", "minari", "--out", out], "needs a dataset")
