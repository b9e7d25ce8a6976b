"""C export (``--format c``) and int8 weights: the generated C99 compiles warning-free and computes the eager
student's outputs and actions for every head and a MinAtar-size CNN; ``evaluate`` plays the compiled program."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

from policy_kd.c_runtime import find_compiler
from policy_kd.errors import PolicyKDError
from policy_kd.export import load_exported, parity_observations
from policy_kd.export_c import STRICT_FLAGS
from policy_kd.students import StudentSpec, build_student, load_student, save_student

if not any(shutil.which(c) for c in ("cc", "gcc", "clang")):
    pytest.skip("no C compiler on PATH", allow_module_level=True)

CC = find_compiler()


def _has_python_headers() -> bool:
    from policy_kd.export_c_ext import python_include

    try:
        python_include()
    except PolicyKDError:
        return False
    return True


#: Tests that build the extension module on purpose need this Python's headers (CI images have them).
needs_headers = pytest.mark.skipif(not _has_python_headers(), reason="no Python.h for this Python")


def make_student(root: Path, spec: StudentSpec, *, uint8: bool = False, seed: int = 0) -> Path:
    """A student folder with random weights and non-trivial standardisation / action bounds (no training)."""
    torch.manual_seed(seed)
    net = build_student(spec)
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        if uint8:
            net.set_obs_stats(torch.from_numpy(rng.integers(0, 2, (256, *spec.obs_shape)).astype(np.float32)))
        else:
            net.obs_mean.copy_(torch.from_numpy(rng.normal(size=spec.obs_shape).astype(np.float32)))
            net.obs_std.copy_(torch.from_numpy(rng.uniform(0.2, 3.0, size=spec.obs_shape).astype(np.float32)))
        if spec.head != "discrete":
            net.set_action_bounds(np.full(spec.n_outputs, -2.0), np.linspace(0.5, 2.0, spec.n_outputs))
            net.log_std.fill_(-0.5)
    root.mkdir(parents=True)
    torch.save(net.state_dict(), root / "best.pt")
    action = {"type": "Discrete", "n": spec.n_outputs} if spec.head == "discrete" else {"type": "Box"}
    obs_space = {"dtype": "uint8" if uint8 else "float32"}
    save_student(
        root,
        spec,
        {
            "weights": "best.pt",
            "env_id": "Synthetic-v0",
            "action_space": action,
            "observation_space": obs_space,
        },
    )
    return root


SPECS = {
    "discrete_relu": StudentSpec("mlp", (4,), 2, (16, 16)),
    "gaussian_tanh": StudentSpec("mlp", (8,), 2, (24, 24), activation="tanh", head="gaussian"),
    "squashed_elu": StudentSpec("mlp", (3,), 3, (20,), activation="elu", head="squashed_gaussian"),
    "discrete_gelu": StudentSpec("mlp", (6,), 4, (12, 12), activation="gelu"),
    "minatar_cnn": StudentSpec("minatar_cnn", (4, 10, 10), 6, (32,), channels=(8,)),
    "channels_last_cnn": StudentSpec("minatar_cnn", (10, 10, 3), 5, (16,), channels=(4,)),
}


@pytest.fixture(scope="module")
def students(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("c_students")
    return {k: make_student(root / k, s, uint8="cnn" in k) for k, s in SPECS.items()}


@pytest.mark.parametrize("int8", [False, True], ids=["float", "int8"])
@pytest.mark.parametrize("name", list(SPECS))
def test_c_export_compiles_strict_and_matches_eager(
    name: str, int8: bool, students: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "c"
    q = ["--int8", "--min-agreement", "0"] if int8 else []
    assert run_cli("export", students[name], "--format", "c", "--out", out, "--parity-rows", "512", *q) == 0
    assert sorted(p.name for p in out.glob("student.*")) == ["student.c", "student.h"]
    # the generated code is clean C99: no warning under -Wall -Werror, links against libm alone
    (tmp_path / "main.c").write_text(
        '#include "student.h"\nint main(void) { float o[POLICY_OBS_SIZE] = {0}; float y[POLICY_N_OUTPUTS];\n'
        "policy_forward(o, y); return y[0] != y[0]; }\n"
    )
    subprocess.run([str(_build(out, tmp_path / "main.c", tmp_path / "app"))], check=True)
    student = load_student(students[name])
    obs = parity_observations(student, 2000, seed=1)
    with torch.no_grad():
        ref = student.net(torch.as_tensor(obs)).numpy()
    ex = load_exported(out)
    got = ex.outputs(obs)
    assert got.shape == ref.shape and got.dtype == np.float32
    meta = json.loads((out / "export.json").read_text())
    assert meta["details"]["int8"] == int8
    if int8:  # lossy, within the int8 tolerance (0.1 x the output scale), and the C and numpy int8 agree
        assert np.abs(got - ref).max() <= 0.1 * np.abs(ref).max()
        assert "int8_t" in (out / "student.c").read_text()
        assert run_cli("export", students[name], "--format", "numpy", "--out", tmp_path / "n", *q) == 0
        np.testing.assert_allclose(load_exported(tmp_path / "n").outputs(obs), got, atol=1e-4)
        return
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    np.testing.assert_allclose(ex.predict(obs), student.predict(obs), atol=1e-5)
    np.testing.assert_allclose(ex.outputs(obs[:1]), ref[:1], atol=1e-4)  # the batch-1 path
    if SPECS[name].head == "discrete":  # (continuous agreement there is np.isclose, too strict near 0)
        assert meta["parity"]["action_agreement"] >= 0.999


def test_c_program_with_padding_stride_scale_and_permute(tmp_path: Path) -> None:
    """Ops the students above do not use: a padded, strided conv after a channels-last permute and /255."""
    from test_export import ScaledCNN
    from torch import nn

    from policy_kd.c_runtime import CPolicy
    from policy_kd.export import _numpy_program
    from policy_kd.export_c import HEADER_FILE, SOURCE_FILE, generate

    net = ScaledCNN(nn.GELU("tanh"))
    x = np.random.default_rng(0).integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    program, arrays = _numpy_program(net, (8, 8, 3))
    source, header, _ = generate(program, arrays, (8, 8, 3), "discrete", 5)
    (tmp_path / SOURCE_FILE).write_text(source)
    (tmp_path / HEADER_FILE).write_text(header)
    subprocess.run([*CC.split(), *STRICT_FLAGS, "-c", SOURCE_FILE], check=True, cwd=tmp_path)
    with torch.no_grad():
        ref = net(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(CPolicy(tmp_path / SOURCE_FILE, (8, 8, 3), 5).forward(x), ref, atol=1e-5)


def _build(out: Path, main: Path, exe: Path, flags: tuple[str, ...] = ()) -> Path:
    """``main`` linked with the export's student.c into ``exe``, under the strict flags (and ``flags``)."""
    subprocess.run(
        [
            *CC.split(),
            *STRICT_FLAGS,
            *flags,
            "-o",
            str(exe),
            str(main),
            str(out / "student.c"),
            "-I",
            str(out),
            "-lm",
        ],
        check=True,
        cwd=main.parent,
    )
    return exe


