"""Fuzzing what the jobs read: mutated manifests, metadata, chunk bytes and YAML configs (issue 22).

Every outcome must be one of two: success with correct data (the rows read back equal the rows
recorded, a saved student loads with finite weights), or a one-line ``policy-kd: error:`` with exit
status 2 and no traceback. Each case runs the real CLI entry in-process (``policy_kd.cli.main``, the
function the ``policy-kd`` script calls), so an exception it does not turn into an error escapes here.

``POLICY_KD_FUZZ_EXAMPLES`` sets the examples per test (default 150; the suite stays fast);
``POLICY_KD_FUZZ_RANDOM=1`` draws new cases instead of the fixed, reproducible ones. Run with
``--hypothesis-show-statistics`` to see how many cases ended in which outcome.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from policy_kd.buffer import Buffer
from policy_kd.cli import main
from policy_kd.distill import DistillConfig
from policy_kd.students import load_student

SETTINGS = settings(
    max_examples=int(os.environ.get("POLICY_KD_FUZZ_EXAMPLES", "150")),
    deadline=None,
    derandomize=os.environ.get("POLICY_KD_FUZZ_RANDOM") != "1",
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
TINY_DISTILL = ["--steps", "2", "--eval-every", "0", "--batch-size", "8", "--no-progress"]


@pytest.fixture(scope="module")
def small(artifacts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A small interrupted buffer (400 of 600 rows listed) and the rows it holds."""
    root = tmp_path_factory.mktemp("fuzz")
    full = root / "full"
    args = ["--steps", "600", "--chunk-rows", "200", "--no-progress"]
    assert main(["record", "--teacher", str(artifacts["teacher"]), "--out", str(full), *args]) == 0
    m = json.loads((full / "manifest.json").read_text())
    seg = m["segments"][0]
    seg["rows"] -= seg["chunks"].pop()["rows"]
    m["rows"], m["complete"] = seg["rows"], False
    (full / "manifest.json").write_text(json.dumps(m))
    buf = Buffer.open(full)
    return _Small({"path": full, "manifest": m, "rows": {k: buf.field(k).copy() for k in buf.fields}})


class _Small(dict):
    def __repr__(self) -> str:  # hypothesis prints the arguments of a failing case: keep it short
        return "small"


