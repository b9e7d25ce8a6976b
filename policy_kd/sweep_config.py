"""The YAML of ``policy-kd sweep`` (:class:`SweepConfig`): what to distil, over which grid, and its checks.

A sweep file names one teacher and its buffer, the student sizes, the losses (each a set of distill options),
the seeds and the evaluation; ``docs/sweep.md`` is its reference. It is read with ``yaml.safe_load`` (no
code runs) and every key is checked here, before anything is trained: an unknown key or a wrong type is a
one-line error naming the key and the fix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policy_kd.config import config_from_mapping, load_yaml_mapping
from policy_kd.errors import PolicyKDError

#: distill options the sweep sets per student (a config that sets them itself would be overridden).
PER_STUDENT = ("buffer", "out", "seed", "params_fraction", "resume", "force", "progress")


@dataclass(frozen=True)
class SweepConfig:
    """A sweep: students of several sizes, losses and seeds distilled from one teacher's buffer, each
    evaluated against the teacher on the same episode seeds."""

    task: str
    """Name of the sweep: the results' ``task``, the tables' heading."""
    sizes: tuple[float, ...]
    """Student sizes as fractions (0, 1] of the teacher's policy parameters (``params_fraction``)."""
    losses: Mapping[str, Mapping[str, Any]]
    """Named losses, each a mapping of distill options (``kl_t0.1: {loss: kl, tau: 0.1}``); any distill
    option may appear (``steps``, ``lr``, ``rounds``...) and wins over ``distill``."""
    env: str | None = None
    """Environment id (required to train the teacher; else read from the teacher)."""
    teacher: Mapping[str, Any] = field(default_factory=dict)
    """The teacher: ``path`` of an existing one (a train-teacher or zoo run folder, or an SB3 .zip), and/or
    train-teacher options (``{algo: dqn, seed: 0}``) to train it into ``path`` (default ``OUT/teacher``), or
    ``zoo: {algo: sac, seed: 0, args: [...]}`` to train it with rl-baselines3-zoo's own ``rl_zoo3.train`` and
    preset (``path`` then names the zoo's run folder, ``.../ALGO/ENV_1``)."""
    buffer: Mapping[str, Any] = field(default_factory=dict)
    """The buffer: ``path`` of an existing one (plain or sharded), or record options (``{steps: 100000,
    n_envs: 8}``; ``workers: N`` records N shards in parallel) to record it into ``OUT/buffer``."""
    distill: Mapping[str, Any] = field(default_factory=dict)
    """Distill options shared by every student (``{steps: 5000, batch_size: 256, lr_schedule: cosine}``)."""
    seeds: tuple[int, ...] = (0,)
    """Distillation seeds: every (size, loss) cell trains one student per seed."""
    shapes: Mapping[float, Mapping[str, Any]] = field(default_factory=dict)
    """Explicit widths for some sizes (``0.01: {channels: [1], hidden: [10]}``): they win over the solved
    ``params_fraction``, so results keep their students when the solver changes."""
    cells: tuple[Mapping[str, Any], ...] = ()
    """Restrict sizes x losses to the union of these groups (``{sizes: [...], losses: [...], seeds: [...]}``,
    seeds optional); default: every size with every loss."""
    episodes: int = 100
    """Evaluation episodes per student and for the teacher (seeds 0..episodes-1, the same for all)."""
    dagger: Mapping[str, Any] | None = None
    """Optional teacher- vs student-driven comparison at equal labels: ``{size, loss, labels, rounds}``."""
    zoo_benchmark: Mapping[str, Any] | None = None
    """rl-baselines3-zoo's published figure for this env and algo (``{env, mean_return, std_return,
    n_timesteps}``), shown beside a zoo-trained teacher's return in the report; None: not reported."""

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "sweep config") -> SweepConfig:
        """Build and check a sweep from a parsed YAML mapping; ``source`` prefixes every error."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise PolicyKDError(
                f"{source}: unknown key(s) {', '.join(unknown)}; valid keys are {', '.join(names)}"
            )
        missing = [k for k in ("task", "sizes", "losses") if k not in data]
        if missing:
            raise PolicyKDError(
                f"{source}: missing {', '.join(missing)}; see docs/sweep.md for a complete example"
            )
        values = dict(data)
        for key in ("teacher", "buffer", "distill", "losses", "shapes"):
            if values.get(key) is None:
                values.pop(key, None)
            elif not isinstance(values[key], Mapping):
                raise PolicyKDError(
                    f"{source}: {key} must be a mapping of option: value, got {values[key]!r}"
                )
        for key, kind in (("sizes", float), ("seeds", int)):
            if key in values:
                items = values[key]
                if not isinstance(items, list | tuple) or not items or not all(_is(v, kind) for v in items):
                    raise PolicyKDError(
                        f"{source}: {key} must be a non-empty list of {kind.__name__}s, got {items!r}"
                    )
                values[key] = tuple(kind(v) for v in items)
        if not isinstance(values["task"], str) or not values["task"]:
            raise PolicyKDError(f"{source}: task must be a non-empty name, got {values['task']!r}")
        if "episodes" in values and not (_is(values["episodes"], int) and values["episodes"] > 0):
            raise PolicyKDError(f"{source}: episodes must be an integer > 0, got {values['episodes']!r}")
        cells = values.get("cells") or ()
        if not isinstance(cells, list | tuple) or not all(isinstance(g, Mapping) for g in cells):
            raise PolicyKDError(f"{source}: cells must be a list of {{sizes, losses[, seeds]}} mappings")
        values["cells"] = tuple(cells)
        config = cls(**values)
        config.validate(source)
        return config

    @classmethod
    def load(cls, path: str | Path) -> SweepConfig:
        """Read and check a sweep YAML file."""
        return cls.from_mapping(load_yaml_mapping(path, what="sweep config"), source=str(path))

    def validate(self, source: str = "sweep config") -> None:
        """Check every student's options as distill would, before the sweep trains anything."""
        from policy_kd.distill_config import DistillConfig
        from policy_kd.record import RecordConfig
        from policy_kd.teachers import TrainTeacherConfig

        bad = [s for s in self.sizes if not 0 < s <= 1]
        if bad:
            raise PolicyKDError(f"{source}: sizes must lie in (0, 1] (fractions of the teacher), got {bad}")
        if not self.losses:
            raise PolicyKDError(f"{source}: losses is empty; name at least one (kl: {{loss: kl}})")
        teach = {k: v for k, v in self.teacher.items() if k != "path"}
        if self.env is None and ("path" not in self.teacher or teach):
            raise PolicyKDError(
                f"{source}: env is needed to train the teacher; add env: ENV_ID or teacher: {{path: DIR}}"
            )
        zoo = self.teacher.get("zoo")
        if zoo is not None:
            if not (isinstance(zoo, Mapping) and isinstance(zoo.get("algo"), str)):
                raise PolicyKDError(
                    f"{source}: teacher.zoo must be a mapping with an algo, e.g. {{algo: sac}}"
                )
            if "path" not in self.teacher or self.env is None:
                raise PolicyKDError(
                    f"{source}: a zoo teacher needs env and teacher.path (the zoo's run folder .../ALGO/ENV_1)"
                )
        teach = {k: v for k, v in self.teacher.items() if k not in ("path", "zoo")}
        if teach:
            config_from_mapping(TrainTeacherConfig, teach, source=f"{source}: teacher")
        if "path" not in self.buffer:
            rec = {k: v for k, v in self.buffer.items() if k != "workers"}
            rec_cfg = config_from_mapping(RecordConfig, rec, source=f"{source}: buffer")
            try:
                dataclasses.replace(rec_cfg, teacher=rec_cfg.teacher or "teacher").validate()
            except PolicyKDError as exc:
                raise PolicyKDError(f"{source}: buffer: {exc}") from None
            workers = self.buffer.get("workers", 1)
            if not (_is(workers, int) and workers >= 1):
                raise PolicyKDError(f"{source}: buffer.workers must be an integer >= 1, got {workers!r}")
        elif len(self.buffer) > 1:
            raise PolicyKDError(
                f"{source}: buffer names a path and record options ({', '.join(k for k in self.buffer if k != 'path')}); "
                "give one: path (an existing buffer) or the options to record one"
            )
        unknown = [s for s in self.shapes if s not in self.sizes]
        if unknown:
            raise PolicyKDError(
                f"{source}: shapes names sizes {unknown}, which sizes does not list; add them there"
            )
        for i, group in enumerate(self.cells):
            extra = sorted(set(group) - {"sizes", "losses", "seeds"})
            if extra or "sizes" not in group or "losses" not in group:
                raise PolicyKDError(
                    f"{source}: cells[{i}] must hold sizes and losses (and seeds), got {dict(group)}"
                )
            unknown = [x for x in group["sizes"] if x not in self.sizes]
            unknown += [x for x in group["losses"] if x not in self.losses]
            if unknown:
                raise PolicyKDError(
                    f"{source}: cells names {unknown}, which sizes/losses do not define; add them there"
                )
        set_here = sorted(set(self.distill) & set(PER_STUDENT))
        if set_here:
            raise PolicyKDError(
                f"{source}: distill sets {', '.join(set_here)}, which the sweep sets per student; remove it"
            )
        for name, opts in self.losses.items():
            if not isinstance(opts, Mapping):
                raise PolicyKDError(
                    f"{source}: losses.{name} must be a mapping of distill options, got {opts!r}"
                )
            for size in self.sizes:
                where = f"{source}: losses.{name}"
                cfg = config_from_mapping(
                    DistillConfig, self.student_options(size, name, seed=0), source=where
                )
                try:
                    cfg.validate()
                except PolicyKDError as exc:
                    raise PolicyKDError(f"{where} (size {size}): {exc}") from None
        if self.dagger is not None:
            d = self.dagger
            missing = [k for k in ("size", "loss", "labels", "rounds") if k not in d]
            if missing:
                raise PolicyKDError(
                    f"{source}: dagger needs {', '.join(missing)} (size, loss, labels, rounds)"
                )
            if d["loss"] not in self.losses or d["size"] not in self.sizes:
                raise PolicyKDError(f"{source}: dagger's size and loss must be among sizes and losses")
            if not (_is(d["rounds"], int) and d["rounds"] >= 2 and _is(d["labels"], int) and d["labels"] > 0):
                raise PolicyKDError(f"{source}: dagger needs rounds >= 2 and labels > 0, got {dict(d)}")

    def student_options(self, size: float, loss: str, *, seed: int, buffer: str = "buffer") -> dict[str, Any]:
        """The distill options of the student ``(size, loss, seed)``: shared options, the size's pinned shape,
        the loss's options, then what the sweep sets per student (``out`` is the caller's)."""
        opts = {**self.distill, **self.shapes.get(size, {}), **self.losses[loss]}
        opts.update(buffer=buffer, params_fraction=size, seed=seed)
        if needs_teacher(opts):
            opts["teacher"] = "teacher"  # replaced by the sweep's teacher folder
        return opts

    def cell_list(self) -> list[tuple[str, float, str, int]]:
        """(run name ``f<size>_<loss>_s<seed>``, size, loss, seed) of every student, sizes then losses in the
        config's order (the order results are filed in)."""
        groups = self.cells or ({"sizes": self.sizes, "losses": list(self.losses)},)
        cells = []
        for size in self.sizes:
            for loss in self.losses:
                matching = [g for g in groups if size in g["sizes"] and loss in g["losses"]]
                seeds = sorted({s for g in matching for s in g.get("seeds", self.seeds)})
                cells += [(f"f{size}_{loss}_s{seed}", size, loss, seed) for seed in seeds]
        return cells


def needs_teacher(options: Mapping[str, Any]) -> bool:
    """Whether distill needs the teacher itself for these options (rounds, the hint loss, critic guidance): it
    never takes it from the buffer."""
    from policy_kd.distill_config import teacher_option

    return (
        teacher_option(
            int(options.get("rounds", 1)),
            float(options.get("hint_weight", 0)),
            float(options.get("critic_weight", 0)),
        )
        is not None
    )


def _is(value: Any, kind: type) -> bool:
    """``value`` is a ``kind`` from YAML (an int counts as a float; a bool as neither)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int | float) if kind is float else isinstance(value, kind)
