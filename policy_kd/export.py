"""Export a distilled student for deployment: the writers and the parity check (the fx tracer of the numpy
program is in :mod:`policy_kd.export_numpy`, the sb3 writer in :mod:`policy_kd.export_sb3`).

``policy-kd export STUDENT --format FORMAT --out DIR`` writes one folder: the exported file and
``export.json`` (the student's ``student.json`` metadata, the format, the file, and the measured parity with
the eager student). :func:`policy_kd.runtime.load_exported` loads such a folder back as a student (the
runtime is a module of its own, so that loading an export never imports a writer).

===============  ====================  ============================================  =====================
format           file                  runtime                                       parity (max abs diff)
===============  ====================  ============================================  =====================
``onnx``         ``student.onnx``      ONNX Runtime (``[onnx]`` extra), opset of     ``1e-4``
                                       the installed ``onnx`` (capped at torch's)
``torchscript``  ``student.ts``        ``torch.jit.load``                            ``1e-5``
``int8``         ``student_int8.ts``   TorchScript of ``quantize_dynamic`` (int8     ``0.1 × max|out|``
                                       Linear weights, activations quantised per
                                       call)
``numpy``        ``student.npz``       :class:`~policy_kd.runtime.NumpyPolicy`:      ``1e-4``
                                       plain numpy, no torch
``sb3``          ``policy.zip``        ``stable_baselines3.DQN.load``                ``1e-4``
``c``            ``student.c``/``.h``  C99 + libm (:mod:`policy_kd.export_c`),       ``1e-4``
                                       loaded compiled (:mod:`policy_kd.c_runtime`)
===============  ====================  ============================================  =====================

Parity is checked at export time on observations from the student's buffer (or drawn around its input
standardisation) and the export is refused if it is exceeded. ``int8`` is lossy by design: its tolerance
is relative to the output scale, and ``evaluate`` reports what it costs in return. ``--int8`` (numpy and
c: per-channel symmetric int8 weights, :mod:`policy_kd.quantize`) has the same relative tolerance and is
also refused when it takes the float student's action on fewer than ``--min-agreement`` of the states.

**numpy.** The ``.npz`` holds the weights and a ``program``: the student's forward pass as a chain of
operations (``linear``, ``conv2d``, ``relu``, ``tanh``, ``elu``, ``gelu``, ``flatten``, ``add``/``sub``/
``mul``/``div`` by a constant, ``float``), read from the network with ``torch.fx``. Students whose forward
pass is not such a chain (skip connections, custom ops) are refused. The input standardisation
``(obs - mean) / std`` is folded into the first ``linear`` (same function, two fewer array operations per
call). :class:`~policy_kd.runtime.NumpyPolicy` runs it with numpy alone (``policy_kd.runtime`` imports no
torch).

**sb3.** A discrete-action MLP student with float observations is written as an SB3 ``DQN`` ``.zip`` whose
Q-network (``net_arch`` = the student's hidden widths, same activation) computes the student's outputs
exactly (standardisation folded into the first layer): ``DQN.load(path).predict(obs)`` takes the student's
greedy actions, and ``policy-kd evaluate``/``record`` accept it as a teacher too. Honest limits: the
"Q-values" are the student's logits when it was distilled with ``kl``/``nll``/``hinton`` (only ``mse``
students regress real Q-values), so use the ``.zip`` to act, not as a critic to resume TD learning from; the
target network is a copy, the replay buffer empty. Other students (CNNs, whose input scaling differs from
SB3's image preprocessing; Gaussian students) are refused with a one-line error. ``--algo ppo|a2c
--value-target teacher|returns`` writes an actor-critic instead, whose actor is the student (Discrete,
MultiDiscrete, MultiBinary or Gaussian) and whose critic is fitted to value targets, for fine-tuning with
``model.learn()`` (:mod:`policy_kd.export_sb3`).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tyro

from policy_kd.errors import PolicyKDError
from policy_kd.export_numpy import _numpy_program  # export_c and the tests import it from here
from policy_kd.export_sb3 import _export_sb3
from policy_kd.run import job
from policy_kd.runtime import (  # the runtime's names stay importable from here (tests, benchmarks)
    EXPORT_FILE,
    FILES,
    ExportedStudent,
    NumpyPolicy,
    is_export,
    load_exported,
    numpy_forward,
    obs_dtype,
)

#: Largest allowed |export - eager| on the parity observations (int8: times the largest |eager output|).
TOLERANCE = {"onnx": 1e-4, "torchscript": 1e-5, "int8": 0.1, "numpy": 1e-4, "sb3": 1e-4, "c": 1e-4}
RELATIVE = {"int8"}

__all__ = [
    "EXPORT_FILE",
    "FILES",
    "TOLERANCE",
    "ExportConfig",
    "ExportedStudent",
    "NumpyPolicy",
    "export_student",
    "is_export",
    "load_exported",
    "numpy_forward",
]


# ------------------------------------------------------------------------------------------ export


@dataclass(frozen=True)
class ExportConfig:
    """Export a distilled student as ONNX, TorchScript, int8 (dynamic quantisation), numpy or an SB3 policy."""

    student: tyro.conf.Positional[str | None] = None
    """Student: a distill --out folder (its best weights) or a .pt weights file inside one."""
    format: Literal["onnx", "torchscript", "int8", "numpy", "sb3", "c"] = "onnx"
    """onnx (ONNX Runtime), torchscript, int8 (dynamic quantisation of Linear layers), numpy (.npz + a plain
    numpy forward), sb3 (an SB3 .zip: DQN, or PPO/A2C with --algo; MLP students), c (one C99 source + header)."""
    out: str | None = None
    """Folder for the exported file and export.json (refused if it exists, unless --force)."""
    parity_rows: int = 4096
    """Observations (from the student's buffer when it still exists) the export is checked on."""
    force: bool = False
    """Replace an existing --out folder."""
    int8: bool = False
    """--format c or numpy: per-channel symmetric int8 weights (float accumulation)."""
    min_agreement: float = 0.99
    """--int8: refuse the export when it takes the float student's action on fewer of the parity states."""
    algo: Literal["dqn", "ppo", "a2c"] = "dqn"
    """--format sb3: the SB3 algorithm written: dqn (Q-network = the student's outputs), or ppo/a2c (actor = the student, critic fitted to --value-target); model.learn() continues from either."""
    value_target: Literal["teacher", "returns"] | None = None
    """--algo ppo/a2c: what the critic is fitted to: teacher (the teacher's V(s), from record --values) or returns (discounted returns of the rewards in the student's buffer)."""
    gamma: float = 0.99
    """--format sb3: the algorithm's discount factor, also the one of --value-target returns (use the teacher's: 0.999 for the LunarLander PPO preset)."""
    value_steps: int = 2000
    """--algo ppo/a2c: Adam steps (batches of 256) fitting the critic to its targets."""
    native: bool = False
    """--format c: build for this machine's CPU (-march=native: AVX vector code where the CPU has it); the
    parity check, evaluate and the header's build line use it. Not portable: the program may not run on
    an older CPU."""


def parity_observations(student: Any, rows: int = 4096, seed: int = 0) -> np.ndarray:
    """Observations to compare an export with its eager student: the student's buffer when it is still
    there, otherwise draws around the student's input standardisation (or uniform bytes for uint8)."""
    info = student.info
    buf = info.get("buffer")
    if buf and Path(buf).is_dir():
        try:
            from policy_kd.buffer import Buffer

            return np.asarray(Buffer.open(buf).spaced("obs", rows))
        except Exception:  # a damaged buffer only loses us realistic inputs, not the check
            pass
    rng = np.random.default_rng(seed)
    shape = tuple(info["spec"]["obs_shape"])
    dtype = obs_dtype(info)
    if dtype == np.uint8:
        return rng.integers(0, 256, size=(rows, *shape), dtype=np.uint8)
    mean = getattr(student.net, "obs_mean", None)
    std = getattr(student.net, "obs_std", None)
    z = rng.standard_normal((rows, *shape)).astype(np.float32)
    if mean is not None and std is not None:
        z = z * std.numpy() * 2 + mean.numpy()
    return z.astype(dtype)


def _component_log_probs(out: np.ndarray, nvec: Any) -> np.ndarray:
    """Each component's log-softmax, side by side ``(batch, sum(nvec))``."""
    from policy_kd.heads import split_components

    parts = []
    for x in split_components(np.asarray(out, dtype=np.float64), nvec):
        z = x - x.max(axis=-1, keepdims=True)
        parts.append(z - np.log(np.exp(z).sum(axis=-1, keepdims=True)))
    return np.concatenate(parts, axis=-1)


def eager_outputs(net: Any, obs: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return net(torch.as_tensor(np.asarray(obs))).float().numpy()


def _write(config: ExportConfig, student: Any, path: Path) -> dict[str, Any]:
    """Write ``student`` in ``config.format`` to ``path``; returns format details for export.json."""
    import torch

    fmt, int8 = config.format, config.int8

    net = student.net
    info = student.info
    example = torch.as_tensor(parity_observations(student, rows=2))
    if fmt == "c":
        from policy_kd.export_c import write_c

        return write_c(student, path, int8=int8, native=config.native)
    if fmt == "numpy":
        program, arrays = _numpy_program(net, tuple(info["spec"]["obs_shape"]))
        if int8:
            from policy_kd.quantize import quantize_program

            program, arrays = quantize_program(program, arrays)
        np.savez(path, program=np.array(json.dumps(program)), **arrays)
        return {"program": [o["op"] for o in program], "int8": int8}
    if fmt == "sb3":
        return _export_sb3(
            student,
            path,
            algo=config.algo,
            value_target=config.value_target,
            gamma=config.gamma,
            value_steps=config.value_steps,
        )
    if fmt in ("torchscript", "int8"):
        module = net
        if fmt == "int8":
            import copy

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = torch.ao.quantization.quantize_dynamic(
                    copy.deepcopy(net), {torch.nn.Linear}, dtype=torch.qint8
                )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module, example, check_trace=False)
            torch.jit.save(traced, str(path))
        return {"quantized": "dynamic int8 Linear weights"} if fmt == "int8" else {}
    if fmt == "onnx":
        try:
            import onnx
            import onnxscript  # noqa: F401  (the torch.export-based exporter needs it)
        except ImportError:
            raise PolicyKDError(
                "ONNX export needs onnx, onnxscript and onnxruntime: pip install 'policy-kd[onnx]'"
            ) from None
        from torch.onnx import _constants

        opset = min(onnx.defs.onnx_opset_version(), int(getattr(_constants, "ONNX_MAX_OPSET", 18)))
        batch = torch.export.Dim("batch", min=1)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                (example,),
                str(path),
                dynamo=True,
                input_names=["obs"],
                output_names=["outputs"],
                dynamic_shapes=({0: batch},),
                opset_version=opset,
                verbose=False,
            )
        return {"opset": opset, "input": "obs", "input_dtype": str(obs_dtype(info))}
    raise PolicyKDError(f"unknown export format {fmt!r}; choose one of {', '.join(FILES)}")


