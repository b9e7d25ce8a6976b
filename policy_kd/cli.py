"""``policy-kd``: a thin shell over the library. Each subcommand parses one config dataclass and calls one function."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tyro

from policy_kd.config import parse_cli
from policy_kd.errors import PolicyKDError
from policy_kd.run import COMMAND_LINE

PROG = "policy-kd"


@dataclass(frozen=True)
class DemoConfig:
    """Train a DQN teacher on CartPole-v1, record 50k steps, distil a student at 1% of its size, evaluate both."""

    out: str = "runs/demo"
    """Folder for the four stages (teacher/, buffer/, student/, eval/); finished stages are reused."""
    env: str = "CartPole-v1"
    """Environment id."""
    algo: str = "dqn"
    """Teacher algorithm."""
    seed: int = 0
    """Seed for every stage."""
    record_steps: int = 50_000
    """Transitions to record."""
    params_fraction: float = 0.01
    """Student size as a fraction of the teacher's policy parameters."""
    loss: str = "kl"
    """Distillation loss."""
    tau: float = 0.01
    """KL temperature."""
    distill_steps: int = 5_000
    """Distillation gradient steps."""
    episodes: int = 100
    """Evaluation episodes per policy."""
    progress: bool = True
    """Show progress bars."""
    force: bool = False
    """Redo every stage, replacing --out."""


def _demo(cfg: DemoConfig) -> int:
    from policy_kd.distill import DistillConfig, distill
    from policy_kd.evaluate import EvaluateConfig, evaluate, format_table
    from policy_kd.record import RecordConfig, record
    from policy_kd.teacher import TrainTeacherConfig, train_teacher

    root = Path(cfg.out)
    stages: list[tuple[str, str, Callable[[Path], Any]]] = [
        (
            "teacher",
            "teacher.json",
            lambda d: train_teacher(
                TrainTeacherConfig(
                    algo=cfg.algo, env=cfg.env, out=str(d), seed=cfg.seed, progress=cfg.progress, force=True
                )
            ),
        ),
        (
            "buffer",
            "manifest.json",
            lambda d: record(
                RecordConfig(
                    teacher=str(root / "teacher"),
                    out=str(d),
                    steps=cfg.record_steps,
                    seed=cfg.seed,
                    progress=cfg.progress,
                    force=True,
                )
            ),
        ),
        (
            "student",
            "student.json",
            lambda d: distill(
                DistillConfig(
                    buffer=str(root / "buffer"),
                    out=str(d),
                    params_fraction=cfg.params_fraction,
                    loss=cfg.loss,
                    tau=cfg.tau,
                    steps=cfg.distill_steps,
                    seed=cfg.seed,
                    progress=cfg.progress,
                    force=True,
                )
            ),
        ),
        (
            "eval",
            "eval.json",
            lambda d: evaluate(
                EvaluateConfig(
                    teacher=str(root / "teacher"),
                    student=str(root / "student"),
                    buffer=str(root / "buffer"),
                    out=str(d),
                    episodes=cfg.episodes,
                    seed=cfg.seed,
                    force=True,
                )
            ),
        ),
    ]
    redo = cfg.force
    for name, marker, run in stages:
        folder = root / name
        done = (folder / marker).is_file() and (
            name != "buffer" or '"complete": true' in (folder / marker).read_text()
        )
        if done and not redo:
            print(f"[demo] {name}: reusing {folder} (pass --force to redo)")
            continue
        if folder.exists() and any(folder.iterdir()) and not redo:
            raise PolicyKDError(f"{folder} holds an unfinished {name} stage; pass --force to redo the demo")
        print(f"[demo] {name} -> {folder}")
        run(folder)
        redo = True  # later stages depend on this one
    import json

    result = json.loads((root / "eval" / "eval.json").read_text())
    print()
    print(format_table(result))
    return 0


@dataclass(frozen=True)
class InspectConfig:
    """Validate every chunk of a buffer and print its schema, counts, sources, episode returns and actions."""

    buffer: tyro.conf.Positional[str | None] = None
    """Buffer folder written by policy-kd record."""


