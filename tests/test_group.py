"""Students of one shape trained together (policy_kd.group, policy_kd.stacked): each as if trained alone."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import policy_kd
from policy_kd import group
from policy_kd.buffer import Buffer, Sampler, write_synthetic_q_buffer
from policy_kd.distill import DistillConfig, distill
from policy_kd.group import _GroupSampler, alone_reason, distill_group, group_key
from policy_kd.losses import LossConfig, compute_loss
from policy_kd.run import _STOP
from policy_kd.stacked import StackedAdamW, StackedStudents, stacked_loss
from policy_kd.students import build_student, load_student, size_student

TEACHER = dict(teacher_params=67_586, teacher_scale=5.0)  # the synthetic buffers' (a DQN on CartPole)
TOL = 2e-4  # a batched matmul sums in another order than a single one: weights agree to float rounding


@pytest.fixture(scope="module")
def cartpole_buffer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic CartPole-shaped rows (4 floats, 2 actions): evaluation runs on the real env."""
    return write_synthetic_q_buffer(
        tmp_path_factory.mktemp("group") / "buffer", (4,), 2, 5_000, env_id="CartPole-v1", **TEACHER
    )


# a mixed group: every discrete loss, per-student tau, lr, schedule, weight decay and clipping
MIXED = [
    dict(seed=0, loss="kl", tau=0.01),
    dict(seed=1, loss="kl", tau=0.1, lr=3e-3, lr_schedule="cosine", weight_decay=0.01),
    dict(seed=2, loss="hinton", temperature=3.0, lam=0.3, max_grad_norm=0.5),
    dict(seed=3, loss="nll", lr_schedule="cosine"),
    dict(seed=4, loss="mse", lr=2e-3),
    dict(seed=5, loss="kl_entropy", tau=0.05, weight_decay=0.1, max_grad_norm=1.0),
]


def _configs(buffer: Path, root: Path, students: list[dict], **common) -> list[DistillConfig]:
    base = dict(buffer=str(buffer), params_fraction=0.01, steps=240, eval_every=0, checkpoint_every=100,
                log_every=50, progress=False)  # fmt: skip
    return [
        DistillConfig(**{**base, **common, **s, "out": str(root / str(i))}) for i, s in enumerate(students)
    ]