def run(argv: list[str]) -> tuple[int, str]:
    """``policy-kd ARGV`` as the script runs it: exit status and stderr; an exception that escapes the
    CLI (which would print a traceback) fails the test with it."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(argv)
    return code, err.getvalue()


def check_outcome(code: int, err: str, what: str) -> bool:
    """True on success; on failure, assert it is a one-line error. Counts the outcome."""
    assert "Traceback" not in err, err
    if code == 0:
        event(f"{what}: success")
        return True
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("policy-kd: warning:")]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("policy-kd: error: "), err
    event(f"{what}: one-line error")
    return False


def assert_same_rows(path: Path, small: dict[str, Any]) -> None:
    """What a reader gets from ``path`` is what was recorded (a prefix of it, row for row)."""
    buf = Buffer.open(path, allow_empty=True)
    for k in buf.fields:  # a field dropped from the manifest is not read (distill needs only obs, teacher)
        rows = small["rows"][k]
        got = buf.field(k)[: len(rows)] if buf.rows else buf.field(k)
        np.testing.assert_array_equal(got, rows[: len(got)], err_msg=k)


# --------------------------------------------------------------------------------- manifests, metadata

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(
        ["../x", "../../etc", "/tmp", "/etc/passwd", "a/b", "..", ".", "", "segment_000", "obs"]
    )
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in a JSON tree (chunk checksums left out: changing one is the chunk-bytes case)."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            if k != "sha256":
                out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def manifest_mutations(draw: st.DrawFn, manifest: dict[str, Any]) -> tuple[str, tuple[Any, ...], Any]:
    path = draw(st.sampled_from(_paths(manifest)))
    how = draw(st.sampled_from(["delete", "replace", "replace", "name"]))
    value = draw(JSON_VALUES)
    if how == "name":  # the names that become paths: absolute, ../, separators
        value = draw(st.sampled_from(["../escaped", "/tmp/escaped", "a/../b", "..", "x/y", "segment_000/.."]))
    return how, path, value


def _apply(manifest: dict[str, Any], how: str, path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    m = json.loads(json.dumps(manifest))
    node = m
    for key in path[:-1]:
        node = node[key]
    if how == "delete":
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return m


@SETTINGS
@given(data=st.data())
def test_fuzz_manifest_and_metadata(small, data):
    mutation = data.draw(manifest_mutations(small["manifest"]))
    command = data.draw(st.sampled_from(["inspect", "distill", "resume"]))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        buf = root / "box" / "b"  # one level down: an escaping ../ name stays inside tmp, visible
        shutil.copytree(small["path"], buf)
        text = json.dumps(_apply(small["manifest"], *mutation), allow_nan=True)
        (buf / "manifest.json").write_text(text)
        before = sorted(p.relative_to(root) for p in root.rglob("*"))
        if command == "inspect":
            code, err = run(["inspect", str(buf)])
        elif command == "distill":
            code, err = run(["distill", "--buffer", str(buf), "--out", str(root / "s"), *TINY_DISTILL])
        else:
            code, err = run(["record", "--resume", "--out", str(buf), "--no-progress"])
        if check_outcome(code, err, command):
            assert_same_rows(buf, small)
            if command == "distill":
                load_student(root / "s")  # refuses NaN or Inf weights
        after = sorted(p.relative_to(root) for p in root.rglob("*"))
        outside = [p for p in after if p not in before and p.parts[:2] != ("box", "b") and p.parts[0] != "s"]
        assert not outside, outside  # nothing created outside the buffer and the output folder


# ---------------------------------------------------------------------------------------- chunk bytes


@SETTINGS
@given(data=st.data())
def test_fuzz_chunk_bytes(small, data):
    field = data.draw(st.sampled_from(sorted(small["rows"])))
    how = data.draw(st.sampled_from(["flip", "flip", "truncate", "grow", "symlink", "directory", "empty"]))
    command = data.draw(st.sampled_from(["inspect", "distill"]))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        buf = root / "b"
        shutil.copytree(small["path"], buf)
        f = buf / "segment_000" / f"{field}.npy"
        raw = bytearray(f.read_bytes())
        if how == "flip":
            at = data.draw(st.integers(0, len(raw) - 1))
            raw[at] ^= data.draw(st.integers(1, 255))
            f.write_bytes(bytes(raw))
        elif how == "truncate":
            f.write_bytes(bytes(raw[: data.draw(st.integers(0, len(raw) - 1))]))
        elif how == "grow":
            f.write_bytes(bytes(raw) + b"\0" * data.draw(st.integers(1, 64)))
        elif how == "symlink":
            (root / "real.npy").write_bytes(bytes(raw))
            f.unlink()
            f.symlink_to(root / "real.npy")
        elif how == "directory":
            f.unlink()
            f.mkdir()
        else:
            f.write_bytes(b"")
        if command == "inspect":
            code, err = run(["inspect", str(buf)])
        else:
            code, err = run(["distill", "--buffer", str(buf), "--out", str(root / "s"), *TINY_DISTILL])
        if check_outcome(code, err, f"{command} after {how}"):
            assert how == "flip"  # only a byte that changes nothing a reader uses may pass
            assert_same_rows(buf, small)


# -------------------------------------------------------------------------------------------- configs

# Options that set how long a run takes (steps, rounds, sizes, evaluations) are fixed on the command
# line, which overrides the file; the others are drawn.
DISTILL_KEYS = sorted(
    {
        "loss",
        "tau",
        "temperature",
        "lam",
        "entropy_coef",
        "direction",
        "hint_weight",
        "lr",
        "weight_decay",
        "lr_schedule",
        "max_grad_norm",
        "source_weights",
        "patience",
        "target_return",
        "seed",
        "normalize_obs",
        "activation",
        "student",
        "params_fraction",
        "teacher",
        "env",
        "resume",
        "force",
        "behaviour",
        "beta",
        "beta_schedule",
        "progress",
        "in_memory",
        "unknown_key",
    }
)
ANY_VALUE = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**66), max_value=2**66)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.lists(st.floats(min_value=-2, max_value=2), max_size=3)
    | st.text(max_size=10)
)
WORDS = st.sampled_from(["kl", "mse", "nll", "hinton", "kl_entropy", "gaussian_kl", "cosine", "constant", "relu",
                         "tanh", "mlp", "nature_cnn", "minatar_cnn", "forward", "reverse", "mixture", "student",
                         "linear", "exponential", "x"])  # fmt: skip


def _typed(annotation: Any) -> st.SearchStrategy[Any]:
    """Values of the option's own type, ordinary and extreme (most of them pass the parser)."""
    text = str(annotation)
    if "tuple" in text:
        return st.lists(st.floats(min_value=-1, max_value=3), max_size=3)
    if "float" in text:
        return st.floats(min_value=1e-9, max_value=10) | st.floats(allow_nan=True, allow_infinity=True)
    if "int" in text:
        return st.integers(min_value=-3, max_value=100) | st.integers(min_value=-(2**66), max_value=2**66)
    if "bool" in text:
        return st.booleans() | st.none()
    return WORDS | st.none()


HINTS = typing.get_type_hints(DistillConfig)


def _value(key: str) -> st.SearchStrategy[Any]:
    """Three times in four a value of the option's type, else anything."""
    if key not in HINTS:
        return ANY_VALUE
    return st.integers(0, 3).flatmap(lambda i: ANY_VALUE if i == 0 else _typed(HINTS[key]))


CONFIGS = st.lists(st.sampled_from(DISTILL_KEYS), unique=True, max_size=4).flatmap(
    lambda keys: st.fixed_dictionaries({k: _value(k) for k in keys})
)


@SETTINGS
@given(
    config=CONFIGS,
    garble=st.one_of(st.none(), st.none(), st.none(), st.binary(max_size=40)),  # garbled 1 in 4
)
def test_fuzz_yaml_config(artifacts, config, garble):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = root / "c.yaml"
        if garble is not None:  # not even a mapping: bytes, half a document, a list
            cfg.write_bytes(yaml.safe_dump(config).encode()[: len(garble)] + garble)
        else:
            cfg.write_text(yaml.safe_dump(config))
        out = root / "s"
        argv = ["distill", "--config", str(cfg), "--buffer", str(artifacts["buffer"]), "--out", str(out)]
        code, err = run([*argv, *TINY_DISTILL, "--hidden", "8", "--rounds", "1", "--checkpoint-every", "0"])
        if check_outcome(code, err, "distill --config"):
            student = load_student(out)  # refuses non-finite weights
            assert student.info["params"] > 0
