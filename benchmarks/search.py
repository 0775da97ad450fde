"""Search efficiency as users run it: real sweeps at the same wall-clock budget.

    python -m benchmarks.search [--benchmark synth] [--budget-s 300] [--seeds 0 1 2]

Each (searcher, seed) is one real ``python -m cmkd.tune`` sweep on a local Ray cluster (the
default space, 2 trials at once on 2 cores, the reference trials included) stopped by
``--time-budget``:

- tpe-asha: the sweep as shipped (TPE warm-started by the references and the space's start
  points, ASHA);
- random-asha: ``--searcher random`` (random draws, no start points), ASHA;
- random: ``--searcher random --early-stop none``: every trial runs its whole schedule.

From every trial's per-epoch reports (wall-clock timestamp, best validation value so far, test
accuracy at that best epoch) it rebuilds, against wall time and against trial-epochs spent,
the best validation accuracy the sweep had seen and the test accuracy of the configuration it
would have recommended then (the search's pick; the paired-seed verdict is not run here). The
same ``--seed`` draws the same labelled subset and validation rows for the three searchers.
Writes benchmarks/results/search.md, search.png and search.json (every curve).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.publish import publish

SEARCHERS = {
    "tpe-asha": ["--searcher", "tpe", "--early-stop", "asha"],
    "random-asha": ["--searcher", "random", "--early-stop", "asha"],
    "random": ["--searcher", "random", "--early-stop", "none"],
}
RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
WITHIN = 0.005  # "within 0.5 points of the final best"


def run_sweep(searcher: str, seed: int, args, storage: str) -> dict:
    name = f"{searcher}-s{seed}"
    cmd = [
        *(sys.executable, "-m", "cmkd.tune", "--space", args.space, "--benchmark", args.benchmark),
        *("--seed", str(seed), "--time-budget", str(args.budget_s)),
        *("--num-samples", str(args.num_samples), "--final-seeds", "0"),
        *("--storage", storage, "--name", name, "--wandb", "disabled"),
        *("--data-root", args.data_root, *SEARCHERS[searcher]),
    ]
    print(" ".join(cmd), flush=True)
    t0 = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    results = Path(storage) / name / "results.json"
    if proc.returncode != 0 or not results.is_file():
        raise RuntimeError(f"sweep {name} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    out = json.loads(results.read_text())
    return {"results": out, "wall_s": time.perf_counter() - t0}


def curves(results: dict) -> list[dict]:
    """Every epoch report of the sweep in time order, with the sweep's state after it:
    seconds since the search started, trial-epochs spent, best validation so far, and the
    test accuracy of the (trial, epoch) holding it."""
    t0 = results["tune_started_at"]
    events = sorted(
        (t, b, x, r["role"]) for r in results["trials"] for t, b, x in r.get("timeline", [])
    )
    out, best, test = [], -1.0, None
    for i, (t, b, x, _role) in enumerate(events, 1):
        if b > best:
            best, test = b, x
        out.append({"s": t - t0, "epochs": i, "best_val": best, "test": test})
    return out


def at(curve: list[dict], key: str, limit: float, field: str):
    """The value of ``field`` at the last point with ``key`` <= limit (None before any)."""
    vals = [p[field] for p in curve if p[key] <= limit]
    return vals[-1] if vals else None


def first_within(curve: list[dict], target: float) -> int | None:
    """Trial-epochs spent when the best validation first came within WITHIN of ``target``."""
    return next((p["epochs"] for p in curve if p["best_val"] >= target - WITHIN), None)


def plot(runs: dict, budget_s: float, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colours = {"tpe-asha": "tab:blue", "random-asha": "tab:orange", "random": "tab:gray"}
    grid = [budget_s * i / 60 for i in range(61)]
    for searcher, by_seed in runs.items():
        for field, ax, xkey, xs in (
            ("best_val", axes[0], "s", grid),
            ("test", axes[1], "s", grid),
            ("best_val", axes[2], "epochs", None),
        ):
            for r in by_seed.values():
                c = r["curve"]
                px = [p[xkey] for p in c]
                py = [100 * p[field] if p[field] is not None else None for p in c]
                ax.step(px, py, where="post", color=colours[searcher], alpha=0.25, lw=0.8)
            if xs is not None:
                mean = []
                for x in xs:
                    vals = [at(r["curve"], xkey, x, field) for r in by_seed.values()]
                    vals = [v for v in vals if v is not None]
                    mean.append(100 * statistics.fmean(vals) if len(vals) == len(by_seed) else None)
                ax.plot(xs, mean, color=colours[searcher], lw=2, label=searcher)
    axes[0].set(title="best validation accuracy so far (mean of seeds; thin: each seed)",
                xlabel="seconds of search", ylabel="%")  # fmt: skip
    axes[1].set(title="test accuracy of the search's pick at that time",
                xlabel="seconds of search", ylabel="%")  # fmt: skip
    axes[2].set(title="best validation against trial-epochs spent", xlabel="trial-epochs",
                ylabel="%")  # fmt: skip
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--benchmark", default="synth")
    p.add_argument("--space", default="default")
    p.add_argument("--budget-s", type=float, default=300.0, help="wall-clock budget per sweep")
    p.add_argument("--num-samples", type=int, default=60, help="more than the budget can run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--data-root", default=str(ROOT / "data"))
    p.add_argument("--out", default=str(RESULTS / "search.md"))
    args = p.parse_args(argv)
    started = datetime.now(timezone.utc)
    load_before = os.getloadavg()[0]
    runs: dict[str, dict] = {s: {} for s in SEARCHERS}
    with tempfile.TemporaryDirectory(prefix="cmkd-search-") as storage:
        for seed in args.seeds:  # searchers interleaved: a load change hits all of them
            for searcher in SEARCHERS:
                r = run_sweep(searcher, seed, args, storage)
                c = curves(r["results"])
                runs[searcher][seed] = {
                    "curve": c,
                    "trials": len(r["results"]["trials"]),
                    "wall_s": r["wall_s"],
                }
                last = c[-1] if c else {}
                print(
                    f"  {searcher} seed {seed}: {len(r['results']['trials'])} trials, "
                    f"{last.get('epochs')} trial-epochs, best val {last.get('best_val')}, "
                    f"test of pick {last.get('test')}",
                    flush=True,
                )
    out = Path(args.out)
    json_path = out.with_suffix(".json")
    json_path.write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))
    png = plot(runs, args.budget_s, out.with_suffix(".png"))
    B = args.budget_s
    lines = [
        "# Search efficiency at the same wall-clock budget",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, no GPU; load average "
        f"{load_before:.2f} before the run; {started:%Y-%m-%d %H:%M} UTC, "
        f"{(datetime.now(timezone.utc) - started).total_seconds() / 60:.0f} min in all.",
        "",
        f"Command: `python -m benchmarks.search --benchmark {args.benchmark} --budget-s {B:g} "
        f"--seeds {' '.join(map(str, args.seeds))}`. Each cell is a real `python -m cmkd.tune "
        f"--space {args.space}` sweep on a local Ray cluster (2 trials at once, the two "
        f"reference trials included in the cost), stopped after {B:g} s of search; 5 labels and "
        "10 validation rows per class, the seed drawing both. Accuracies in %, mean over seeds.",
        "",
        "| searcher | trials | trial-epochs | best val at ¼ | at ½ | at the end | test of the pick "
        "at ½ | at the end |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def mean_at(by_seed, frac, field):
        vals = [at(r["curve"], "s", frac * B, field) for r in by_seed.values()]
        vals = [v for v in vals if v is not None]
        return f"{100 * statistics.fmean(vals):.1f}" if vals else "–"

    for searcher, by_seed in runs.items():
        trials = statistics.fmean(r["trials"] for r in by_seed.values())
        epochs = statistics.fmean(r["curve"][-1]["epochs"] for r in by_seed.values())
        lines.append(
            f"| {searcher} | {trials:.1f} | {epochs:.0f} | {mean_at(by_seed, 0.25, 'best_val')} "
            f"| {mean_at(by_seed, 0.5, 'best_val')} | {mean_at(by_seed, 1.0, 'best_val')} | "
            f"{mean_at(by_seed, 0.5, 'test')} | {mean_at(by_seed, 1.0, 'test')} |"
        )
    lines += [
        "",
        "Target: TPE+ASHA within 0.5 points of the final best validation value with at most ¼ "
        "of the trial-epochs random search without stopping needs to get there (per seed; the "
        "final best is the best of the three searchers at that seed):",
        "",
        "| seed | final best | tpe-asha epochs to it | random epochs to it | ratio | target ≤ 0.25 |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    met = 0
    for seed in args.seeds:
        final = max(runs[s][seed]["curve"][-1]["best_val"] for s in SEARCHERS)
        tpe = first_within(runs["tpe-asha"][seed]["curve"], final)
        rnd = first_within(runs["random"][seed]["curve"], final)
        rnd_total = runs["random"][seed]["curve"][-1]["epochs"]
        if tpe is None:
            ratio, verdict = "–", "**missed**: TPE+ASHA never got there"
        elif rnd is None:
            ratio = f"< {tpe / rnd_total:.2f}"
            verdict = (
                "met"
                if tpe / rnd_total <= 0.25
                else f"not decided: random did not get there in {rnd_total}"
            )
            met += verdict == "met"
        else:
            ratio = f"{tpe / rnd:.2f}"
            verdict = "met" if tpe / rnd <= 0.25 else f"**missed** by {tpe / rnd - 0.25:.2f}"
            met += verdict == "met"
        lines.append(
            f"| {seed} | {100 * final:.1f} | {tpe if tpe is not None else '–'} | "
            f"{rnd if rnd is not None else f'> {rnd_total}'} | {ratio} | {verdict} |"
        )
    lines += [
        "",
        f"Met on {met} of {len(args.seeds)} seeds.",
        "",
        "![best validation and the pick's test accuracy against time and trial-epochs](search.png)",
        "",
        "`search.json` holds every curve behind the plot.",
    ]
    publish(lines, out, png, json_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