def _check_config(config: ExportConfig) -> None:
    """Refuse a bad export request before anything is loaded or written."""
    if config.student is None:
        raise PolicyKDError("export needs a student: policy-kd export STUDENT_DIR --format FORMAT --out DIR")
    if config.format not in FILES:
        raise PolicyKDError(f"unknown export format {config.format!r}; choose one of {', '.join(FILES)}")
    if config.parity_rows <= 0:
        raise PolicyKDError(f"--parity-rows must be > 0, got {config.parity_rows}")
    if config.int8 and config.format not in ("c", "numpy"):
        raise PolicyKDError(
            f"--int8 applies to --format c or numpy, not {config.format} (--format int8 is torch's dynamic quantisation)"
        )
    if config.native and config.format != "c":
        raise PolicyKDError(f"--native applies to --format c, not {config.format}")
    if not 0.0 <= config.min_agreement <= 1.0:
        raise PolicyKDError(f"--min-agreement must be within [0, 1], got {config.min_agreement}")
    if config.format != "sb3" and (config.algo != "dqn" or config.value_target is not None):
        raise PolicyKDError("--algo and --value-target apply to --format sb3")
    if config.algo == "dqn" and config.value_target is not None:
        raise PolicyKDError(
            "--value-target fits a PPO/A2C critic; pass --algo ppo or a2c (a DQN has no critic)"
        )
    if config.algo != "dqn" and config.value_target is None:
        raise PolicyKDError(
            f"--algo {config.algo} fits a critic: pass --value-target teacher (record the buffer with --values) "
            "or --value-target returns"
        )
    if not 0.0 <= config.gamma <= 1.0:
        raise PolicyKDError(f"--gamma must lie in [0, 1], got {config.gamma}")
    if config.value_steps < 0:
        raise PolicyKDError(f"--value-steps must be >= 0, got {config.value_steps}")
    if is_export(config.student):
        raise PolicyKDError(f"{config.student} is already an export; export the distill folder it came from")