def _c_rows(out: Path, tmp_path: Path, obs: np.ndarray, call: str, flags: tuple[str, ...] = ()) -> np.ndarray:
    """What ``call`` prints for each of the ``obs`` rows (read from a file into ``o``; ``a`` holds
    POLICY_N_OUTPUTS floats), from a C program linked with the export built with ``flags``."""
    np.ascontiguousarray(obs, dtype=np.float32).tofile(tmp_path / "obs.bin")
    (tmp_path / "rows.c").write_text(
        '#include <stdio.h>\n#include "student.h"\n'
        'int main(void) { float o[POLICY_OBS_SIZE], a[POLICY_N_OUTPUTS]; int k; FILE *f = fopen("obs.bin", "rb");\n'
        "(void)a; (void)k;\n"
        f'while (fread(o, sizeof(float), POLICY_OBS_SIZE, f) == POLICY_OBS_SIZE) {{ {call} printf("\\n"); }}\n'
        "return 0; }\n"
    )
    exe = _build(out, tmp_path / "rows.c", tmp_path / "rows", flags)
    text = subprocess.run([str(exe)], cwd=tmp_path, check=True, capture_output=True, text=True).stdout
    return np.array([[float(v) for v in ln.split()] for ln in text.splitlines() if ln.strip()])


