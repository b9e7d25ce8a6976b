"""Typed job configs from the command line and YAML files.

Each job has one frozen dataclass with a docstring per field (the docstrings are the ``--help`` text,
through tyro). ``--config FILE`` loads a YAML mapping into the same dataclass first; unknown keys are
rejected, nothing in a YAML file is evaluated, and command-line options override the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import tyro
import yaml

from policy_kd.errors import PolicyKDError

C = TypeVar("C")


def load_yaml_mapping(path: str | Path, *, what: str = "config file") -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; errors name the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise PolicyKDError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PolicyKDError(f"{what} {path} is not valid YAML ({first}); fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PolicyKDError(f"{what} {path} must hold a mapping of option: value, not {type(data).__name__}")
    return data


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert YAML values to the field's type (lists to tuples) and reject wrong types."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except PolicyKDError as exc:
                errors.append(str(exc))
        raise PolicyKDError(errors[0] if errors else f"option {key!r} has an invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise PolicyKDError(f"option {key!r} must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise PolicyKDError(f"option {key!r} must be a list; got {value!r}")
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, key) for v in value)
    if annotation is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if annotation is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if annotation is bool and isinstance(value, bool):
        return value
    if annotation is str and isinstance(value, str):
        return value
    if annotation is Any:
        return value
    expected = getattr(annotation, "__name__", str(annotation))
    raise PolicyKDError(f"option {key!r} must be {expected}; got {value!r}")


def config_from_mapping(cls: type[C], mapping: dict[str, Any], *, source: str = "config") -> C:
    """Build ``cls`` from a mapping, rejecting unknown keys and values of the wrong type."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise PolicyKDError(
            f"{source}: unknown option(s) {', '.join(unknown)}; valid options are {', '.join(fields)}"
        )
    values = {k: _coerce(v, hints[k], k) for k, v in mapping.items()}
    return cls(**values)


def absolute_paths(config: C, *names: str) -> C:
    """``config`` with its path options ``names`` made absolute (against the current directory, links
    kept as given), so that a saved config resumes from any working directory. URIs such as
    ``hf://ORG/REPO`` and ``py:PKG.MODULE:NAME`` teachers are not paths and stay as given."""
    given = {n: getattr(config, n) for n in names}
    return dataclasses.replace(  # type: ignore[type-var]
        config,
        **{
            n: os.path.abspath(v)
            for n, v in given.items()
            if v is not None and "://" not in str(v) and not str(v).startswith("py:")
        },
    )


def check_seed(seed: int) -> None:
    """Refuse a seed that numpy, torch or Gymnasium would reject mid-run (negative, or over 32 bits)."""
    if not 0 <= seed < 2**32:
        raise PolicyKDError(f"--seed must lie in [0, 2**32), got {seed}")


def to_dict(config: Any) -> dict[str, Any]:
    """A plain-YAML-able dict of a config dataclass (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(config).items()}


def parse_cli(cls: type[C], argv: list[str], *, prog: str, description: str | None = None) -> C:
    """Parse ``argv`` into ``cls``: an optional ``--config FILE`` first, then options on top of it."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    default = cls()
    if known.config is not None:
        default = config_from_mapping(cls, load_yaml_mapping(known.config), source=known.config)
    doc = (
        description or ""
    ) + "\n\nEvery option can also come from a YAML file: --config FILE (unknown keys rejected)."
    return tyro.cli(cls, args=rest, default=default, prog=prog, description=doc.strip())
