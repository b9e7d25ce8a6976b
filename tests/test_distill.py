"""The distillation engine: students, optimiser options, early stopping, resumption, rounds, hint loss."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.optim.optimizer import register_optimizer_step_pre_hook

from policy_kd.buffer import Buffer, Sampler
from policy_kd.distill import DistillConfig
from policy_kd.students import (
    STUDENTS,
    MinAtarCNNStudent,
    NatureCNNStudent,
    build_student,
    count_params,
    load_student,
    size_student,
)

QUICK = ("--eval-episodes", "1", "--no-progress", "--hidden", "8")


def _distill(artifacts: dict[str, Path], out: Path, *extra: str) -> dict:
    assert run_cli("distill", "--buffer", artifacts["buffer"], "--out", out, *QUICK, *extra) == 0
    return json.loads((out / "metrics.json").read_text())


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# ---------------------------------------------------------------------------------------------- students


@pytest.mark.parametrize(
    ("arch", "shape", "teacher_params"),
    [("mlp", (4,), 67_586), ("minatar_cnn", (4, 10, 10), 132_179), ("nature_cnn", (4, 84, 84), 1_684_000)],
)
@pytest.mark.parametrize("fraction", [0.25, 0.05, 0.01])
def test_students_sized_by_fraction_stay_within_budget(arch, shape, teacher_params, fraction):
    spec = size_student(arch, shape, 6, hidden=None, params_fraction=fraction, teacher_params=teacher_params)
    net = build_student(spec)
    params = count_params(net)
    assert params <= fraction * teacher_params
    assert params >= 0.3 * fraction * teacher_params  # coarse steps, but not wildly under budget
    out = net(torch.zeros(3, *shape, dtype=torch.uint8))
    assert out.shape == (3, 6)
    assert net.features(torch.zeros(3, *shape)).shape == (3, net.feature_dim)


@pytest.mark.parametrize(
    ("arch", "shape", "teacher_params"),
    [
        ("minatar_cnn", (4, 10, 10), 132_179),
        ("minatar_cnn", (6, 10, 10), 132_596),
        ("nature_cnn", (4, 84, 84), 1_684_000),
    ],
)
@pytest.mark.parametrize("fraction", [0.25, 0.07, 0.05, 0.04, 0.01])
def test_cnn_students_sized_by_fraction_fill_the_budget_with_hidden_width(
    arch, shape, teacher_params, fraction
):
    # A channel is a coarse step: before the fill, 1% of a MinAtar teacher solved to 1x10 (0.57%) and 5% to
    # 4%'s 3x26. Now only one more hidden unit, not just one more channel-and-width step, overflows.
    spec = size_student(arch, shape, 6, hidden=None, params_fraction=fraction, teacher_params=teacher_params)
    assert count_params(build_student(spec)) <= fraction * teacher_params
    wider = dataclasses.replace(spec, hidden=(spec.hidden[0] + 1,))
    assert count_params(build_student(wider)) > fraction * teacher_params


def test_cnn_students_take_channels_last_and_first_alike():
    first = size_student(
        "nature_cnn", (4, 84, 84), 3, hidden=(16,), params_fraction=None, teacher_params=None
    )
    last = size_student("nature_cnn", (84, 84, 4), 3, hidden=(16,), params_fraction=None, teacher_params=None)
    torch.manual_seed(0)
    a = NatureCNNStudent(first)
    torch.manual_seed(0)
    b = NatureCNNStudent(last)
    x = torch.rand(2, 4, 84, 84)
    torch.testing.assert_close(a(x), b(x.permute(0, 2, 3, 1)))
    assert first.channels == (32, 64, 64)  # the default NatureCNN widths when only --hidden is given


def test_minatar_cnn_is_the_published_network_by_default():
    spec = size_student(
        "minatar_cnn", (4, 10, 10), 3, hidden=(128,), params_fraction=None, teacher_params=None
    )
    net = MinAtarCNNStudent(spec)
    # conv 4->16 3x3 (592) + 16*8*8 -> 128 (131,200) + 128 -> 3 (387)
    assert count_params(net) == 592 + 131_200 + 387


def test_student_errors_are_one_line():
    from policy_kd.errors import PolicyKDError

    with pytest.raises(PolicyKDError, match="too small"):
        size_student("nature_cnn", (4, 10, 10), 3, hidden=(8,), params_fraction=None, teacher_params=None)
    with pytest.raises(PolicyKDError, match="image observations"):
        size_student("minatar_cnn", (4,), 3, hidden=(8,), params_fraction=None, teacher_params=None)
    with pytest.raises(PolicyKDError, match="--channels applies to CNN"):
        size_student("mlp", (4,), 3, hidden=(8,), channels=(4,), params_fraction=None, teacher_params=None)
    with pytest.raises(PolicyKDError, match="conv layers"):
        size_student(
            "minatar_cnn",
            (4, 10, 10),
            3,
            hidden=(8,),
            channels=(4, 4),
            params_fraction=None,
            teacher_params=None,
        )
    assert set(STUDENTS) == {"mlp", "nature_cnn", "minatar_cnn"}


def test_gaussian_student_predict_clips_or_squashes():
    spec = size_student(
        "mlp", (3,), 2, hidden=(4,), params_fraction=None, teacher_params=None, head="gaussian"
    )
    net = build_student(spec)
    net.set_action_bounds(np.array([-1.0, -2.0]), np.array([1.0, 2.0]))
    with torch.no_grad():
        net.net[-1].bias.copy_(torch.tensor([5.0, -5.0]))
        net.net[-1].weight.zero_()
    np.testing.assert_allclose(net.predict(np.zeros((2, 3), np.float32)), [[1.0, -2.0]] * 2)
    squash = build_student(
        size_student(
            "mlp", (3,), 2, hidden=(4,), params_fraction=None, teacher_params=None, head="squashed_gaussian"
        )
    )
    squash.set_action_bounds(np.array([0.0, 0.0]), np.array([1.0, 4.0]))
    with torch.no_grad():
        squash.net[-1].weight.zero_()
        squash.net[-1].bias.zero_()
    np.testing.assert_allclose(squash.predict(np.zeros((1, 3), np.float32)), [[0.5, 2.0]])
    assert count_params(net) == 3 * 4 + 4 + 4 * 2 + 2 + 2  # + the state-independent log-std


# ----------------------------------------------------------------------------------------- training loop


def test_distill_options_each_change_training_and_log_every_term(artifacts, tmp_path):
    """Each option alone against the same-seed base run, and each checked for its own effect on the optimizer
    steps (read by a global optimizer step pre-hook: after clipping, before the update)."""
    options = {
        "base": (),
        "weight_decay": ("--weight-decay", "0.1"),
        "clip": ("--max-grad-norm", "0.01"),
        "cosine": ("--lr-schedule", "cosine"),
        "kl_entropy": ("--loss", "kl_entropy"),
    }
    seen: list[tuple[float, float, float]] = []  # per optimizer step: lr, weight decay, gradient norm

    def record_step(opt, _args, _kwargs):
        grads = [q.grad.reshape(-1) for g in opt.param_groups for q in g["params"] if q.grad is not None]
        group = opt.param_groups[0]
        seen.append((group["lr"], group["weight_decay"], float(torch.linalg.vector_norm(torch.cat(grads)))))

    runs, metrics = {}, {}
    handle = register_optimizer_step_pre_hook(record_step)
    try:
        for name, extra in options.items():
            seen.clear()
            metrics[name] = _distill(
                artifacts, tmp_path / name, "--steps", "60", "--eval-every", "30", "--log-every", "10", *extra
            )
            runs[name] = list(seen)
    finally:
        handle.remove()
    for name in options:
        assert len(runs[name]) == metrics[name]["steps"] == 60, name
        if name != "base":  # every option alone changes the student
            assert not _same_weights(tmp_path / "base" / "last.pt", tmp_path / name / "last.pt"), name
    base_lr, base_wd, base_norms = zip(*runs["base"], strict=True)
    assert set(base_lr) == {1e-3} and set(base_wd) == {0.0} and max(base_norms) > 0.01
    assert {wd for _, wd, _ in runs["weight_decay"]} == {0.1}
    assert max(n for _, _, n in runs["clip"]) <= 0.01 * (1 + 1e-4)  # clipped before every step
    lrs = [lr for lr, _, _ in runs["cosine"]]
    assert lrs[0] == 1e-3 and all(a > b for a, b in itertools.pairwise(lrs)) and lrs[-1] < 1e-5
    assert [h["step"] for h in metrics["base"]["history"]] == [30, 60]

    acc = EventAccumulator(str(tmp_path / "clip" / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/output", "loss/total", "fidelity/agreement", "fidelity/kl_tau", "eval/mean_return"} <= tags
    assert {"lr", "grad_norm"} <= tags
    # the logged norm is the one before clipping: larger than the clip, so clipping had work to do
    assert max(e.value for e in acc.Scalars("grad_norm")) > 0.01
    acc = EventAccumulator(str(tmp_path / "cosine" / "tb"))
    acc.Reload()
    assert acc.Scalars("lr")[-1].value == pytest.approx(0.0, abs=1e-9)  # cosine reaches 0 at the last step


def test_hint_loss_trains_a_projection_to_the_teacher_features(artifacts, tmp_path):
    m = _distill(artifacts, tmp_path / "s", "--steps", "200", "--eval-every", "0", "--hint-weight", "1.0",
                 "--log-every", "20", "--teacher", artifacts["teacher"])  # fmt: skip
    acc = EventAccumulator(str(tmp_path / "s" / "tb"))
    acc.Reload()
    hint = [e.value for e in acc.Scalars("loss/hint")]
    assert hint[-1] < 0.7 * hint[0]  # the student's features learn to predict the teacher's
    assert m["final"]["loss/total"] == pytest.approx(
        m["final"]["loss/output"] + m["final"]["loss/hint"], rel=1e-4
    )
    student = load_student(tmp_path / "s")  # the projection is training-only: not part of the student
    assert not any("proj" in k for k in _weights(tmp_path / "s" / "best.pt"))
    assert student.info["params"] == count_params(student.net)


def test_target_return_and_patience_stop_early(artifacts, tmp_path):
    m = _distill(artifacts, tmp_path / "t", "--steps", "400", "--eval-every", "50", "--target-return", "-1")
    assert m["steps"] == 50 and "target-return" in m["stopped_early"]
    m = _distill(artifacts, tmp_path / "p", "--steps", "2000", "--eval-every", "10", "--patience", "2",
                 "--lr", "1e-9")  # fmt: skip
    assert m["steps"] < 2000 and "patience" in m["stopped_early"]
    assert len(m["history"]) == m["steps"] // 10


def test_same_seed_is_bit_identical_and_seed_matters(artifacts, tmp_path):
    args = ("--steps", "50", "--eval-every", "0", "--max-grad-norm", "1.0", "--lr-schedule", "cosine")
    _distill(artifacts, tmp_path / "a", *args)
    _distill(artifacts, tmp_path / "b", *args)
    _distill(artifacts, tmp_path / "c", *args, "--seed", "1")
    assert _same_weights(tmp_path / "a" / "last.pt", tmp_path / "b" / "last.pt")
    assert not _same_weights(tmp_path / "a" / "last.pt", tmp_path / "c" / "last.pt")


def test_source_weights_choose_recordings(artifacts, tmp_path):
    buf = Buffer.open(artifacts["buffer"])
    sampler = Sampler([buf, buf], ("obs",), seed=0, source_weights=(0.0, 1.0))
    idx = np.concatenate([sampler.indices(256) for _ in range(10)])
    assert idx.min() >= buf.rows and idx.max() < 2 * buf.rows  # only the second recording
    sampler = Sampler([buf, buf], ("obs",), seed=0, source_weights=(3.0, 1.0))
    idx = np.concatenate([sampler.indices(1000) for _ in range(10)])
    assert 0.72 < (idx < buf.rows).mean() < 0.78
    with pytest.raises(Exception, match="--source-weights needs 2"):
        Sampler([buf, buf], ("obs",), source_weights=(1.0,))


# ------------------------------------------------------------------------------------------- resumption

DISTILL_ARGS = [
    "--steps",
    "3000",
    "--eval-every",
    "500",
    "--checkpoint-every",
    "100",
    "--log-every",
    "50",
    "--in-memory",
    "False",
]  # memory-mapped: the prefetching sampler, the harder case to resume


def _cmd(buffer: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "policy_kd", "distill", "--buffer", str(buffer), "--out", str(out), *QUICK,
            *DISTILL_ARGS, "--max-grad-norm", "1", "--lr-schedule", "cosine", *extra]  # fmt: skip


def test_resume_after_kill9_reproduces_the_uninterrupted_weights(artifacts, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert subprocess.run(_cmd(artifacts["buffer"], full), env=env, capture_output=True).returncode == 0
    proc = subprocess.Popen(_cmd(artifacts["buffer"], cut), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and not (cut / "checkpoint.pt").exists():
        time.sleep(0.05)
    time.sleep(0.5)  # let it get past a few more checkpoints, then kill it mid-run
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "student.json").exists(), "the run finished before it was killed; raise --steps"
    saved = torch.load(cut / "checkpoint.pt", weights_only=True)["step"]
    assert 0 < saved < 3000
    # a second distill into the folder is refused; --resume continues it
    assert run_cli("distill", "--buffer", artifacts["buffer"], "--out", cut, "--no-progress") == 2
    assert run_cli("distill", "--resume", "--out", cut, "--no-progress") == 0
    assert _same_weights(full / "last.pt", cut / "last.pt")
    assert _same_weights(full / "best.pt", cut / "best.pt")
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (full, cut))
    assert [h["eval_mean_return"] for h in a["history"]] == [h["eval_mean_return"] for h in b["history"]]
    assert a["final"] == b["final"]
    assert not (cut / "checkpoint.pt").exists()  # a finished run has no checkpoint left
    assert run_cli("distill", "--resume", "--out", cut, "--no-progress") == 2  # nothing left to resume


# ------------------------------------------------------------------------------------------------ rounds


def test_dagger_rounds_grow_the_data_with_student_driven_states(artifacts, tmp_path):
    out = tmp_path / "dagger"
    m = _distill(
        artifacts,
        out,
        "--steps", "40", "--eval-every", "40", "--rounds", "3", "--round-steps", "200",
        "--behaviour", "mixture", "--beta-schedule", "linear", "--beta", "1.0", "--lr-schedule", "cosine",
        "--teacher", artifacts["teacher"],
    )  # fmt: skip
    base = Buffer.open(artifacts["buffer"]).rows
    assert m["rounds"] == 3 and m["steps"] == 120 and m["teacher_labels"] == base + 2 * 200
    fractions = []
    for r in (1, 2):
        buf = Buffer.open(out / "rounds" / f"round_{r}" / "buffer")
        assert buf.rows == 200 and buf.sources[0]["behaviour"] == "mixture"
        assert buf.sources[0]["config"]["beta"] == pytest.approx(DistillConfig(rounds=3).round_beta(r))
        fractions.append(buf.sources[0]["teacher_action_fraction"])
        assert (out / "rounds" / f"round_{r}" / "student" / "student.json").is_file()
    assert 0.3 < fractions[0] < 0.7 and fractions[1] == 0.0  # beta 0.5 (200 draws) then 0
    assert [h["round"] for h in m["history"]] == [0, 1, 2]


def test_beta_schedules():
    lin = DistillConfig(rounds=5, beta=1.0)
    assert [lin.round_beta(r) for r in range(1, 5)] == [0.75, 0.5, 0.25, 0.0]
    assert DistillConfig(rounds=3, beta=0.5, beta_schedule="exponential").round_beta(2) == 0.25
    assert DistillConfig(rounds=3, beta=0.3, beta_schedule="constant").round_beta(2) == 0.3
    assert DistillConfig(rounds=3, behaviour="student").round_beta(1) == 0.0


def test_rounds_without_a_buffer_start_from_the_teacher(artifacts, tmp_path):
    out = tmp_path / "fresh"
    args = ["distill", "--teacher", artifacts["teacher"], "--out", out, *QUICK, "--steps", "20", "--eval-every",
            "0", "--rounds", "2", "--round-steps", "100"]  # fmt: skip
    assert run_cli(*args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["teacher_labels"] == 200
    assert Buffer.open(out / "rounds" / "round_0" / "buffer").sources[0]["behaviour"] == "teacher"


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--loss", "gaussian_kl"], "does not apply to a q_values teacher"),
        (["--rounds", "0"], "--rounds must be > 0"),
        (["--beta-schedule", "cubic"], "unknown --beta-schedule"),
        (["--behaviour", "epsilon"], "unknown --behaviour"),
        (["--max-grad-norm", "-1"], "--max-grad-norm must be >= 0"),
        (["--student", "nature_cnn"], "image observations"),
    ],
)
def test_bad_distill_options_fail_in_one_line(artifacts, tmp_path, capsys, extra, message):
    code = run_cli(
        "distill", "--buffer", artifacts["buffer"], "--out", tmp_path / "x", "--no-progress", *extra
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_resume_without_checkpoint_says_how_to_start_over(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert run_cli("distill", "--resume", "--out", tmp_path / "run") == 2
    assert "--force" in capsys.readouterr().err


@pytest.mark.parametrize("loss", ["kl", "nll", "mse", "hinton", "kl_entropy"])
def test_every_discrete_loss_distils_and_lowers_its_loss(artifacts, tmp_path, loss):
    m = _distill(artifacts, tmp_path / loss, "--steps", "200", "--eval-every", "0", "--log-every", "20",
                 "--loss", loss, "--lr", "3e-3")  # fmt: skip
    acc = EventAccumulator(str(tmp_path / loss / "tb"))
    acc.Reload()
    curve = [e.value for e in acc.Scalars("loss/output")]
    assert curve[-1] < curve[0]
    assert load_student(tmp_path / loss).info["loss"]["name"] == loss and m["steps"] == 200


def test_nature_cnn_distils_from_channels_last_frames(tmp_path):
    """A synthetic Atari-shaped buffer (84x84x4 uint8, channels last) where the teacher's best action is
    which quarter of the last frame is lit: a NatureCNN student learns it."""
    from policy_kd.buffer import BufferWriter, FieldSpec

    rng = np.random.default_rng(0)
    n = 512
    obs = np.zeros((n, 84, 84, 4), dtype=np.uint8)
    label = rng.integers(4, size=n)
    for i, a in enumerate(label):
        r, c = divmod(int(a), 2)
        obs[i, r * 42 : (r + 1) * 42, c * 42 : (c + 1) * 42, 3] = 255
    q = np.eye(4, dtype=np.float32)[label] * 10
    box = {"type": "Box", "shape": [84, 84, 4], "dtype": "uint8"}
    meta = {"env_id": "Synthetic-v0", "observation_space": box, "action_space": {"type": "Discrete", "n": 4},
            "teacher": {"kind": "q_values", "algo": "dqn", "path": None, "policy_params": 1_684_000}}  # fmt: skip
    fields = {"obs": FieldSpec("uint8", (84, 84, 4)), "teacher": FieldSpec("float32", (4,))}
    with BufferWriter(tmp_path / "buf", fields=fields, meta=meta, source={"behaviour": "synthetic"},
                      capacity=n, chunk_rows=256) as w:  # fmt: skip
        w.append(obs=obs, teacher=q)
    out = tmp_path / "student"
    args = ["distill", "--buffer", tmp_path / "buf", "--out", out, "--student", "nature_cnn", "--params-fraction",
            "0.02", "--steps", "150", "--batch-size", "32", "--eval-every", "0", "--no-progress"]  # fmt: skip
    assert run_cli(*args) == 0
    student = load_student(out)
    assert student.info["spec"]["arch"] == "nature_cnn" and student.info["params_ratio"] <= 0.02
    assert (student.predict(obs[:128]) == label[:128]).mean() > 0.9