def _c_act(out: Path, tmp_path: Path, obs: np.ndarray, continuous: bool) -> np.ndarray:
    """policy_act of the export, called from a C program on ``obs`` rows."""
    call = (
        'policy_act(o, a); for (k = 0; k < POLICY_N_OUTPUTS; k++) printf("%.6g ", a[k]);'
        if continuous
        else 'printf("%d", policy_act(o));'
    )
    return _c_rows(out, tmp_path, obs, call)


@pytest.mark.parametrize("name", ["discrete_relu", "squashed_elu", "gaussian_tanh"])
def test_c_policy_act_takes_the_students_action(name: str, students: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "c"
    assert run_cli("export", students[name], "--format", "c", "--out", out, "--parity-rows", "256") == 0
    student = load_student(students[name])
    obs = parity_observations(student, 300, seed=2)
    got = _c_act(out, tmp_path, obs, SPECS[name].head != "discrete")
    np.testing.assert_allclose(got, student.predict(obs).reshape(len(obs), -1), atol=1e-4)


@pytest.mark.parametrize("fmt", ["c", "numpy"])
def test_int8_export_agrees_and_is_smaller(
    fmt: str, students: dict[str, Path], artifacts: dict[str, Path], tmp_path: Path
) -> None:
    src = artifacts["student"]  # trained on CartPole: agreement is measured on its buffer's states
    assert run_cli("export", src, "--format", fmt, "--out", tmp_path / "f") == 0
    assert run_cli("export", src, "--format", fmt, "--int8", "--out", tmp_path / "q") == 0
    f, q = (json.loads((tmp_path / k / "export.json").read_text()) for k in ("f", "q"))
    assert q["details"]["int8"] and q["parity"]["action_agreement"] >= 0.99
    if fmt == "c":
        assert "int8_t" in (tmp_path / "q" / "student.c").read_text()
        assert q["details"]["weight_bytes"] < 0.5 * f["details"]["weight_bytes"]
    else:
        assert q["bytes"] < f["bytes"]
    with np.load(tmp_path / "q" / "student.npz") if fmt == "numpy" else _nullcontext() as z:
        if z is not None:
            assert any(z[k].dtype == np.int8 for k in z.files)
    student = load_student(src)
    obs = parity_observations(student, 1000)
    agree = np.mean(load_exported(tmp_path / "q").predict(obs) == student.predict(obs))
    assert agree >= 0.99
    # the same per-channel weights in C and numpy: the two int8 exports compute one function
    if fmt == "c":
        assert run_cli("export", src, "--format", "numpy", "--int8", "--out", tmp_path / "nq") == 0
        np.testing.assert_allclose(
            load_exported(tmp_path / "q").outputs(obs), load_exported(tmp_path / "nq").outputs(obs), atol=1e-4
        )


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


def test_int8_refused_below_min_agreement(students: dict[str, Path], tmp_path: Path, capsys) -> None:
    from test_errors import expect_error

    # a random-weight CNN has near-tied logits: int8 flips some argmaxes, so demanding 100% must refuse
    expect_error(
        capsys,
        [
            "export",
            students["minatar_cnn"],
            "--format",
            "c",
            "--int8",
            "--min-agreement",
            "1.0",
            "--out",
            tmp_path / "q",
        ],
        "--min-agreement",
    )
    assert not (tmp_path / "q").exists()
    expect_error(
        capsys,
        ["export", students["minatar_cnn"], "--format", "onnx", "--int8", "--out", tmp_path / "o"],
        "--int8 applies to --format c or numpy",
    )


def test_c_export_errors(
    students: dict[str, Path], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_errors import expect_error

    multi = make_student(
        tmp_path / "multi",
        StudentSpec("minatar_cnn", (4, 10, 10), 6, (8,), channels=(4,), pad_channels=6),
        uint8=True,
    )
    expect_error(capsys, ["export", multi, "--format", "c", "--out", tmp_path / "m"], "C export supports")
    assert not (tmp_path / "m").exists()
    expect_error(
        capsys,
        ["export", students["discrete_relu"], "--format", "numpy", "--native", "--out", tmp_path / "x"],
        "--native applies to --format c",
    )
    assert not (tmp_path / "x").exists()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("CC", raising=False)
    expect_error(
        capsys,
        ["export", students["discrete_relu"], "--format", "c", "--out", tmp_path / "n"],
        "no C compiler found",
    )
    with pytest.raises(PolicyKDError, match="no C compiler"):
        find_compiler()


def test_evaluate_plays_the_compiled_student(artifacts: dict[str, Path], tmp_path: Path) -> None:
    """The C export's return is the eager student's on the same seeds: it takes the same actions."""
    from policy_kd.evaluate import EvaluateConfig, evaluate

    out = tmp_path / "c"
    assert run_cli("export", artifacts["student"], "--format", "c", "--out", out) == 0
    res = evaluate(
        EvaluateConfig(
            teacher=str(artifacts["teacher"]),
            student=(str(artifacts["student"]), str(out)),
            episodes=5,
            latency=False,
        )
    )
    eager, compiled = res["students"]
    assert compiled["format"] == "c" and compiled["path"].endswith("student.c")
    assert compiled["returns"] == eager["returns"] and len(eager["returns"]) == 5
    assert compiled["agreement"] == eager["agreement"]


def test_quantize_weight_is_per_channel_symmetric() -> None:
    from policy_kd.quantize import dequantize_program, quantize_program, quantize_weight

    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 3)) * np.array([0.01, 1.0, 100.0])  # (in, out): channels of very different scales
    w[:, 0] = 0.0  # an all-zero channel stays zero
    q, scale = quantize_weight(w, axis=1)
    assert q.dtype == np.int8 and scale.shape == (3,)
    assert np.abs(q).max(axis=0).tolist() == [0, 127, 127]  # each channel uses the full range
    assert np.all(np.abs(q * scale - w) <= scale / 2 + 1e-6)  # rounding error within half a step
    program = [{"op": "linear", "weight": "w", "bias": None}, {"op": "relu"}]
    qp, qa = quantize_program(program, {"w": w.astype(np.float32)})
    assert qp[0]["scale"] == "w_scale" and qa["w"].dtype == np.int8 and "scale" not in program[0]
    fp, fa = dequantize_program(qp, qa)
    assert fp == program and fa["w"].dtype == np.float32
    np.testing.assert_allclose(fa["w"], q * scale, rtol=1e-6)


