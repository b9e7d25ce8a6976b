"""``policy-kd``: a thin shell over the library. Each subcommand parses one config dataclass and calls one function."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tyro

from policy_kd.config import parse_cli
from policy_kd.errors import PolicyKDError
from policy_kd.run import (
    COMMAND_LINE,
    interrupted_line,
    job,
    lock_out_dir,
    quiet_no_space_in_threads,
    raise_interrupted,
)

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


def _demo_stages(cfg: DemoConfig, root: Path) -> list[tuple[str, str, Callable[[Path], Any]]]:
    """The demo's stages in order: (folder name, the file that marks it done, the call that makes it)."""
    from policy_kd.distill import DistillConfig, distill
    from policy_kd.evaluate import EvaluateConfig, evaluate
    from policy_kd.record import RecordConfig, record
    from policy_kd.teacher import TrainTeacherConfig, train_teacher

    return [
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


@job(resumable=False)
def _demo(cfg: DemoConfig) -> int:
    from policy_kd.report import format_table

    root = Path(cfg.out)
    lock_out_dir(root, what="demo folder", create=True)  # each stage also locks its own folder
    stages = _demo_stages(cfg, root)
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
    buffer = Buffer.open(cfg.buffer, verify=True, allow_empty=True)
    print(describe(buffer))
    print("all chunks match their checksums")
    # a checksum proves the bytes are as recorded, not that they are usable: NaN/Inf fail the check
    buffer.check_finite(tuple(buffer.fields), "no student can learn from them: re-record the buffer")
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
    from policy_kd.report import format_table

    return format_table(result)


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def _describe_buffer(out: Path) -> str:
    """What a record run made, on one screen (also with --no-progress, where no bar showed the rate)."""
    from policy_kd.buffer import SHARDS, Buffer, read_manifest

    if (out / SHARDS).is_file():  # record --workers: the shards read as one buffer
        b = Buffer.open(out, verify=False, allow_empty=True)
        state = "complete" if b.complete else "INCOMPLETE"
        return f"buffer saved to {out}\n  rows: {b.rows} ({state}) in {len(b.sources)} shards"
    m = read_manifest(out)
    src = m["sources"][-1]
    state = "complete" if m["complete"] else "INCOMPLETE"
    return (
        f"buffer saved to {out}\n"
        f"  rows: {m['rows']} ({state}), this recording: {src.get('episodes', 0)} episodes, "
        f"mean return {_fmt(src.get('episode_return_mean'))}\n"
        f"  {_fmt(src.get('steps_per_second'), '.1f')} steps/s over {_fmt(src.get('record_seconds'))} s"
    )


def _describe_student(out: Path) -> str:
    """What a distill run made, on one screen: size, speed, best evaluation, how it stopped."""
    import json

    info = json.loads((out / "student.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    steps_per_second = metrics["steps"] / max(metrics.get("seconds") or 0.0, 1e-9)
    stopped = metrics.get("stopped_early")
    return (
        f"student saved to {out}\n"
        f"  params: {info.get('params')} ({_fmt(info.get('params_ratio'), '.2%')} of the teacher's "
        f"{info.get('teacher_params')})\n"
        f"  steps: {metrics['steps']} at {steps_per_second:.1f} steps/s "
        f"({_fmt(metrics.get('samples_per_second'), '.0f')} samples/s)"
        f"{f', stopped early: {stopped}' if stopped else ''}\n"
        f"  best evaluation: mean return {_fmt(metrics.get('best_eval_mean_return'))}, "
        f"final train agreement {_fmt(metrics.get('final_train_agreement'), '.3f')}"
    )


def _describe_export(out: Path) -> str:
    from policy_kd.export import describe_export

    return describe_export(out)


IMPORT_SOURCES = ("minari",)


def _import(argv: list[str]) -> int:
    """``policy-kd import minari DATASET``: a dataset of another tool as a buffer of kind actions."""
    if argv and argv[0] in ("-h", "--help"):
        print(f"usage: {PROG} import minari DATASET --out BUFFER [--env ENV_ID] [--force]")
        return 0
    if not argv:
        raise PolicyKDError(f"import needs a source: {PROG} import minari DATASET --out BUFFER")
    if argv[0] not in IMPORT_SOURCES:
        raise PolicyKDError(f"cannot import from {argv[0]!r}; choose one of {', '.join(IMPORT_SOURCES)}")
    from policy_kd.minari_import import ImportMinariConfig, import_minari

    cfg = parse_cli(
        ImportMinariConfig, argv[1:], prog=f"{PROG} import minari", description=ImportMinariConfig.__doc__
    )
    print(_describe_buffer(import_minari(cfg)))
    return 0


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "train-teacher": _job(
        "train-teacher", "teacher", "TrainTeacherConfig", "train_teacher", lambda p: f"teacher saved to {p}"
    ),
    "record": _job("record", "record", "RecordConfig", "record", _describe_buffer),
    "distill": _job("distill", "distill", "DistillConfig", "distill", _describe_student),
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
    "sweep": _job(
        "sweep",
        "sweep",
        "SweepRunConfig",
        "sweep",
        lambda p: f"sweep results in {p} (table: {p.parent / 'results.md'})",
    ),
    "inspect": lambda argv: _inspect(
        parse_cli(InspectConfig, argv, prog=f"{PROG} inspect", description=InspectConfig.__doc__)
    ),
    "demo": lambda argv: _demo(
        parse_cli(DemoConfig, argv, prog=f"{PROG} demo", description=DemoConfig.__doc__)
    ),
    "import": _import,
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
  import minari   a local Minari dataset as a buffer of kind actions (behaviour cloning)
  sweep           students over sizes x losses x seeds from a YAML grid, locally or on Ray; resumes
  demo            all four on CartPole-v1 into runs/demo/, then the comparison table

'{PROG} COMMAND --help' lists a command's options."""


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 bad input, 130 Ctrl-C, 141 output pipe closed, 143 SIGTERM)."""
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
    # SIGTERM (timeout, Slurm, Docker, Kubernetes) stops a job as Ctrl-C does: what is finished is
    # committed or checkpointed (jobs that can resume check for it between steps), then one line
    on_term = _set_handler(signal.SIGTERM, raise_interrupted)
    thread_hook, threading.excepthook = threading.excepthook, quiet_no_space_in_threads
    try:
        return COMMANDS[command](rest)
    except PolicyKDError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        line, code = interrupted_line(exc)
        print(f"{PROG}: {line}", file=sys.stderr)
        return code
    finally:
        threading.excepthook = thread_hook
        if on_term is not None:
            _set_handler(signal.SIGTERM, on_term)
        COMMAND_LINE.reset(token)


def _set_handler(signum: int, handler: Any) -> Any:
    """Install a signal handler where Python allows it (the main thread); return the previous one."""
    try:
        return signal.signal(signum, handler)
    except ValueError:  # main() called from another thread: leave signals alone
        return None


if __name__ == "__main__":
    sys.exit(main())