def _parity(config: ExportConfig, student: Any, exported: Any, action_bounds: Any) -> dict[str, Any]:
    """export.json's ``parity``: how far the export's outputs are from the eager student's, against which
    tolerance, and how often it takes the same action."""
    obs = parity_observations(student, config.parity_rows)
    ref, got = eager_outputs(student.net, obs), exported.outputs(obs)
    if exported.head == "multi_discrete":
        # compared as each component's log-probabilities: an SB3 MultiBinary policy keeps one logit b - a
        # per bit where the student has two, [a, b] (the same distribution, not the same numbers)
        ref, got = (_component_log_probs(x, exported.nvec) for x in (ref, got))
    diff = float(np.max(np.abs(ref - got)))
    relative = config.format in RELATIVE or config.int8
    scale = float(np.max(np.abs(ref))) if relative else 1.0
    tol = TOLERANCE["int8" if config.int8 else config.format] * scale
    a_ref = np.asarray(student.predict(obs)).reshape(len(obs), -1)
    same_action = float(
        np.mean(np.all(np.isclose(a_ref, exported.predict(obs).reshape(len(obs), -1)), axis=-1))
    )
    if config.int8:  # lossy: continuous actions agree within evaluate's tolerance of the action range
        from policy_kd.evaluate import ACTION_TOLERANCE
        from policy_kd.quantize import action_agreement

        same_action = action_agreement(
            a_ref, exported.predict(obs), exported.head, action_bounds, ACTION_TOLERANCE
        )
    return {
        "rows": len(obs),
        "max_abs_diff": diff,
        "tolerance": tol,
        "tolerance_rule": f"{TOLERANCE['int8' if config.int8 else config.format]} x max|output|"
        if relative
        else "absolute",
        "action_agreement": same_action,
    }


