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
    (batch, *in_shape) on ``device``, after a few warm-up passes. The model's train/eval mode
    is restored. The median resists the odd slow pass of a busy machine; trials running side by
    side still share its cores, so compare latencies within one sweep, not across machines."""
    device = torch.device(device)
    x = torch.randn(batch, *in_shape, generator=torch.Generator().manual_seed(0)).to(device)
    was_training = model.training
    model.eval()
    times = []
    try:
        for i in range(WARMUP + repeats):
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
