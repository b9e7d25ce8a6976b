"""Sweeps and sharded records on a real local Ray cluster (2 CPUs, loopback, no dashboard), one per session."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from policy_kd.sweep import comparable
from tests.conftest import run_cli
from tests.test_sweep import write_sweep_file

ray = pytest.importorskip("ray")


pytestmark = pytest.mark.skipif(
    not Path("/proc/self/cmdline").is_file(), reason="finds workers through /proc"
)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A local Ray cluster for the session; the backends find it initialised and leave it running."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory: pytest.TempPathFactory, artifacts: dict[str, Path]) -> Path:
    return write_sweep_file(
        tmp_path_factory.mktemp("ray_sweep"),
        artifacts,
        task="ray",
        # long enough for the kill test to find a worker mid-training, past its first checkpoint
        distill={"steps": 800, "eval_every": 0, "checkpoint_every": 100},
        losses={"kl": {"loss": "kl", "tau": 0.1}},
        episodes=3,
    )


@pytest.fixture(scope="module")
def local_results(sweep_file: Path) -> dict[str, Any]:
    out = sweep_file.parent / "local"
    assert run_cli("sweep", sweep_file, "--out", out) == 0
    return json.loads((out / "results.json").read_text())


def test_a_sweep_through_ray_gives_the_local_results(
    ray_cluster: None, sweep_file: Path, local_results: dict[str, Any]
) -> None:
    out = sweep_file.parent / "ray"
    assert run_cli("sweep", sweep_file, "--out", out, "--backend", "ray") == 0
    got = json.loads((out / "results.json").read_text())
    assert list(got["runs"]) == ["f0.25_kl_s0", "f0.04_kl_s0"]
    assert comparable(got) == comparable(local_results)
    assert ray.is_initialized()  # the session's cluster was joined, not shut down


def _pids_titled(title: str) -> list[int]:
    """Processes whose command line (a Ray worker's process title while it runs a task) holds ``title``."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if title.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:  # the process ended meanwhile
            continue
    return pids


def _kill_a_training_worker(students: Path, killed: list[int]) -> None:
    """SIGKILL the first Ray worker running train_students once a student of it has checkpointed."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not killed:
        if any(students.glob("*/checkpoint.pt")):
            for pid in _pids_titled("ray::train_students"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.05)


def test_a_worker_killed_mid_task_costs_a_retry_not_the_sweep(
    ray_cluster: None,
    sweep_file: Path,
    local_results: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # one student: the worker training it is the one running train_students
    raw = yaml.safe_load(sweep_file.read_text())
    config = sweep_file.parent / "one.yaml"
    config.write_text(yaml.safe_dump({**raw, "sizes": [0.04]}, sort_keys=False))
    out = sweep_file.parent / "ray_killed"
    killed: list[int] = []
    killer = threading.Thread(target=_kill_a_training_worker, args=(out / "students", killed), daemon=True)
    killer.start()
    assert run_cli("sweep", config, "--out", out, "--backend", "ray") == 0
    killer.join(timeout=1)
    assert killed, "no worker was found mid-training to kill"
    assert "resumed from its checkpoint" in capsys.readouterr().out  # the retry resumed, not restarted
    got = comparable(json.loads((out / "results.json").read_text()))
    want = comparable(local_results)
    # resume is bit-identical: the same student, the same returns as the uninterrupted local sweep
    assert got["runs"] == {"f0.04_kl_s0": want["runs"]["f0.04_kl_s0"]} and got["teacher"] == want["teacher"]


def test_a_sharded_record_through_ray_reads_back_row_for_row(
    ray_cluster: None, tmp_path: Path, artifacts: dict[str, Path]
) -> None:
    from policy_kd.shards import shard_plan
    from tests.test_shards import check_every_row

    out = tmp_path / "sharded"
    args = ["--steps", "1001", "--n-envs", "2", "--seed", "3", "--chunk-rows", "500", "--no-progress"]
    assert run_cli("record", "--teacher", artifacts["teacher"], "--out", out, *args, "--workers", "2",
                   "--backend", "ray") == 0  # fmt: skip
    check_every_row(out, shard_plan(1001, 2, n_envs=2, seed=3), artifacts["teacher"], tmp_path)


def test_bad_input_found_in_a_ray_task_is_one_line_not_retried(ray_cluster: None, tmp_path: Path) -> None:
    from policy_kd.backends import RayBackend
    from policy_kd.errors import PolicyKDError
    from policy_kd.shards import read_shards

    backend = RayBackend()
    with pytest.raises(PolicyKDError, match=r"shards.json is not a list of shards; re-record") as err:
        backend.result(backend.submit(read_shards, tmp_path))
    assert "\n" not in str(err.value)
