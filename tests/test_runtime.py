"""Action heads and the torch-free runtime: one implementation shared by teacher, student and export."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from conftest import run_cli

from policy_kd.heads import actions_from_outputs, sample_gaussian, sample_logits, to_bounds
from policy_kd.runtime import ACTIVATIONS
from policy_kd.students import ACTIVATIONS as STUDENT_ACTIVATIONS
from policy_kd.students import build_student, size_student


def test_to_bounds_squashes_and_clips() -> None:
    low, high = np.array([-2.0, 0.0], np.float32), np.array([2.0, 10.0], np.float32)
    x = np.array([[0.0, 0.0], [50.0, -50.0], [1.0, 20.0]], np.float32)
    squashed = to_bounds(x, low, high, squash=True)
    np.testing.assert_allclose(squashed[0], [0.0, 5.0])  # tanh(0) = 0: the middle of the range
    np.testing.assert_allclose(squashed[1], [2.0, 0.0])  # saturated: the bounds
    np.testing.assert_allclose(squashed[2, 0], 2.0 * np.tanh(1.0), rtol=1e-6)
    np.testing.assert_array_equal(to_bounds(x, low, high, squash=False), [[0, 0], [2, 0], [1, 10]])


def test_sample_logits_follows_softmax_and_is_seeded() -> None:
    logits = np.tile(np.log(np.array([0.1, 0.2, 0.7], np.float32)) + 3.0, (20_000, 1))
    a = sample_logits(logits, np.random.default_rng(0))
    np.testing.assert_array_equal(a, sample_logits(logits, np.random.default_rng(0)))
    np.testing.assert_allclose(np.bincount(a, minlength=3) / len(a), [0.1, 0.2, 0.7], atol=0.01)
    # a certain action is always drawn, even where rounding leaves the cumulative sum below u
    sure = np.array([[-1e9, -1e9, 0.0]], np.float32).repeat(1000, axis=0)
    assert (sample_logits(sure, np.random.default_rng(1)) == 2).all()


def test_sample_gaussian_moments() -> None:
    mean = np.full((50_000, 2), [1.0, -3.0], np.float32)
    draw = sample_gaussian(mean, np.log(np.array([0.5, 2.0], np.float32)), np.random.default_rng(0))
    np.testing.assert_allclose(draw.mean(axis=0), [1.0, -3.0], atol=0.03)
    np.testing.assert_allclose(draw.std(axis=0), [0.5, 2.0], rtol=0.02)


def test_student_acts_as_the_numpy_head() -> None:
    """The eager student and the numpy runtime take the same actions (one head implementation)."""
    torch.manual_seed(0)
    for head in ("gaussian", "squashed_gaussian", "discrete"):
        spec = size_student("mlp", (3,), 2, hidden=(8,), params_fraction=None, teacher_params=None, head=head)
        net = build_student(spec)
        bounds = None
        if head != "discrete":
            low, high = np.array([-0.5, 0.0], np.float32), np.array([0.5, 4.0], np.float32)
            net.set_action_bounds(low, high)
            bounds = [low.tolist(), high.tolist()]
            with torch.no_grad():  # outputs large enough that clipping and squashing both matter
                net.net[-1].weight.mul_(50.0)
        obs = np.random.default_rng(0).standard_normal((64, 3)).astype(np.float32)
        with torch.no_grad():
            out = net(torch.as_tensor(obs)).numpy()
        np.testing.assert_array_equal(net.predict(obs), actions_from_outputs(out, head, bounds))


def _run_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (a clean ``sys.modules``) and return what it printed."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_runtime_heads_and_spaces_import_without_torch() -> None:
    """The deployment path (load an export, act) works where torch is not installed."""
    out = _run_python(
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "import policy_kd.heads, policy_kd.runtime, policy_kd.spaces\n"
        "print(sorted(policy_kd.runtime.ACTIVATIONS))\n"
    )
    assert out.strip() == str(sorted(ACTIVATIONS))


def _imports(module: str) -> set[str]:
    """The policy_kd modules ``module`` imports anywhere (top level or inside functions)."""
    import ast

    import policy_kd

    tree = ast.parse((Path(policy_kd.__file__).parent / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("policy_kd."):
            found.add(node.module.split(".")[1])  # type: ignore[union-attr]
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("policy_kd.")}
    return found


# Boundaries of the split: no module imports another stage sideways for shared code.
FORBIDDEN = {
    "record": {"evaluate", "export"},
    "evaluate": {"export", "record"},
    "runtime": {"export", "evaluate", "students"},
    "heads": {"errors", "export", "runtime", "students", "teacher"},
    "spaces": {"evaluate", "record"},
    "fidelity": {"evaluate", "export", "record"},
    "rollout": {"evaluate", "record", "report"},
    "report": {"evaluate"},
}


def test_no_sideways_imports() -> None:
    bad = {m: sorted(_imports(m) & f) for m, f in FORBIDDEN.items() if _imports(m) & f}
    assert not bad, f"sideways imports: {bad}"


def test_evaluating_an_export_imports_no_writer(artifacts: dict[str, Path], tmp_path: Path) -> None:
    """evaluate loads and plays an export through the runtime alone: policy_kd.export never loads."""
    assert run_cli("export", artifacts["student"], "--format", "numpy", "--out", tmp_path / "ex") == 0
    out = _run_python(
        "import sys\n"
        "import numpy as np\n"
        "from policy_kd.evaluate import _student_contender\n"
        f"c = _student_contender({str(tmp_path / 'ex')!r}, 'ex')\n"
        "obs = np.zeros((2, 4), np.float32)\n"
        "c.greedy(obs), c.sample(obs, np.random.default_rng(0))\n"
        "print(c.format, 'policy_kd.export' in sys.modules, 'policy_kd.record' in sys.modules)\n"
    )
    assert out.split() == ["numpy", "False", "False"]


def test_one_activation_list() -> None:
    """The students' torch activations and the numpy runtime's are the same names."""
    assert list(STUDENT_ACTIVATIONS) == list(ACTIVATIONS)
