"""What a policy costs to run: parameters, bytes, analytic FLOPs per step, CPU latency.

FLOPs are counted from the network itself, not estimated from its parameter count: forward hooks on every
``nn.Linear`` and ``nn.Conv2d`` record the shapes one forward pass actually sees, and each contributes its
multiply-accumulates (MACs):

- ``Linear(in, out)``: ``in × out`` MACs per sample;
- ``Conv2d``: ``out_h × out_w × out_channels × (in_channels / groups) × kernel_h × kernel_w`` per sample.

FLOPs are reported as ``2 × MACs`` (one multiply and one add each); biases, activations, normalisation
and pooling are ignored (they are a few percent of a Linear/Conv layer's work). Modules that a forward
pass does not reach (a PPO teacher's value head, DQN's target network) are not counted.

Latency is the median wall time of many calls of ``fn(obs)`` on a fixed batch of observations (numpy in,
numpy out, so every runtime pays its own conversion), after warm-up calls that are not timed, with torch
(and, where ``threadpoolctl`` is installed, BLAS) pinned to one thread.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

__all__ = ["count_macs", "measure_latency", "single_thread"]


def count_macs(module: Any, example: Any) -> int:
    """Multiply-accumulates of one forward pass of ``module`` on ``example`` (a batch), per sample.

    :param module: a ``torch.nn.Module``; its ``nn.Linear`` and ``nn.Conv2d`` submodules are counted
    :param example: the input batch (a tensor, or anything ``module`` takes); its first dimension is the
        batch size the total is divided by
    """
    import torch
    from torch import nn

    total = [0]

    def linear_hook(m: nn.Linear, _inp: Any, out: torch.Tensor) -> None:
        # out: (batch, ..., out_features); every output element costs in_features MACs
        total[0] += out.numel() * m.in_features

    def conv_hook(m: nn.Conv2d, _inp: Any, out: torch.Tensor) -> None:
        # out: (batch, out_channels, out_h, out_w); each element costs (in_channels / groups) * kh * kw MACs
        kh, kw = m.kernel_size
        total[0] += out.numel() * (m.in_channels // m.groups) * kh * kw

    handles = []
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            handles.append(sub.register_forward_hook(linear_hook))
        elif isinstance(sub, nn.Conv2d):
            handles.append(sub.register_forward_hook(conv_hook))
    try:
        with torch.no_grad():
            module(example)
    finally:
        for h in handles:
            h.remove()
    batch = int(example.shape[0]) if hasattr(example, "shape") else 1
    return total[0] // max(batch, 1)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Pin torch (and BLAS, via threadpoolctl when installed) to one thread for the duration."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    limiter: Any = contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(1)
    except ImportError:
        pass
    try:
        with limiter:
            yield
    finally:
        torch.set_num_threads(before)


def measure_latency(
    fn: Callable[[np.ndarray], Any],
    obs: np.ndarray,
    *,
    warmup: int = 50,
    min_calls: int = 200,
    min_seconds: float = 0.2,
    max_calls: int = 20_000,
) -> dict[str, float]:
    """Median seconds per call of ``fn(obs)``: ``warmup`` untimed calls, then at least ``min_calls`` timed
    calls and at least ``min_seconds`` of them (at most ``max_calls``), each timed on its own.

    :return: ``median_us``, ``p10_us``, ``p90_us`` (microseconds) and ``calls``.
    """
    for _ in range(warmup):
        fn(obs)
    times: list[int] = []
    clock = time.perf_counter_ns
    deadline = clock() + int(min_seconds * 1e9)
    while len(times) < max_calls and (len(times) < min_calls or clock() < deadline):
        t0 = clock()
        fn(obs)
        times.append(clock() - t0)
    us = np.asarray(times, dtype=np.float64) / 1e3
    return {
        "median_us": float(np.median(us)),
        "p10_us": float(np.percentile(us, 10)),
        "p90_us": float(np.percentile(us, 90)),
        "calls": len(times),
    }


def teacher_module(teacher: Any) -> Any:
    """The part of a teacher that chooses actions, as one ``nn.Module`` mapping a batch of observations in
    the network's layout to the teacher's outputs (what ``Teacher.label`` computes): for SB3, DQN's
    Q-network, QR-DQN's quantile network (averaged), PPO/A2C's actor (features, policy MLP, action head);
    a ``from_module`` teacher's module; None for a teacher without one (a scripted controller)."""
    return teacher.network()
