"""``policy-kd export STUDENT --format c``: the student as one C99 source and header, libm only.

The code is generated from the op program the numpy exporter reads from the network with ``torch.fx``
(:func:`policy_kd.export._numpy_program`), so the two exports compute the same function: the input
standardisation folded into the first linear layer (an MLP) or fused into one ``(x - mean) * (1 / std)`` pass
(a CNN, whose per-pixel statistics cannot be folded into shared convolution weights), then linear/conv2d
layers and activations on two ping-pong buffers on the stack. The weights are ``static const`` arrays
(``float``, or ``int8_t`` with a float scale per output channel under ``--int8``).

Every layer is emitted twice, as C99 loops with constant trip counts over local (unaliased) buffers (a dense
layer keeps up to 32 outputs' sums in local variables; widths zero-padded to a multiple of ``LANES``), and as vector
code (GCC/Clang vector extensions: 8 outputs per value in a dense layer; a small convolution unrolled with
its weights as literals, over runs of 8 adjacent output pixels). A build for AVX uses the vector code; GCC on
baseline x86-64 compiles both, the vector code as an AVX2 copy of ``policy_forward`` picked at run time
(``__builtin_cpu_supports``); anything else, or ``-DPOLICY_PORTABLE``, the loops (see ``VECTOR_TYPES``).
The outputs match the eager student to ~1e-6 and the actions exactly in practice.
The extension module's source (``student_py.c``) is written beside them (:mod:`policy_kd.export_c_ext`).

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
from policy_kd.heads import DISCRETE_HEADS

SOURCE_FILE = "student.c"
HEADER_FILE = "student.h"
#: What the tests compile with; the generated code is warning-free under it.
STRICT_FLAGS = ("-std=c99", "-Wall", "-Werror", "-O2")
HEADS = ("discrete", "gaussian", "squashed_gaussian", "multi_discrete", "deterministic")

#: Dense layers compute this many outputs at a time: widths are zero-padded to a multiple of it, so that with
#: constant trip counts and unaliased local buffers the compiler vectorises the loops at plain -O2.
LANES = 4
#: Outputs summed at once in local variables (8 SSE registers' worth).
BLOCK = 32
#: A convolution with at most this many multiply-adds per output pixel (in x kh x kw x out channels) is
#: unrolled into straight-line code with literal weights (MinAtar students: 4 x 3 x 3 x 16 = 576).
UNROLL_TAPS = 2304
#: Output channels an unrolled convolution sums at once (each input value is loaded once for all of them).
CONV_BLOCK = 8
#: Vector sums an unrolled convolution keeps at once (output channels x runs of pixels; 16 AVX registers).
CONV_SUMS = 6


ARITH = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
ACTIVATIONS = ("relu", "tanh", "elu", "gelu")


def _act_expr(op: dict[str, Any], v: str) -> str:
    """The activation ``op`` applied to the C expression ``v`` (a plain variable: it is repeated)."""
    kind = op["op"]
    if kind == "relu":
        return f"({v} > 0.0f ? {v} : 0.0f)"
    if kind == "tanh":
        return f"tanhf({v})"
    if kind == "elu":
        return f"({v} > 0.0f ? {v} : {_lit(op.get('alpha', 1.0))} * expm1f({v}))"
    if kind == "gelu" and op.get("approximate") == "tanh":
        return f"(0.5f * {v} * (1.0f + tanhf(0.797884561f * ({v} + 0.044715f * {v} * {v} * {v}))))"
    if kind == "gelu":
        return f"({v} * 0.5f * (1.0f + erff({v} * 0.707106781f)))"
    raise PolicyKDError(f"C export does not support the op {kind!r}; use --format numpy or onnx")


#: Declared in a source whose convolution is unrolled (see ``_Codegen._conv2d_unrolled``).
VECTOR_TYPES = """\
/* Vector code (GCC/Clang vector extensions): dense layers sum 8 outputs per value and small convolutions run
   as straight-line code on runs of 8 (or 4) adjacent output pixels ("u" types: may be unaligned). Built for
   AVX (-march=native, -mavx2): used throughout. GCC on baseline x86-64: policy_forward also has an AVX2
   copy, chosen at run time when the CPU has AVX2. Otherwise, or with -DPOLICY_PORTABLE: plain C99 loops. */