@pytest.mark.parametrize("int8", [False, True], ids=["float", "int8"])
@pytest.mark.parametrize("name", ["minatar_cnn", "channels_last_cnn", "gaussian_tanh"])
def test_native_export_matches_eager_with_and_without_avx(
    name: str, int8: bool, students: dict[str, Path], tmp_path: Path
) -> None:
    """--native: the AVX code (vector sums, unrolled convolutions) and the portable loops of the same source
    both compile warning-free and compute the eager student's outputs."""
    from policy_kd.c_runtime import CPolicy

    out = tmp_path / "c"
    q = ["--int8", "--min-agreement", "0"] if int8 else []
    assert run_cli("export", students[name], "--format", "c", "--out", out, "--native", *q) == 0
    meta = json.loads((out / "export.json").read_text())
    assert meta["details"]["native"] and "-march=native" in meta["details"]["build"]
    assert "-march=native" in (out / "student.h").read_text()
    for extra in ((), ("-DPOLICY_PORTABLE",)):
        subprocess.run(
            [
                *CC.split(),
                *STRICT_FLAGS,
                "-march=native",
                *extra,
                "-c",
                "student.c",
                "-o",
                str(tmp_path / "s.o"),
            ],
            check=True,
            cwd=out,
        )
    student = load_student(students[name])
    spec = student.info["spec"]
    obs = parity_observations(student, 500, seed=3)
    with torch.no_grad():
        ref = student.net(torch.as_tensor(obs)).numpy()
    tol = 0.1 * np.abs(ref).max() if int8 else 1e-4 * max(1.0, np.abs(ref).max())
    native = CPolicy(out / "student.c", spec["obs_shape"], spec["n_outputs"], head=spec["head"], native=True)
    portable = CPolicy(out / "student.c", spec["obs_shape"], spec["n_outputs"], head=spec["head"])
    for policy in (native, portable):
        assert np.abs(policy.forward(obs) - ref).max() <= tol
        assert np.abs(policy.forward(obs[:1]) - ref[:1]).max() <= tol
    assert np.abs(native.forward(obs) - portable.forward(obs)).max() <= (1e-3 if int8 else 1e-5) * max(
        1.0, np.abs(ref).max()
    )


