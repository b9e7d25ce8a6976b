"""Per-channel symmetric int8 weights for the numpy and C exports (``policy-kd export --int8``).

Each output channel ``o`` of a ``linear`` (weight stored ``(in, out)``) or ``conv2d`` (``(out, in, kh, kw)``)
layer keeps ``q = round(w / s_o)`` in ``[-127, 127]`` with ``s_o = max|w_o| / 127``; biases stay float.
The forward pass accumulates ``q · x`` in float and multiplies by ``s_o`` (no activation quantisation: these
students are a few thousand weights, where the gain is the 4x smaller weights, not integer arithmetic).
The program keeps its ops; a quantised layer gains ``"scale": key``. Numpy only (no torch): the numpy
runtime dequantises at load time with :func:`dequantize_program`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

#: Ops whose weights are quantised, and the weight axis that indexes output channels.
CHANNEL_AXIS = {"linear": 1, "conv2d": 0}


def quantize_weight(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """``w`` -> (int8 ``q``, float32 per-channel ``scale`` along ``axis``) with ``w ≈ q * scale``."""
    w = np.asarray(w, dtype=np.float64)
    other = tuple(a for a in range(w.ndim) if a != axis)
    peak = np.abs(w).max(axis=other) if other else np.abs(w)
    scale = np.where(peak > 0, peak / 127.0, 1.0)  # an all-zero channel stays zero with any scale
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


Program = list[dict[str, Any]]


def _rewrite(
    program: Program, arrays: dict[str, np.ndarray], change: Callable[[dict[str, Any], dict], dict | None]
) -> tuple[Program, dict[str, np.ndarray]]:
    """``change(op, arrays)`` on a copy of ``arrays`` for every op: the op to keep in its place (None: as is)."""
    arrays = dict(arrays)
    return [change(op, arrays) or op for op in program], arrays


def _quantize(op: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any] | None:
    if op["op"] not in CHANNEL_AXIS:
        return None
    q, scale = quantize_weight(arrays[op["weight"]], CHANNEL_AXIS[op["op"]])
    key = f"{op['weight']}_scale"
    arrays[op["weight"]], arrays[key] = q, scale
    return {**op, "scale": key}


def _dequantize(op: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any] | None:
    if op.get("scale") is None:
        return None
    shape = [1] * arrays[op["weight"]].ndim
    shape[CHANNEL_AXIS[op["op"]]] = -1
    scale = arrays.pop(op["scale"]).reshape(shape)
    arrays[op["weight"]] = arrays[op["weight"]].astype(np.float32) * scale
    return {k: v for k, v in op.items() if k != "scale"}


def quantize_program(
    program: Program, arrays: dict[str, np.ndarray]
) -> tuple[Program, dict[str, np.ndarray]]:
    """A copy of a numpy program with every linear/conv2d weight stored as int8 plus a per-channel scale."""
    return _rewrite(program, arrays, _quantize)


def dequantize_program(
    program: Program, arrays: dict[str, np.ndarray]
) -> tuple[Program, dict[str, np.ndarray]]:
    """The float program an int8 one stands for (``q * scale``), for runtimes that compute in float."""
    return _rewrite(program, arrays, _dequantize)


def is_quantized(program: list[dict[str, Any]]) -> bool:
    return any(op.get("scale") is not None for op in program)


def weight_bytes(program: list[dict[str, Any]], arrays: dict[str, np.ndarray]) -> int:
    """Bytes of the constants a program needs (weights, scales, biases, standardisation)."""
    keys = {v for op in program for k, v in op.items() if k in ("weight", "bias", "value", "scale") and v}
    return int(sum(arrays[k].nbytes for k in keys))


def action_agreement(
    ref: np.ndarray, got: np.ndarray, head: str, bounds: list[list[float]] | None, tolerance: float
) -> float:
    """Share of rows where two policies take the same action: equal discrete actions, or continuous ones
    within ``tolerance`` of the action range in every dimension (``evaluate``'s rule)."""
    from policy_kd.evaluate import compare_actions

    width = None
    if head != "discrete":
        low, high = (np.asarray(b, np.float64) for b in bounds) if bounds else (-1.0, 1.0)
        w = np.broadcast_to(
            np.asarray(high, np.float64) - low, (np.asarray(ref).reshape(len(ref), -1).shape[1],)
        )
        width = np.where(np.isfinite(w) & (w > 0), w, 1.0)
    bad, _ = compare_actions(ref, got, width, tolerance)
    return float(1.0 - bad.mean())
