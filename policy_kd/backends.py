"""Where a sweep's (or a sharded record's) tasks run: in this process, in local processes, or on Ray.

A *task* is a module-level function called with plain (picklable) arguments; it is idempotent: it skips what
is finished and resumes what was interrupted from its checkpoint on disk, so running it twice (a retry after
a lost worker) costs time, not results. The driver submits tasks, asks for their results in the order it
files them, and alone writes the results file.

- :class:`Sequential` (``--backend local``, ``--jobs 1``): each task runs in this process when its result is
  first asked for, so a sweep interleaves training and evaluation size by size.
- :class:`Processes` (``--backend local --jobs N``): N spawned processes on this machine.
- :class:`RayBackend` (``--backend ray``): Ray tasks with declared resources (one CPU each, GPUs if asked)
  and ``max_retries``, on a local Ray instance or the cluster at ``--address``. Ray is imported only here.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from policy_kd.errors import PolicyKDError

BACKENDS = ("local", "ray")


class Backend(Protocol):
    """Runs tasks; ``result`` returns a task's value (or raises its error)."""

    parallel: bool
    """Whether tasks overlap in time (then a stage's time is its wall time, not a sum)."""

    def submit(self, fn: Callable[..., Any], *args: Any, after: Sequence[Any] = (), gpus: float = 0.0) -> Any:
        """Start ``fn(*args)`` once the tasks ``after`` have finished; return a handle for :meth:`result`."""
        ...

    def result(self, handle: Any) -> Any: ...

    def close(self) -> None: ...


@dataclass
class _Lazy:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    after: Sequence[Any]
    done: bool = False
    value: Any = None


class Sequential:
    """Tasks run one at a time in this process, each when its result (or a dependant's) is first asked for."""

    parallel = False

    def submit(
        self, fn: Callable[..., Any], *args: Any, after: Sequence[Any] = (), gpus: float = 0.0
    ) -> _Lazy:
        return _Lazy(fn, args, after)

    def result(self, handle: _Lazy) -> Any:
        if not handle.done:
            for dep in handle.after:
                self.result(dep)
            handle.value, handle.done = handle.fn(*handle.args), True
        return handle.value

    def close(self) -> None:
        pass


class Processes:
    """Up to ``jobs`` tasks at once, each in a spawned process on this machine."""

    parallel = True

    def __init__(self, jobs: int):
        # spawn, not fork: a forked child inherits torch's thread pools and locks mid-state
        self.pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))

    def submit(
        self, fn: Callable[..., Any], *args: Any, after: Sequence[Any] = (), gpus: float = 0.0
    ) -> Future:
        for dep in after:  # the pool cannot chain tasks: wait here (the others keep running)
            dep.result()
        return self.pool.submit(fn, *args)

    def result(self, handle: Future) -> Any:
        return handle.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _after(fn: Callable[..., Any], args: tuple[Any, ...], *deps: Any) -> Any:
    """Ray task body: ``deps`` are the results of the tasks this one waits for (Ray resolves them first)."""
    del deps
    return fn(*args)


@dataclass
class RayBackend:
    """Ray tasks: one CPU each (and ``gpus`` when a submit asks), retried up to ``max_retries`` times when
    their worker dies; connects to ``address`` or starts a local Ray with ``jobs`` CPUs."""

    address: str | None = None
    jobs: int | None = None
    max_retries: int = 3
    parallel: bool = True
    _started: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        ray = import_ray()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if self.address is None:
                kwargs["num_cpus"] = self.jobs
            ray.init(address=self.address, **kwargs)
            self._started = True
        self._ray = ray

    def submit(self, fn: Callable[..., Any], *args: Any, after: Sequence[Any] = (), gpus: float = 0.0) -> Any:
        remote = self._ray.remote(_after).options(
            name=fn.__name__,  # the worker's process title (ray::NAME) and the dashboard's task name
            num_cpus=1,
            num_gpus=gpus,
            max_retries=self.max_retries,  # a lost worker's task runs again and resumes from its checkpoint
            retry_exceptions=False,  # an error in the task (bad input) is not retried: it would fail again
        )
        return remote.remote(fn, args, *after)

    def result(self, handle: Any) -> Any:
        from ray.exceptions import RayTaskError

        try:
            return self._ray.get(handle)
        except RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, PolicyKDError):  # bad input found in the task: one line, as locally
                raise PolicyKDError(str(cause)) from None
            raise

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()


def import_ray() -> Any:
    """Ray, or a one-line error naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise PolicyKDError(
            "--backend ray needs Ray: pip install 'policy-kd[ray]' (or use --backend local)"
        ) from None
    return ray


def make_backend(backend: str, *, jobs: int = 1, address: str | None = None, max_retries: int = 3) -> Backend:
    """The backend named ``backend`` (local or ray), checked."""
    if backend not in BACKENDS:
        raise PolicyKDError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if jobs < 1:
        raise PolicyKDError(f"--jobs must be >= 1, got {jobs}")
    if max_retries < 0:
        raise PolicyKDError(f"--max-retries must be >= 0, got {max_retries}")
    if backend == "ray":
        return RayBackend(address=address, jobs=jobs, max_retries=max_retries)
    if address is not None:
        raise PolicyKDError("--address names a Ray cluster; pass --backend ray with it")
    return Sequential() if jobs == 1 else Processes(jobs)