#if defined(__GNUC__) || defined(__clang__)
#define POLICY_ALIGN __attribute__((aligned(64))) /* whole cache lines: no vector load straddles two */
#else
#define POLICY_ALIGN
#endif
#if (defined(__GNUC__) || defined(__clang__)) && !defined(POLICY_PORTABLE)
typedef float policy_v8 __attribute__((vector_size(32)));
typedef float policy_v8u __attribute__((vector_size(32), aligned(4)));
typedef float policy_v4 __attribute__((vector_size(16)));
typedef float policy_v4u __attribute__((vector_size(16), aligned(4)));
#if defined(__AVX__)
#define POLICY_AVX 1
#elif defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define POLICY_DISPATCH 1
#endif
#endif

"""

#: int8 weights -> float vectors (AVX2), for the dense layers of an --int8 export; gcc makes scalar code of a
#: ``__builtin_convertvector`` from bytes.
INT8_HELPERS = """\
#define POLICY_AVX2_INT8 1
static inline policy_v8 policy_q8(const int8_t *p)
{
    long long b;
    memcpy(&b, p, 8);
    return (policy_v8)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(b)));
}
static inline policy_v4 policy_q4(const int8_t *p)
{
    int b;
    memcpy(&b, p, 4);
    return (policy_v4)_mm_cvtepi32_ps(_mm_cvtepi8_epi32(_mm_cvtsi32_si128(b)));
}
"""

#: The includes INT8_HELPERS needs, at file scope.
INT8_INCLUDES = (
    """\
#if (defined(POLICY_AVX) && defined(__AVX2__)) || defined(POLICY_DISPATCH)
#include <immintrin.h>
#include <string.h>
#endif
#if defined(POLICY_AVX) && defined(__AVX2__)
"""
    + INT8_HELPERS
    + """#endif

