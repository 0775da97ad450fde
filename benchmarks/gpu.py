"""On an NVIDIA GPU: the loss terms' share of a training step, and the device use of a sweep trial.

    python -m benchmarks.gpu [--benchmark avdigits] [--batch-size 256] [--skip-trial]
    python -m benchmarks.gpu --device cpu --out /tmp/gpu-cpu.md   # the same measures on a CPU

1. Step share at batch 256 (UCMKD sum, Sinkhorn FA + teacher-CE LA, the student of
   ``cmkd.train.Run`` moved to the device, batches and bank rows already on it). Three views:
   - the whole step against the same step with both terms switched off (w_fa = w_la = 0, CE
     only): share = 1 - CE step / full step;
   - forward + backward of each term alone on the step's shapes (z_s: (B, D));
   - torch.profiler over a few steps: the kernels that take the most device time.
   Device times from CUDA events (``torch.cuda.Event``), median over repeats after a warm-up.
2. Device use of a sweep: ``python -m cmkd.tune --gpus-per-worker 1 --max-concurrent 1
   --final-seeds 0 --wandb disabled`` (plus --trial-args) while ``nvidia-smi`` samples GPU
   utilisation and memory every 200 ms; mean and peak over the run and over the samples in
   which the GPU held any memory of ours.

Without a GPU it says so, writes nothing over earlier results measured on a GPU, and exits 0.
Writes benchmarks/results/gpu.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from cmkd.config import DataConfig, DistillConfig
from cmkd.methods import Batch, make_step
from cmkd.train import Run, load_run_data

CONFIG = {"algorithm": "ucmkd_sum", "fa": "sinkhorn", "epsilon": 0.1, "la": "teacher_ce"}
MEASURED = "## Loss terms' share of a step"  # a results file that holds real measurements


def clock(device: torch.device):
    """A timer for ``fn`` on ``device``: CUDA events on a GPU, perf_counter on a CPU. -> ms"""

    def cuda_ms(fn) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)

    def cpu_ms(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return 1000 * (time.perf_counter() - t0)

    return cuda_ms if device.type == "cuda" else cpu_ms


def median_ms(fn, device, repeats: int) -> float:
    ms = clock(device)
    ms(fn)  # warm-up: kernels compiled and cached, allocator filled
    return statistics.median(ms(fn) for _ in range(repeats))


def device_batches(run: Run, device: torch.device, n: int) -> list[Batch]:
    """n class-matched batches of the run's data, already on the device."""
    z_bank, logits_bank, y_bank = run.bank_t
    out = []
    while len(out) < n:
        for x_s, y_s in run._batches():
            rows = torch.from_numpy(run.sampler.class_matched(y_s.numpy()))
            z_t, y_t, logits_t = (t.index_select(0, rows) for t in (z_bank, y_bank, logits_bank))
            out.append(Batch(*(t.to(device) for t in (x_s, y_s, z_t, y_t, logits_t))))
    return out[:n]


def step_share(data, data_cfg, device, batch_size: int, repeats: int) -> dict:
    """Step times full and CE-only, each term alone, and the profiler's top kernels."""
    cfg = DistillConfig(**CONFIG, batch_size=batch_size, steps_per_epoch=4)
    run = Run(cfg, data, data_cfg)
    run.student.to(device)  # in place: the optimizer keeps the same parameters
    h_t = data.bank.head.to(device)
    batches = device_batches(run, device, repeats + 1)
    full = make_step(cfg.algorithm, **cfg.step_kwargs())
    ce_only = make_step(cfg.algorithm, **{**cfg.step_kwargs(), "w_fa": 0.0, "w_la": 0.0})
    it = {"i": 0}

    def one(step):
        def go():
            step(run.student, h_t, run.opt, batches[it["i"] % len(batches)])
            it["i"] += 1

        return go

    out = {"full_ms": median_ms(one(full), device, repeats)}
    out["ce_ms"] = median_ms(one(ce_only), device, repeats)

    b = batches[0]
    z_s = run.student.features(b.x_s).detach().requires_grad_(True)  # (B, D)
    kw = cfg.step_kwargs()
    out["fa_ms"] = median_ms(lambda: kw["fa"](z_s, b.z_t, b.y_s, b.y_t).backward(), device, repeats)
    out["la_ms"] = median_ms(
        lambda: kw["la"](run.student.head(z_s), h_t(z_s), b.y_s).backward(), device, repeats
    )

    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            one(full)()
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    averages = sorted(prof.key_averages(), key=lambda e: -getattr(e, key, 0))
    total = sum(getattr(e, key, 0) for e in averages) or 1
    out["kernels"] = [
        (e.key, getattr(e, key) / 3 / 1000, getattr(e, key) / total) for e in averages[:12]
    ]
    return out


