"""Run folders: refuse to overwrite without ``--force``, record how a result was made, write atomically."""

from __future__ import annotations

import contextvars
import dataclasses
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import yaml

from policy_kd.config import config_from_mapping, to_dict
from policy_kd.errors import PolicyKDError

T = TypeVar("T")

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
    """Create an empty output folder; an existing non-empty one is refused unless ``force``.

    ``inputs`` are the job's input paths: an output folder that is, holds or sits inside one is refused
    before anything is deleted.
    """
    if path is None or str(path) == "":
        raise PolicyKDError(f"no {what} given; pass --out DIR")
    out = Path(path)
    check_not_inside(out, *inputs)
    if out.exists() and not out.is_dir():
        raise PolicyKDError(f"{what} {out} exists and is a file; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise PolicyKDError(
                f"{what} {out} already exists; choose another --out or pass --force to replace it"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    """``torch.save`` so that a kill leaves the previous file whole (checkpoints are read on --resume)."""
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


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
