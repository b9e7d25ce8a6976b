"""Run one task's experiment grid through the library's sweep: teacher -> buffer -> students -> evaluation.

    python experiments/grid.py experiments/configs/cartpole_dqn.yaml [--only teacher,buffer,distill,eval,dagger]
                                                                     [--jobs 2] [--backend ray] [--no-vectorised]

The grid is ``policy-kd sweep`` (``policy_kd.sweep``; its YAML is the sweep's, docs/sweep.md) with this
repository's layout: runs go under ``experiments/runs/<task>/`` (not committed) and the results into
``experiments/results/<task>.json`` (committed) as each evaluation lands; ``experiments/tables.py`` turns
them into the tables and plots of ``experiments/README.md``. Every stage skips what is finished and resumes
what was interrupted, so re-running the same command after a kill continues the grid; a run filed in the
committed results is never redone.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from policy_kd import sweep
from policy_kd.backends import BACKENDS, Backend, make_backend
from policy_kd.config import load_yaml_mapping
from policy_kd.errors import PolicyKDError
from policy_kd.run import interrupted_line, raise_interrupted
from policy_kd.sweep import STAGES, Sweep, log
from policy_kd.sweep_config import SweepConfig

ROOT = Path(__file__).resolve().parent


class Grid(Sweep):
    """A sweep in this repository's layout: runs in ``experiments/runs/<task>/``, results in
    ``experiments/results/<task>.json``."""

    def __init__(self, raw: dict[str, Any], *, backend: Backend | None = None, vectorised: bool = True):
        cfg = SweepConfig.from_mapping(raw, source=f"grid config of {raw.get('task')}")
        results = ROOT / "results" / f"{cfg.task}.json"
        super().__init__(
            cfg,
            root=ROOT / "runs" / cfg.task,
            results=results,
            raw=raw,
            backend=backend,
            vectorised=vectorised,
        )

    @property
    def runs(self) -> Path:
        return self.root


def Results(name: str, **fields: Any) -> sweep.Results:  # the class it was, for multitask.py
    """``experiments/results/<name>.json``, read if it exists."""
    return sweep.Results(ROOT / "results" / f"{name}.json", task=name, **fields)


def grid(
    config: Path,
    *,
    stages: list[str],
    jobs: int = 1,
    backend: str = "local",
    address: str | None = None,
    vectorised: bool = True,
) -> Path:
    """Run ``config``'s grid in this repository's layout; return its results JSON."""
    raw = load_yaml_mapping(config, what="grid config")
    SweepConfig.from_mapping(raw, source=str(config))  # errors name the file
    runner = make_backend(backend, jobs=jobs, address=address)
    try:
        g = Grid(raw, backend=runner, vectorised=vectorised)
        g.run(stages)
    finally:
        runner.close()
    return g.store.path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--only", default=",".join(STAGES), help="comma-separated stages to run")
    ap.add_argument(
        "--jobs", type=int, default=1, help="tasks at once (local processes, or a local Ray's CPUs)"
    )
    ap.add_argument("--backend", default="local", choices=BACKENDS, help="where tasks run")
    ap.add_argument("--address", default=None, help="Ray cluster address (--backend ray)")
    ap.add_argument("--no-vectorised", action="store_true", help="train students one by one, not stacked")
    args = ap.parse_args()
    # SIGTERM stops the grid as Ctrl-C does (the stage running checkpoints first), with one line, as the CLI
    signal.signal(signal.SIGTERM, raise_interrupted)
    try:
        path = grid(
            args.config,
            stages=args.only.split(","),
            jobs=args.jobs,
            backend=args.backend,
            address=args.address,
            vectorised=not args.no_vectorised,
        )
    except PolicyKDError as exc:
        print(f"grid.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        line, code = interrupted_line(exc)
        print(f"grid.py: {line}; the same command continues the grid", file=sys.stderr)
        return code
    log(f"done; results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
