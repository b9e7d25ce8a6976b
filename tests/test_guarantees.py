"""What the jobs promise under concurrent runs, SIGTERM, a full disk and a symlinked --out (README "Guarantees").

The subprocess tests run the real CLI (``python -m policy_kd``) and signal it as ``timeout``/Slurm would; the
full-disk tests use a real 2 MB tmpfs in a user+mount namespace where the kernel allows one (skipped
elsewhere), and a file-size limit (RLIMIT_FSIZE) or a failing fsync everywhere.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_cli

from policy_kd.buffer import Buffer
from policy_kd.errors import PolicyKDError
from policy_kd.run import holder_pid, job, prepare_out_dir

ROOT = Path(__file__).parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
SMALL_DQN = {
    "policy": "MlpPolicy",
    "learning_starts": 500,
    "train_freq": 4,
    "policy_kwargs": {"net_arch": [32]},
}


def _cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "policy_kd", *map(str, args)]


def _start(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        _cli(*args), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


@contextlib.contextmanager
def _running(*args: object) -> Iterator[subprocess.Popen[str]]:
    """``policy-kd ARGS`` in a subprocess, killed if the test leaves it running."""
    proc = _start(*args)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _terminate(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """Send SIGTERM as ``timeout``/Slurm do; the exit status and stderr."""
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(120)
    return code, proc.communicate()[1]


def _wait_for(cond: Callable[[], bool], *procs: subprocess.Popen[str], timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not cond():
        for p in procs:
            assert p.poll() is None, p.communicate()[1]
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def _holder(out: Path) -> str:
    """PID of the job holding ``out``'s lock ("" while none does)."""
    if not out.is_dir():
        return ""
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        pid = holder_pid(fd)
    finally:
        os.close(fd)
    return "" if pid == "unknown" else pid