@job(resumable=False)
def export_student(config: ExportConfig) -> Path:
    """Export ``config.student`` as ``config.format`` into ``config.out``; check parity; return the folder."""
    from policy_kd.cost import count_macs
    from policy_kd.run import prepare_out_dir, write_json, write_run_info
    from policy_kd.students import count_params, load_student

    _check_config(config)
    student = load_student(config.student)
    out = prepare_out_dir(config.out, force=config.force, inputs=(config.student,))
    import torch

    torch.set_num_threads(1)
    path = out / FILES[config.format]
    try:
        details = _write(config, student, path)
    except Exception:  # a refused student (or no compiler) leaves no half-written folder behind
        shutil.rmtree(out, ignore_errors=True)
        raise
    log_std = getattr(student.net, "log_std", None)
    meta: dict[str, Any] = {
        "format": "policy_kd.export",
        "version": 1,
        "export_format": config.format,
        "file": path.name,
        "source": str(Path(config.student).resolve()),
        "params": count_params(student.net),
        "bytes": path.stat().st_size,
        "log_std": None if log_std is None else log_std.detach().reshape(-1).tolist(),
        "action_bounds": (
            [student.net.action_low.tolist(), student.net.action_high.tolist()]
            if hasattr(student.net, "action_low")
            else None
        ),
        "macs": count_macs(student.net, torch.as_tensor(parity_observations(student, rows=2))),
        "details": details,
        "student": student.info,
    }
    write_json(out / EXPORT_FILE, meta)
    exported = load_exported(out)
    meta["parity"] = parity = _parity(config, student, exported, meta["action_bounds"])
    write_json(out / EXPORT_FILE, meta)
    write_run_info(out, config, job="export")
    diff, tol, same_action = parity["max_abs_diff"], parity["tolerance"], parity["action_agreement"]
    if not diff <= tol:
        shutil.rmtree(out)
        raise PolicyKDError(
            f"{config.format} export differs from the student by {diff:.3g} (> {tol:.3g}); nothing was written"
        )
    if config.int8 and same_action < config.min_agreement:
        shutil.rmtree(out)
        raise PolicyKDError(
            f"int8 {config.format} export takes the float student's action on {same_action:.4f} of {parity['rows']} "
            f"states (< --min-agreement {config.min_agreement}); nothing was written; export without --int8"
        )
    return out


def describe_export(out: Path) -> str:
    meta = json.loads((out / EXPORT_FILE).read_text())
    p = meta["parity"]
    return (
        f"{meta['export_format']} export saved to {out / meta['file']} ({meta['bytes']:,} bytes); "
        f"max |export - student| = {p['max_abs_diff']:.2e} on {p['rows']} observations "
        f"(tolerance {p['tolerance']:.2e}), same action on {p['action_agreement'] * 100:.2f}%"
    )