def _inspect(cfg: InspectConfig) -> int:
    from policy_kd.buffer import Buffer, describe

    if cfg.buffer is None:
        raise PolicyKDError("inspect needs a buffer: policy-kd inspect BUFFER_DIR")
    print(describe(Buffer.open(cfg.buffer, verify=True, allow_empty=True)))
    print("all chunks match their checksums")
    return 0


def _job(
    name: str, module: str, cls: str, fn: str, describe: Callable[[Any], str]
) -> Callable[[list[str]], int]:
    def run(argv: list[str]) -> int:
        import importlib

        mod = importlib.import_module(f"policy_kd.{module}")
        config_cls = getattr(mod, cls)
        cfg = parse_cli(config_cls, argv, prog=f"{PROG} {name}", description=config_cls.__doc__)
        result = getattr(mod, fn)(cfg)
        print(describe(result))
        return 0

    return run


def _print_eval(result: dict[str, Any]) -> str:
    from policy_kd.evaluate import format_table

    return format_table(result)


def _describe_export(out: Path) -> str:
    from policy_kd.export import describe_export

    return describe_export(out)


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "train-teacher": _job(
        "train-teacher", "teacher", "TrainTeacherConfig", "train_teacher", lambda p: f"teacher saved to {p}"
    ),
    "record": _job("record", "record", "RecordConfig", "record", lambda p: f"buffer saved to {p}"),
    "distill": _job("distill", "distill", "DistillConfig", "distill", lambda p: f"student saved to {p}"),
    "evaluate": _job("evaluate", "evaluate", "EvaluateConfig", "evaluate", _print_eval),
    "export": _job("export", "export", "ExportConfig", "export_student", _describe_export),
    "distill-multitask": _job(
        "distill-multitask",
        "multitask",
        "MultiTaskConfig",
        "distill_multitask",
        lambda p: f"multi-task student saved to {p} (one student folder per task)",
    ),
    "distill-online": _job(
        "distill-online",
        "online",
        "DistillOnlineConfig",
        "distill_online",
        lambda p: f"teacher and online-distilled student saved side by side in {p} (teacher/, student/)",
    ),
    "kickstart": _job(
        "kickstart",
        "kickstart",
        "KickstartConfig",
        "kickstart",
        lambda p: f"kickstarted student saved to {p} (model/: its SB3 run, student/: as a policy_kd student)",
    ),
    "inspect": lambda argv: _inspect(
        parse_cli(InspectConfig, argv, prog=f"{PROG} inspect", description=InspectConfig.__doc__)
    ),
    "demo": lambda argv: _demo(
        parse_cli(DemoConfig, argv, prog=f"{PROG} demo", description=DemoConfig.__doc__)
    ),
}

USAGE = f"""usage: {PROG} COMMAND [--config FILE] [OPTIONS]

commands:
  train-teacher   train an SB3 DQN/PPO/A2C teacher with a tuned preset
  record          let the teacher act and record its outputs into a buffer
  distill         train a small student on the buffer
  evaluate        compare student and teacher on the same episode seeds
  export          save a student as ONNX, TorchScript, int8, numpy, an SB3 policy or C
  distill-multitask  one student (shared trunk, a head per task) from several teachers' buffers
  distill-online  train a teacher and distil a student from it while it trains
  kickstart       train a small student with RL plus an annealed distillation loss toward a teacher
  inspect         validate a buffer and summarise it
  demo            all four on CartPole-v1 into runs/demo/, then the comparison table

'{PROG} COMMAND --help' lists a command's options."""


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 bad input, 130 interrupted, 141 output pipe closed)."""
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # a closed pipe surfaces here, not as a traceback at interpreter exit
    except BrokenPipeError:
        # the reader went away (`policy-kd distill --help | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] == "--version":
        from policy_kd import __version__

        print(f"{PROG} {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(
            f"{PROG}: error: unknown command {command!r}; choose one of {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    token = COMMAND_LINE.set([PROG, *argv])
    try:
        return COMMANDS[command](rest)
    except PolicyKDError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; finished outputs were kept", file=sys.stderr)
        return 130
    finally:
        COMMAND_LINE.reset(token)


if __name__ == "__main__":
    sys.exit(main())
