"""Distillation throughput of ``policy-kd distill`` against the plainest PyTorch loop, side by side.

The reference loop is the physical limit of a training step: tensors already in memory, index a
minibatch, forward, KL loss, backward, AdamW step; nothing else. ``distill`` runs the same student (same
architecture, batch, loss, optimiser, thread count) from a real buffer (synthetic CartPole-like rows
written with the buffer writer), in RAM and memory-mapped, with evaluation and checkpoints off so that
only the loop is timed. Goals: >= 0.95 in RAM, >= 0.85 memory-mapped.

    python benchmarks/bench_distill.py [--rows 1000000] [--steps 3000] [--hidden 64 64] [--dir /tmp/pkd_bench]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from policy_kd.buffer import Buffer, BufferWriter, FieldSpec
from policy_kd.distill import DistillConfig, distill
from policy_kd.losses import kl
from policy_kd.students import build_student, size_student

OBS_DIM, N_ACTIONS = 4, 2


def make_buffer(path: Path, rows: int, chunk: int = 1 << 18) -> Buffer:
    if not (path / "manifest.json").is_file():
        shutil.rmtree(path, ignore_errors=True)
        rng = np.random.default_rng(0)
        box = {"type": "Box", "shape": [OBS_DIM], "dtype": "float32"}
        meta = {
            "env_id": "CartPole-v1",
            "observation_space": box,
            "action_space": {"type": "Discrete", "n": N_ACTIONS},
            "teacher": {"kind": "q_values", "algo": "dqn", "path": None, "policy_params": 67_586},
        }
        fields = {"obs": FieldSpec("float32", (OBS_DIM,)), "teacher": FieldSpec("float32", (N_ACTIONS,))}
        with BufferWriter(path, fields=fields, meta=meta, source={"behaviour": "synthetic"}, capacity=rows,
                          chunk_rows=chunk) as w:  # fmt: skip
            for start in range(0, rows, chunk):
                n = min(chunk, rows - start)
                w.append(
                    obs=rng.standard_normal((n, OBS_DIM), dtype=np.float32),
                    teacher=rng.standard_normal((n, N_ACTIONS), dtype=np.float32) * 10,
                )
    return Buffer.open(path, verify=False)


def bare_loop(buf: Buffer, hidden: tuple[int, ...], steps: int, batch: int) -> float:
    """Samples/s of the reference loop on tensors in memory."""
    obs, teacher = torch.from_numpy(buf.field("obs")), torch.from_numpy(buf.field("teacher"))
    spec = size_student(
        "mlp", (OBS_DIM,), N_ACTIONS, hidden=hidden, params_fraction=None, teacher_params=None
    )
    torch.manual_seed(0)
    net = build_student(spec)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)

    def run(n: int) -> None:
        for _ in range(n):
            idx = torch.randint(len(obs), (batch,), generator=gen)
            loss = kl(net(obs[idx]), teacher[idx], tau=0.01)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    run(100)  # warm-up
    start = time.perf_counter()
    run(steps)
    return steps * batch / (time.perf_counter() - start)


def distill_loop(
    buf: Buffer, out: Path, hidden: tuple[int, ...], steps: int, batch: int, in_memory: bool
) -> float:
    cfg = DistillConfig(
        buffer=str(buf.path),
        out=str(out),
        hidden=hidden,
        steps=steps,
        batch_size=batch,
        eval_every=0,
        checkpoint_every=0,
        progress=False,
        in_memory=in_memory,
        force=True,
    )
    distill(cfg)
    return float(json.loads((out / "metrics.json").read_text())["samples_per_second"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--hidden", type=int, nargs="+", action="append", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/pkd_bench"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    hiddens = [tuple(h) for h in args.hidden] if args.hidden else [(22, 22), (256, 256)]
    buf = make_buffer(args.dir / f"distill_{args.rows}", args.rows)
    print(
        f"buffer: {buf.rows:,} rows, {buf.nbytes() / 1e6:.0f} MB; batch {args.batch}, {args.steps} steps, 1 thread"
    )
    for hidden in hiddens:
        # interleave the three, best of --repeats each: the machine's noise hits all of them alike
        bare, ram, mm = [], [], []
        for _ in range(args.repeats):
            bare.append(bare_loop(buf, hidden, args.steps, args.batch))
            ram.append(distill_loop(buf, args.dir / "s_ram", hidden, args.steps, args.batch, True))
            mm.append(distill_loop(buf, args.dir / "s_mm", hidden, args.steps, args.batch, False))
        b, r, m = max(bare), max(ram), max(mm)
        print(
            f"student mlp {list(hidden)}: bare loop {b:,.0f} samples/s | distill in RAM {r:,.0f} "
            f"-> {r / b:.3f} (goal 0.95) | memory-mapped {m:,.0f} -> {m / b:.3f} (goal 0.85)"
        )


if __name__ == "__main__":
    main()
