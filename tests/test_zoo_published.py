"""The teachers users bring: rl-baselines3-zoo agents saved with OpenAI ``gym`` (tests/data/old_gym, made by
SB3 1.8 with gym 0.21, see tests/data/README.md), retired env versions, and ``hf://`` Hub teachers.

``gym`` is blocked in every test here (``sys.modules["gym"] = None``: ``import gym`` fails), as in a venv
without it, whatever is installed.
"""

from __future__ import annotations

import base64
import http.server
import importlib.util
import json
import shutil
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import run_cli

from policy_kd.buffer import Buffer
from policy_kd.errors import PolicyKDError
from policy_kd.teacher import load_teacher, read_zoo_yaml

DATA = Path(__file__).parent / "data" / "old_gym"
HAS_BOX2D = importlib.util.find_spec("Box2D") is not None
HAS_ATARI = all(importlib.util.find_spec(name) is not None for name in ("ale_py", "cv2"))
ATARI = (
    "a2c/BreakoutNoFrameskip-v4_1"  # the zoo's atari config, made on a stand-in env (tests/data/README.md)
)
OLD_GYM = [
    "dqn/CartPole-v1_1",
    "qrdqn/CartPole-v1_1",
    "a2c/CartPole-v1_1",  # frame stack 3
    "a2c/Pendulum-v1_1",  # Gaussian, VecNormalize
    "ppo/Pendulum-v1_1",  # gSDE
    ATARI,  # AtariWrapper, frame stack 4, CnnPolicy
]


