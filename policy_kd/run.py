"""Run folders: refuse to overwrite without ``--force``, lock them while a job writes, record how a result
was made, write atomically, stop cleanly on SIGINT/SIGTERM and report a full disk in one line."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import errno
import fcntl
import functools
import io
import json
import os
import platform
import shlex
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import IO, Any, TypeVar

import yaml

from policy_kd.config import config_from_mapping, to_dict
from policy_kd.errors import PolicyKDError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: The command line a job was started with; the CLI sets it so in-process calls record their own argv.
COMMAND_LINE: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("COMMAND_LINE", default=None)

_VERSIONED = (
    "policy-kd",
    "torch",
    "gymnasium",
    "stable-baselines3",
    "numpy",
    "sb3-contrib",
    "minatar",
    "ale-py",
)

_ISA_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def prepare_out_dir(
    path: str | Path | None,
    *,
    force: bool,
    what: str = "output folder",
    inputs: tuple[str | Path | None, ...] = (),
) -> Path:
    """Lock and create an empty output folder; an existing non-empty one is refused unless ``force``.

    ``inputs`` are the job's input paths: an output folder that is, holds or sits inside one is refused
    before anything is deleted. The folder stays locked (see :func:`lock_out_dir`) until the job ends.
    """
    if path is None or str(path) == "":
        raise PolicyKDError(f"no {what} given; pass --out DIR")
    out = Path(path)
    check_not_inside(out, *inputs)
    if out.is_symlink() and (force or not out.exists()):
        # --force deletes what the folder holds: never through a link, whose target may be anything
        raise PolicyKDError(
            f"{what} {out} is a symbolic link (to {os.readlink(out)}); pass the folder itself as --out, "
            "or another --out"
        )
    if out.exists() and not out.is_dir():
        raise PolicyKDError(f"{what} {out} exists and is a file; choose another --out")
    # The lock comes before the emptiness check and the clearing: two jobs started together cannot both
    # see "empty" or both clear it; the loser is refused before it has touched anything.
    lock_out_dir(out, what=what, create=True)
    if any(out.iterdir()):
        if not force:
            raise PolicyKDError(
                f"{what} {out} already exists; choose another --out or pass --force to replace it"
            )
        _clear(out)
    return out


# ------------------------------------------------------------------------------------------------- locks
#
# An output folder is locked with flock(2) on the folder itself (an O_DIRECTORY descriptor):
# - nothing is written outside the folder, and no lock file inside it can be deleted or shipped with it;
# - the folder is created (empty) before it is locked, so two jobs on a new folder race for one inode;
# - ``--force`` empties the folder instead of deleting it: a new folder would be a new inode, which a
#   second job could lock while the first still holds the old one;
# - flock, not a PID file: the kernel drops the lock when the holder dies (kill -9 included), so a crash
#   never leaves a stale lock to clear by hand; the holder's PID is read from /proc/locks (Linux).

_LOCK_SCOPE: contextvars.ContextVar[list[tuple[int, Path]] | None] = contextvars.ContextVar(
    "_LOCK_SCOPE", default=None
)
_UNSCOPED_LOCKS: list[tuple[int, Path]] = []  # taken outside any job: held until the process exits


def lock_out_dir(out: str | Path, *, what: str = "output folder", create: bool = False) -> None:
    """Take the exclusive lock on folder ``out`` for the running job, or refuse in one line naming the
    holder's PID. ``create``: make the folder first (a new output); otherwise a missing folder is left to
    the caller's own check (there is nothing to protect, and a refused ``--resume`` creates nothing)."""
    out = Path(out)
    if not create and not out.is_dir():
        return
    try:
        if create:
            out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    except FileExistsError:
        raise PolicyKDError(f"{what} {out} exists and is not a folder; choose another --out") from None
    except NotADirectoryError:
        raise PolicyKDError(f"{what} {out}: a part of the path is a file; choose another --out") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = holder_pid(fd)
        os.close(fd)
        raise PolicyKDError(
            f"{what} {out} is in use by another policy-kd job (PID {holder}); wait for it to finish "
            "or stop it, or choose another --out"
        ) from None
    held = _LOCK_SCOPE.get()
    (held if held is not None else _UNSCOPED_LOCKS).append((fd, out))