"""
)


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
        #: elementwise constant ops not emitted yet: (C operator, constant), see ``step``
        self.pending: list[tuple[str, np.ndarray]] = []

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def const(self, values: np.ndarray, ctype: str = "float") -> str:
        flat = np.asarray(values).reshape(-1)
        name = f"K{len(self.consts)}"
        items = [_lit(float(v)) for v in flat] if ctype == "float" else [str(int(v)) for v in flat]
        lines = [", ".join(items[i : i + 8]) for i in range(0, len(items), 8)]
        self.consts.append(
            f"static const {ctype} POLICY_ALIGN {name}[{len(items)}] = {{\n    "
            + ",\n    ".join(lines)
            + "\n};\n"
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

    def step(self, op: dict[str, Any], rest: list[dict[str, Any]]) -> int:
        """Emit ``op``; returns how many of the ops after it (``rest``) it also consumed (fused)."""
        kind = op["op"]
        if kind == "float":
            return 0
        if kind == "flatten":
            self.shape = (self.size,)
            return 0
        if kind in ("add", "sub", "mul", "div"):
            # elementwise constants wait for the next op: a permute (a channels-last image) takes them in
            # its own pass, anything else gets one fused loop
            c = self._operand_array(op["value"])
            if kind == "div":  # a multiply by the (float32-rounded) reciprocal: a divide costs ~4x as much,
                # and the result differs by at most 1 ulp (a standardised input: ~1e-7 on the outputs)
                kind, c = "mul", (1.0 / c.astype(np.float64)).astype(np.float32)
            self.pending.append((ARITH[kind], c))
            return 0
        if kind == "permute":
            self._permute(op)
            return 0
        self.flush()
        if kind == "linear":
            self._linear(op)
        elif kind == "conv2d":
            return self._conv2d(op, rest[0] if rest else None)
        else:
            self.elementwise(_act_expr(op, "v"))
        return 0

    def flush(self) -> None:
        """Emit the pending elementwise constant ops as one loop (``((v - m) / s)``, in program order)."""
        if self.pending:
            self.elementwise(self._pending_expr("v", "i"))
            self.pending = []

    def _pending_expr(self, v: str, i: str) -> str:
        """The pending ops applied to ``v``, array constants read at index ``i`` (of the current layout)."""
        expr = v
        for sym, c in self.pending:
            arg = _lit(float(c.reshape(-1)[0])) if c.size == 1 else f"{self.const(c)}[{i}]"
            expr = f"({expr} {sym} {arg})"
        return expr

    def _permute(self, op: dict[str, Any]) -> None:
        """A transpose as nested loops in the input's order (contiguous reads, strided writes, no index
        table), the pending elementwise constants (the standardisation before it) applied in the same pass:
        the reads of the observation and of the constants vectorise, the stores are scattered."""
        axes = [int(a) - 1 for a in op["axes"][1:]]
        new_shape = tuple(self.shape[a] for a in axes)
        dst_strides = np.arange(self.size).reshape(new_shape).strides  # bytes of int64, in output order
        to_dst = {a: dst_strides[k] // 8 for k, a in enumerate(axes)}  # input axis -> output stride
        expr = self._pending_expr("v", "i")
        self.pending = []
        out = self.dst(self.size)
        loops = " ".join(f"for (int i{k} = 0; i{k} < {d}; i{k}++)" for k, d in enumerate(self.shape))
        index = "i0"
        for k in range(1, len(self.shape)):
            index = f"({index}) * {self.shape[k]} + i{k}"
        dst = " + ".join(f"i{k} * {to_dst[k]}" for k in range(len(self.shape)))
        self.emit(
            f"{loops} {{ const int i = {index}; const float v = {self.cur}[i]; {out}[{dst}] = {expr}; }}",
            out,
        )
        self.shape = new_shape

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

    def _conv2d(self, op: dict[str, Any], nxt: dict[str, Any] | None) -> int:
        """A convolution (and the activation after it, fused: returns 1 when it took it)."""
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
        fuse = nxt is not None and nxt["op"] in ACTIVATIONS
        if c * kh * kw * o <= UNROLL_TAPS and sw == 1 and wo >= 4:
            # AVX: straight-line vector code; without AVX (x86-64's baseline SSE2) the loops measured faster
            self.emit("#ifdef POLICY_AVX")
            x = self.cur
            self._conv2d_unrolled(op, w, (c, h, wd), (ho, wo), sh)
            self.emit("#else")
            self.cur = x  # both versions read the same buffer and write the same other one
            self._conv2d_loops(op, w, (c, h, wd), (ho, wo), (sh, sw), guard="#ifndef POLICY_AVX")
            self.emit("#endif")
        else:
            self._conv2d_loops(op, w, (c, h, wd), (ho, wo), (sh, sw))
        self.shape = (o, ho, wo)
        if fuse:  # one vectorised pass over the output (a vector select inside the sums is not C)
            self.elementwise(_act_expr(nxt, "v"))  # type: ignore[arg-type]
        return int(fuse)

    def _conv2d_unrolled(
        self,
        op: dict[str, Any],
        w: np.ndarray,
        in_shape: tuple[int, int, int],
        out_hw: tuple[int, int],
        sh: int,
    ) -> None:
        """A small convolution (row stride 1) as straight-line code with the weights as literals.

        Each output row is computed in runs of ``lanes`` (8, or 4 for narrow rows) adjacent pixels, the last
        run overlapping the one before when the row is not a multiple (it recomputes the same values): the
        taps (c, ki, kj) unrolled, each tap one load of ``lanes`` contiguous inputs shared by CONV_BLOCK
        output channels' sums. With GCC/Clang (``POLICY_VECTOR``) a run is a vector-extension value (one
        AVX or two SSE registers, whichever the target has); other compilers, or ``-DPOLICY_PORTABLE``,
        get the same code as a scalar loop over the run. Auto-vectorising that loop instead gives one
        pointer per tap (spilled to the stack: measured slower than the plain loop version).
        Each sum adds its taps in (c, ki, kj) order, from 0, then scale and bias: the loop version's order."""
        (c, h, wd), (ho, wo) = in_shape, out_hw
        o, kh, kw = int(w.shape[0]), int(w.shape[2]), int(w.shape[3])
        q8 = op.get("scale") is not None
        scale = self.arrays[op["scale"]].reshape(-1) if q8 else None
        bias = self.arrays[op["bias"]].reshape(-1) if op.get("bias") is not None else None
        lanes = 8 if wo >= 8 else 4
        starts = [*range(0, wo - lanes + 1, lanes)]
        if starts[-1] != wo - lanes:
            starts.append(wo - lanes)
        x, y = self.cur, self.dst(o * ho * wo)
        taps = [(ci, ki, kj) for ci in range(c) for ki in range(kh) for kj in range(kw)]
        runs = [(r * sh * wd + q, r * wo + q) for r in range(ho) for q in starts]  # (input, output) offsets
        for o0 in range(0, o, CONV_BLOCK):
            block = range(o0, min(o0 + CONV_BLOCK, o))
            # several runs at once: independent sums, so the adds' latency overlaps (one run's 3-4
            # cycles per tap otherwise bound the loop); a last short group repeats runs (same values)
            group = max(1, min(len(runs), CONV_SUMS // len(block)))
            n_groups = -(-len(runs) // group)
            padded = runs + runs[: n_groups * group - len(runs)]
            sums = ", ".join(f"s{j - o0}_{g} = {{0.0f}}" for j in block for g in range(group))
            lines = [
                f"for (int g = 0; g < {n_groups}; g++) {{",
                f"    static const short xo[{len(padded)}] = {{{', '.join(str(a) for a, _ in padded)}}};",
                f"    static const short yo[{len(padded)}] = {{{', '.join(str(b) for _, b in padded)}}};",
                *(
                    f"    const float *x{g} = {x} + xo[g * {group} + {g}]; float *y{g} = {y} + yo[g * {group} + {g}];"
                    for g in range(group)
                ),
                f"    policy_v{lanes} {', '.join(f'v{g}' for g in range(group))}, {sums};",
            ]
            for ci, ki, kj in taps:
                off = (ci * h + ki) * wd + kj
                loads = " ".join(f"v{g} = *(const policy_v{lanes}u *)(x{g} + {off});" for g in range(group))
                terms = " ".join(
                    f"s{j - o0}_{g} += v{g} * {self._weight_lit(w[j, ci, ki, kj], q8)};"
                    for j in block
                    for g in range(group)
                )
                lines.append(f"    {loads} {terms}")
            for j in block:
                for g in range(group):
                    lines.append(f"    {self._affine(f's{j - o0}_{g}', j, scale, bias)}")
                    lines.append(f"    *(policy_v{lanes}u *)(y{g} + {j * ho * wo}) = s{j - o0}_{g};")
            lines.append("}")
            self.emit("\n".join(lines))
        self.cur = y

    @staticmethod
    def _affine(v: str, j: int, scale: np.ndarray | None, bias: np.ndarray | None) -> str:
        """``v = v * scale[j] + bias[j]`` with literals (a no-op comment when there is neither)."""
        expr = v + (f" * {_lit(float(scale[j]))}" if scale is not None else "")
        expr += f" + {_lit(float(bias[j]))}" if bias is not None else ""
        return f"{v} = {expr};" if expr != v else "/* no bias */"

    @staticmethod
    def _weight_lit(v: float, q8: bool) -> str:
        """A weight as a literal: an int8 weight is the float of its integer (exact), as the loop casts it."""
        return f"{int(v)}.0f" if q8 else _lit(float(v))

    def _conv2d_loops(
        self,
        op: dict[str, Any],
        w: np.ndarray,
        in_shape: tuple[int, int, int],
        out_hw: tuple[int, int],
        stride: tuple[int, int],
        guard: str | None = None,
    ) -> None:
        """A convolution as loops over weight arrays (declared under ``guard`` when the source also holds
        the unrolled version: an unused constant is a warning)."""
        (c, h, wd), (ho, wo), (sh, sw) = in_shape, out_hw, stride
        o, kh, kw = int(w.shape[0]), int(w.shape[2]), int(w.shape[3])
        weights, cast, (scale, bias) = self._layer_consts(op, w, o, o, guard)
        x, y = self.cur, self.dst(o * ho * wo)
        # Output rows accumulate in memory over the taps (c, ki, kj), in that order: a row is a
        # contiguous run the compiler vectorises.
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

    def _operand_array(self, key: str) -> np.ndarray:
        """An elementwise constant: one value, or an array broadcast to the activation's shape."""
        c = np.asarray(self.arrays[key], dtype=np.float32)
        if c.size == 1:
            return c.reshape(1)
        try:
            return np.ascontiguousarray(np.broadcast_to(c, (1, *self.shape)).reshape(self.shape))
        except ValueError:
            raise PolicyKDError(f"C export: a constant of shape {c.shape} on shape {self.shape}") from None

    def _layer_consts(
        self, op: dict[str, Any], w: np.ndarray, channels: int, real: int, guard: str | None = None
    ) -> tuple[str, str, tuple[str | None, str | None]]:
        """Weights (int8 under --int8, then read through a float cast), and per-channel scale and bias
        (zero-padded to ``channels``) as constants."""
        q8 = op.get("scale") is not None
        first = len(self.consts)
        weights = self.const(w, "int8_t" if q8 else "float")
        names: list[str | None] = []
        for key in ("scale", "bias"):
            if op.get(key) is None:
                names.append(None)
                continue
            v = np.zeros(channels, dtype=np.float32)
            v[:real] = self.arrays[op[key]].reshape(-1)
            names.append(self.const(v))
        if guard:
            self.consts[first] = guard + "\n" + self.consts[first]
            self.consts[-1] += "#endif\n"
        return weights, "(float)" if q8 else "", (names[0], names[1])

    def _dense_block(
        self, x: str, y: str, weights: str, cast: str, n_in: int, width: int, o0: int, n: int
    ) -> None:
        """``y[o0 .. o0+n) = x @ W[:, o0 .. o0+n)``, the sums in local variables (registers, not memory: the
        loop then runs at the adders' throughput, not at a store-load round trip per input). Every sum adds
        the inputs in order, as ``x @ W`` does. The stores stay plain (a fused bias stopped gcc from
        vectorising the block: measured 2x slower).

        With AVX (``POLICY_AVX``) the sums are vector-extension values of 8 (and 4) outputs (gcc's
        vectoriser turns the scalar version into a mix of AVX and scalar code there: measured 2x slower),
        and each is two partial sums, of the even and of the odd inputs, added at the end: the loop is then
        bound by the adders' throughput rather than by one add's latency per input (with the reciprocal
        standardisation, 493 -> 473 ns on the MinAtar 4% student; the sums differ from the in-order ones in
        the last bits)."""
        self.emit("#ifdef POLICY_AVX2_INT8" if cast else "#ifdef POLICY_AVX")
        chunks = [(j, 8 if n - j >= 8 else 4) for j in range(0, n, 8)]
        # int8 weights: widened to float vectors by AVX2 (gcc makes scalar code of a convertvector)
        load = "policy_q{l}(w + {j})" if cast else "*(const policy_v{l}u *)(w + {j})"
        wtype = "int8_t" if cast else "float"
        self.emit("{ " + " ".join(f"policy_v{ln} s{j} = {{0.0f}}, t{j} = {{0.0f}};" for j, ln in chunks))
        self.emit(
            f"  for (int i = 0; i + 1 < {n_in}; i += 2) {{ const float xi = {x}[i], xk = {x}[i + 1]; "
            f"const {wtype} *w = {weights} + i * {width} + {o0}, *u = w + {width};"
        )
        self.emit("    " + " ".join(f"s{j} += {load.format(l=ln, j=j)} * xi;" for j, ln in chunks))
        self.emit(
            "    "
            + " ".join(f"t{j} += {load.format(l=ln, j=j).replace('(w +', '(u +')} * xk;" for j, ln in chunks)
        )
        self.emit("  }")
        if n_in % 2:
            self.emit(
                f"  {{ const float xi = {x}[{n_in - 1}]; const {wtype} *w = {weights} + {(n_in - 1) * width + o0};"
            )
            self.emit("    " + " ".join(f"s{j} += {load.format(l=ln, j=j)} * xi;" for j, ln in chunks) + " }")
        self.emit("  " + " ".join(f"*(policy_v{ln}u *)({y} + {o0 + j}) = s{j} + t{j};" for j, ln in chunks))
        self.emit("}")
        self.emit("#else")
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
        self.emit("#endif")


def generate(
    program: list[dict[str, Any]],
    arrays: dict[str, np.ndarray],
    obs_shape: tuple[int, ...],
    head: str,
    n_outputs: int,
    bounds: list[list[float]] | None = None,
    comment: str = "",
    nvec: tuple[int, ...] | None = None,
    native: bool = False,
) -> tuple[str, str, dict[str, Any]]:
    """C source, header and details (sizes, build line) of a student's op program (``nvec``: a
    ``multi_discrete`` head's choices per component; ``native``: the build line targets this machine's CPU)."""
    if head == "multi_discrete" and not nvec:
        raise PolicyKDError("C export of a multi_discrete student needs its nvec; distil the student again")
    if head not in HEADS:
        raise PolicyKDError(
            f"C export supports {', '.join(HEADS)} heads; this student's head is {head!r}; use --format numpy"
        )
    gen = _Codegen(obs_shape, arrays)
    i = 0
    while i < len(program):
        i += 1 + gen.step(program[i], program[i + 1 :])
    gen.flush()
    if gen.size != n_outputs:
        raise PolicyKDError(f"C export: the program ends with {gen.size} values, not {n_outputs} outputs")
    obs_size = int(np.prod(obs_shape))
    build = build_line(native)
    header = _header(obs_shape, head, n_outputs, gen.q8, comment, native, nvec)
    source = _source(gen, head, n_outputs, obs_size, bounds, comment, nvec)
    details = {
        "header": HEADER_FILE,
        "build": build,
        "native": native,
        "int8": gen.q8,
        "weight_bytes": gen.weight_bytes,
        "stack_bytes": 8 * gen.largest,
    }
    return source, header, details


def build_line(native: bool = False) -> str:
    """How to compile ``student.c`` (the flags the runtime uses: :data:`policy_kd.c_runtime.LIBRARY_FLAGS`)."""
    return f"cc {_flags(native)} -c student.c"


def _flags(native: bool) -> str:
    from policy_kd.c_runtime import LIBRARY_FLAGS, NATIVE_FLAGS

    return " ".join(LIBRARY_FLAGS + (NATIVE_FLAGS if native else ()))


def _header(
    obs_shape: tuple[int, ...],
    head: str,
    n_outputs: int,
    q8: bool,
    comment: str,
    native: bool,
    nvec: tuple[int, ...] | None = None,
) -> str:
    """student.h: the build line, the sizes and the entry points' declarations."""
    obs_size = int(np.prod(obs_shape))
    continuous = head not in DISCRETE_HEADS
    act_decl = (
        "void policy_act(const float *obs, float *action)"
        if continuous
        else "int policy_act(const float *obs)"
    )
    act_doc = (
        "action[POLICY_N_OUTPUTS]: the deterministic action, inside the action bounds"
        if continuous
        else "the greedy action (argmax, first of ties)"
    )
    if head == "multi_discrete":  # one argmax per component of the logits laid side by side
        act_decl = "void policy_act(const float *obs, int *action)"
        act_doc = (
            f"action[POLICY_N_COMPONENTS]: each component's greedy choice (argmax of its {list(nvec or ())} "
            "logits, first of ties)"
        )
    # indented as the template's lines, which dedent strips
    components = f"\n        #define POLICY_N_COMPONENTS {len(nvec)}" if nvec else ""
    cpu = (
        "\n         * -march=native: this CPU's instruction set (AVX vector code); may not run on an older CPU."
        if native
        else "\n         * GCC on x86-64 also compiles an AVX2 copy of the network, used when the CPU has AVX2."
    )
    return textwrap.dedent(f"""\
        /* Generated by policy-kd export --format c{" --int8" if q8 else ""}: {comment}
         *
         * Build (C99, no dependency beyond libm):
         *     {build_line(native)}            (then link the object and -lm into your program)
         *     cc {_flags(native)} -o app app.c student.c -lm{cpu}
         * From Python, without ctypes: student_py.c (its comment has the build line).
         *
         * obs: the raw observation ({" x ".join(map(str, obs_shape))}, as the env gives it, as floats, C order);
         * the input standardisation is inside. Reentrant: no state, buffers on the stack.
         */
        #ifndef POLICY_KD_STUDENT_H
        #define POLICY_KD_STUDENT_H

        #define POLICY_OBS_SIZE {obs_size}
        #define POLICY_N_OUTPUTS {n_outputs}
        #define POLICY_HEAD "{head}"{components}

        #ifdef __cplusplus
        extern "C" {{
        #endif

        /* out[POLICY_N_OUTPUTS]: {"the logits (or Q-values)" if not continuous else ("the action scaled to [-1, 1] (tanh)" if head == "deterministic" else "the action mean (pre-squash for squashed_gaussian)")} */
        void policy_forward(const float *obs, float *out);
        /* {act_doc} */
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
    nvec: tuple[int, ...] | None = None,
) -> str:
    """student.c: the constants, ``policy_forward`` (the generated body), its batch loop and ``policy_act``."""
    q8 = gen.q8
    body = "\n    ".join(gen.body)  # put in after dedent: its later lines carry no template indent
    forward = textwrap.dedent(f"""\
        {{
            float a[{gen.largest}], b[{gen.largest}];
            (void)a; (void)b;
            @BODY@
            for (int i = 0; i < {n_outputs}; i++) out[i] = {gen.cur}[i];
        }}
        """).replace("@BODY@", body)
    q8_on, q8_off = (INT8_HELPERS, "#undef POLICY_AVX2_INT8\n") if q8 else ("", "")
    parts = [
        f"/* Generated by policy-kd export --format c: {comment} (see student.h) */\n",
        "#include <math.h>\n",
        "#include <stdint.h>\n" if q8 else "",
        '#include "student.h"\n\n',
        VECTOR_TYPES,
        INT8_INCLUDES if q8 else "",
        *gen.consts,
        "\n#ifdef POLICY_DISPATCH\n",
        "/* this CPU's AVX2 copy (see above): the same function, the vector code switched on */\n",
        '#pragma GCC push_options\n#pragma GCC target("avx2")\n#define POLICY_AVX 1\n',
        q8_on,
        "static void policy_forward_avx2(const float *obs, float *out)\n",
        forward,
        "#undef POLICY_AVX\n",
        q8_off,
        "#pragma GCC pop_options\n#endif\n\n",
        "static void policy_forward_any(const float *obs, float *out)\n",
        forward,
        "\n",
        textwrap.dedent(f"""\
            void policy_forward(const float *obs, float *out)
            {{
            #ifdef POLICY_DISPATCH
                if (__builtin_cpu_supports("avx2")) {{
                    policy_forward_avx2(obs, out);
                    return;
                }}
            #endif
                policy_forward_any(obs, out);
            }}

            void policy_forward_batch(const float *obs, long n, float *out)
            {{
                long r;
                for (r = 0; r < n; r++) policy_forward(obs + r * {obs_size}, out + r * {n_outputs});
            }}

            """),
        _act_source(head, n_outputs, bounds, gen, nvec),
    ]
    return "".join(parts)


def _act_source(
    head: str, n: int, bounds: list[list[float]] | None, gen: _Codegen, nvec: tuple[int, ...] | None = None
) -> str:
    """``policy_act``: the argmax (discrete), each component's argmax over its block of logits
    (multi_discrete), or the deterministic action inside the bounds (Gaussian heads)."""
    if head == "multi_discrete":
        assert nvec is not None
        sizes = ", ".join(map(str, nvec))
        return textwrap.dedent(f"""\
            static const int policy_nvec[{len(nvec)}] = {{{sizes}}};

            void policy_act(const float *obs, int *action)
            {{
                float out[{n}];
                int c, i, start = 0;
                policy_forward(obs, out);
                for (c = 0; c < {len(nvec)}; c++) {{
                    int best = 0;
                    for (i = 1; i < policy_nvec[c]; i++)
                        if (out[start + i] > out[start + best]) best = i;
                    action[c] = best;
                    start += policy_nvec[c];
                }}
            }}
            """)
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


def write_c(student: Any, path: Path, *, int8: bool = False, native: bool = False) -> dict[str, Any]:
    """Write ``student`` as ``path`` (``student.c``), ``student.h`` and the extension module's
    ``student_py.c`` beside it; return export details (``native``: built with -march=native)."""
    from policy_kd.c_runtime import find_compiler
    from policy_kd.export import _numpy_program
    from policy_kd.export_c_ext import EXT_SOURCE, extension_source

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
        tuple(spec.get("nvec", ())) or None,
        native,
    )
    path.write_text(source)
    (path.parent / HEADER_FILE).write_text(header)
    (path.parent / EXT_SOURCE).write_text(extension_source(str(spec.get("head", "discrete"))))
    details["program"] = [o["op"] for o in program]
    return details