def sample_gpu(stop: threading.Event, samples: list, period_ms: int = 200) -> None:
    """Append (utilisation %, memory MiB) of GPU 0 from nvidia-smi until ``stop`` is set."""
    cmd = [
        "nvidia-smi",
        "--id=0",
        "--query-gpu=utilization.gpu,memory.used",
        "--format=csv,noheader,nounits",
        f"-lms={period_ms}",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if stop.is_set():
                break
            try:
                util, mem = (float(v) for v in line.split(","))
            except ValueError:
                continue
            samples.append((util, mem))
    finally:
        proc.terminate()
        proc.wait()


def trial_utilisation(extra: list[str], data_root: str) -> dict:
    """GPU utilisation and memory while a small sweep runs its trials on the GPU."""
    work = tempfile.mkdtemp(prefix="cmkd-gpu-")
    cmd = [
        sys.executable,
        "-m",
        "cmkd.tune",
        "--gpus-per-worker",
        "1",
        "--max-concurrent",
        "1",
        "--final-seeds",
        "0",
        "--wandb",
        "disabled",
        "--data-root",
        data_root,
        "--storage",
        work,
        "--name",
        "gpu",
        *extra,
    ]
    print(" ".join(cmd), flush=True)
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    idle = []
    sample_gpu_once = threading.Thread(target=sample_gpu, args=(stop, idle), daemon=True)
    sample_gpu_once.start()
    time.sleep(1.0)  # the GPU's memory before the sweep: what is not ours
    stop.set()
    sample_gpu_once.join(timeout=5)
    stop = threading.Event()
    sampler = threading.Thread(target=sample_gpu, args=(stop, samples), daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    rc = subprocess.call(cmd)
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join(timeout=5)
    if rc != 0:
        raise SystemExit(f"cmkd.tune exited with {rc}")
    base_mem = min((m for _, m in idle), default=0.0)
    busy = [(u, m) for u, m in samples if m > base_mem + 1]
    util = [u for u, _ in samples]
    return {
        "command": "python -m cmkd.tune " + shlex.join(cmd[3:]),
        "wall": wall,
        "samples": len(samples),
        "util_mean": statistics.fmean(util) if util else float("nan"),
        "util_max": max(util, default=float("nan")),
        "busy_samples": len(busy),
        "busy_util_mean": statistics.fmean(u for u, _ in busy) if busy else float("nan"),
        "mem_max": max((m for _, m in samples), default=float("nan")) - base_mem,
    }


def no_gpu(out: Path) -> None:
    when = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    where = f"{platform.node() or 'this machine'} ({platform.machine()}, {os.cpu_count()} cores)"
    msg = (
        f"benchmarks.gpu: no NVIDIA GPU visible to torch {torch.__version__} "
        f"(CUDA build: {torch.version.cuda or 'none'}) on {where}; nothing measured. "
        "Run it on a machine with a GPU, or pass --device cpu to exercise it on a CPU."
    )
    print(msg)
    if out.exists() and MEASURED in out.read_text():
        print(f"{out} holds measurements from a GPU: left as it is")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        "# GPU: loss terms' share of a step, device use of a trial\n\n"
        f"Not measured. Last attempted {when} on {where}, which has no NVIDIA GPU (torch "
        f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}). No numbers are "
        "given here rather than numbers from a CPU: run `python -m benchmarks.gpu` on a machine "
        "with an NVIDIA GPU and the driver's `nvidia-smi`.\n"
    )
    print(f"written to {out}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda", help="cuda (default), or cpu to exercise it")
    p.add_argument("--benchmark", default="avdigits")
    p.add_argument("--data-root", default="data")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--skip-trial", action="store_true", help="only the step share")
    p.add_argument(
        "--trial-args",
        default="--space default --benchmark avdigits --num-samples 1",
        help="arguments for cmkd.tune in the utilisation run (default: %(default)s)",
    )
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu.md")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        no_gpu(args.out)
        return 0
    load = os.getloadavg()[0]
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
    else:
        torch.set_num_threads(1)
        where = f"CPU only, {os.cpu_count()} cores, 1 torch thread"
    data_cfg = DataConfig(
        benchmark=args.benchmark, labels_per_class="all", data_root=args.data_root
    )
    data = load_run_data(data_cfg, seed=0, log=lambda *_: None)
    share = step_share(data, data_cfg, device, args.batch_size, args.repeats)
    terms_ms = share["full_ms"] - share["ce_ms"]
    lines = [
        "# GPU: loss terms' share of a step, device use of a trial",
        "",
        f"Machine: {platform.node()} ({platform.machine()}, {os.cpu_count()} cores), {where}, "
        f"torch {torch.__version__}; load average {load:.2f} before the run; "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "",
        MEASURED,
        "",
        f"{data.meta.name}: {data.teacher} teacher → {data.student} student, batch "
        f"{args.batch_size}, config `{CONFIG}`; median of {args.repeats} steps "
        f"({'CUDA events' if device.type == 'cuda' else 'wall clock'}).",
        "",
        "| measure | ms | share of the step |",
        "|---|---:|---:|",
        f"| training step, FA + LA on | {share['full_ms']:.2f} | 100% |",
        f"| training step, CE only (w_fa = w_la = 0) | {share['ce_ms']:.2f} | "
        f"{share['ce_ms'] / share['full_ms']:.0%} |",
        f"| difference: the loss terms in the step | {terms_ms:.2f} | "
        f"{terms_ms / share['full_ms']:.0%} |",
        f"| FA (Sinkhorn) alone, forward + backward | {share['fa_ms']:.2f} | "
        f"{share['fa_ms'] / share['full_ms']:.0%} |",
        f"| LA (teacher CE) alone, forward + backward | {share['la_ms']:.2f} | "
        f"{share['la_ms'] / share['full_ms']:.0%} |",
        "",
        "Most expensive operations of the full step (torch.profiler, self time per step):",
        "",
        "| operation | ms per step | share |",
        "|---|---:|---:|",
    ]
    lines += [f"| `{k}` | {ms:.3f} | {s:.0%} |" for k, ms, s in share["kernels"]]
    if device.type == "cuda" and not args.skip_trial:
        u = trial_utilisation(shlex.split(args.trial_args), args.data_root)
        lines += [
            "",
            "## Device use of a sweep's trials",
            "",
            f"Command: `{u['command']}`; nvidia-smi every 200 ms.",
            "",
            "| measure | value |",
            "|---|---:|",
            f"| wall time | {u['wall']:.0f} s |",
            f"| samples | {u['samples']} |",
            f"| GPU utilisation, mean over the run | {u['util_mean']:.0f}% |",
            f"| GPU utilisation, mean while our memory was on the GPU ({u['busy_samples']} samples) "
            f"| {u['busy_util_mean']:.0f}% |",
            f"| GPU utilisation, peak | {u['util_max']:.0f}% |",
            f"| GPU memory of the run, peak | {u['mem_max']:.0f} MiB |",
        ]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print("\n" + text + f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