def _one_line(err: str, *fragments: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    return lines[0]


def _refused(capsys: pytest.CaptureFixture[str], pid: int, *args: object) -> None:
    assert run_cli(*args) == 2
    _one_line(capsys.readouterr().err, "in use by another policy-kd job", f"PID {pid}")


def _temp_files(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name == "checkpoint.new"]


def _rows(out: Path) -> int:
    m = out / "manifest.json"
    return json.loads(m.read_text())["rows"] if m.is_file() else 0


# ------------------------------------------------------------------------------------------ concurrent runs


def test_simultaneous_writers_of_one_folder_exactly_one_runs(tmp_path: Path) -> None:
    """The race is closed, not narrowed: N writers released together by a barrier, one gets the folder."""
    out = tmp_path / "x"
    out.mkdir()
    (out / "old").write_text("a previous run")
    n = 6
    start, done = threading.Barrier(n), threading.Barrier(n)
    results: list[str] = []

    @job(resumable=False)
    def writer() -> None:
        start.wait()
        try:
            prepare_out_dir(out, force=True)  # --force: without the lock every writer would clear and write
            (out / threading.current_thread().name).write_text("mine")
            results.append("ran")
        except PolicyKDError as exc:
            results.append(str(exc))
        done.wait()  # nobody returns (and unlocks) before every writer has tried

    threads = [threading.Thread(target=writer, name=f"w{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results.count("ran") == 1, results
    for r in results:
        assert r == "ran" or ("in use by another policy-kd job" in r and f"PID {os.getpid()}" in r), r
    assert len(list(out.iterdir())) == 1  # the previous contents cleared once, one writer's file
    job(resumable=False)(prepare_out_dir)(out, force=True)  # released when the jobs ended
    assert not any(out.iterdir())


def test_two_records_started_together_exactly_one_runs(artifacts: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "b"
    args = ("record", "--teacher", artifacts["teacher"], "--out", out, "--steps", "400000", "--force")
    with _running(*args, "--no-progress") as a, _running(*args, "--no-progress") as b:
        _wait_for(lambda: a.poll() is not None or b.poll() is not None, timeout=240)
        loser, winner = (a, b) if a.poll() is not None else (b, a)
        assert winner.poll() is None, "both ended"
        assert loser.returncode == 2
        _one_line(loser.communicate()[1], "in use by another policy-kd job", f"PID {winner.pid}")
        _wait_for(lambda: _rows(out) > 0, winner)
        assert _terminate(winner)[0] == 143
    Buffer.open(out, verify=True)  # the winner's rows, whole


# ------------------------------------------------------------------------------------------------- SIGTERM


def test_record_locked_while_running_and_sigterm_commits_staged_rows(
    artifacts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, teacher = tmp_path / "b", artifacts["teacher"]
    chunk = 5000
    args = (
        "record",
        "--teacher",
        teacher,
        "--out",
        out,
        "--steps",
        60000,
        "--chunk-rows",
        chunk,
        "--no-progress",
    )
    with _running(*args) as proc:
        _wait_for(lambda: _rows(out) >= chunk, proc)
        # --force, --resume and --append on the folder being written are refused, naming the writer
        _refused(capsys, proc.pid, "record", "--teacher", teacher, "--out", out, "--steps", 100, "--force")
        _refused(capsys, proc.pid, "record", "--resume", "--out", out, "--no-progress")
        _refused(capsys, proc.pid, "record", "--teacher", teacher, "--out", out, "--steps", 100, "--append")
        code, err = _terminate(proc)
    assert code == 143, err
    _one_line(err, "interrupted by SIGTERM", "rows committed", "record --resume")
    buf = Buffer.open(out, verify=True)
    assert not buf.complete and buf.rows % chunk != 0  # the rows staged since the last chunk were kept
    assert run_cli("record", "--resume", "--out", out, "--no-progress") == 0
    assert Buffer.open(out, verify=True).complete


def _distill_args(buffer: Path, out: Path, steps: int) -> tuple[object, ...]:
    return ("distill", "--buffer", buffer, "--out", out, "--steps", steps, "--eval-every", 0, "--hidden", 8,
            "--checkpoint-every", 10**6, "--log-every", 50, "--lr-schedule", "cosine", "--no-progress")  # fmt: skip


def test_distill_force_over_a_running_distill_is_refused_and_sigterm_checkpoints(
    artifacts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    buffer, cut, full = artifacts["buffer"], tmp_path / "cut", tmp_path / "full"
    steps = 4000
    with _running(*_distill_args(buffer, cut, steps)) as proc:
        _wait_for(lambda: (cut / "tb").is_dir() and _holder(cut) == str(proc.pid), proc)
        _refused(capsys, proc.pid, *_distill_args(buffer, cut, 10), "--force")
        _refused(capsys, proc.pid, "distill", "--resume", "--out", cut, "--no-progress")
        time.sleep(0.5)
        code, err = _terminate(proc)
    assert code == 143, err
    _one_line(err, "interrupted by SIGTERM", "checkpoint at step", "distill --resume")
    assert not (cut / "student.json").exists(), "finished before SIGTERM; raise steps"
    stopped_at = torch.load(cut / "checkpoint.pt", weights_only=True)["step"]
    assert 0 < stopped_at < steps  # no periodic checkpoint (--checkpoint-every 1e6): SIGTERM wrote this one
    assert run_cli("distill", "--resume", "--out", cut, "--no-progress") == 0
    # as after Ctrl-C or kill -9: the resumed run ends on the uninterrupted run's weights, bit for bit
    assert run_cli(*_distill_args(buffer, full, steps)) == 0
    a, b = (torch.load(d / "last.pt", weights_only=True) for d in (full, cut))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_teacher_sigterm_checkpoints_then_resumes(tmp_path: Path) -> None:
    out, preset = tmp_path / "teacher", tmp_path / "preset.yml"
    preset.write_text(yaml.safe_dump({"default": SMALL_DQN}))
    args = ("train-teacher", "--algo", "dqn", "--env", "CartPole-v1", "--out", out, "--n-timesteps", 10**6,
            "--eval-freq", 1000, "--eval-episodes", 2, "--preset", preset, "--no-progress")  # fmt: skip
    with _running(*args) as proc:
        _wait_for(lambda: (out / "evaluations.npz").is_file(), proc)  # training, past its first evaluation
        code, err = _terminate(proc)
    assert code == 143, err
    _one_line(err, "interrupted by SIGTERM", "checkpoint at step", "--resume")
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["num_timesteps"] >= 1000  # below the 100k default --checkpoint-freq: SIGTERM wrote it
    budget = state["num_timesteps"] + 500
    assert run_cli("train-teacher", "--resume", "--out", out, "--n-timesteps", budget, "--no-progress") == 0
    assert json.loads((out / "teacher.json").read_text())["resumed"]


# ---------------------------------------------------------------------------------------------- full disk


def _small_fs_available() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = "d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs $d"
    return subprocess.run(["unshare", "-rm", "sh", "-c", probe], capture_output=True).returncode == 0


def _in_small_fs(tmp_path: Path, script: str, size: str = "2m") -> None:
    """Run ``script`` (sh) with ``$FS`` a fresh tmpfs of ``size``; results go to ``tmp_path`` (outside it)."""
    fs = tmp_path / "fs"
    fs.mkdir()
    body = f"mount -t tmpfs -o size={size} tmpfs {fs} && FS={fs} PK='{' '.join(_cli())}' && {script}"
    subprocess.run(["unshare", "-rm", "sh", "-c", body], env=ENV, check=True, timeout=600)


needs_small_fs = pytest.mark.skipif(not _small_fs_available(), reason="no unprivileged tmpfs (unshare -rm)")


@needs_small_fs
def test_record_on_a_full_disk_is_one_line_not_sigbus(artifacts: dict[str, Path], tmp_path: Path) -> None:
    """A real 2 MB file system: the segment is reserved up front, so the failure is ENOSPC, not SIGBUS."""
    res = tmp_path
    script = (
        f"$PK record --teacher {artifacts['teacher']} --out $FS/b --steps 60000 --no-progress "
        f"2>{res}/err; echo $? >{res}/code; find $FS/b >{res}/files"
    )
    _in_small_fs(tmp_path, script)
    assert (res / "code").read_text().strip() == "2"
    _one_line((res / "err").read_text(), "no space left writing", "free disk space")
    files = (res / "files").read_text()
    assert "segment_000" not in files and ".tmp" not in files, files  # nothing half-made left


@needs_small_fs
@pytest.mark.parametrize("job_name", ["distill", "train-teacher"])
def test_a_full_disk_is_one_line_and_leaves_no_torn_or_temp_file(
    artifacts: dict[str, Path], tmp_path: Path, job_name: str
) -> None:
    """Fill a real small file system so the job fails mid-run, after a checkpoint; free space, --resume."""
    res, preset = tmp_path, tmp_path / "preset.yml"
    preset.write_text(yaml.safe_dump({"default": {**SMALL_DQN, "buffer_size": 5000}}))  # a small checkpoint
    if job_name == "distill":
        argv = f"distill --buffer {artifacts['buffer']} --out $FS/o --steps 400 --eval-every 100 --eval-episodes 1 --checkpoint-every 100"
        free = 64  # KB left free: enough to start and checkpoint, not to finish
    else:
        argv = (f"train-teacher --algo dqn --env CartPole-v1 --out $FS/o --n-timesteps 3000 --eval-freq 1000 "
                f"--eval-episodes 2 --checkpoint-freq 1000 --preset {preset}")  # fmt: skip
        free = 512
    script = (
        f"dd if=/dev/zero of=$FS/fill bs=1k count=2048 2>/dev/null; truncate -s -{free}k $FS/fill; "
        f"$PK {argv} --no-progress 2>{res}/err; echo $? >{res}/code; find $FS/o >{res}/files; "
        f"rm $FS/fill; $PK {job_name} --resume --out $FS/o --no-progress 2>{res}/err2; echo $? >{res}/code2"
    )
    _in_small_fs(tmp_path, script)
    assert (res / "code").read_text().strip() == "2", (res / "err").read_text()
    _one_line((res / "err").read_text(), "no space left writing", "free disk space")
    files = (res / "files").read_text()
    assert ".tmp" not in files and "checkpoint.new" not in files, files
    assert (res / "code2").read_text().strip() == "0", (res / "err2").read_text()


def _limit_file_size() -> None:
    # writes past 1 MB fail with EFBIG, as on a full disk; SIGXFSZ would otherwise kill the process
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


def test_record_past_a_file_size_limit_is_one_line(artifacts: dict[str, Path], tmp_path: Path) -> None:
    """Portable stand-in for the tmpfs test: the segment reservation fails, nothing half-made is left."""
    out = tmp_path / "b"
    done = subprocess.run(_cli("record", "--teacher", artifacts["teacher"], "--out", out, "--steps", 200_000,
                               "--no-progress"), env=ENV, capture_output=True, text=True, preexec_fn=_limit_file_size,
                          timeout=300)  # fmt: skip
    assert done.returncode == 2, done.stderr
    _one_line(done.stderr, "no space left writing", str(out), "--resume")
    assert not (out / "segment_000").exists() and not _temp_files(out)


@pytest.mark.parametrize(
    ("job_name", "model"),
    [("distill", "best.pt"), ("train-teacher", "best_model.zip"), ("evaluate", "eval.json")],
)
def test_a_failed_model_write_leaves_no_temp_file(
    artifacts: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    job_name: str,
    model: str,
) -> None:
    """The disk fills exactly while the best model (evaluate: its result) is written: one line naming the
    folder and the fix, no torn file, no temp file."""
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if f".{model}." in os.readlink(f"/proc/self/fd/{fd}"):  # the temporary file of the model
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "o"
    if job_name == "distill":
        argv: tuple[object, ...] = ("distill", "--buffer", artifacts["buffer"], "--out", out, "--steps", 100,
                                    "--eval-every", 50, "--eval-episodes", 1, "--hidden", 8, "--no-progress")  # fmt: skip
    elif job_name == "train-teacher":
        preset = tmp_path / "preset.yml"
        preset.write_text(yaml.safe_dump({"default": SMALL_DQN}))
        argv = ("train-teacher", "--algo", "dqn", "--env", "CartPole-v1", "--out", out, "--n-timesteps", 1000,
                "--eval-freq", 500, "--eval-episodes", 1, "--preset", preset, "--no-progress")  # fmt: skip
    else:
        argv = ("evaluate", "--teacher", artifacts["teacher"], "--student", artifacts["student"], "--out", out,
                "--episodes", 2)  # fmt: skip
    assert run_cli(*argv) == 2
    fix = "--force" if job_name == "evaluate" else "--resume"
    _one_line(capsys.readouterr().err, "no space left writing", str(out), f"{model}); free disk space", fix)
    assert not (out / model).exists() and not _temp_files(out)


# ----------------------------------------------------------------------------------------- symlinked --out


def test_force_on_a_symlinked_out_is_refused_and_the_target_kept(
    artifacts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, link = tmp_path / "elsewhere", tmp_path / "link"
    target.mkdir()
    (target / "precious.txt").write_text("not ours")
    link.symlink_to(target)
    args = (
        "distill",
        "--buffer",
        artifacts["buffer"],
        "--out",
        link,
        "--steps",
        10,
        "--force",
        "--no-progress",
    )
    assert run_cli(*args) == 2
    _one_line(capsys.readouterr().err, "is a symbolic link", "pass the folder itself")
    assert (target / "precious.txt").read_text() == "not ours" and link.is_symlink()


# ------------------------------------------------------------------------------------------------ summaries


def test_record_and_distill_print_a_summary_without_progress_bars(
    artifacts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    buf, student = tmp_path / "b", tmp_path / "s"
    assert (
        run_cli("record", "--teacher", artifacts["teacher"], "--out", buf, "--steps", 300, "--no-progress")
        == 0
    )
    said = capsys.readouterr().out
    assert "rows: 300 (complete)" in said and "steps/s" in said and "mean return" in said, said
    argv = (
        "distill",
        "--buffer",
        buf,
        "--out",
        student,
        "--steps",
        60,
        "--eval-every",
        30,
        "--eval-episodes",
        1,
    )
    assert run_cli(*argv, "--hidden", 8, "--no-progress") == 0
    said = capsys.readouterr().out
    best = json.loads((student / "metrics.json").read_text())["best_eval_mean_return"]
    params = json.loads((student / "student.json").read_text())["params"]
    assert f"params: {params} " in said and "steps/s" in said and f"mean return {best:.2f}" in said, said
