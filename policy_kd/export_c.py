"""``policy-kd export STUDENT --format c``: the student as one C99 source and header, libm only.

The code is generated from the op program the numpy exporter reads from the network with ``torch.fx``
(:func:`policy_kd.export._numpy_program`), so the two exports compute the same function: the input
standardisation folded into the first linear layer (an MLP) or fused into one ``(x - mean) / std`` pass
(a CNN, whose per-pixel statistics cannot be folded into shared convolution weights), then linear/conv2d
layers and activations on two ping-pong buffers on the stack. The weights are ``static const`` arrays
(``float``, or ``int8_t`` with a float scale per output channel under ``--int8``).

Every layer is emitted as loops with constant trip counts over local (unaliased) buffers, so plain
``-O2`` vectorises them; a dense layer keeps up to 32 outputs' sums in local variables (dense widths are
zero-padded to a multiple of 4), a convolution accumulates whole output rows. Every sum adds its terms in
the reference's order, so the outputs match the eager student to ~1e-6 and the actions exactly in practice.

``student.h`` declares::

    void policy_forward(const float *obs, float *out);                 /* the head's outputs */
    int  policy_act(const float *obs);                                  /* discrete: the argmax */
    void policy_act(const float *obs, float *action);                   /* Gaussian heads: the mean,
                                                                           clipped or tanh-squashed;
                                                                           deterministic: rescaled */
    void policy_forward_batch(const float *obs, long n, float *out);    /* n rows at once */

and its comment holds the build line. The observation is the raw one (as the env gives it, uint8 images
as floats 0..255 or 0/1), flattened in C order.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from policy_kd.errors import PolicyKDError

SOURCE_FILE = "student.c"
HEADER_FILE = "student.h"
#: What the tests compile with; the generated code is warning-free under it.
STRICT_FLAGS = ("-std=c99", "-Wall", "-Werror", "-O2")
HEADS = ("discrete", "gaussian", "squashed_gaussian", "deterministic")

#: Dense layers compute this many outputs at a time: widths are zero-padded to a multiple of it, so that with
#: constant trip counts and unaliased local buffers the compiler vectorises the loops at plain -O2.
LANES = 4
#: Outputs summed at once in local variables (8 SSE registers' worth).
BLOCK = 32


def _lit(v: float) -> str:
    """A float32 value as a C literal that reads back to the same float (9 significant digits)."""
    if not np.isfinite(v):
        raise PolicyKDError(f"C export: the student holds a non-finite constant ({v}); distil it again")
    s = f"{v:.9g}"
    if "." not in s and "e" not in s:
        s += ".0"
    return s + "f"


class _Codegen:
    """Walks a numpy program, tracking the activation's shape, emitting constants and statements."""

    def __init__(self, obs_shape: tuple[int, ...], arrays: dict[str, np.ndarray]):
        self.shape = tuple(int(d) for d in obs_shape)
        self.arrays = arrays
        self.consts: list[str] = []
        self.body: list[str] = []
        self.q8 = False
        self.cur = "obs"
        self.largest = 1
        self.weight_bytes = 0

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def const(self, values: np.ndarray, ctype: str = "float") -> str:
        flat = np.asarray(values).reshape(-1)
        name = f"K{len(self.consts)}"
        items = [_lit(float(v)) for v in flat] if ctype == "float" else [str(int(v)) for v in flat]
        lines = [", ".join(items[i : i + 8]) for i in range(0, len(items), 8)]
        self.consts.append(
            f"static const {ctype} {name}[{len(items)}] = {{\n    " + ",\n    ".join(lines) + "\n};\n"
        )
        self.weight_bytes += flat.size * {"float": 4, "int8_t": 1}.get(ctype, 4)
        self.q8 = self.q8 or ctype == "int8_t"
        return name

    def dst(self, size: int) -> str:
        """The buffer a step writes into (never the one it reads)."""
        self.largest = max(self.largest, size)
        return "b" if self.cur == "a" else "a"

    def emit(self, line: str, out: str | None = None) -> None:
        self.body.append(line)
        if out is not None:
            self.cur = out

    def elementwise(self, expr: str) -> None:
        """``x[i] = expr(v)`` over the activation, in place unless it is still the caller's ``obs``."""
        out = self.dst(self.size) if self.cur == "obs" else self.cur
        self.emit(
            f"for (int i = 0; i < {self.size}; i++) {{ const float v = {self.cur}[i]; {out}[i] = {expr}; }}",
            out,
        )

    def step(self, op: dict[str, Any], nxt: dict[str, Any] | None) -> bool:
        """Emit one op; True when it also consumed ``nxt`` (a fused standardisation)."""
        kind = op["op"]
        if kind == "float":
            return False
        if kind == "flatten":
            self.shape = (self.size,)
            return False
        if kind in ("add", "sub", "mul", "div"):
            return self._arith(op, nxt)
        if kind == "permute":
            self._permute(op)
        elif kind == "linear":
            self._linear(op)
        elif kind == "conv2d":
            self._conv2d(op)
        else:
            self._activation(op)
        return False

    def _arith(self, op: dict[str, Any], nxt: dict[str, Any] | None) -> bool:
        """An elementwise constant op; a ``sub`` then ``div`` (a standardisation) fuses into one loop."""
        kind = op["op"]
        sym = {"add": "+", "sub": "-", "mul": "*", "div": "/"}[kind]
        fused = kind == "sub" and nxt is not None and nxt["op"] == "div"
        terms = [self._operand(op["value"])]
        if fused:
            terms.append(self._operand(nxt["value"]))  # type: ignore[index]
            expr = f"(v - {terms[0]}) / {terms[1]}"
        else:
            expr = f"v {sym} {terms[0]}"
        self.elementwise(expr)
        return fused

    def _permute(self, op: dict[str, Any]) -> None:
        axes = [int(a) - 1 for a in op["axes"][1:]]
        idx = np.arange(self.size).reshape(self.shape).transpose(axes).reshape(-1)
        table = self.const(idx, "int")
        self.weight_bytes -= idx.size * 4  # an index table, not weights
        out = self.dst(self.size)
        self.emit(f"for (int i = 0; i < {self.size}; i++) {out}[i] = {self.cur}[{table}[i]];", out)
        self.shape = tuple(self.shape[a] for a in axes)

    def _linear(self, op: dict[str, Any]) -> None:
        w = self.arrays[op["weight"]]  # (in, out)
        if len(self.shape) != 1 or w.shape[0] != self.size:
            raise PolicyKDError(f"C export: a linear layer of {w.shape[0]} inputs after shape {self.shape}")
        n_in, n_out = (int(d) for d in w.shape)
        width = -(-n_out // LANES) * LANES
        wide = np.zeros((n_in, width), dtype=w.dtype)
        wide[:, :n_out] = w
        weights, cast, (scale, bias) = self._layer_consts(op, wide, width, n_out)
        x, y = self.cur, self.dst(width)
        for o0 in range(0, width, BLOCK):
            self._dense_block(x, y, weights, cast, n_in, width, o0, min(BLOCK, width - o0))
        if scale or bias:
            expr = f"{y}[o]" + (f" * {scale}[o]" if scale else "") + (f" + {bias}[o]" if bias else "")
            self.emit(f"for (int o = 0; o < {width}; o++) {y}[o] = {expr};")
        self.cur = y
        self.shape = (n_out,)

    def _conv2d(self, op: dict[str, Any]) -> None:
        w = self.arrays[op["weight"]]  # (out, in, kh, kw)
        if len(self.shape) != 3 or w.shape[1] != self.shape[0]:
            raise PolicyKDError(f"C export: a conv2d of {w.shape[1]} channels after shape {self.shape}")
        (c, h, wd), (ph, pw), (sh, sw) = self.shape, op["padding"], op["stride"]
        if ph or pw:
            x, h, wd = self.cur, h + 2 * ph, wd + 2 * pw
            y = self.dst(c * h * wd)
            self.emit(f"for (int i = 0; i < {c * h * wd}; i++) {y}[i] = 0.0f;")
            self.emit(
                f"for (int k = 0; k < {c}; k++) for (int r = 0; r < {self.shape[1]}; r++) "
                f"for (int q = 0; q < {self.shape[2]}; q++) "
                f"{y}[(k * {h} + r + {ph}) * {wd} + q + {pw}] = {x}[(k * {self.shape[1]} + r) * {self.shape[2]} + q];",
                y,
            )
        o, kh, kw = int(w.shape[0]), int(w.shape[2]), int(w.shape[3])
        ho, wo = (h - kh) // sh + 1, (wd - kw) // sw + 1
        weights, cast, (scale, bias) = self._layer_consts(op, w, o, o)
        x, y = self.cur, self.dst(o * ho * wo)
        # Output rows accumulate in memory over the taps (c, ki, kj), in that order: a row is a
        # contiguous run the compiler vectorises (register-blocked sums measured slower here, as gcc
        # does not vectorise them across the taps' nested loops).
        self.emit(f"for (int i = 0; i < {o * ho * wo}; i++) {y}[i] = 0.0f;")
        self.emit(
            f"for (int o = 0; o < {o}; o++) for (int c = 0; c < {c}; c++) "
            f"for (int ki = 0; ki < {kh}; ki++) for (int kj = 0; kj < {kw}; kj++) {{\n"
            f"        const float v = {cast}{weights}[((o * {c} + c) * {kh} + ki) * {kw} + kj];\n"
            f"        for (int r = 0; r < {ho}; r++) {{\n"
            f"            float *yr = {y} + (o * {ho} + r) * {wo};\n"
            f"            const float *xr = {x} + (c * {h} + r * {sh} + ki) * {wd} + kj;\n"
            f"            for (int q = 0; q < {wo}; q++) yr[q] += v * xr[q * {sw}];\n"
            f"        }}\n"
            f"    }}",
            y,
        )
        if scale or bias:
            expr = (
                f"{y}[o * {ho * wo} + p]"
                + (f" * {scale}[o]" if scale else "")
                + (f" + {bias}[o]" if bias else "")
            )
            self.emit(
                f"for (int o = 0; o < {o}; o++) for (int p = 0; p < {ho * wo}; p++) {y}[o * {ho * wo} + p] = {expr};"
            )
        self.shape = (o, ho, wo)

    def _activation(self, op: dict[str, Any]) -> None:
        kind = op["op"]
        if kind == "relu":
            self.elementwise("v > 0.0f ? v : 0.0f")
        elif kind == "tanh":
            self.elementwise("tanhf(v)")
        elif kind == "elu":
            self.elementwise(f"v > 0.0f ? v : {_lit(op.get('alpha', 1.0))} * expm1f(v)")
        elif kind == "gelu" and op.get("approximate") == "tanh":
            self.elementwise("0.5f * v * (1.0f + tanhf(0.797884561f * (v + 0.044715f * v * v * v)))")
        elif kind == "gelu":
            self.elementwise("v * 0.5f * (1.0f + erff(v * 0.707106781f))")
        else:
            raise PolicyKDError(f"C export does not support the op {kind!r}; use --format numpy or onnx")

    def _operand(self, key: str) -> str:
        c = np.asarray(self.arrays[key], dtype=np.float32)
        if c.size == 1:
            return _lit(float(c.reshape(-1)[0]))
        try:
            full = np.broadcast_to(c, (1, *self.shape))
        except ValueError:
            raise PolicyKDError(f"C export: a constant of shape {c.shape} on shape {self.shape}") from None
        return f"{self.const(full)}[i]"

    def _layer_consts(
        self, op: dict[str, Any], w: np.ndarray, channels: int, real: int
    ) -> tuple[str, str, tuple[str | None, str | None]]:
        """Weights (int8 under --int8, then read through a float cast), and per-channel scale and bias
        (zero-padded to ``channels``) as constants."""
        q8 = op.get("scale") is not None
        weights = self.const(w, "int8_t" if q8 else "float")
        names: list[str | None] = []
        for key in ("scale", "bias"):
            if op.get(key) is None:
                names.append(None)
                continue
            v = np.zeros(channels, dtype=np.float32)
            v[:real] = self.arrays[op[key]].reshape(-1)
            names.append(self.const(v))
        return weights, "(float)" if q8 else "", (names[0], names[1])

    def _dense_block(
        self, x: str, y: str, weights: str, cast: str, n_in: int, width: int, o0: int, n: int
    ) -> None:
        """``y[o0 .. o0+n) = x @ W[:, o0 .. o0+n)``, the sums in local variables (registers, not memory: the
        loop then runs at the adders' throughput, not at a store-load round trip per input). Every sum adds
        the inputs in order, as ``x @ W`` does. The stores stay plain (a fused bias stopped gcc from
        vectorising the block: measured 2x slower)."""
        self.emit("{ float " + ", ".join(f"s{j} = 0.0f" for j in range(n)) + ";")
        self.emit(
            f"  for (int i = 0; i < {n_in}; i++) {{ const float xi = {x}[i]; "
            f"const {'int8_t' if cast else 'float'} *w = {weights} + i * {width} + {o0};"
        )
        for j in range(0, n, 4):
            self.emit("    " + " ".join(f"s{k} += {cast}w[{k}] * xi;" for k in range(j, min(j + 4, n))))
        self.emit("  }")
        self.emit("  " + " ".join(f"{y}[{o0 + j}] = s{j};" for j in range(n)))
        self.emit("}")


def generate(
    program: list[dict[str, Any]],
    arrays: dict[str, np.ndarray],
    obs_shape: tuple[int, ...],
    head: str,
    n_outputs: int,
    bounds: list[list[float]] | None = None,
    comment: str = "",
) -> tuple[str, str, dict[str, Any]]:
    """C source, header and details (sizes) of a student's op program."""
    if head not in HEADS:
        raise PolicyKDError(
            f"C export supports {', '.join(HEADS)} heads; this student's head is {head!r}; use --format numpy"
        )
    gen = _Codegen(obs_shape, arrays)
    skip = False
    for i, op in enumerate(program):
        if skip:
            skip = False
            continue
        skip = gen.step(op, program[i + 1] if i + 1 < len(program) else None)
    if gen.size != n_outputs:
        raise PolicyKDError(f"C export: the program ends with {gen.size} values, not {n_outputs} outputs")
    obs_size = int(np.prod(obs_shape))
    header = _header(obs_shape, head, n_outputs, gen.q8, comment)
    source = _source(gen, head, n_outputs, obs_size, bounds, comment)
    details = {
        "header": HEADER_FILE,
        "build": "cc -std=c99 -O2 -c student.c",
        "int8": gen.q8,
        "weight_bytes": gen.weight_bytes,
        "stack_bytes": 8 * gen.largest,
    }
    return source, header, details


def _header(obs_shape: tuple[int, ...], head: str, n_outputs: int, q8: bool, comment: str) -> str:
    """student.h: the build line, the sizes and the entry points' declarations."""
    obs_size = int(np.prod(obs_shape))
    continuous = head != "discrete"
    act_decl = (
        "void policy_act(const float *obs, float *action)"
        if continuous
        else "int policy_act(const float *obs)"
    )
    build = "cc -std=c99 -O2 -c student.c            (then link the object and -lm into your program)"
    return textwrap.dedent(f"""\
        /* Generated by policy-kd export --format c{" --int8" if q8 else ""}: {comment}
         *
         * Build (C99, no dependency beyond libm):
         *     {build}
         *     cc -std=c99 -O2 -o app app.c student.c -lm
         *
         * obs: the raw observation ({" x ".join(map(str, obs_shape))}, as the env gives it, as floats, C order);
         * the input standardisation is inside. Reentrant: no state, buffers on the stack.
         */
        #ifndef POLICY_KD_STUDENT_H
        #define POLICY_KD_STUDENT_H

        #define POLICY_OBS_SIZE {obs_size}
        #define POLICY_N_OUTPUTS {n_outputs}
        #define POLICY_HEAD "{head}"

        #ifdef __cplusplus
        extern "C" {{
        #endif

        /* out[POLICY_N_OUTPUTS]: {"the logits (or Q-values)" if not continuous else ("the action scaled to [-1, 1] (tanh)" if head == "deterministic" else "the action mean (pre-squash for squashed_gaussian)")} */
        void policy_forward(const float *obs, float *out);
        /* {"the greedy action (argmax, first of ties)" if not continuous else "action[POLICY_N_OUTPUTS]: the deterministic action, inside the action bounds"} */
        {act_decl};
        /* obs[n * POLICY_OBS_SIZE] -> out[n * POLICY_N_OUTPUTS] */
        void policy_forward_batch(const float *obs, long n, float *out);

        #ifdef __cplusplus
        }}
        #endif
        #endif
        """)


def _source(
    gen: _Codegen,
    head: str,
    n_outputs: int,
    obs_size: int,
    bounds: list[list[float]] | None,
    comment: str,
) -> str:
    """student.c: the constants, ``policy_forward`` (the generated body), its batch loop and ``policy_act``."""
    q8 = gen.q8
    body = "\n    ".join(gen.body)  # put in after dedent: its later lines carry no template indent
    parts = [
        f"/* Generated by policy-kd export --format c: {comment} (see student.h) */\n",
        "#include <math.h>\n",
        "#include <stdint.h>\n" if q8 else "",
        '#include "student.h"\n\n',
        *gen.consts,
        "\n",
        textwrap.dedent(f"""\
            void policy_forward(const float *obs, float *out)
            {{
                float a[{gen.largest}], b[{gen.largest}];
                (void)a; (void)b;
                @BODY@
                for (int i = 0; i < {n_outputs}; i++) out[i] = {gen.cur}[i];
            }}

            void policy_forward_batch(const float *obs, long n, float *out)
            {{
                long r;
                for (r = 0; r < n; r++) policy_forward(obs + r * {obs_size}, out + r * {n_outputs});
            }}

            """).replace("@BODY@", body),
        _act_source(head, n_outputs, bounds, gen),
    ]
    return "".join(parts)


def _act_source(head: str, n: int, bounds: list[list[float]] | None, gen: _Codegen) -> str:
    if head == "discrete":
        return textwrap.dedent(f"""\
            int policy_act(const float *obs)
            {{
                float out[{n}];
                int i, best = 0;
                policy_forward(obs, out);
                for (i = 1; i < {n}; i++)
                    if (out[i] > out[best]) best = i;
                return best;
            }}
            """)
    low, high = (
        (np.asarray(b, dtype=np.float32).reshape(-1) for b in bounds) if bounds else (-np.ones(n), np.ones(n))
    )
    lo, hi = gen.const(np.broadcast_to(low, (n,))), gen.const(np.broadcast_to(high, (n,)))
    gen.weight_bytes -= 8 * n
    if head == "squashed_gaussian":  # as Student.predict: low + (tanh(mean) + 1) * 0.5 * (high - low)
        expr = f"{lo}[i] + (tanhf(out[i]) + 1.0f) * 0.5f * ({hi}[i] - {lo}[i])"
    elif head == "deterministic":  # the forward already ends in tanh: rescale, clamped as rescale_to_bounds
        clamped = "(out[i] < -1.0f ? -1.0f : (out[i] > 1.0f ? 1.0f : out[i]))"
        expr = f"{lo}[i] + ({clamped} + 1.0f) * 0.5f * ({hi}[i] - {lo}[i])"
    else:  # clipped into the bounds
        expr = f"out[i] < {lo}[i] ? {lo}[i] : (out[i] > {hi}[i] ? {hi}[i] : out[i])"
    consts = "".join(gen.consts[-2:])
    return consts + textwrap.dedent(f"""\
        void policy_act(const float *obs, float *action)
        {{
            float out[{n}];
            int i;
            policy_forward(obs, out);
            for (i = 0; i < {n}; i++) action[i] = {expr};
        }}
        """)


def write_c(student: Any, path: Path, *, int8: bool = False) -> dict[str, Any]:
    """Write ``student`` as ``path`` (``student.c``) and ``student.h`` beside it; return export details."""
    from policy_kd.c_runtime import find_compiler
    from policy_kd.export import _numpy_program

    find_compiler()  # the parity check compiles the export: refuse before writing anything
    info = student.info
    spec = info["spec"]
    try:
        program, arrays = _numpy_program(student.net, tuple(spec["obs_shape"]))
    except PolicyKDError as exc:
        raise PolicyKDError(str(exc).replace("numpy export", "C export", 1)) from None
    if int8:
        from policy_kd.quantize import quantize_program

        program, arrays = quantize_program(program, arrays)
    net = student.net
    bounds = [net.action_low.tolist(), net.action_high.tolist()] if hasattr(net, "action_low") else None
    comment = (
        f"{spec['arch']} student {'x'.join(map(str, spec.get('hidden', ())))} of {info.get('env_id', '?')}"
    )
    source, header, details = generate(
        program,
        arrays,
        tuple(spec["obs_shape"]),
        str(spec.get("head", "discrete")),
        int(spec["n_outputs"]),
        bounds,
        comment,
    )
    path.write_text(source)
    (path.parent / HEADER_FILE).write_text(header)
    details["program"] = [o["op"] for o in program]
    return details
