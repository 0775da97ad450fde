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


def tree_memory(pid: int) -> tuple[int, int]:
    """(PSS, RSS) summed over a process and its descendants. PSS shares each shared page among
    the processes mapping it, so the sum is the memory the tree takes; summed RSS counts the
    libraries every Ray worker maps (torch alone is hundreds of MB) once per process."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    pss = rss = 0
    for p in procs:
        try:
            full = p.memory_full_info()
            pss += getattr(full, "pss", full.rss)
            rss += full.rss
        except psutil.Error:
            pass
    return pss, rss


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
    peak, stop = [0, 0], threading.Event()

    def sample():
        while not stop.is_set():
            pss, rss = tree_memory(proc.pid)
            peak[0], peak[1] = max(peak[0], pss), max(peak[1], rss)
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
        f"| of which the search (Tune) | {res['sweep_s'] - (res.get('prepare_s') or 0):.0f} s |",
        f"| of which building data and teacher bank, loading | {res.get('prepare_s') or 0:.0f} s |",
        f"| of which the final retrain | {res.get('final_s') or 0:.0f} s |",
        f"| peak memory, all processes (PSS: shared pages counted once) | {peak[0] / 2**30:.2f} GB |",
        f"| peak memory, all processes (RSS summed: shared pages counted per process) | {peak[1] / 2**30:.2f} GB |",
        f"| trials (searched + references) | {len(res['trials'])} |",
        f"| trials stopped early by ASHA | {stopped} |",
        f"| trials at once | {res['concurrency']} |",
        "",
        f"Final retrain on {res['benchmark']} ({res['teacher']} teacher → {res['student']} student, "
        f"{res['labels_per_class']} labels per class), test split, mean ± std over seeds:",
        "",
        "| configuration | test acc (%) | test balanced acc (%) | via teacher head (%) | seeds |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, e in final.items():
        bacc = (
            f"{100 * e['test_bacc_mean']:.2f} ± {100 * e['test_bacc_std']:.2f}"
            if "test_bacc_mean" in e
            else "–"
        )
        lines.append(
            f"| {name} | {100 * e['test_acc_mean']:.2f} ± {100 * e['test_acc_std']:.2f} | "
            f"{bacc} | {100 * e['test_acc_teacher_head_mean']:.2f} ± "
            f"{100 * e['test_acc_teacher_head_std']:.2f} | {len(e['runs'])} |"
        )
    verdict = res.get("verdict") or {}
    if verdict:
        chosen = verdict["recommendation"]
        lines += [
            "",
            f"Recommendation: `{chosen}` `" + json.dumps(verdict.get("config")) + "`",
            "",
            f"Verdict, as the console ends: {verdict['sentence']}",
        ]
    if res.get("attribution"):
        from cmkd.verdict import attribution_sentence

        lines += ["", attribution_sentence(res["attribution"], res["metric"])]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print("\n" + text + f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
