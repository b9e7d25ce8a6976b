"""Exports: every format matches the eager student within its stated tolerance and loads back as a student."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from torch import nn

from policy_kd.buffer import Buffer
from policy_kd.cost import count_macs
from policy_kd.export import FILES, TOLERANCE, NumpyPolicy, load_exported, numpy_forward, parity_observations
from policy_kd.students import load_student

FORMATS = ["numpy", "torchscript", "int8", "sb3", "onnx"]
#: Max |export - eager| the test accepts, measured float32 differences being <= 1e-6 (int8: times max|output|,
#: the documented rule; its measured difference is about 0.08 of max|output|).
BOUNDS = {"numpy": 1e-5, "torchscript": 1e-6, "sb3": 1e-5, "onnx": 1e-5, "int8": 0.1}


@pytest.fixture(scope="module")
def exports(artifacts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for fmt in FORMATS:
        if fmt == "onnx":
            pytest.importorskip("onnxruntime")
        assert run_cli("export", artifacts["student"], "--format", fmt, "--out", root / fmt) == 0
        out[fmt] = root / fmt
    return out


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_matches_eager_student(fmt: str, exports: dict[str, Path], artifacts: dict[str, Path]) -> None:
    folder = exports[fmt]
    meta = json.loads((folder / "export.json").read_text())
    assert (
        meta["export_format"] == fmt
        and (folder / FILES[fmt]).is_file()
        and (folder / "command.txt").is_file()
    )
    student = load_student(artifacts["student"])
    obs = Buffer.open(artifacts["buffer"]).field("obs")[:2000]
    with torch.no_grad():
        ref = student.net(torch.as_tensor(obs)).numpy()
    got = load_exported(folder).outputs(obs)
    assert got.shape == ref.shape
    # the test's own bounds, not the module's TOLERANCE (the export checks that one itself)
    assert np.abs(got - ref).max() <= BOUNDS[fmt] * (np.abs(ref).max() if fmt == "int8" else 1.0)
    # the parity export.json reports is the one measured, on the observations it says it used
    p_obs = parity_observations(student, meta["parity"]["rows"])
    with torch.no_grad():
        p_ref = student.net(torch.as_tensor(p_obs)).numpy()
    measured = float(np.abs(load_exported(folder).outputs(p_obs) - p_ref).max())
    assert meta["parity"]["max_abs_diff"] == pytest.approx(measured, rel=1e-6, abs=1e-12)
    assert meta["parity"]["tolerance"] == pytest.approx(
        TOLERANCE[fmt] * (np.abs(p_ref).max() if fmt == "int8" else 1.0)
    )
    if fmt != "int8":  # exact formats take exactly the student's actions
        np.testing.assert_array_equal(load_exported(folder).predict(obs), student.predict(obs))
    else:  # lossy, but it still acts as the student nearly everywhere
        assert np.mean(load_exported(folder).predict(obs) == student.predict(obs)) >= 0.9
    assert meta["params"] == sum(p.numel() for p in student.net.parameters())


def test_sb3_export_loads_as_a_dqn_policy(exports: dict[str, Path], artifacts: dict[str, Path]) -> None:
    from stable_baselines3 import DQN

    from policy_kd.teacher import load_teacher

    model = DQN.load(exports["sb3"] / "policy.zip", device="cpu")
    obs = Buffer.open(artifacts["buffer"]).field("obs")[:500]
    student = load_student(artifacts["student"])
    actions, _ = model.predict(obs, deterministic=True)
    np.testing.assert_array_equal(actions, student.predict(obs))
    # policy-kd's own teacher loader takes it too (e.g. to record with the student as a teacher)
    as_teacher = load_teacher(exports["sb3"] / "policy.zip", "CartPole-v1")
    np.testing.assert_array_equal(as_teacher.predict(obs), student.predict(obs))


def test_numpy_forward_needs_no_torch(exports: dict[str, Path], artifacts: dict[str, Path]) -> None:
    obs = Buffer.open(artifacts["buffer"]).field("obs")[:64]
    np.save(exports["numpy"].parent / "obs.npy", obs)
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "import numpy as np\n"
        "from policy_kd.export import NumpyPolicy\n"
        f"p = NumpyPolicy.load({str(exports['numpy'] / 'student.npz')!r})\n"
        f"np.save({str(exports['numpy'].parent / 'np_out.npy')!r}, p.forward(np.load({str(exports['numpy'].parent / 'obs.npy')!r})))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    got = np.load(exports["numpy"].parent / "np_out.npy")
    np.testing.assert_allclose(got, load_exported(exports["numpy"]).outputs(obs), rtol=0, atol=1e-6)


def test_numpy_batch1_fast_path_equals_reference(
    exports: dict[str, Path], artifacts: dict[str, Path]
) -> None:
    p = NumpyPolicy.load(exports["numpy"] / "student.npz")
    obs = Buffer.open(artifacts["buffer"]).field("obs")[:20]
    for row in obs:
        np.testing.assert_allclose(
            p.forward(row[None]), numpy_forward(p.program, p.arrays, row[None]), atol=1e-6
        )


class _Permute(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


class ScaledCNN(nn.Module):
    """uint8 (8, 8, 3) channels-last images / 255 -> a padded, strided conv -> 5 outputs (seeded weights)."""

    def __init__(self, activation: nn.Module | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            _Permute(),
            nn.Conv2d(3, 4, 3, stride=2, padding=1),
            activation or nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64, 5),
        )
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.float() / 255.0)


def test_numpy_program_of_a_cnn_with_scaling() -> None:
    """A chain with conv2d, a constant scale and a channels-last permute runs in numpy like in torch."""
    from policy_kd.export import _numpy_program

    net = ScaledCNN()
    x = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    program, arrays = _numpy_program(net, (8, 8, 3))
    assert [o["op"] for o in program] == ["float", "div", "permute", "conv2d", "relu", "flatten", "linear"]
    with torch.no_grad():
        ref = net(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(numpy_forward(program, arrays, x), ref, atol=1e-5)
    np.testing.assert_allclose(NumpyPolicy(program, arrays).forward(x[:1]), ref[:1], atol=1e-5)


def test_count_macs_by_hand() -> None:
    mlp = nn.Sequential(nn.Linear(4, 22), nn.ReLU(), nn.Linear(22, 22), nn.ReLU(), nn.Linear(22, 2))
    assert count_macs(mlp, torch.zeros(3, 4)) == 4 * 22 + 22 * 22 + 22 * 2  # = 616
    # MinAtar-like CNN: 10x10x4 -> conv 3x3 (16 ch) -> 8x8x16 -> Linear(1024, 128) -> Linear(128, 6)
    cnn = nn.Sequential(
        nn.Conv2d(4, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(1024, 128), nn.ReLU(), nn.Linear(128, 6)
    )
    assert count_macs(cnn, torch.zeros(2, 4, 10, 10)) == 8 * 8 * 16 * 4 * 3 * 3 + 1024 * 128 + 128 * 6


def test_export_errors(artifacts: dict[str, Path], exports: dict[str, Path], tmp_path: Path, capsys) -> None:
    from test_errors import expect_error

    expect_error(
        capsys,
        ["export", tmp_path / "nope", "--format", "numpy", "--out", tmp_path / "e"],
        "student not found",
    )
    expect_error(capsys, ["export", "--format", "numpy", "--out", tmp_path / "e"], "export needs a student")
    # never overwrite without --force
    expect_error(
        capsys, ["export", artifacts["student"], "--format", "numpy", "--out", exports["numpy"]], "--force"
    )
    expect_error(
        capsys,
        ["export", exports["numpy"], "--format", "onnx", "--out", tmp_path / "e2"],
        "already an export",
    )
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "export.json").write_text("{not json")
    expect_error(
        capsys, ["evaluate", "--teacher", artifacts["teacher"], "--student", tmp_path / "broken"], "damaged"
    )


def test_an_export_that_differs_from_the_student_is_refused_and_nothing_written(
    artifacts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """The parity check itself: a writer whose file computes other outputs (here the numpy weights shifted
    by 1e-3, ten times the tolerance) makes the export fail in one line and leave no folder."""
    import policy_kd.export as export_mod

    write = export_mod._write

    def shifted(fmt: str, student: object, path: Path, *args: object) -> dict:
        details = write(fmt, student, path, *args)
        arrays = dict(np.load(path))
        name = next(k for k in arrays if k != "program" and arrays[k].ndim == 1)  # a bias
        arrays[name] = arrays[name] + 1e-3
        np.savez(path, **arrays)
        return details

    monkeypatch.setattr(export_mod, "_write", shifted)
    out = tmp_path / "bad"
    assert run_cli("export", artifacts["student"], "--format", "numpy", "--out", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "numpy export differs from the student by" in err[0]
        and "nothing was written" in err[0]
    )
    assert not out.exists()
    monkeypatch.setattr(export_mod, "_write", write)
    assert (
        run_cli("export", artifacts["student"], "--format", "numpy", "--out", out) == 0
    )  # the real one passes
