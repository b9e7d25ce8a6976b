"""Teachers that are not SB3 models: a CleanRL-style DQN module and a scripted CartPole controller, through
the Python API (from_callable / from_module) and ``--teacher py:PKG.MODULE:NAME`` in record, distill,
evaluate and kickstart; action-only teachers (kind actions) are behaviour cloning."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from conftest import run_cli
from test_errors import expect_error

from policy_kd.buffer import Buffer
from policy_kd.errors import PolicyKDError
from policy_kd.teachers import (
    TeacherProtocol,
    from_callable,
    from_module,
    load_teacher,
)
from policy_kd.teachers.examples import (
    QNetwork,
    cartpole_controller,
    from_cleanrl_dqn,
    train_cleanrl_dqn,
)

CONTROLLER = "py:policy_kd.teachers.examples:cartpole_controller"
TINY = ["--no-progress"]


@pytest.fixture(scope="session")
def cleanrl_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CleanRL-style DQN trained for a few thousand steps (a weak teacher; enough to distil from)."""
    path = tmp_path_factory.mktemp("cleanrl") / "dqn.cleanrl_model"
    return train_cleanrl_dqn(path, total_timesteps=3000, learning_starts=500, target_network_frequency=100)


@pytest.fixture
def factories(tmp_path: Path, cleanrl_model: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A user's module of teacher factories in the current directory (imported as `python -m` would);
    returns its module name."""
    name = f"user_teachers_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        "from policy_kd.teachers.examples import from_cleanrl_dqn\n"
        "from policy_kd.teachers import from_callable\n"
        f"def cleanrl():\n    return from_cleanrl_dqn({str(cleanrl_model)!r})\n"
        "def not_a_teacher():\n    return 42\n"
        "def unbound():\n"
        "    import numpy as np, gymnasium as gym\n"
        "    return from_callable(lambda o: np.zeros(len(o), int), gym.spaces.Box(-1, 1, (4,)),\n"
        "                         gym.spaces.Discrete(2), kind='actions')\n"
    )
    monkeypatch.chdir(tmp_path)
    return name


# ------------------------------------------------------------------------------------------ Python API


def test_from_module_labels_with_the_module(cleanrl_model: Path) -> None:
    teacher = from_cleanrl_dqn(cleanrl_model)
    assert isinstance(teacher, TeacherProtocol) and teacher.kind == "q_values"
    net = QNetwork(4, 2)
    net.load_state_dict(torch.load(cleanrl_model, weights_only=True))
    obs = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    labels = teacher.label(obs)
    with torch.no_grad():
        q = net(torch.from_numpy(obs)).numpy()
    np.testing.assert_allclose(labels.outputs["teacher"], q, rtol=1e-6)
    np.testing.assert_array_equal(labels.greedy, q.argmax(-1))
    # sized, hashed and timed as its module
    assert teacher.policy_params == sum(p.numel() for p in net.parameters())
    assert teacher.network() is teacher.module and teacher.file_bytes() > 0
    assert teacher.head_module() is teacher.module.network[-1]
    assert teacher.features(obs).shape == (32, 84)


def test_from_callable_kinds_sample_as_declared() -> None:
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(256, 4)).astype(np.float32)
    logits = from_callable(lambda o: np.tile([0.0, 0.0], (len(o), 1)), kind="logits", env_id="CartPole-v1")
    drawn = logits.sample(logits.label(obs), rng)
    assert 0.3 < drawn.mean() < 0.7  # uniform logits: both actions drawn
    ctrl = cartpole_controller()
    labels = ctrl.label(obs)
    assert ctrl.kind == "actions" and labels.outputs["teacher"].sum(axis=1).tolist() == [1.0] * 256
    np.testing.assert_array_equal(labels.outputs["teacher"].argmax(1), labels.greedy)
    np.testing.assert_array_equal(ctrl.sample(labels, rng), labels.greedy)  # no distribution to draw from
    # Box: Gaussian parameters, clipped to the bounds when acting
    pend = from_callable(
        lambda o: (np.full((len(o), 1), 5.0), np.full(1, -1.0)), kind="gaussian", env_id="Pendulum-v1"
    )
    lab = pend.label(np.zeros((3, 3), np.float32))
    assert lab.outputs["teacher_log_std"].shape == (3, 1) and (lab.greedy == 2.0).all()


def test_declared_kind_and_outputs_are_checked() -> None:
    with pytest.raises(PolicyKDError, match="choose one of q_values, logits, actions"):
        from_callable(lambda o: o, kind="gaussian", env_id="CartPole-v1")
    with pytest.raises(PolicyKDError, match="declares observations"):
        from_callable(lambda o: o, gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2), kind="logits").bind(
            "CartPole-v1"
        )
    bad = from_callable(lambda o: np.zeros((len(o), 3)), kind="q_values", env_id="CartPole-v1")
    with pytest.raises(PolicyKDError, match=r"shape \(5, 3\) for 5 observations; expected \(5, 2\)"):
        bad.label(np.zeros((5, 4), np.float32))
    wrong = from_callable(lambda o: np.full(len(o), 7), kind="actions", env_id="CartPole-v1")
    with pytest.raises(PolicyKDError, match="outside Discrete"):
        wrong.label(np.zeros((2, 4), np.float32))
    net = torch.nn.Linear(4, 2)
    assert from_module(net, kind="logits", env_id="CartPole-v1").policy_params == 10


# ----------------------------------------------------------------------- py: teachers through the CLI


def test_cleanrl_teacher_records_distils_and_evaluates(tmp_path: Path, factories: str) -> None:
    spec = f"py:{factories}:cleanrl"
    assert run_cli("record", "--teacher", spec, "--out", "buf", "--steps", "2000", *TINY) == 0
    meta = Buffer.open(tmp_path / "buf").meta
    assert meta["teacher"]["kind"] == "q_values" and meta["teacher"]["source"] == spec
    assert meta["teacher"]["policy_params"] == 4 * 120 + 120 + 120 * 84 + 84 + 84 * 2 + 2
    assert run_cli("distill", "--buffer", "buf", "--out", "st", "--steps", "200", "--eval-every", "100",
                   "--eval-episodes", "2", *TINY) == 0  # fmt: skip
    # the buffer's teacher is this one (weights digest), so hints and DAgger rounds may query it
    assert run_cli("distill", "--buffer", "buf", "--out", "hint", "--steps", "60", "--eval-every", "0",
                   "--hint-weight", "0.5", "--teacher", spec, *TINY) == 0  # fmt: skip
    assert run_cli("evaluate", "--teacher", spec, "--student", "st", "--buffer", "buf", "--episodes", "3",
                   "--out", "ev", "--latency") == 0  # fmt: skip
    result = json.loads((tmp_path / "ev" / "eval.json").read_text())
    t = result["teacher"]
    assert t["format"] == "torch" and t["macs"] > 0 and t["latency"]["batch1_us"] > 0


def test_scripted_controller_is_behaviour_cloning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "buf"
    assert run_cli("record", "--teacher", CONTROLLER, "--out", out, "--steps", "3000", "--behaviour",
                   "teacher", *TINY) == 0  # fmt: skip
    buf = Buffer.open(out)
    assert buf.meta["teacher"]["kind"] == "actions" and buf.meta["teacher"]["algo"] == "custom"
    # the teacher field is the one-hot of the action the controller took
    np.testing.assert_array_equal(buf.field("teacher").argmax(1), buf.field("action"))
    assert buf.episode_returns().min() == 500.0
    capsys.readouterr()
    for loss in ("kl", "hinton", "mse"):
        expect_error(capsys, ["distill", "--buffer", out, "--out", tmp_path / loss, "--loss", loss],
                     "needs soft targets", "--loss nll")  # fmt: skip
        assert not (tmp_path / loss).exists()  # refused before its folder is made: a retry needs no --force
    st = tmp_path / "st"
    assert run_cli("distill", "--buffer", out, "--out", st, "--loss", "nll", "--steps", "1500",
                   "--eval-every", "500", "--eval-episodes", "3", *TINY) == 0  # fmt: skip
    assert run_cli("evaluate", "--teacher", CONTROLLER, "--student", st, "--episodes", "3", "--out",
                   tmp_path / "ev") == 0  # fmt: skip
    result = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert result["teacher"]["format"] == "python" and result["teacher"]["macs"] is None
    ret = result["students"][0]["mean_return"]
    assert ret > 300, ret  # cloning a perfect controller: the student balances the pole


def test_box_action_teacher_clones_with_mse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mod = tmp_path / f"pend_{uuid.uuid4().hex[:8]}.py"
    mod.write_text(
        "import numpy as np\nfrom policy_kd.teachers import from_callable\n"
        "def pd():\n"
        "    return from_callable(lambda o: np.clip(-3 * o[:, 1:2] - o[:, 2:3], -2, 2), kind='actions',\n"
        "                         env_id='Pendulum-v1', name='pd')\n"
    )
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        spec = f"py:{mod.stem}:pd"
        assert run_cli("record", "--teacher", spec, "--out", "buf", "--steps", "600", *TINY) == 0
        assert Buffer.open(tmp_path / "buf").fields["teacher"].shape == (1,)
        capsys.readouterr()
        expect_error(
            capsys, ["distill", "--buffer", "buf", "--out", "g", "--loss", "gaussian_kl"], "--loss mse"
        )
        assert run_cli("distill", "--buffer", "buf", "--out", "st", "--loss", "mse", "--steps", "100",
                       "--eval-every", "0", *TINY) == 0  # fmt: skip
    finally:
        os.chdir(cwd)


def test_kickstart_takes_a_py_teacher(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    preset = tmp_path / "dqn.yml"
    tiny = {"policy": "MlpPolicy", "n_timesteps": 400, "learning_starts": 100, "train_freq": 64,
            "gradient_steps": 4, "batch_size": 32, "target_update_interval": 10}  # fmt: skip
    preset.write_text(yaml.safe_dump({"CartPole-v1": tiny}))
    args = ["kickstart", "--teacher", CONTROLLER, "--preset", preset, "--student-hidden", "8"]
    args += ["--eval-freq", "200", "--eval-episodes", "1", *TINY]
    expect_error(capsys, [*args, "--out", tmp_path / "kl"], "needs soft targets", "--loss nll")
    assert run_cli(*args, "--loss", "nll", "--out", tmp_path / "ks") == 0
    info = json.loads((tmp_path / "ks" / "kickstart.json").read_text())
    assert info["distill_updates"] > 0


@pytest.mark.parametrize(
    ("attr", "fragments"),
    [
        ("not_a_teacher", ("returned a int, not a teacher", "from_callable")),
        ("missing", ("has no 'missing'",)),
        ("unbound", ("names no environment", "--env")),
    ],
)
def test_py_factory_errors_are_one_line(
    factories: str, capsys, attr: str, fragments: tuple[str, ...]
) -> None:
    expect_error(capsys, ["record", "--teacher", f"py:{factories}:{attr}", "--out", "b"], *fragments)
    assert not Path("b").exists() or not any(Path("b").iterdir())


def test_py_spec_errors(capsys: pytest.CaptureFixture[str], factories: str) -> None:
    expect_error(capsys, ["record", "--teacher", "py:no_such_module_xyz:f", "--out", "b"], "cannot import")
    expect_error(
        capsys, ["record", "--teacher", "py:just_a_module", "--out", "b"], "write py:PKG.MODULE:NAME"
    )
    expect_error(
        capsys,
        ["record", "--teacher", f"py:{factories}:cleanrl", "--env", "Acrobot-v1", "--out", "b"],
        "Acrobot-v1 has",
    )


def test_load_teacher_binds_an_unbound_teacher(factories: str) -> None:
    teacher = load_teacher(f"py:{factories}:unbound", "CartPole-v1")
    assert teacher.env_id == "CartPole-v1" and teacher.source == f"py:{factories}:unbound"


def test_dagger_rounds_query_a_scripted_teacher(tmp_path: Path) -> None:
    """A scripted controller can label the states the student visits (a dataset could not)."""
    out = tmp_path / "dagger"
    args = ["distill", "--teacher", CONTROLLER, "--out", out, "--loss", "nll", "--steps", "20"]
    assert run_cli(*args, "--eval-every", "0", "--rounds", "2", "--round-steps", "100", *TINY) == 0
    assert json.loads((out / "metrics.json").read_text())["teacher_labels"] == 200
    later = Buffer.open(out / "rounds" / "round_1" / "buffer")
    assert later.sources[0]["behaviour"] != "teacher"
    obs = later.field("obs")
    np.testing.assert_array_equal(later.field("teacher").argmax(1), cartpole_controller().predict(obs))
