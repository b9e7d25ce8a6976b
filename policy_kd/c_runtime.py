"""Run a C export from Python: compile ``student.c`` with the system compiler and call it, so ``evaluate``
plays (and ``export`` checks) the compiled program itself.

:class:`CPolicy` builds the export's CPython extension module (:mod:`policy_kd.export_c_ext`: ~0.1 µs a call)
and falls back to a shared library called through ctypes (~1 µs a call), printing why once, when the
extension cannot be built (no Python headers, say). Everything is built in a temporary folder (the export
folder is never written to) and cached per process by the sources' hash. :func:`c_loop_latency` times
``policy_forward`` in a tight C loop, without Python.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from policy_kd.errors import PolicyKDError

_LIBS: dict[str, ctypes.CDLL] = {}
#: Fallback reasons already printed (once per process each).
_REPORTED: set[str] = set()

#: How the runtime builds a C export: the header's portable build line (C99 keeps the compiler from fusing
#: a multiply and an add, so every build rounds alike, as the eager student does).
LIBRARY_FLAGS = ("-std=c99", "-O2")
#: The extension: the Python headers need the compiler's default C dialect; no fused multiply-adds either.
EXTENSION_FLAGS = ("-O2", "-ffp-contract=off")
#: Added by ``export --native``: this machine's instruction set (AVX...), not portable to older CPUs.
NATIVE_FLAGS = ("-march=native",)
BINDINGS = ("auto", "extension", "ctypes")


def find_compiler() -> str:
    """``$CC``, else ``cc``, ``gcc`` or ``clang`` on PATH."""
    cc = os.environ.get("CC") or next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    if not cc or not shutil.which(cc.split()[0]):
        raise PolicyKDError(
            "no C compiler found (tried $CC, cc, gcc, clang); install one (e.g. apt-get install gcc) or set CC, "
            "or use --format numpy"
        )
    return cc


def compile_c(
    sources: list[Path], out: Path, flags: tuple[str, ...] = ("-std=c99", "-O2"), *, shared: bool
) -> Path:
    """Compile ``sources`` into ``out`` (a shared library or an executable); one-line error on failure."""
    cmd = [*find_compiler().split(), *flags, *(["-shared", "-fPIC"] if shared else []), "-o", str(out)]
    cmd += [str(s) for s in sources] + ["-lm"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PolicyKDError(f"running the C compiler failed ({exc}); set CC to a working compiler") from None
    if proc.returncode != 0:
        first = next((ln for ln in proc.stderr.splitlines() if "error" in ln), proc.stderr.strip()[:200])
        raise PolicyKDError(f"compiling {sources[0].name} failed: {first}; export the student again")
    return out


def load_library(source: Path, flags: tuple[str, ...] = LIBRARY_FLAGS) -> ctypes.CDLL:
    """The shared library of a C export's ``student.c`` (compiled once per process per source and flags)."""
    key = hashlib.sha256(
        source.read_bytes() + (source.parent / "student.h").read_bytes() + repr(flags).encode()
    ).hexdigest()
    if key not in _LIBS:
        with tempfile.TemporaryDirectory(prefix="policy_kd_c_") as tmp:
            so = compile_c([source], Path(tmp) / "student.so", flags, shared=True)
            lib = ctypes.CDLL(str(so))  # stays mapped after the file is removed
        f = ctypes.c_void_p
        lib.policy_forward.argtypes = [f, f]
        lib.policy_forward.restype = None
        lib.policy_forward_batch.argtypes = [f, ctypes.c_long, f]
        lib.policy_forward_batch.restype = None
        _LIBS[key] = lib
    return _LIBS[key]