def holder_pid(fd: int) -> str:
    """The PID holding a flock on the file open as ``fd``, from /proc/locks ("unknown" elsewhere)."""
    st = os.fstat(fd)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return "unknown"
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 12345 fd:01:123456 0 EOF"; blocked waiters are marked with "->"
        parts = line.split()
        if "->" not in parts and "FLOCK" in parts and len(parts) >= 6 and parts[5] == key:
            return parts[4]
    return "unknown"


def _clear(out: Path) -> None:
    """Empty ``out`` (``--force``), keeping the folder itself: its inode carries the lock."""
    for child in out.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def quiet_no_space_in_threads(args: threading.ExceptHookArgs) -> None:
    """``threading.excepthook`` for the CLI: a background writer (TensorBoard's) that hits a full disk dies
    without a traceback; the foreground gets its error on the next write and the job reports it in one line."""
    if isinstance(args.exc_value, OSError) and args.exc_value.errno in NO_SPACE:
        return
    threading.__excepthook__(args)


def _unlock(fd: int) -> None:
    # LOCK_UN, not just close: a forked child (a vec env worker) may share the open file and outlive us
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
"""Errors of a write the file system could not take: full disk, quota, file size limit."""


def job(*, resumable: bool) -> Callable[[F], F]:
    """Decorate a job: the output folders it locks are released when it returns or fails, and a full disk
    becomes one line naming the folder and the fix (``resumable``: whether ``--resume`` continues it)."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            held: list[tuple[int, Path]] = []
            token = _LOCK_SCOPE.set(held)
            try:
                # a job that can resume stops at its next checkpoint; the others stop at once
                with deferred_interrupts() if resumable else contextlib.nullcontext():
                    return fn(*args, **kwargs)
            except OSError as exc:
                if exc.errno not in NO_SPACE:
                    raise
                where = held[0][1] if held else Path(exc.filename or ".").parent
                fix = "--resume to continue (or --force to start over)" if resumable else "--force"
                what = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
                raise PolicyKDError(
                    f"no space left writing {where} ({what}); free disk space, then run it again with {fix}"
                ) from None
            finally:
                _LOCK_SCOPE.reset(token)
                for fd, _ in reversed(held):
                    _unlock(fd)

        return run  # type: ignore[return-value]

    return wrap


# ---------------------------------------------------------------------------------------- interruptions


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised where the job can stop cleanly; the CLI exits with ``128 + signum``."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message)
        self.signum, self.message = signum, message

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


_STOP: list[int] = []  # signals received inside a deferring block, not yet acted on
_DEFER_DEPTH = [0]
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def interrupted_line(exc: KeyboardInterrupt) -> tuple[str, int]:
    """What a job's front end prints when ``exc`` stopped it, and its exit status: ``interrupted by SIGTERM;
    <what was kept, how to resume>`` and ``128 + signum`` (a bare KeyboardInterrupt: 130)."""
    if isinstance(exc, Interrupted):
        return (
            f"interrupted by {exc.signal_name}; {exc.message or 'finished outputs were kept'}",
            exc.exit_code,
        )
    return "interrupted; finished outputs were kept", 130


def raise_interrupted(signum: int, _frame: Any = None) -> None:
    """A signal handler: stop now (what Ctrl-C does by default), for SIGTERM as for SIGINT."""
    raise Interrupted(signum)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Inside the block SIGINT/SIGTERM only ask the job to stop: it calls :func:`check_interrupted` where
    it can commit or checkpoint (between steps). A second signal stops at once. Signal handlers live in
    the main thread: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request(signum: int, _frame: Any) -> None:
        if _STOP:
            raise Interrupted(signum)
        _STOP.append(signum)
        if sys.stderr.isatty():  # someone pressed Ctrl-C and waits; a batch log keeps its one final line
            name = signal.Signals(signum).name
            print(f"policy-kd: {name}: stopping at the next checkpoint (again to stop now)", file=sys.stderr)

    previous = {s: signal.signal(s, request) for s in _SIGNALS}
    _DEFER_DEPTH[0] += 1
    try:
        yield
    finally:
        _DEFER_DEPTH[0] -= 1
        for s, handler in previous.items():
            signal.signal(s, handler)
        if _DEFER_DEPTH[0] == 0:
            # the job ended (finished, or failed) before it reached a checkpoint: nothing left to stop
            _STOP.clear()


def check_interrupted(on_stop: Callable[[], str] | None = None) -> None:
    """Raise :class:`Interrupted` if a signal arrived; ``on_stop`` first saves what can be saved and
    returns the one line to print (what was kept, how to resume)."""
    if not _STOP:
        return
    signum = _STOP.pop()
    _STOP.clear()
    raise Interrupted(signum, on_stop() if on_stop else "")


def check_not_inside(out: Path, *inputs: str | Path | None) -> None:
    """Refuse an output folder that would delete or hold one of the job's inputs."""
    o = out.resolve()
    for item in inputs:
        if item is None:
            continue
        p = Path(item).resolve()
        if p == o or o in p.parents or p in o.parents:
            raise PolicyKDError(f"--out {out} would overwrite the input {item}; choose another --out")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` so that readers see the old file or the new one, never half of it."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it and rename it over ``path``.

    A kill leaves the old file whole; a failure (a full disk included) removes the temporary file, so no
    ``*.tmp`` is ever left behind, and raises the ``OSError``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # a failed write() names no file: say which one
        raise


def atomic_save(path: Path, save: Callable[[IO[bytes]], Any]) -> None:
    """Atomically write what ``save(file)`` writes (``torch.save``, SB3's ``model.save``, pickle).

    It is serialised in memory first: ``torch.save`` into a file swallows the write error of a full disk
    into a RuntimeError, and the files saved this way (students, checkpoints, teacher zips) are small.
    """
    buf = io.BytesIO()
    save(buf)
    atomic_write_bytes(path, buf.getvalue())


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    """Package versions and the machine (CPU model, the kernel set torch dispatches to).

    The machine is kept because "same seed, same result" is only promised on the same CPU build: torch
    may pick other float kernels elsewhere, and a long DQN run compounds the last-bit differences.
    """
    import torch

    out = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "torch_cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
    }
    # the overrides that pin the CPU kernels (how an AVX-512 machine reproduces an AVX2 machine's runs)
    for var in _ISA_VARS:
        if var in os.environ:
            out[var] = os.environ[var]
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` so that a kill or a full disk leaves the previous file whole (checkpoints are read on
    --resume)."""
    import torch

    atomic_save(path, lambda f: torch.save(obj, f))


def write_run_config(out: Path, config: Any, *, job: str) -> None:
    """The resolved config in ``out/config.yaml``: what ``read_run_config`` resumes from."""
    atomic_write_text(out / "config.yaml", yaml.safe_dump({"job": job, **to_dict(config)}, sort_keys=False))


def read_run_config(cls: type[T], out: Path, *, progress: bool) -> T:
    """The config an interrupted run in ``out`` was started with, set to resume it."""
    try:
        saved = yaml.safe_load((out / "config.yaml").read_text())
        saved.pop("job", None)
    except (OSError, yaml.YAMLError, AttributeError) as exc:
        raise PolicyKDError(f"{out}/config.yaml is unreadable ({exc}); start over with --force") from None
    cfg = config_from_mapping(cls, saved, source=f"{out}/config.yaml")
    return dataclasses.replace(cfg, resume=True, progress=progress, force=False)  # type: ignore[type-var]


def write_run_info(out: Path, config: Any, *, job: str) -> None:
    """Write the resolved config, the command line and package versions beside a job's outputs."""
    write_run_config(out, config, job=job)
    argv = COMMAND_LINE.get() or [Path(sys.argv[0]).name, *sys.argv[1:]]
    atomic_write_text(out / "command.txt", shlex.join(argv) + "\n")
    write_json(out / "versions.json", versions())