@needs_headers
@pytest.mark.parametrize("name", ["discrete_relu", "minatar_cnn", "squashed_elu"])
def test_extension_equals_library_equals_eager(name: str, students: dict[str, Path], tmp_path: Path) -> None:
    """The CPython extension and the ctypes library run the same compiled code: equal outputs, both the
    eager student's; the extension's act is the student's action, whatever the observations' dtype."""
    from policy_kd.c_runtime import CPolicy

    out = tmp_path / "c"
    assert run_cli("export", students[name], "--format", "c", "--out", out, "--parity-rows", "256") == 0
    assert (out / "student_py.c").is_file()
    student = load_student(students[name])
    spec = student.info["spec"]
    args = (out / "student.c", spec["obs_shape"], spec["n_outputs"])
    ext = CPolicy(*args, head=spec["head"], binding="extension")
    lib = CPolicy(*args, head=spec["head"], binding="ctypes")
    assert (ext.binding, lib.binding) == ("extension", "ctypes")
    obs = parity_observations(student, 300, seed=4)
    with torch.no_grad():
        ref = student.net(torch.as_tensor(obs)).numpy()
    got = ext.forward(obs)
    np.testing.assert_array_equal(got, lib.forward(obs))  # same program, same rounding: bit-equal
    np.testing.assert_array_equal(ext.forward(obs[:1]), lib.forward(obs[:1]))
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    for dtype in (np.float64, obs.dtype):  # converted in C, or read in place
        np.testing.assert_array_equal(ext.forward(obs.astype(dtype)), got)
    np.testing.assert_array_equal(ext.forward(np.asfortranarray(obs)), got)  # not C-contiguous: copied
    actions = student.predict(obs)
    for row, action in zip(obs[:50], actions[:50], strict=True):
        np.testing.assert_allclose(np.asarray(ext.act(row)), action, atol=1e-5)