@pytest.fixture(autouse=True)
def no_gym(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gym", None)


def _zoo_files(folder: Path) -> tuple[Path, Path]:
    """A zoo run folder's model and params folder (``<env>.zip``, ``<env>/``)."""
    (params,) = [p for p in folder.iterdir() if p.is_dir()]
    return folder / f"{params.name}.zip", params


def test_fixtures_are_old_gym_files() -> None:
    with pytest.raises(ImportError):
        import gym  # noqa: F401
    for name in [*OLD_GYM, "dqn/LunarLander-v2_1"]:
        zip_path, _ = _zoo_files(DATA / name)
        with zipfile.ZipFile(zip_path) as archive:
            data = json.loads(archive.read("data"))
            assert archive.read("_stable_baselines3_version").decode().startswith("1.8")
        assert data["observation_space"][":type:"].startswith("<class 'gym.spaces.")
        if name == ATARI:  # SB3 stores the channel-first space VecTransposeImage gives its network
            assert data["observation_space"]["_shape"] == [4, 84, 84]
        assert b"gym.spaces" in base64.b64decode(data["action_space"][":serialized:"])
    assert b"gym.spaces" in (DATA / "a2c/Pendulum-v1_1/Pendulum-v1/vecnormalize.pkl").read_bytes()


def _check_acts_as_saved(folder: Path, teacher_path: str | Path, env: str | None = None) -> None:
    """The teacher's actions and outputs on the saved states equal what SB3 1.8 computed at save time."""
    teacher = load_teacher(teacher_path, env)
    expected = np.load(folder / "expected.npz", allow_pickle=False)
    labels = teacher.label(expected["obs"])
    outputs = labels.outputs
    np.testing.assert_allclose(labels.greedy.reshape(expected["action"].shape), expected["action"], atol=1e-6)
    if teacher.kind == "q_values":
        np.testing.assert_allclose(outputs["teacher"], expected["q_values"], atol=1e-5)
    elif teacher.kind == "quantiles":
        np.testing.assert_allclose(outputs["teacher_quantiles"], expected["quantiles"], atol=1e-5)
    elif teacher.kind == "logits":
        probs = torch.softmax(torch.from_numpy(outputs["teacher"]), -1).numpy()
        np.testing.assert_allclose(probs, expected["probs"], atol=1e-6)
    else:
        np.testing.assert_allclose(outputs["teacher"], expected["mean"], atol=1e-5)
        np.testing.assert_allclose(outputs["teacher_log_std"], expected["log_std"], atol=1e-5)


@pytest.mark.parametrize("name", OLD_GYM)
def test_old_gym_zoo_teacher_acts_as_saved(name: str) -> None:
    if name.startswith("qrdqn"):
        pytest.importorskip("sb3_contrib")
    if name == ATARI and not HAS_ATARI:
        pytest.skip("ale-py or OpenCV not installed (atari extra)")
    _check_acts_as_saved(DATA / name, DATA / name)
    teacher = load_teacher(DATA / name)
    assert (teacher.vec_normalize is not None) == name.startswith("a2c/Pendulum")
    assert teacher.frame_stack == {"a2c/CartPole-v1_1": 3, ATARI: 4}.get(name)
    assert teacher.trained_env_id is None


def test_old_gym_teacher_records_and_evaluates(tmp_path: Path) -> None:
    folder = DATA / "a2c/Pendulum-v1_1"
    assert (
        run_cli("record", "--teacher", folder, "--out", tmp_path / "buf", "--steps", "200", "--no-progress")
        == 0
    )
    buffer = Buffer.open(tmp_path / "buf")
    assert buffer.meta["teacher"]["kind"] == "gaussian" and buffer.meta["teacher"]["source"] == str(
        folder.resolve()
    )
    assert run_cli("evaluate", "--teacher", folder, "--episodes", "2", "--out", tmp_path / "eval") == 0
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert (
        result["env_id"] == "Pendulum-v1" and len(result["teacher"]["modes"]["deterministic"]["lengths"]) == 2
    )


# ----------------------------------------------------------------------------------- retired env versions


def _relabelled(tmp_path: Path, name: str, env_id: str) -> Path:
    """A copy of an old-gym zoo run, laid out and named as if trained on ``env_id``."""
    run = tmp_path / f"{env_id}_1"
    shutil.copytree(DATA / name, run)
    zip_path, params = _zoo_files(run)
    zip_path.rename(run / f"{env_id}.zip")
    params = params.rename(run / env_id)
    args = read_zoo_yaml(params / "args.yml")
    (params / "args.yml").write_text(yaml.safe_dump({**args, "env": env_id}))
    return run


def test_other_version_runs_when_spaces_match(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _relabelled(tmp_path, "dqn/CartPole-v1_1", "CartPole-v0")
    _check_acts_as_saved(DATA / "dqn/CartPole-v1_1", run, "CartPole-v1")
    assert load_teacher(run, "CartPole-v1").trained_env_id == "CartPole-v0"
    capsys.readouterr()
    assert (
        run_cli(
            "record",
            "--teacher",
            run,
            "--env",
            "CartPole-v1",
            "--out",
            tmp_path / "buf",
            "--steps",
            "100",
            "--no-progress",
        )
        == 0
    )
    warning = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warning == [
        "policy-kd: warning: teacher trained on CartPole-v0 runs on CartPole-v1 (same observation and action spaces)"
    ]
    meta = Buffer.open(tmp_path / "buf").meta
    assert meta["env_id"] == "CartPole-v1" and meta["teacher"]["trained_env_id"] == "CartPole-v0"
    out = tmp_path / "eval"
    assert run_cli("evaluate", "--teacher", run, "--env", "CartPole-v1", "--episodes", "2", "--out", out) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["env_id"] == "CartPole-v1" and result["teacher"]["trained_env_id"] == "CartPole-v0"
    # the same folder with its own env records no version change
    assert load_teacher(run).trained_env_id is None


def test_unregistered_version_and_mismatched_spaces(tmp_path: Path) -> None:
    # a made-up retired version of an env Gymnasium has (Acrobot-v1), holding a CartPole teacher
    run = _relabelled(tmp_path, "dqn/CartPole-v1_1", "Acrobot-v0")
    with pytest.raises(
        PolicyKDError,
        match=r"trained on Acrobot-v0, which this Gymnasium does not register \(it has Acrobot-v1\); run it there with --env Acrobot-v1",
    ):
        load_teacher(run)
    with pytest.raises(
        PolicyKDError,
        match=r"\(trained on Acrobot-v0\) expects observations Box.*\(4,\).* and actions Discrete\(2\), but Acrobot-v1 has .*\(6,\).* and Discrete\(3\)",
    ):
        load_teacher(run, "Acrobot-v1")
    with pytest.raises(PolicyKDError, match="trained on Acrobot-v0, not CartPole-v1; drop --env"):
        load_teacher(run, "CartPole-v1")


def test_train_teacher_folder_on_another_version(artifacts: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "teacher"
    shutil.copytree(artifacts["teacher"], run)
    meta = json.loads((run / "teacher.json").read_text())
    (run / "teacher.json").write_text(json.dumps({**meta, "env_id": "CartPole-v0"}))
    teacher = load_teacher(run, "CartPole-v1")
    assert (teacher.env_id, teacher.trained_env_id) == ("CartPole-v1", "CartPole-v0")
    with pytest.raises(PolicyKDError, match="trained on CartPole-v0, not Acrobot-v1"):
        load_teacher(run, "Acrobot-v1")


def test_vecnormalize_of_other_observations_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "CartPole-v1_1"
    shutil.copytree(DATA / "dqn/CartPole-v1_1", run)
    shutil.copy(DATA / "a2c/Pendulum-v1_1/Pendulum-v1/vecnormalize.pkl", run / "CartPole-v1")
    with pytest.raises(
        PolicyKDError,
        match=r"statistics .*vecnormalize.pkl are for observations \(3,\), but CartPole-v1 has \(4,\)",
    ):
        load_teacher(run)


@pytest.mark.skipif(not HAS_BOX2D, reason="Box2D not installed (box2d extra)")
def test_lunarlander_v2_teacher_runs_on_v3() -> None:
    folder = DATA / "dqn/LunarLander-v2_1"
    with pytest.raises(PolicyKDError, match=r"it has LunarLander-v3.*--env LunarLander-v3"):
        load_teacher(folder)
    _check_acts_as_saved(folder, folder, "LunarLander-v3")
    assert load_teacher(folder, "LunarLander-v3").trained_env_id == "LunarLander-v2"


# ------------------------------------------------------------------------------------------ Hugging Face Hub

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline Hugging Face cache holding sb3/a2c-Pendulum-v1 as the sb3 repositories lay it out (flat:
    <algo>-<env>.zip, args.yml, config.yml, env_kwargs.yml, vec_normalize.pkl), made from an old-gym fixture."""
    constants = pytest.importorskip("huggingface_hub.constants")
    cache = tmp_path / "hf"
    repo = cache / "models--sb3--a2c-Pendulum-v1"
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    zip_path, params = _zoo_files(DATA / "a2c/Pendulum-v1_1")
    shutil.copy(zip_path, snapshot / "a2c-Pendulum-v1.zip")
    for name in ("args.yml", "config.yml"):
        shutil.copy(params / name, snapshot / name)
    shutil.copy(params / "vecnormalize.pkl", snapshot / "vec_normalize.pkl")
    (snapshot / "env_kwargs.yml").write_text("{}\n")
    (snapshot / "README.md").write_text("---\nlibrary_name: stable-baselines3\n---\n")
    # huggingface_hub reads these once, at import: set both the variables and what it read
    for var, value in {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": True}.items():
        monkeypatch.setenv(var, str(int(value)) if value is True else value)
        monkeypatch.setattr(constants, var, value)
    return cache


def test_hub_teacher_loads_from_the_cache(hub_cache: Path, tmp_path: Path) -> None:
    for uri in ("hf://sb3/a2c-Pendulum-v1", f"hf://sb3/a2c-Pendulum-v1@{REVISION}"):
        _check_acts_as_saved(DATA / "a2c/Pendulum-v1_1", uri)
        teacher = load_teacher(uri)
        assert teacher.vec_normalize is not None and teacher.source == uri
        assert (
            Path(teacher.path).parent == hub_cache / "models--sb3--a2c-Pendulum-v1" / "snapshots" / REVISION
        )
    # wherever a teacher is accepted: record, then distill --teacher (checked against the buffer's digest)
    buf = tmp_path / "buf"
    assert (
        run_cli(
            "record", "--teacher", "hf://sb3/a2c-Pendulum-v1", "--out", buf, "--steps", "200", "--no-progress"
        )
        == 0
    )
    assert Buffer.open(buf).meta["teacher"]["source"] == "hf://sb3/a2c-Pendulum-v1"
    student = tmp_path / "student"
    args = ["--buffer", buf, "--out", student, "--steps", "20", "--eval-every", "20", "--eval-episodes", "1"]
    assert (
        run_cli(
            "distill",
            *args,
            "--loss",
            "gaussian_kl",
            "--hidden",
            "8",
            "--hint-weight",
            "0.1",
            "--teacher",
            "hf://sb3/a2c-Pendulum-v1",
            "--no-progress",
        )
        == 0
    )
    assert (
        run_cli("evaluate", "--teacher", "hf://sb3/a2c-Pendulum-v1", "--student", student, "--episodes", "2")
        == 0
    )


def _one_line_error(capsys: pytest.CaptureFixture[str], *args: object) -> str:
    assert run_cli(*args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_hub_offline_miss_and_bad_address(hub_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _one_line_error(capsys, "evaluate", "--teacher", "hf://sb3/dqn-Nothing-v0", "--episodes", "1")
    assert "hf://sb3/dqn-Nothing-v0 is not in the Hugging Face cache and the Hub cannot be reached" in err
    err = _one_line_error(capsys, "evaluate", "--teacher", "hf://sb3/a2c-Pendulum-v1@v9", "--episodes", "1")
    assert "is not in the Hugging Face cache" in err
    err = _one_line_error(capsys, "record", "--teacher", "hf://a2c-Pendulum-v1", "--out", hub_cache / "x")
    assert "bad Hub teacher 'hf://a2c-Pendulum-v1'; write hf://ORG/REPO" in err


class _NoSuchRepo(http.server.BaseHTTPRequestHandler):
    """The Hub's answer for a repository that does not exist (or is private)."""

    def do_GET(self) -> None:
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("X-Error-Message", "Repository not found")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_hub(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Online again, against a local server that knows no repository."""
    constants = pytest.importorskip("huggingface_hub.constants")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NoSuchRepo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    yield endpoint
    server.shutdown()
    server.server_close()


def test_hub_missing_repository(fake_hub: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = _one_line_error(capsys, "evaluate", "--teacher", "hf://sb3/dqn-Nothing-v0", "--episodes", "1")
    assert "no Hugging Face model repository sb3/dqn-Nothing-v0" in err


@pytest.mark.parametrize("command", ["record", "evaluate", "distill", "kickstart"])
def test_help_of_teacher_loading_commands(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run_cli(command, "--help")
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.replace("│", " ").split())  # unwrapped
    assert ".zip and .pkl files are unpickled code" in text
    assert "zoo run folder" in text and "hf://ORG/REPO" in text
