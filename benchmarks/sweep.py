"""The default sweep as a user runs it: wall time, peak memory, and what it found.

    python -m benchmarks.sweep [-- extra cmkd.tune arguments]

Runs ``python -m cmkd.tune`` (fresh data root unless --data-root is given, so the first-run
build of the benchmark and of the teacher bank is part of the time) while sampling the summed
resident memory of the process tree (the driver, Ray's GCS, raylet, every worker and actor).
Writes benchmarks/results/sweep.md.
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
from datetime import datetime, timezone
from pathlib import Path

import psutil


def tree_rss(pid: int) -> int:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data-root", default=None, help="reuse built data (default: a fresh temp folder)"
    )
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sweep.md")
    p.add_argument("extra", nargs="*", help="arguments for cmkd.tune")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="cmkd-sweep-bench-"))
    data_root = args.data_root or str(work / "data")
    cmd = [
        sys.executable,
        "-m",
        "cmkd.tune",
        "--storage",
        str(work / "runs"),
        "--name",
        "bench",
        "--data-root",
        data_root,
        *args.extra,
    ]
    print(" ".join(cmd), flush=True)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, stop = [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss(proc.pid))
            time.sleep(0.5)

    threading.Thread(target=sample, daemon=True).start()
    log = []
    for line in proc.stdout:
        log.append(line)
        print(line, end="", flush=True)
    proc.wait()
    stop.set()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"cmkd.tune exited with {proc.returncode}")
    res = json.loads((work / "runs" / "bench" / "results.json").read_text())
    final = res["final"]
    stopped = sum(
        1
        for t in res["trials"]
        if t.get("epochs_run", 0) < max(t.get("epochs_run", 0) for t in res["trials"])
    )
    lines = [
        "# The default sweep on this machine",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB; load average before the run "
        f"{load_before[0]:.2f}. Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
        f"Command: `python -m cmkd.tune {' '.join(args.extra)}` (data root "
        f"{'fresh: includes building the benchmark and the teacher bank' if not args.data_root else 'reused'}).",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| wall time, whole command | {wall:.0f} s |",
        f"| of which the sweep (Tune) | {res['sweep_s']:.0f} s |",
        f"| peak resident memory, all processes | {peak[0] / 2**30:.2f} GB |",
        f"| trials (searched + 2 references) | {len(res['trials'])} |",
        f"| trials stopped early by ASHA | {stopped} |",
        f"| trials at once | {res['concurrency']} |",
        "",
        f"Final retrain on {res['benchmark']} ({res['teacher']} teacher → {res['student']} student, "
        f"{res['labels_per_class']} labels per class), test split, mean ± std over seeds:",
        "",
        "| configuration | test acc (%) | via teacher head (%) | seeds |",
        "|---|---:|---:|---:|",
    ]
    for name, e in final.items():
        lines.append(
            f"| {name} | {100 * e['test_acc_mean']:.2f} ± {100 * e['test_acc_std']:.2f} | "
            f"{100 * e['test_acc_teacher_head_mean']:.2f} ± "
            f"{100 * e['test_acc_teacher_head_std']:.2f} | {len(e['runs'])} |"
        )
    if "winner" in final:
        w = final["winner"]
        lines += ["", "Winner configuration: `" + json.dumps(w["config"]) + "`", ""]
        for ref in ("reference-ce", "reference-ucmkd"):
            if ref in final:
                gain = 100 * (w["test_acc_mean"] - final[ref]["test_acc_mean"])
                verdict = "above" if gain > 0 else "NOT above"
                lines.append(f"- winner vs {ref}: {gain:+.2f} points ({verdict} the reference)")
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print("\n" + text + f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
