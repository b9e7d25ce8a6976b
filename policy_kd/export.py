"""Export a distilled student for deployment: the fx tracer and the writers.

``policy-kd export STUDENT --format FORMAT --out DIR`` writes one folder: the exported file and
``export.json`` (the student's ``student.json`` metadata, the format, the file, and the measured parity with
the eager student). :func:`policy_kd.runtime.load_exported` loads such a folder back as a student (the
runtime is a module of its own, so that loading an export never imports a writer).

format         file                  runtime                                        parity (max abs diff)
=============  ====================  =============================================  =====================
``onnx``       ``student.onnx``      ONNX Runtime (``[onnx]`` extra), opset of the  ``1e-4``
                                     installed ``onnx`` (capped at torch's)
``torchscript````student.ts``        ``torch.jit.load``                             ``1e-5``
``int8``       ``student_int8.ts``   TorchScript of ``quantize_dynamic`` (int8      ``0.1 × max|out|``
                                     Linear weights, activations quantised per call)
``numpy``      ``student.npz``       :class:`NumpyPolicy`: plain numpy, no torch     ``1e-4``
``sb3``        ``policy.zip``        ``stable_baselines3.DQN.load``                 ``1e-4``
``c``          ``student.c``/``.h``  C99 + libm (:mod:`policy_kd.export_c`), loaded  ``1e-4``
                                     compiled (:mod:`policy_kd.c_runtime`)
=============  ====================  =============================================  =====================
=======
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
SB3's image preprocessing; Gaussian students) are refused with a one-line error.
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
from policy_kd.run import job
from policy_kd.runtime import ACTIVATIONS as NUMPY_ACTIVATIONS
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
    numpy forward), sb3 (a DQN .zip, for discrete-action MLP students), c (one C99 source + header)."""
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