@needs_headers
def test_c_policy_refuses_a_wrong_size_observation(students: dict[str, Path], tmp_path: Path) -> None:
    """A (1, 1) observation for a 4-input student is an error on both bindings (ctypes used to broadcast it
    into all four inputs and return an action)."""
    from policy_kd.c_runtime import CPolicy

    out = tmp_path / "c"
    assert (
        run_cli("export", students["discrete_relu"], "--format", "c", "--out", out, "--parity-rows", "64")
        == 0
    )
    for binding in ("ctypes", "extension"):
        policy = CPolicy(out / "student.c", (4,), 2, binding=binding)
        with pytest.raises(PolicyKDError, match="this C student takes 4"):
            policy.forward(np.ones((1, 1), dtype=np.float32))
        with pytest.raises(PolicyKDError, match="this C student takes 4"):
            policy.forward(np.ones((3, 5), dtype=np.float32))


def test_c_policy_falls_back_to_ctypes_with_one_line_reason(
    students: dict[str, Path], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import policy_kd.c_runtime as c_runtime
    import policy_kd.export_c_ext as ext_mod
    from policy_kd.c_runtime import CPolicy

    out = tmp_path / "c"
    assert (
        run_cli("export", students["discrete_relu"], "--format", "c", "--out", out, "--parity-rows", "64")
        == 0
    )
    capsys.readouterr()
    monkeypatch.setattr(ext_mod, "_MODULES", {})
    monkeypatch.setattr(c_runtime, "_REPORTED", set())
    monkeypatch.setattr(ext_mod.sysconfig, "get_paths", lambda: {"include": str(tmp_path / "no_headers")})
    first = CPolicy(out / "student.c", (4,), 2)
    second = CPolicy(out / "student.c", (4,), 2)
    assert first.binding == second.binding == "ctypes"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "through ctypes" in err[0] and "no Python.h" in err[0]  # once, one line
    with pytest.raises(PolicyKDError, match=r"no Python\.h"):
        CPolicy(out / "student.c", (4,), 2, binding="extension")
    x = parity_observations(load_student(students["discrete_relu"]), 20)
    with torch.no_grad():
        ref = load_student(students["discrete_relu"]).net(torch.as_tensor(x)).numpy()
    assert np.abs(first.forward(x) - ref).max() <= 1e-4


def _c_forward(out: Path, tmp_path: Path, obs: np.ndarray, flags: tuple[str, ...]) -> np.ndarray:
    """policy_forward of the export built with ``flags``, called from a C program on ``obs`` rows."""
    call = 'policy_forward(o, a); for (k = 0; k < POLICY_N_OUTPUTS; k++) printf("%.9g ", a[k]);'
    return _c_rows(out, tmp_path, obs, call, flags)


@pytest.mark.parametrize(
    "name,int8",
    [("minatar_cnn", False), ("channels_last_cnn", False), ("discrete_gelu", False), ("minatar_cnn", True)],
)
def test_every_build_of_the_source_computes_the_student(
    name: str, int8: bool, students: dict[str, Path], tmp_path: Path
) -> None:
    """One student.c, three programs: the default build (GCC on x86-64: an AVX2 copy chosen at run time),
    -DPOLICY_PORTABLE (plain C99 loops) and -march=native; each computes the eager student's outputs."""
    out = tmp_path / "c"
    q = ["--int8", "--min-agreement", "0"] if int8 else []
    assert run_cli("export", students[name], "--format", "c", "--out", out, "--parity-rows", "128", *q) == 0
    student = load_student(students[name])
    obs = parity_observations(student, 200, seed=5)
    with torch.no_grad():
        ref = student.net(torch.as_tensor(obs)).numpy()
    tol = 0.1 * np.abs(ref).max() if int8 else 1e-4 * max(1.0, np.abs(ref).max())
    builds = {
        flags: _c_forward(out, tmp_path, obs, flags)
        for flags in ((), ("-DPOLICY_PORTABLE",), ("-march=native",))
    }
    for flags, got in builds.items():
        assert got.shape == ref.shape and np.abs(got - ref).max() <= tol, flags
    if int8:  # the int8 builds agree with each other far more closely than with the float student
        assert np.abs(builds[()] - builds[("-DPOLICY_PORTABLE",)]).max() <= 1e-4 * max(1.0, np.abs(ref).max())
