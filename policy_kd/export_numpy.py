"""The numpy export's program: a student's forward pass read with ``torch.fx`` as a chain of numpy operations
(``linear``, ``conv2d``, activations, ``flatten``, arithmetic by a constant), the input standardisation folded
into the first ``linear``. The format is described in :mod:`policy_kd.export`; the sb3 and C exports are
built from the same program, and :mod:`policy_kd.runtime` runs it."""

from __future__ import annotations

import functools
import operator
from typing import Any

import numpy as np

from policy_kd.errors import PolicyKDError


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
        if m.dilation != (1, 1) or not isinstance(m.padding, tuple):
            raise _refuse(f"a dilated or 'same'-padded Conv2d ({target})")
        return {
            "op": "conv2d",
            "weight": store(_dense_conv_weight(m)),
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


def _dense_conv_weight(m: Any) -> Any:
    """A ``Conv2d``'s weight ``(out, in, kh, kw)`` as a convolution in one group computes it: a grouped one's
    (a separable student's depthwise convolution, ``(out, in / groups, kh, kw)``) placed block-diagonally
    among zeros. The program's ``conv2d`` then stays groups-1 for every reader of it (the numpy runtime,
    the C and sb3 exports, the int8 quantiser); a depthwise convolution of a MinAtar frame's 4-10
    channels costs that many times its few thousand multiply-adds, still a sliver of the student's."""
    import torch

    w = m.weight.detach()
    if m.groups == 1:
        return w
    out_g, in_g = m.out_channels // m.groups, m.in_channels // m.groups
    dense = torch.zeros(m.out_channels, m.in_channels, *w.shape[2:], dtype=w.dtype)
    for g in range(m.groups):
        dense[g * out_g : (g + 1) * out_g, g * in_g : (g + 1) * in_g] = w[g * out_g : (g + 1) * out_g]
    return dense


@functools.cache
def _function_ops() -> tuple[dict[Any, str], dict[Any, str]]:
    """The arithmetic by a constant, and the functional activations (torch.relu, F.gelu...) with their
    default arguments, that a program can hold."""
    import torch
    from torch import nn

    from policy_kd.students import ACTIVATIONS

    binops = {operator.add: "add", operator.sub: "sub", operator.mul: "mul", operator.truediv: "div"}
    fn_acts = {
        fn: name
        for name in ACTIVATIONS
        for fn in (getattr(torch, name, None), getattr(nn.functional, name, None))
        if fn is not None
    }
    return binops, fn_acts


def _node_op(
    node: Any, prev: Any, consts: dict[Any, Any], modules: dict[str, Any], store: Any
) -> dict[str, Any] | None:
    """The numpy operation of one data node of the traced graph (``None``: an Identity); anything else is
    refused."""
    import torch
    from torch import fx

    binops, fn_acts = _function_ops()
    if node.op == "call_module":
        return _module_op(modules[node.target], str(node.target), store)
    if node.op == "call_method" and node.target == "float":
        return {"op": "float"}
    if node.op == "call_method" and node.target == "permute" and node.args[1:] and node.args[1] == 0:
        return {"op": "permute", "axes": [int(a) for a in node.args[1:]]}
    if node.op == "call_method" and node.target == "flatten" and node.args[1:] == (1,):
        return {"op": "flatten"}
    if node.op == "call_function" and node.target in binops:
        a, b = node.args
        if a is not prev or (isinstance(b, fx.Node) and b not in consts):
            raise _refuse(f"a {binops[node.target]} that is not by a constant ({node.name})")
        return {"op": binops[node.target], "value": store(consts.get(b, b))}
    if node.op == "call_function" and node.target in fn_acts and len(node.args) == 1 and not node.kwargs:
        return {"op": fn_acts[node.target]}
    if node.op == "call_function" and node.target is torch.flatten and node.args[1:] == (1,):
        return {"op": "flatten"}
    raise _refuse(f"the operation {node.target} ({node.name})")


def _numpy_program(
    net: Any, obs_shape: tuple[int, ...]
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """The student's forward pass as a chain of numpy operations, read with torch.fx (see the module doc)."""
    import torch
    from torch import fx

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
        op = _node_op(node, prev, consts, modules, store)
        if op is None:  # an Identity
            continue
        program.append(op)
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