def _weights(folder: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return torch.load(folder / name, weights_only=True)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_a_group_trains_each_student_as_distill_alone(cartpole_buffer, tmp_path):
    alone = _configs(cartpole_buffer, tmp_path / "alone", MIXED, eval_every=120, eval_episodes=2)
    together = _configs(cartpole_buffer, tmp_path / "together", MIXED, eval_every=120, eval_episodes=2)
    assert len({group_key(c) for c in together}) == 1
    for c in alone:
        distill(c)
    folders = distill_group(together)
    assert folders == [Path(c.out) for c in together]
    for a, b, s in zip(alone, together, MIXED, strict=True):
        a, b = Path(a.out), Path(b.out)
        assert _max_diff(_weights(a), _weights(b)) < TOL, s
        ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
        assert [h["eval_mean_return"] for h in ma["history"]] == [
            h["eval_mean_return"] for h in mb["history"]
        ]
        assert ma["final"].keys() == mb["final"].keys()
        for key, value in ma["final"].items():
            assert mb["final"][key] == pytest.approx(value, rel=1e-3, abs=1e-4), (s, key)
        assert ma["steps"] == mb["steps"] == 240
        # an ordinary student folder: loadable, evaluable, with its run record and TensorBoard scalars
        assert (b / "config.yaml").is_file() and (b / "command.txt").is_file() and any((b / "tb").iterdir())
        assert not (b / "checkpoint.pt").exists()
        net = load_student(b)
        assert net.info == {**load_student(a).info}
        assert net.predict(np.zeros((3, 4), dtype=np.float32)).shape == (3,)


def test_an_interrupted_group_resumes_bit_for_bit_and_distill_resumes_its_students(
    cartpole_buffer, tmp_path, monkeypatch
):
    students = MIXED[:4]
    full = _configs(cartpole_buffer, tmp_path / "full", students)
    cut = _configs(cartpole_buffer, tmp_path / "cut", students)
    distill_group(full)
    step = group._Group._train_step

    def interrupt_at_130(self, *args):  # SIGINT between two steps, mid draw-ahead chunk
        step(self, *args)
        if self.step == 130:
            _STOP.append(2)

    monkeypatch.setattr(group._Group, "_train_step", interrupt_at_130)
    with pytest.raises(KeyboardInterrupt):
        distill_group(cut)
    monkeypatch.undo()
    for c in cut:
        assert torch.load(Path(c.out) / "checkpoint.pt", weights_only=True)["step"] == 130
    # one student goes on alone with distill --resume, the others as a group
    distill(replace(cut[0], resume=True))
    distill_group([replace(c, resume=True) for c in cut[1:]])
    for a, b in zip(full[1:], cut[1:], strict=True):
        assert _max_diff(_weights(Path(a.out)), _weights(Path(b.out))) == 0.0  # bit for bit
        assert (
            json.loads((Path(a.out) / "metrics.json").read_text())["final"]
            == json.loads((Path(b.out) / "metrics.json").read_text())["final"]
        )
    assert _max_diff(_weights(Path(full[0].out)), _weights(Path(cut[0].out))) < TOL


def test_a_group_checkpoint_is_the_checkpoint_distill_writes(cartpole_buffer, tmp_path, monkeypatch):
    students = MIXED[:2]
    alone = _configs(cartpole_buffer, tmp_path / "alone", students, steps=100, checkpoint_every=50)
    together = _configs(cartpole_buffer, tmp_path / "together", students, steps=100, checkpoint_every=50)
    # keep the checkpoints at step 50: stop each run just before it finishes
    monkeypatch.setattr(group._Member, "_finish", lambda self: self.out)
    monkeypatch.setattr(policy_kd.distill._Run, "_finish", lambda self: self.out)
    for c in alone:
        distill(c)
    distill_group(together)
    for a, b in zip(alone, together, strict=True):
        sa, sb = (torch.load(Path(c.out) / "checkpoint.pt", weights_only=True) for c in (a, b))
        assert sa.keys() == sb.keys() and sa["step"] == sb["step"] == 50
        assert torch.equal(sa["sampler"], sb["sampler"]) and torch.equal(sa["torch_rng"], sb["torch_rng"])
        assert _max_diff(sa["net"], sb["net"]) < TOL
        assert sa["opt"]["param_groups"] == sb["opt"]["param_groups"]
        assert sa["opt"]["state"].keys() == sb["opt"]["state"].keys()
        for i, s in sa["opt"]["state"].items():
            assert torch.equal(s["step"], sb["opt"]["state"][i]["step"])
            assert float((s["exp_avg"] - sb["opt"]["state"][i]["exp_avg"]).abs().max()) < TOL
        assert sa["sched"] == sb["sched"]
        assert sa["count"] == sb["count"] and sa["last"].keys() == sb["last"].keys()


def test_cnn_students_train_together_as_alone(tmp_path):
    """MinAtar-shaped frames (10x10x4, channels last): a grouped convolution for K students."""
    buffer = write_synthetic_q_buffer(
        tmp_path / "buffer", (10, 10, 4), 3, 2_000, env_id="MinAtar/Breakout-v1", **TEACHER
    )
    students = [dict(seed=0), dict(seed=1, tau=0.1, lr=3e-3), dict(seed=2, loss="mse")]
    common = dict(student="minatar_cnn", channels=(4,), hidden=(16,), steps=60, checkpoint_every=0)
    alone = _configs(buffer, tmp_path / "alone", students, **common)
    together = _configs(buffer, tmp_path / "together", students, **common)
    for c in alone:
        distill(c)
    distill_group(together)
    for a, b in zip(alone, together, strict=True):
        assert _max_diff(_weights(Path(a.out)), _weights(Path(b.out))) < TOL


def test_students_that_cannot_share_a_model_train_alone_and_say_why(cartpole_buffer, tmp_path):
    base = _configs(cartpole_buffer, tmp_path, [{}])[0]
    assert alone_reason(base) is None and group_key(base) is not None
    assert "DAgger" in alone_reason(replace(base, rounds=2, teacher="t"))
    assert "hint" in alone_reason(replace(base, hint_weight=1.0, teacher="t"))
    assert "early stopping" in alone_reason(replace(base, patience=3))
    assert group_key(replace(base, patience=3)) is None
    # what may differ within a group, and what may not
    assert group_key(replace(base, seed=3, loss="nll", lr=0.1, tau=1.0)) == group_key(base)
    assert group_key(replace(base, params_fraction=0.04)) != group_key(base)
    assert group_key(replace(base, batch_size=64)) != group_key(base)
    # a group of one and a student with an alone_reason run distill itself
    configs = _configs(cartpole_buffer, tmp_path / "mixed", [{}, {"patience": 1, "eval_every": 60}], steps=60)
    folders = distill_group(configs)
    assert all((f / "student.json").is_file() for f in folders)


def test_distill_students_is_the_public_api(cartpole_buffer, tmp_path):
    folders = policy_kd.distill_students(
        cartpole_buffer,
        [{"out": tmp_path / "a", "seed": 0}, {"out": tmp_path / "b", "seed": 1, "loss": "nll"}],
        steps=30,
        eval_every=0,
    )
    assert folders == [tmp_path / "a", tmp_path / "b"]
    assert load_student(tmp_path / "b").info["loss"]["name"] == "nll"
    with pytest.raises(policy_kd.PolicyKDError, match="unknown option"):
        policy_kd.distill_students(cartpole_buffer, [{"out": tmp_path / "c", "sed": 0}])


# ------------------------------------------------------------------------------------- the stacked pieces


@pytest.mark.parametrize(
    "config",
    [
        LossConfig("kl", tau=0.01),
        LossConfig("kl", tau=2.0),
        LossConfig("nll"),
        LossConfig("mse"),
        LossConfig("hinton", temperature=3.0, lam=0.2),
        LossConfig("kl_entropy", tau=0.1, entropy_weight=0.3),
    ],
)
def test_stacked_loss_and_gradient_are_each_students_own(config):
    rng = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 4, 16, generator=rng) * 3, torch.randn(3, 4, 16, generator=rng) * 10
    # three students: this loss, and two others beside it (their settings must not leak into it)
    configs = [config, LossConfig("kl", tau=0.5), LossConfig("hinton", temperature=1.5, lam=0.9)]
    loss, grad = stacked_loss(s, t, configs)
    for k, c in enumerate(configs):
        x = s[k].T.clone().requires_grad_()  # (batch, n_actions), as distill computes it
        expected = compute_loss(x, t[k].T, c)
        expected.backward()
        expected = expected.detach()
        assert float(loss[k]) == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
        torch.testing.assert_close(grad[k].T, x.grad, rtol=1e-5, atol=1e-7)


