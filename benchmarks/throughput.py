"""Sweep throughput before and after trials ran in their own process, and what a sweep's memory is.

    python -m benchmarks.throughput                       # the default sweep, --runner train vs auto
    python -m benchmarks.throughput --space smoke --benchmark avdigits --num-samples 6 \\
        --runners auto --concurrency 1 2                  # trials at once, on one path

Runs ``python -m cmkd.tune --runner R [--max-concurrent N] --final-seeds 0`` once per runner and
N, on the same budget and seed (data reused from --data-root, so building it is not timed):
``--runner train`` makes every trial a Ray Train run, as every trial was before one-worker trials
ran in their own process; ``auto`` is today's default. Trials per hour = trials / search time
(Tune's part: ``sweep_s - prepare_s`` of results.json, which includes ``ray.init``). While it
runs, the PSS and RSS of every process in the command's tree (the driver, Ray's GCS, raylet,
dashboard and agents, every worker and actor) are sampled twice a second; the table breaks the
peak down by process kind. PSS shares each shared page among the processes that map it, so the
sum is what the tree takes from the machine. Writes benchmarks/results/throughput.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import psutil

from benchmarks.publish import publish

GB = 2**30


def kind(p: psutil.Process) -> str:
    """A process's role: Ray's process title for workers, the script or binary otherwise."""
    try:
        cmd = p.cmdline()
    except psutil.Error:
        return "?"
    if not cmd:
        return p.name()
    if cmd[0].startswith("ray::"):
        return cmd[0].split()[0].split(".")[0]  # ray::RayTrainWorker.train_fn -> class
    if "-m" in cmd and cmd.index("-m") + 1 < len(cmd):
        return cmd[cmd.index("-m") + 1]  # the driver: cmkd.tune
    scripts = [Path(c).name for c in cmd[1:] if c.endswith(".py")]
    if scripts:
        return scripts[0]
    return Path(cmd[0]).name


def snapshot(pid: int) -> list[tuple[str, int, int]]:
    """(kind, PSS, RSS) of a process and each of its descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in procs:
        try:
            full = p.memory_full_info()
            out.append((kind(p), getattr(full, "pss", full.rss), full.rss))
        except psutil.Error:
            pass
    return out