def eager_outputs(net: Any, obs: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return net(torch.as_tensor(np.asarray(obs))).float().numpy()


def _refuse(what: str) -> PolicyKDError:
    return PolicyKDError(
        f"numpy export supports students whose forward is a chain of linear/conv2d/activation/"
        f"standardisation steps; this one has {what}; use --format onnx"
    )


def _module_op(m: Any, target: str, store: Any) -> dict[str, Any] | None:
    """The numpy operation of one ``call_module`` node (``None``: an Identity), its weights kept by
    ``store(tensor) -> key``; anything else is refused."""
    from torch import nn

    from policy_kd.students import ACTIVATIONS

    acts = {module: name for name, module in ACTIVATIONS.items()}
    if isinstance(m, nn.Linear):
        return {
            "op": "linear",
            "weight": store(m.weight.T.contiguous()),
            "bias": store(m.bias) if m.bias is not None else None,
        }
    if isinstance(m, nn.Conv2d):
        if m.groups != 1 or m.dilation != (1, 1) or not isinstance(m.padding, tuple):
            raise _refuse(f"a grouped, dilated or 'same'-padded Conv2d ({target})")
        return {
            "op": "conv2d",
            "weight": store(m.weight),
            "bias": store(m.bias) if m.bias is not None else None,
            "stride": list(m.stride),
            "padding": list(m.padding),
        }
    if type(m) in acts:
        op: dict[str, Any] = {"op": acts[type(m)]}
        if isinstance(m, nn.ELU):
            op["alpha"] = float(m.alpha)
        if isinstance(m, nn.GELU):
            op["approximate"] = m.approximate
        return op
    if isinstance(m, nn.Flatten):
        if m.start_dim != 1 or m.end_dim != -1:
            raise _refuse(f"a Flatten({m.start_dim}, {m.end_dim})")
        return {"op": "flatten"}
    if isinstance(m, nn.Identity):
        return None
    raise _refuse(f"a {type(m).__name__} module ({target})")


def _numpy_program(
    net: Any, obs_shape: tuple[int, ...]
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """The student's forward pass as a chain of numpy operations, read with torch.fx (see the module doc)."""
    import operator

    import torch
    from torch import fx, nn

    from policy_kd.students import ACTIVATIONS

    try:
        gm = fx.symbolic_trace(net)
    except Exception as exc:
        raise PolicyKDError(
            f"numpy export could not trace the student ({type(exc).__name__}); use --format onnx"
        ) from None
    modules = dict(gm.named_modules())
    program: list[dict[str, Any]] = []
    arrays: dict[str, np.ndarray] = {}
    consts: dict[fx.Node, Any] = {}
    prev: fx.Node | None = None

    def store(value: Any) -> str:
        key = f"a{len(arrays)}"
        arrays[key] = np.asarray(
            value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value, dtype=np.float32
        )
        return key

    def attr(target: str) -> Any:
        obj: Any = gm
        for part in target.split("."):
            obj = getattr(obj, part)
        return obj

    binops = {operator.add: "add", operator.sub: "sub", operator.mul: "mul", operator.truediv: "div"}
    # the functional forms (torch.relu, F.gelu...) with their default arguments
    fn_acts = {
        fn: name
        for name in ACTIVATIONS
        for fn in (getattr(torch, name, None), getattr(nn.functional, name, None))
        if fn is not None
    }
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if prev is not None:
                raise _refuse("more than one input")
            prev = node
            continue
        if node.op == "get_attr":
            consts[node] = attr(node.target)
            continue
        if node.op == "output":
            if node.args[0] is not prev:
                raise _refuse("an output that is not the last step")
            break
        data = [a for a in node.args if isinstance(a, fx.Node) and a not in consts]
        if data != [prev] or len(prev.users) != 1:
            raise _refuse(f"a branch at {node.name}")
        if node.op == "call_module":
            op = _module_op(modules[node.target], str(node.target), store)
            if op is None:  # an Identity
                continue
            program.append(op)
        elif node.op == "call_method" and node.target == "float":
            program.append({"op": "float"})
        elif node.op == "call_method" and node.target == "permute" and node.args[1:] and node.args[1] == 0:
            program.append({"op": "permute", "axes": [int(a) for a in node.args[1:]]})
        elif node.op == "call_method" and node.target == "flatten" and node.args[1:] == (1,):
            program.append({"op": "flatten"})
        elif node.op == "call_function" and node.target in binops:
            a, b = node.args
            if a is not prev or (isinstance(b, fx.Node) and b not in consts):
                raise _refuse(f"a {binops[node.target]} that is not by a constant ({node.name})")
            program.append({"op": binops[node.target], "value": store(consts.get(b, b))})
        elif (
            node.op == "call_function" and node.target in fn_acts and len(node.args) == 1 and not node.kwargs
        ):
            program.append({"op": fn_acts[node.target]})
        elif node.op == "call_function" and node.target is torch.flatten and node.args[1:] == (1,):
            program.append({"op": "flatten"})
        else:
            raise _refuse(f"the operation {node.target} ({node.name})")
        prev = node
    return _fold_standardisation(program, arrays, obs_shape), arrays


def _fold_standardisation(
    program: list[dict[str, Any]], arrays: dict[str, np.ndarray], obs_shape: tuple[int, ...]
) -> list[dict[str, Any]]:
    """Fold a leading ``[float] sub c, div s, [flatten], linear`` into the linear layer:
    ``((x - c) / s) @ W + b  ==  x @ (W / s) + (b - (c / s) @ W)`` (computed in float64)."""
    i = 1 if program and program[0]["op"] == "float" else 0
    ops = [o["op"] for o in program[i:]]
    pattern = next(
        (p for p in (["sub", "div", "flatten", "linear"], ["sub", "div", "linear"]) if ops[: len(p)] == p),
        None,
    )
    if pattern is None or (pattern[2] == "linear" and len(obs_shape) != 1):
        return program
    sub, div, lin = program[i], program[i + 1], program[i + len(pattern) - 1]
    w = arrays[lin["weight"]].astype(np.float64)  # (in_features, out_features)
    try:
        c = np.broadcast_to(arrays[sub["value"]], obs_shape).reshape(-1).astype(np.float64)
        s = np.broadcast_to(arrays[div["value"]], obs_shape).reshape(-1).astype(np.float64)
    except ValueError:
        return program
    if c.size != w.shape[0]:
        return program
    w = w / s[:, None]
    bias = arrays[lin["bias"]].astype(np.float64) if lin.get("bias") is not None else np.zeros(w.shape[1])
    for key in (sub["value"], div["value"], lin.get("bias")):
        if key is not None:
            arrays.pop(key)
    arrays[lin["weight"]] = w.astype(np.float32)
    bias_key = f"{lin['weight']}_bias"
    arrays[bias_key] = (bias - c @ w).astype(np.float32)
    flatten = [{"op": "flatten"}] if pattern[2] == "flatten" else []
    return [{"op": "float"}, *flatten, {**lin, "bias": bias_key}, *program[i + len(pattern) :]]


def _sb3_layers(program: list[dict[str, Any]], arrays: dict[str, np.ndarray]) -> tuple[list[int], str]:
    """Hidden widths and activation of a folded MLP program, or a refusal."""
    body = [o for o in program if o["op"] not in ("float", "flatten")]
    kinds = [o["op"] for o in body]
    acts = set(kinds[1::2])
    ok = (
        len(kinds) % 2 == 1
        and all(k == "linear" for k in kinds[::2])
        and len(acts) <= 1
        and acts <= set(NUMPY_ACTIVATIONS)
        and all(o.get("approximate", "none") == "none" for o in body)
        and not any(o["op"] == "flatten" for o in program[program.index(body[0]) + 1 :])
    )
    if not ok:
        raise PolicyKDError(
            "sb3 export needs an MLP student (Linear layers with one activation); use --format onnx or numpy"
        )
    widths = [int(arrays[o["weight"]].shape[1]) for o in body[::2]][:-1]
    return widths, acts.pop() if acts else "relu"


def _export_sb3(student: Any, path: Path) -> None:
    import gymnasium as gym
    import torch
    from stable_baselines3 import DQN
    from torch import nn

    from policy_kd.students import ACTIVATIONS

    info = student.info
    space = info.get("action_space") or {}
    if space.get("type") != "Discrete":
        raise PolicyKDError(
            f"sb3 export writes a DQN policy, which needs discrete actions; this student acts in {space.get('type')}"
        )
    if obs_dtype(info) == np.uint8:
        raise PolicyKDError(
            "sb3 export supports students with float observations (SB3 rescales uint8 images itself); use --format onnx"
        )
    program, arrays = _numpy_program(student.net, tuple(info["spec"]["obs_shape"]))
    widths, act = _sb3_layers(program, arrays)
    obs_shape = tuple(info["spec"]["obs_shape"])
    obs_space = gym.spaces.Box(-np.inf, np.inf, shape=obs_shape, dtype=obs_dtype(info))

    class _Spaces(gym.Env):  # only the spaces: DQN needs them to build the policy
        observation_space = obs_space
        action_space = gym.spaces.Discrete(int(space["n"]))

        def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
            return np.zeros(obs_shape, dtype=obs_space.dtype), {}

        def step(self, action: Any) -> Any:
            return np.zeros(obs_shape, dtype=obs_space.dtype), 0.0, True, False, {}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DQN(
            "MlpPolicy",
            _Spaces(),
            policy_kwargs={"net_arch": widths, "activation_fn": ACTIVATIONS[act]},
            buffer_size=1,
            learning_starts=0,
            device="cpu",
            seed=0,
        )
    linears = [m for m in model.policy.q_net.q_net if isinstance(m, nn.Linear)]
    body = [o for o in program if o["op"] == "linear"]
    with torch.no_grad():
        for lin, op in zip(linears, body, strict=True):
            lin.weight.copy_(torch.from_numpy(arrays[op["weight"]].T.copy()))
            lin.bias.copy_(
                torch.from_numpy(arrays[op["bias"]]) if op.get("bias") else torch.zeros_like(lin.bias)
            )
        model.policy.q_net_target.load_state_dict(model.policy.q_net.state_dict())
    model.save(str(path))


def _write(fmt: str, student: Any, path: Path, int8: bool = False) -> dict[str, Any]:
    """Write ``student`` in ``fmt`` to ``path``; returns format details for export.json."""
    import torch

    net = student.net
    info = student.info
    example = torch.as_tensor(parity_observations(student, rows=2))
    if fmt == "c":
        from policy_kd.export_c import write_c

        return write_c(student, path, int8=int8)
    if fmt == "numpy":
        program, arrays = _numpy_program(net, tuple(info["spec"]["obs_shape"]))
        if int8:
            from policy_kd.quantize import quantize_program

            program, arrays = quantize_program(program, arrays)
        np.savez(path, program=np.array(json.dumps(program)), **arrays)
        return {"program": [o["op"] for o in program], "int8": int8}
    if fmt == "sb3":
        _export_sb3(student, path)
        return {"algo": "dqn"}
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


@job(resumable=False)
def export_student(config: ExportConfig) -> Path:
    """Export ``config.student`` as ``config.format`` into ``config.out``; check parity; return the folder."""
    from policy_kd.cost import count_macs
    from policy_kd.run import prepare_out_dir, write_json, write_run_info
    from policy_kd.students import count_params, load_student

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
    if not 0.0 <= config.min_agreement <= 1.0:
        raise PolicyKDError(f"--min-agreement must be within [0, 1], got {config.min_agreement}")
    if is_export(config.student):
        raise PolicyKDError(f"{config.student} is already an export; export the distill folder it came from")
    student = load_student(config.student)
    out = prepare_out_dir(config.out, force=config.force, inputs=(config.student,))
    import torch

    torch.set_num_threads(1)
    path = out / FILES[config.format]
    try:
        details = _write(config.format, student, path, config.int8)
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
    obs = parity_observations(student, config.parity_rows)
    ref, got = eager_outputs(student.net, obs), exported.outputs(obs)
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
            a_ref, exported.predict(obs), exported.head, meta["action_bounds"], ACTION_TOLERANCE
        )
    meta["parity"] = {
        "rows": len(obs),
        "max_abs_diff": diff,
        "tolerance": tol,
        "tolerance_rule": f"{TOLERANCE['int8' if config.int8 else config.format]} x max|output|"
        if relative
        else "absolute",
        "action_agreement": same_action,
    }
    write_json(out / EXPORT_FILE, meta)
    write_run_info(out, config, job="export")
    if not diff <= tol:
        shutil.rmtree(out)
        raise PolicyKDError(
            f"{config.format} export differs from the student by {diff:.3g} (> {tol:.3g}); nothing was written"
        )
    if config.int8 and same_action < config.min_agreement:
        shutil.rmtree(out)
        raise PolicyKDError(
            f"int8 {config.format} export takes the float student's action on {same_action:.4f} of {len(obs)} "
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