def test_stacked_adamw_is_bit_for_bit_torch_adamw():
    spec = size_student("mlp", (4,), 2, hidden=(8, 8), params_fraction=None, teacher_params=None)
    nets = []
    for seed in range(3):
        torch.manual_seed(seed)
        nets.append(build_student(spec))
    lrs, wds, clips = [1e-3, 3e-2, 1e-3], [0.0, 0.1, 0.01], [0.0, 0.0, 0.0]
    stack = StackedStudents(nets)
    opt = StackedAdamW(stack, lrs=lrs, weight_decays=wds, max_grad_norms=clips)
    opts = [
        torch.optim.AdamW(n.parameters(), lr=lr, weight_decay=wd)
        for n, lr, wd in zip(nets, lrs, wds, strict=True)
    ]
    rng = torch.Generator().manual_seed(1)
    for _ in range(5):
        stack.grad.copy_(torch.randn(stack.grad.shape, generator=rng))
        for k, (n, o) in enumerate(zip(nets, opts, strict=True)):
            for p, g in zip(n.parameters(), stack.per_student(stack.grad)[k], strict=True):
                p.grad = g
            o.step()
        opt.step()
    for k, n in enumerate(nets):
        for name, p in n.named_parameters():
            assert torch.equal(stack.student_params(k)[name], p.detach()), (k, name)


def test_stacked_clip_matches_clip_grad_norm():
    spec = size_student("mlp", (4,), 2, hidden=(8,), params_fraction=None, teacher_params=None)
    nets = [build_student(spec) for _ in range(3)]
    stack = StackedStudents(nets)
    opt = StackedAdamW(stack, lrs=[1e-3] * 3, weight_decays=[0.0] * 3, max_grad_norms=[0.5, 0.0, 100.0])
    stack.grad.copy_(torch.randn(stack.grad.shape) * 3)
    grads = stack.per_student(stack.grad)
    norms = opt.clip()
    for k, limit in enumerate([0.5, 0.0, 100.0]):
        expected = torch.nn.utils.get_total_norm(grads[k])
        assert float(norms[k]) == pytest.approx(float(expected), rel=1e-5)
        coef = min(limit / (float(expected) + 1e-6), 1.0) if limit else 1.0  # clip_grad_norm_'s rule
        for a, b in zip(stack.per_student(stack.grad)[k], grads[k], strict=True):
            torch.testing.assert_close(a, b * coef)


