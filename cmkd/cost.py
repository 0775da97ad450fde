"""What a student costs at inference, measured: the latency of a forward pass.

A trial reports it beside its accuracy and its parameter count (``Run.student_params``) when a
two-objective sweep (``cmkd.pareto``) asks for it.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from cmkd.pareto import LATENCY_BATCH

WARMUP = 3
REPEATS = 15
"""Timed passes at least; more while they add up to less than :data:`MIN_TOTAL_S`."""
MIN_TOTAL_S = 0.2
"""A small student's pass takes microseconds: timing about 0.2 s of them steadies the median."""
MAX_REPEATS = 2000


@torch.no_grad()
def latency_ms(
    model: nn.Module,
    in_shape: tuple[int, ...],
    device: torch.device | str = "cpu",
    *,
    batch: int = LATENCY_BATCH,
    repeats: int = REPEATS,
) -> float:
    """Median wall time (ms) of one eval-mode forward pass of a fixed random batch
    (batch, *in_shape) on ``device``, after a few warm-up passes: at least ``repeats`` timed
    passes, and more (up to :data:`MAX_REPEATS`) until they add up to :data:`MIN_TOTAL_S`.
    The model's train/eval mode is restored. The median resists the odd slow pass of a busy machine; trials running side by
    side still share its cores, so compare latencies within one sweep, not across machines."""
    device = torch.device(device)
    x = torch.randn(batch, *in_shape, generator=torch.Generator().manual_seed(0)).to(device)
    was_training = model.training
    model.eval()
    times: list[float] = []
    try:
        for i in range(WARMUP + MAX_REPEATS):
            if len(times) >= repeats and sum(times) >= MIN_TOTAL_S:
                break
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= WARMUP:
                times.append(time.perf_counter() - t0)
    finally:
        model.train(was_training)
    return 1000.0 * statistics.median(times)
