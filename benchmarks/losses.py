"""Time per forward+backward of every alignment term, beside a matmul of the same shapes.

    python -m benchmarks.losses [--batches 64 256 1024] [--dims 128 512] [--device cuda]

Prints a markdown table and writes it to benchmarks/results/losses[-DEVICE].md with the machine
it ran on. The ratio column (term / matmul) is what to compare across machines: both are timed
side by side in one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from cmkd import losses as L

C = 10  # classes, for the label-aware, class-conditional and label-alignment terms


def feature_terms():
    return {
        "fa sinkhorn ε=0.1": lambda zs, zt, ys, yt: L.sinkhorn_divergence(zs, zt, epsilon=0.1),
        "fa sinkhorn ε=0.01": lambda zs, zt, ys, yt: L.sinkhorn_divergence(zs, zt, epsilon=0.01),
        "fa sinkhorn label-aware": lambda zs, zt, ys, yt: L.sinkhorn_divergence(
            zs, zt, y_s=ys, y_t=yt, label_cost=2.0, num_classes=C
        ),
        "fa sinkhorn class-cond": lambda zs, zt, ys, yt: L.sinkhorn_divergence(
            zs, zt, y_s=ys, y_t=yt, class_conditional=True
        ),
        "fa mmd (5 kernels)": lambda zs, zt, ys, yt: L.mmd(zs, zt),
        "fa mmd class-cond": lambda zs, zt, ys, yt: L.mmd(
            zs, zt, y_s=ys, y_t=yt, class_conditional=True
        ),
        "fa reference OT": lambda zs, zt, ys, yt: L.reference_ot(zs, zt),
    }


def label_terms():
    return {
        "la teacher CE": L.la_teacher_ce,
        "la KL (T=2)": lambda s, t, y: L.la_kl(s, t, y, temperature=2.0),
        "la prior": L.la_prior,
        "la kappa (reference)": L.la_kappa_reference,
        "kd unpaired": L.kd_unpaired,
    }


def timed(fn, device, repeats: int, budget_s: float) -> float:
    """Median seconds of fn() after one warm-up, stopping early when over budget."""
    fn()
    times = []
    start = time.perf_counter()
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return statistics.median(times)


def bench_shape(b: int, d: int, device, repeats: int, budget_s: float) -> list[tuple]:
    """Rows (batch, dim, term, seconds, ratio to matmul) for one shape."""
    g = torch.Generator(device="cpu").manual_seed(0)
    z_s = torch.randn(b, d, generator=g).to(device).requires_grad_(True)
    z_t = torch.randn(b, d, generator=g).to(device)
    y = (torch.arange(b) % C).to(device)
    w = torch.randn(d, C, generator=g).to(device)  # a head, so label terms backpropagate to z_s

    def matmul():
        (z_s @ z_t.T).sum().backward()

    def feature(fn):
        return lambda: fn(z_s, z_t, y, y).backward()

    def label(fn):
        return lambda: fn(z_s @ w, z_s @ w, y).backward()

    base = timed(matmul, device, repeats, budget_s)
    rows = [(b, d, "matmul (B×D)·(D×B)", base, 1.0)]
    for name, fn in feature_terms().items():
        t = timed(feature(fn), device, repeats, budget_s)
        rows.append((b, d, name, t, t / base))
    for name, fn in label_terms().items():
        t = timed(label(fn), device, repeats, budget_s)
        rows.append((b, d, name, t, t / base))
    return rows


def run(batches, dims, device, repeats, budget_s):
    rows = []
    for b in batches:
        for d in dims:
            rows += bench_shape(b, d, device, repeats, budget_s)
            print(f"  done B={b} D={d}", flush=True)
    return rows


def machine(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )


def table(rows, device) -> str:
    lines = [
        f"# Alignment terms: forward + backward time ({device.type})",
        "",
        f"Machine: {machine(device)}. Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "Median of repeated runs after a warm-up; ratio = term time / matmul time of the same shapes.",
        "",
        "| batch | dim | term | ms | × matmul |",
        "|---:|---:|---|---:|---:|",
    ]
    lines += [f"| {b} | {d} | {n} | {t * 1e3:.2f} | {r:.1f} |" for b, d, n, t, r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument(
        "--budget", type=float, default=3.0, help="seconds per term before stopping repeats"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    # One thread: a shared 2-core machine time-slices two threads badly (matmul 100x slower seen)
    torch.set_num_threads(args.threads)
    rows = run(args.batches, args.dims, device, args.repeats, args.budget)
    text = table(rows, device)
    print(text)
    out = args.out or Path(__file__).parent / "results" / f"losses-{device.type}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