def test_group_sampler_draws_each_students_own_minibatches(cartpole_buffer):
    buf = Buffer.open(cartpole_buffer)
    shared = Sampler(buf, ("obs", "teacher"), seed=0)
    sampler = _GroupSampler(shared, [7, 8], batch_size=16)
    alone = [Sampler(buf, ("obs", "teacher"), seed=s) for s in (7, 8)]
    for step in range(150):
        batch = sampler.sample(ahead=150 - step)
        for k, s in enumerate(alone):
            expected = s.sample(16)
            assert torch.equal(batch["obs"][k], expected["obs"])
            assert torch.equal(batch["teacher"][k].T, expected["teacher"])
        if step == 70:  # mid draw-ahead chunk: the states are those after the steps taken
            assert all(torch.equal(a, s.state()) for a, s in zip(sampler.states(), alone, strict=True))


@pytest.mark.parametrize(
    "common",
    [
        dict(activation="gelu"),  # no hand-written backward: the stacked parameters with autograd
        dict(in_memory=False),  # memory-mapped: each student's batch gathered (and sorted) by the sampler
        dict(activation="tanh", hidden=(8, 8, 8)),  # three hidden layers, tanh's backward kernel
    ],
)
def test_other_networks_and_sampling_paths_train_as_alone(cartpole_buffer, tmp_path, common):
    students = [dict(seed=0), dict(seed=1, loss="nll", lr=3e-3)]
    alone = _configs(cartpole_buffer, tmp_path / "alone", students, steps=60, checkpoint_every=0, **common)
    together = _configs(
        cartpole_buffer, tmp_path / "together", students, steps=60, checkpoint_every=0, **common
    )
    for c in alone:
        distill(c)
    distill_group(together)
    for a, b in zip(alone, together, strict=True):
        assert _max_diff(_weights(Path(a.out)), _weights(Path(b.out))) < TOL


def test_group_sampler_table_holds_standardised_obs_beside_the_teacher(cartpole_buffer):
    buf = Buffer.open(cartpole_buffer)
    mean, std = torch.tensor([0.1, -0.2, 0.3, 0.0]), torch.tensor([1.5, 0.5, 2.0, 1.0])
    sampler = _GroupSampler(
        Sampler(buf, ("obs", "teacher"), seed=0), [3, 4], batch_size=8, standardize=lambda o: (o - mean) / std
    )
    alone = [Sampler(buf, ("obs", "teacher"), seed=s) for s in (3, 4)]
    for _ in range(3):
        batch = sampler.sample(ahead=3)
        for k, s in enumerate(alone):
            expected = s.sample(8)
            assert torch.equal(batch["x"][k].T, (expected["obs"] - mean) / std)
            assert torch.equal(batch["teacher"][k].T, expected["teacher"])


@pytest.mark.slow
def test_a_group_killed_with_sigkill_resumes_to_the_uninterrupted_weights(cartpole_buffer, tmp_path):
    """kill -9 mid-group (no chance to checkpoint): the group resumes from its last checkpoints."""
    import os
    import signal
    import subprocess
    import sys
    import time

    students = MIXED[:3]
    full = _configs(cartpole_buffer, tmp_path / "full", students, steps=2_000, checkpoint_every=100)
    cut = _configs(cartpole_buffer, tmp_path / "cut", students, steps=2_000, checkpoint_every=100)
    distill_group(full)
    script = (
        "import torch; torch.set_num_threads(1)\n"
        "from policy_kd.distill import DistillConfig\nfrom policy_kd.group import distill_group\n"
        f"distill_group([DistillConfig(**c) for c in {[c.__dict__ for c in cut]!r}])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not all((Path(c.out) / "checkpoint.pt").exists() for c in cut):
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not any((Path(c.out) / "student.json").exists() for c in cut), "finished before the kill"
    steps = {torch.load(Path(c.out) / "checkpoint.pt", weights_only=True)["step"] for c in cut}
    distill_group([replace(c, resume=True) for c in cut])
    for a, b in zip(full, cut, strict=True):
        diff = _max_diff(_weights(Path(a.out)), _weights(Path(b.out)))
        # one step in every checkpoint: one group again, bit for bit (a kill between two students'
        # checkpoints leaves two steps: two groups, equal to float rounding)
        assert diff == 0.0 if len(steps) == 1 else diff < TOL