class CPolicy:
    """``forward(obs (batch, *obs_shape)) -> (batch, n_outputs)`` float32 through the compiled student.

    ``binding``: ``auto`` (the extension module, else ctypes with the reason printed once), ``extension``
    or ``ctypes`` (either one, or a one-line error). ``native``: built with :data:`NATIVE_FLAGS` (an
    ``export --native`` export). ``self.binding`` says which one runs; ``self.act(obs)`` is the
    extension's ``act`` (the action of one observation) when it runs."""

    def __init__(
        self,
        source: Path,
        obs_shape: tuple[int, ...],
        n_outputs: int,
        *,
        head: str = "discrete",
        native: bool = False,
        binding: str = "auto",
    ):
        if binding not in BINDINGS:
            raise PolicyKDError(f"binding {binding!r}: choose one of {', '.join(BINDINGS)}")
        self.obs_size, self.n_outputs = int(np.prod(obs_shape)), n_outputs
        extra = NATIVE_FLAGS if native else ()
        self.ext: Any = None
        if binding != "ctypes":
            from policy_kd.export_c_ext import build_extension

            try:
                self.ext = build_extension(source, head, EXTENSION_FLAGS + extra)
            except PolicyKDError as exc:
                if binding == "extension":
                    raise
                reason = str(exc)
                if reason not in _REPORTED:
                    _REPORTED.add(reason)
                    print(
                        f"policy-kd: the C student runs through ctypes (~1 µs a call): {reason}",
                        file=sys.stderr,
                    )
        self.binding = "extension" if self.ext is not None else "ctypes"
        if self.ext is not None:
            self.act = self.ext.act
            self._ext_forward = self.ext.forward
            return
        self.lib = load_library(source, LIBRARY_FLAGS + extra)
        # batch 1 reuses two fixed buffers, so a call is one copy in, the foreign call with two ready
        # pointers, one copy out (~1 µs of Python; the C itself is the tight-loop figure)
        self._in = np.zeros(self.obs_size, dtype=np.float32)
        self._out = np.zeros((1, n_outputs), dtype=np.float32)
        self._one = self.lib.policy_forward
        self._ptrs = (self._in.ctypes.data, self._out.ctypes.data)

    def forward(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs)
        n = len(obs)
        if self.ext is not None:
            out = np.empty((n, self.n_outputs), dtype=np.float32)
            try:
                self._ext_forward(obs, out)
            except (BufferError, TypeError, ValueError):  # not C-contiguous, not numbers, or a wrong size
                try:
                    self._ext_forward(np.ascontiguousarray(obs, dtype=np.float32), out)
                except ValueError as exc:
                    raise PolicyKDError(str(exc)) from None
            return out
        if obs.size != n * self.obs_size:
            raise PolicyKDError(
                f"observations of {obs.size // max(n, 1)} values a row; this C student takes {self.obs_size}"
            )
        if n == 1:
            self._in[...] = obs.reshape(-1)  # converts uint8 images too
            self._one(*self._ptrs)
            return self._out.copy()
        x = np.ascontiguousarray(obs, dtype=np.float32).reshape(n, -1)
        out = np.empty((n, self.n_outputs), dtype=np.float32)
        self.lib.policy_forward_batch(x.ctypes.data, n, out.ctypes.data)
        return out

    __call__ = forward


_BENCH = r"""
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "student.h"

#define BATCHES 301
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }

int main(int argc, char **argv)
{
    static float obs[POLICY_OBS_SIZE], out[POLICY_N_OUTPUTS];
    static double per_call[BATCHES];
    volatile float sink = 0.0f;
    long calls, k;
    int i, batch;
    FILE *f;
    if (argc < 3) return 2;  /* usage: bench CALLS OBS_FILE */
    calls = atol(argv[1]);
    f = fopen(argv[2], "rb");
    if (!f || fread(obs, sizeof(float), POLICY_OBS_SIZE, f) != POLICY_OBS_SIZE) return 2;
    fclose(f);
    for (k = 0; k < calls; k++) policy_forward(obs, out);  /* warm-up */
    for (batch = 0; batch < BATCHES; batch++) {
        double t0 = now();
        for (k = 0; k < calls; k++) {
            policy_forward(obs, out);
            sink += out[0];
            obs[k % POLICY_OBS_SIZE] += 0.0f * out[0];  /* a dependency: no call hoisted out of the loop */
        }
        per_call[batch] = (now() - t0) / calls;
    }
    for (i = 0; i < POLICY_N_OUTPUTS; i++) sink += out[i];
    qsort(per_call, BATCHES, sizeof(double), cmp);
    printf("%.3f\n", per_call[BATCHES / 2] * 1e9);  /* the median batch: robust to a busy machine */
    return 0;
}
"""


def c_loop_latency(
    source: Path, obs: np.ndarray, iters: int = 100, flags: tuple[str, ...] = LIBRARY_FLAGS
) -> float:
    """Nanoseconds per ``policy_forward`` call on ``obs`` (one observation) in a tight C loop: the median
    over 301 batches of ``iters`` back-to-back calls.

    The harness is a separate translation unit, so the compiler cannot inline or hoist the call."""
    with tempfile.TemporaryDirectory(prefix="policy_kd_cbench_") as tmp:
        t = Path(tmp)
        (t / "bench.c").write_text(_BENCH)
        shutil.copy(source, t / "student.c")
        shutil.copy(source.parent / "student.h", t / "student.h")
        np.asarray(obs, dtype=np.float32).reshape(-1).tofile(t / "obs.bin")
        exe = compile_c([t / "bench.c", t / "student.c"], t / "bench", flags, shared=False)
        proc = subprocess.run([str(exe), str(iters), str(t / "obs.bin")], capture_output=True, text=True)
        if proc.returncode != 0:
            raise PolicyKDError(f"the C latency harness failed (exit {proc.returncode})")
        return float(proc.stdout.strip())
