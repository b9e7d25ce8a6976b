"""The torch-free runtime of exported students: load an ``export`` folder back as a student.

:func:`load_exported` loads a folder written by ``policy-kd export`` (see :mod:`policy_kd.export`) as a
student that ``evaluate`` plays like any other (``outputs``, ``predict``), so the return an export gets
is measured, not assumed. Each format runs in its own runtime: ``numpy`` in :class:`NumpyPolicy`,
``onnx`` in ONNX Runtime, ``torchscript``/``int8`` with ``torch.jit.load`` and ``sb3`` with
``stable_baselines3.DQN.load`` (torch and onnxruntime are imported only when such an export is loaded).

**numpy.** The ``.npz`` holds the weights and a ``program``: the student's forward pass as a chain of
operations (:func:`numpy_forward` lists them). :class:`NumpyPolicy` runs it with numpy alone (plus
``scipy.special.erf`` for exact GELU): this module imports no torch, so ``from policy_kd.runtime import
NumpyPolicy`` works where torch is not installed.

Actions come from outputs as the eager student takes them (:mod:`policy_kd.heads`).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from policy_kd.errors import PolicyKDError
from policy_kd.heads import actions_from_outputs, sample_actions, sample_outputs

EXPORT_FILE = "export.json"
"""The metadata file of an export folder."""
FILES = {
    "onnx": "student.onnx",
    "torchscript": "student.ts",
    "int8": "student_int8.ts",
    "numpy": "student.npz",
    "sb3": "policy.zip",
    "c": "student.c",
}
"""The exported file of each format."""

__all__ = [
    "ACTIVATIONS",
    "EXPORT_FILE",
    "FILES",
    "ExportedStudent",
    "NumpyPolicy",
    "actions_from_outputs",
    "is_export",
    "load_exported",
    "numpy_forward",
    "obs_dtype",
    "sample_outputs",
]


def _relu(x: np.ndarray, op: dict[str, Any]) -> np.ndarray:
    return np.maximum(x, 0.0, out=x)


def _tanh(x: np.ndarray, op: dict[str, Any]) -> np.ndarray:
    return np.tanh(x, out=x)


def _elu(x: np.ndarray, op: dict[str, Any]) -> np.ndarray:
    return np.where(x > 0, x, op.get("alpha", 1.0) * np.expm1(np.minimum(x, 0.0)))


def _gelu(x: np.ndarray, op: dict[str, Any]) -> np.ndarray:
    if op.get("approximate") == "tanh":
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))
    from scipy.special import erf  # imported on use: only exact GELU needs scipy

    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


#: The hidden activations a student may have (``StudentSpec.activation``), by name, in numpy: the one
#: list the students' torch modules (``policy_kd.students.ACTIVATIONS``) and the exporters follow.
ACTIVATIONS: dict[str, Callable[[np.ndarray, dict[str, Any]], np.ndarray]] = {
    "relu": _relu,
    "tanh": _tanh,
    "elu": _elu,
    "gelu": _gelu,
}


def _conv2d(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: tuple[int, int], pad: tuple[int, int]
):
    """``x`` (batch, c_in, h, w), ``w`` (c_out, c_in, kh, kw) -> (batch, c_out, h_out, w_out); groups=1."""
    if pad[0] or pad[1]:
        x = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    kh, kw = w.shape[2:]
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))  # (b, c, H, W, kh, kw)
    win = win[:, :, :: stride[0], :: stride[1]]
    out = np.einsum("bchwij,ocij->bohw", win, w, optimize=True)
    if b is not None:
        out += b[None, :, None, None]
    return out


def numpy_forward(
    program: list[dict[str, Any]], arrays: dict[str, np.ndarray], obs: np.ndarray
) -> np.ndarray:
    """The student's forward pass in plain numpy: ``obs`` (batch, *obs_shape) -> (batch, n_outputs).

    ``program`` is a list of operations applied in order to one running array ``x``:

    - ``{"op": "float"}``: ``x.astype(float32)``
    - ``{"op": "add"|"sub"|"mul"|"div", "value": key}``: ``x (+-*/) arrays[key]`` (broadcast)
    - ``{"op": "flatten"}``: ``x.reshape(batch, -1)``
    - ``{"op": "permute", "axes": [0, ...]}``: ``x.transpose(axes)`` (channels-last images to channels-first)
    - ``{"op": "linear", "weight": key, "bias": key|None}``: ``x @ arrays[weight] + arrays[bias]``, the
      weight stored transposed, ``(in_features, out_features)``
    - ``{"op": "conv2d", "weight", "bias", "stride", "padding"}``: as ``torch.nn.Conv2d`` (groups 1)
    - ``{"op": "relu"|"tanh"|"elu"|"gelu"}`` (``alpha`` for elu, ``approximate`` for gelu)
    """
    x = np.asarray(obs)
    for op in program:
        kind = op["op"]
        if kind == "linear":
            x = x @ arrays[op["weight"]]
            if op.get("bias") is not None:
                x += arrays[op["bias"]]
        elif kind in ACTIVATIONS:
            x = ACTIVATIONS[kind](x, op)
        elif kind == "float":
            x = np.asarray(x, dtype=np.float32)
        elif kind == "flatten":
            x = x.reshape(x.shape[0], -1)
        elif kind == "add":
            x = x + arrays[op["value"]]
        elif kind == "sub":
            x = x - arrays[op["value"]]
        elif kind == "mul":
            x = x * arrays[op["value"]]
        elif kind == "div":
            x = x / arrays[op["value"]]
        elif kind == "permute":
            x = np.ascontiguousarray(x.transpose(op["axes"]))
        elif kind == "conv2d":
            bias = arrays[op["bias"]] if op.get("bias") is not None else None
            x = _conv2d(x, arrays[op["weight"]], bias, tuple(op["stride"]), tuple(op["padding"]))
        else:
            raise ValueError(f"unknown op {kind!r} in a numpy program")
    return x


class NumpyPolicy:
    """A student exported with ``--format numpy``, run with numpy alone.

    >>> policy = NumpyPolicy.load("export_dir/student.npz")   # doctest: +SKIP
    >>> policy.forward(obs)    # (batch, n_outputs) float32

    ``forward`` computes :func:`numpy_forward` with the program compiled once into a list of closures, and
    a single observation (batch 1, no conv2d) goes through matrix-vector products on 1-d arrays: numpy's
    per-call overhead, not arithmetic, is what a tiny student's latency is made of.
    """

    def __init__(self, program: list[dict[str, Any]], arrays: dict[str, np.ndarray]):
        self.program = program
        self.arrays = arrays
        self._batch = [self._compile(op, vector=False) for op in program]
        vector_ok = all(op["op"] not in ("conv2d", "permute") for op in program)
        self._vector = [self._compile(op, vector=True) for op in program] if vector_ok else None

    def _compile(self, op: dict[str, Any], *, vector: bool) -> Any:
        kind, arr = op["op"], self.arrays
        if kind == "linear":
            w = arr[op["weight"]]  # (in, out)
            b = arr[op["bias"]] if op.get("bias") is not None else None
            if vector:
                wt = np.ascontiguousarray(w.T)  # (out, in): a contiguous matrix-vector product
                dot = wt.dot
            else:

                def dot(x: np.ndarray, w: np.ndarray = w) -> np.ndarray:
                    return np.dot(x, w)

            if b is None:
                return dot

            def linear(x: np.ndarray) -> np.ndarray:
                y = dot(x)
                y += b
                return y

            return linear
        if kind == "relu":
            return lambda x: np.maximum(x, 0.0, out=x)
        if kind == "float":
            return lambda x: np.asarray(x, dtype=np.float32)
        if kind == "flatten":
            return (lambda x: x.reshape(-1)) if vector else (lambda x: x.reshape(x.shape[0], -1))
        if kind in ("add", "sub", "mul", "div"):
            c = arr[op["value"]]
            fn = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}[kind]
            return lambda x: fn(x, c)
        single = [op]
        return lambda x: numpy_forward(single, arr, x)

    @classmethod
    def load(cls, path: str | Path) -> NumpyPolicy:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        program = json.loads(str(arrays.pop("program")))
        if any(op.get("scale") is not None for op in program):  # an --int8 export: float compute
            from policy_kd.quantize import dequantize_program

            program, arrays = dequantize_program(program, arrays)
        return cls(program, arrays)

    def forward(self, obs: np.ndarray) -> np.ndarray:
        """``obs`` (batch, *obs_shape) -> (batch, n_outputs) float32."""
        obs = np.asarray(obs)
        if obs.shape[0] == 1 and self._vector is not None:
            x = obs[0]
            for f in self._vector:
                x = f(x)
            return x[None]
        x = obs
        for f in self._batch:
            x = f(x)
        return x

    __call__ = forward


# -------------------------------------------------------------------------------- loaded exports


@dataclass
class ExportedStudent:
    """An export loaded back: the same ``outputs``/``predict`` protocol as an eager student."""

    format: str
    path: Path
    info: dict[str, Any]
    """The source student's ``student.json`` contents."""
    meta: dict[str, Any]
    """``export.json``."""
    run: Any
    """``obs (batch, *obs_shape) -> outputs (batch, n_outputs)`` numpy function."""

    @property
    def weights_path(self) -> Path:
        return self.path

    @property
    def params(self) -> int:
        return int(self.meta["params"])

    @property
    def log_std(self) -> np.ndarray | None:
        ls = self.meta.get("log_std")
        return None if ls is None else np.asarray(ls, dtype=np.float32)

    def outputs(self, obs: np.ndarray) -> np.ndarray:
        return np.asarray(self.run(np.asarray(obs)))

    @property
    def head(self) -> str:
        return str(self.info["spec"].get("head", "discrete"))

    @property
    def nvec(self) -> tuple[int, ...] | None:
        """Choices per action component of a ``multi_discrete`` head, else None."""
        return tuple(self.info["spec"].get("nvec", ())) or None

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Actions as the eager student takes them: argmax, or the Gaussian mean clipped (``gaussian``) or
        tanh-squashed (``squashed_gaussian``) into the action bounds; ``deterministic=False`` samples."""
        out, bounds = self.outputs(obs), self.meta.get("action_bounds")
        if not deterministic:
            return sample_actions(
                out, self.head, self.log_std, np.random.default_rng(), bounds, nvec=self.nvec
            )
        return actions_from_outputs(out, self.head, bounds, nvec=self.nvec)

    def file_bytes(self) -> int:
        return self.path.stat().st_size


def is_export(path: str | Path) -> bool:
    p = Path(path)
    return (p / EXPORT_FILE).is_file() if p.is_dir() else False


def obs_dtype(info: dict[str, Any]) -> np.dtype:
    """The dtype of the observations a student (its ``student.json`` ``info``) was made for."""
    return np.dtype((info.get("observation_space") or {}).get("dtype") or "float32")


def _runner(fmt: str, path: Path, info: dict[str, Any], details: dict[str, Any] | None = None) -> Any:
    dtype = obs_dtype(info)
    if fmt == "numpy":
        return NumpyPolicy.load(path).forward
    if fmt == "c":
        from policy_kd.c_runtime import CPolicy

        spec = info["spec"]
        return CPolicy(
            path,
            tuple(spec["obs_shape"]),
            int(spec["n_outputs"]),
            head=str(spec.get("head", "discrete")),
            native=bool((details or {}).get("native", False)),
        ).forward
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise PolicyKDError(
                "running an ONNX export needs onnxruntime: pip install 'policy-kd[onnx]'"
            ) from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        run = sess.run
        return lambda obs: run(None, {name: np.asarray(obs, dtype=dtype)})[0]
    import torch

    if fmt in ("torchscript", "int8"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(str(path), map_location="cpu")
        module.eval()
    elif fmt == "sb3":
        # which algorithm the .zip holds, read from its JSON (nothing unpickled) before loading it
        from policy_kd.teachers.sb3 import _detect_algo, algo_class, forward_outputs

        algo = _detect_algo(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = algo_class(algo).load(str(path), device="cpu")
        model.policy.set_training_mode(False)
        if algo != "dqn":  # an actor-critic: the actor's outputs, as a teacher's are labelled

            def run_actor(obs: np.ndarray) -> np.ndarray:
                with torch.inference_mode():
                    obs_t = torch.from_numpy(np.ascontiguousarray(obs, dtype=dtype))
                    return forward_outputs(model, algo, obs_t)["teacher"]

            return run_actor
        module = model.policy.q_net
        module.eval()
    else:
        raise PolicyKDError(f"unknown export format {fmt!r}; choose one of {', '.join(FILES)}")

    def run_torch(obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(obs, dtype=dtype))).numpy()

    return run_torch


def load_exported(path: str | Path) -> ExportedStudent:
    """Load an ``export`` folder (or its ``export.json``) as a student."""
    p = Path(path)
    folder = p.parent if p.name == EXPORT_FILE else p
    meta_path = folder / EXPORT_FILE
    if not meta_path.is_file():
        raise PolicyKDError(f"{folder} is not an export folder (no {EXPORT_FILE}); run policy-kd export")
    try:
        meta = json.loads(meta_path.read_text())
        fmt, file, info = meta["export_format"], meta["file"], meta["student"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise PolicyKDError(f"{meta_path} is damaged ({exc}); export the student again") from None
    if fmt not in FILES:
        raise PolicyKDError(f"{meta_path} names format {fmt!r}; choose one of {', '.join(FILES)}")
    artifact = folder / file
    if not artifact.is_file():
        raise PolicyKDError(f"exported file missing: {artifact}; export the student again")
    try:
        run = _runner(fmt, artifact, info, meta.get("details"))
    except PolicyKDError:
        raise
    except Exception as exc:
        raise PolicyKDError(
            f"could not load {artifact} ({type(exc).__name__}); export the student again"
        ) from None
    return ExportedStudent(format=fmt, path=artifact, info=info, meta=meta, run=run)
