"""Minibatch sampling throughput from large memory-mapped buffers, and the memory it costs.

Builds synthetic buffers with the real writer (vector observations: CartPole-like float32[4] + 2 teacher
outputs; MinAtar-like uint8[4,10,10] frames + 6 outputs), then times ``Sampler.sample(256)`` memory-mapped
on a small and a large buffer in the same run and prints the ratio (goal >= 0.7). While sampling from the
large buffer, the process's private anonymous memory (RssAnon) is compared with the buffer's size on disk:
file pages the OS caches are not private memory.

    python benchmarks/bench_sampler.py [--large-vec 10000000] [--large-img 1000000] [--dir /tmp/pkd_bench]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from policy_kd.buffer import Buffer, BufferWriter, FieldSpec, Sampler


def rss_anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_buffer(path: Path, rows: int, obs: FieldSpec, n_out: int, chunk: int = 1 << 18) -> Buffer:
    if not (path / "manifest.json").is_file():
        shutil.rmtree(path, ignore_errors=True)
        rng = np.random.default_rng(0)
        w = BufferWriter(
            path,
            fields={"obs": obs, "teacher": FieldSpec("float32", (n_out,))},
            meta={},
            source={"behaviour": "synthetic"},
            capacity=rows,
            chunk_rows=chunk,
        )
        with w:
            done = 0
            while done < rows:
                n = min(chunk, rows - done)
                if obs.dtype == "uint8":
                    o = (rng.random((n, *obs.shape)) < 0.1).astype(np.uint8)
                else:
                    o = rng.standard_normal((n, *obs.shape), dtype=np.float32)
                w.append(obs=o, teacher=rng.standard_normal((n, n_out), dtype=np.float32))
                done += n
    return Buffer.open(path, verify=False)


def batches_per_second(buf: Buffer, seconds: float, in_memory: bool) -> float:
    sampler = Sampler(buf, ("obs", "teacher"), seed=0, in_memory=in_memory)
    for _ in range(50):  # warm-up
        sampler.sample(256)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(50):
            sampler.sample(256)
        n += 50
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=10_000)
    ap.add_argument("--large-vec", type=int, default=10_000_000)
    ap.add_argument("--large-img", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=3, help="best of N for each size, interleaved")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/policy_kd_bench"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    cases = [
        ("vector obs float32[4]", FieldSpec("float32", (4,)), 2, args.large_vec),
        ("MinAtar frames uint8[4,10,10]", FieldSpec("uint8", (4, 10, 10)), 6, args.large_img),
    ]
    print(
        f"{'buffer':32s} {'rows':>12s} {'on disk MB':>11s} {'batches/s':>10s} {'ratio':>6s} {'RssAnon MB':>11s}"
    )
    for name, obs, n_out, large in cases:
        small_buf = make_buffer(args.dir / f"{obs.dtype}_{args.small}", args.small, obs, n_out)
        large_buf = make_buffer(args.dir / f"{obs.dtype}_{large}", large, obs, n_out)
        # interleaved, best of --repeats: machine noise (other processes, frequency) hits both sizes alike
        base = big = 0.0
        before = rss_anon_mb()
        for _ in range(args.repeats):
            base = max(base, batches_per_second(small_buf, args.seconds, in_memory=False))
            big = max(big, batches_per_second(large_buf, args.seconds, in_memory=False))
        after = rss_anon_mb()
        disk = large_buf.nbytes() / 1e6
        print(f"{name:32s} {args.small:>12,d} {small_buf.nbytes() / 1e6:>11.1f} {base:>10.0f} {'':>6s}")
        print(
            f"{name:32s} {large:>12,d} {disk:>11.1f} {big:>10.0f} {big / base:>6.2f} {after:>11.1f}"
            f"  (RssAnon grew {after - before:+.1f} MB while sampling; {after / disk * 100:.1f}% of the buffer)"
        )
        ram = batches_per_second(small_buf, args.seconds, in_memory=True)
        print(f"{name:32s} {'in RAM':>12s} {'':>11s} {ram:>10.0f}   (same small buffer held as tensors)")


if __name__ == "__main__":
    main()