def run_sweep(cmd: list[str]) -> dict:
    """Run the command, sampling memory; -> wall time, peak PSS/RSS, breakdown at peak PSS."""
    print(" ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = {"pss": 0, "rss": 0, "at_peak": []}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            snap = snapshot(proc.pid)
            pss, rss = sum(s[1] for s in snap), sum(s[2] for s in snap)
            if pss > peak["pss"]:
                peak["pss"], peak["at_peak"] = pss, snap
            peak["rss"] = max(peak["rss"], rss)
            time.sleep(0.5)

    threading.Thread(target=sample, daemon=True).start()
    for line in proc.stdout:
        print(line, end="", flush=True)
    proc.wait()
    stop.set()
    if proc.returncode != 0:
        raise SystemExit(f"cmkd.tune exited with {proc.returncode}")
    return {**peak, "wall": time.perf_counter() - t0}


def breakdown(snap: list[tuple[str, int, int]]) -> list[tuple[str, int, int, int]]:
    """(kind, count, PSS, RSS) summed per kind, largest PSS first."""
    groups = defaultdict(lambda: [0, 0, 0])
    for k, pss, rss in snap:
        g = groups[k]
        g[0], g[1], g[2] = g[0] + 1, g[1] + pss, g[2] + rss
    return sorted(((k, *v) for k, v in groups.items()), key=lambda r: -r[2])


def same_configs(a: dict, b: dict) -> int:
    """How many of run a's trials trained a configuration run b trained too."""
    from cmkd.searcher import canonical

    seen = {canonical(t["config"]) for t in b["trials"]}
    return sum(canonical(t["config"]) in seen for t in a["trials"])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--space", help="cmkd.tune --space (default: the default sweep's)")
    p.add_argument("--benchmark", help="cmkd.tune --benchmark (default: the default sweep's)")
    p.add_argument("--num-samples", type=int, help="searched trials (default: the space's)")
    p.add_argument(
        "--runners",
        nargs="+",
        default=["train", "auto"],
        choices=["train", "auto"],
        help="cmkd.tune --runner of each run: train (every trial a Ray Train run, as before "
        "trials ran in their own process) and auto (today's default)",
    )
    p.add_argument(
        "--concurrency", type=int, nargs="+", default=[0], help="trials at once (0: the sweep's)"
    )
    p.add_argument("--data-root", default="data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--wandb",
        default="offline",
        choices=["disabled", "offline"],
        help="W&B mode of the sweeps (offline: as the default sweep logs)",
    )
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "throughput.md")
    args = p.parse_args(argv)
    load = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="cmkd-throughput-"))
    common = [
        *(["--space", args.space] if args.space else []),
        *(["--benchmark", args.benchmark] if args.benchmark else []),
        *(["--num-samples", str(args.num_samples)] if args.num_samples is not None else []),
        "--seed",
        str(args.seed),
        "--final-seeds",
        "0",
        "--wandb",
        args.wandb,
    ]
    runs = {}
    for runner in args.runners:
        for n in args.concurrency:
            name = f"{runner}-c{n}"
            extra = ["--max-concurrent", str(n)] if n else []
            cmd = [sys.executable, "-m", "cmkd.tune", *common, "--runner", runner, *extra,
                   "--data-root", args.data_root, "--storage", str(work), "--name", name]  # fmt: skip
            m = run_sweep(cmd)
            res = json.loads((work / name / "results.json").read_text())
            m["search_s"] = res["sweep_s"] - (res.get("prepare_s") or 0)
            m["trials"] = len(res["trials"])
            m["epochs"] = sum(t.get("epochs_run", 0) for t in res["trials"])
            m["concurrency"] = res["concurrency"]
            m["results"] = res
            runs[(runner, n)] = m

    first = next(iter(runs.values()))["results"]
    lines = [
        "# Sweep throughput and memory",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / GB:.0f} GiB; load average {load:.2f} before the run; "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
        f"Command: `python -m cmkd.tune {' '.join(common)} --runner R [--max-concurrent N]` "
        f"(data already built): {Path(first['space']).stem} space on {first['benchmark']}, "
        f"{first['labels_per_class']} labels per class. Search only: trials per hour = trials / "
        "the search's wall time (Tune's part of the command).",
        "",
        "| runner | trials at once | trials | trial-epochs | search (s) | trials / hour | "
        "trial-epochs / hour | whole command (s) | peak PSS (GB) | peak RSS summed (GB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (runner, _), m in runs.items():
        lines.append(
            f"| {runner} | {m['concurrency']} | {m['trials']} | {m['epochs']} | "
            f"{m['search_s']:.0f} | {3600 * m['trials'] / m['search_s']:.0f} | "
            f"{3600 * m['epochs'] / m['search_s']:.0f} | {m['wall']:.0f} | {m['pss'] / GB:.2f} | "
            f"{m['rss'] / GB:.2f} |"
        )
    keys = list(runs)
    if len(keys) > 1:
        a, b = runs[keys[0]], runs[keys[-1]]
        lines += [
            "",
            f"{keys[-1][0]} against {keys[0][0]}: {a['search_s'] / b['search_s']:.2f}x trials per "
            f"hour ({b['epochs'] * a['search_s'] / (a['epochs'] * b['search_s']):.2f}x "
            f"trial-epochs per hour); {same_configs(b['results'], a['results'])} of "
            f"{b['trials']} trials trained a configuration the other run trained too (same seed: "
            "the searcher's proposals depend only on the results it has been told, which are the "
            "same on both paths, and on the order trials end in).",
        ]
    for (runner, _), m in runs.items():
        rows = breakdown(m["at_peak"])
        lines += [
            "",
            f"Memory at the peak, runner {runner}, {m['concurrency']} trial(s) at once: "
            f"{len(m['at_peak'])} processes, {m['pss'] / GB:.2f} GB PSS.",
            "",
            "| process | count | PSS (GB) | PSS each (MB) | RSS summed (GB) |",
            "|---|---:|---:|---:|---:|",
        ]
        for k, count, pss, rss in rows:
            lines.append(
                f"| `{k}` | {count} | {pss / GB:.2f} | {pss / count / 2**20:.0f} | {rss / GB:.2f} |"
            )
    publish(lines, args.out)


if __name__ == "__main__":
    main()
