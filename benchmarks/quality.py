"""Distillation quality with an unlabelled pool, regime by regime, on the test split.

    flock /tmp/cmkd-heavy.lock python -m benchmarks.quality [--regimes ...] [--num-samples 8]

For every regime (a benchmark with an unlabelled pool of the student's modality, a label budget)
it runs one real sweep, ``python -m cmkd.tune --space pool ...``, and reads its final stage: the
recommendation exactly as the sweep made it, and beside it, retrained by the same final stage on
the same fresh seeds (1, 2, 3) and the same labelled subset (data seed 0):

- CE: the best no-distillation trial of the sweep (the ``ce`` family; augmented like every trial);
- paper defaults: the reference UCMKD (label-agnostic OT, reg 0.1, weights 1, student head);
- ssl_only / ssl_prior: the best teacher-free pool trial aligned to the uniform prior / to the
  teacher bank's class histogram (searched as the teacher's terms are);
- the teacher's best config: the recommendation when it reads the teacher, else the best
  finalist or trial that does (ucmkd_pool);
- permuted / neutral teacher: that config with its teacher's labels permuted, or with a neutral
  teacher (random, evenly spaced class clusters);

and trains two more rows here on the same seeds and subset with the space's fixed schedule and
augmentation: unpaired Hinton KD (T = 4, alpha = 0.9) and the full-label student (CE on every
labelled train row). Each regime is cached in benchmarks/results/quality.json as soon as it
finishes (``--force`` redoes one); the sweeps stay in runs/quality/. Writes
benchmarks/results/quality.md with accuracy and balanced accuracy for every row, the paired
parts of the attribution, and each target met or missed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks.publish import publish
from cmkd.config import VAL_PER_CLASS, DataConfig, DistillConfig
from cmkd.space import load_space
from cmkd.train import fit, load_run_data
from cmkd.verdict import paired

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
SPACE = "pool"
# key: (benchmark, student, teacher, labels per class, can the teacher help?[, validation rows
# per class, default the space's (pool: 25)[, epochs, default the space's]])
REGIMES = {
    "sonified 5": ("sonified", None, None, 5, True),
    "sonified 5, 10 val": ("sonified", None, None, 5, True, 10),
    "sonified 5, 10 val, 30 epochs": ("sonified", None, None, 5, True, 10, 30),
    "sonified-lt 5": ("sonified-lt", None, None, 5, True),
    "sonified-lt 2": ("sonified-lt", None, None, 2, True),
    "avdigits+pool 5": ("avdigits", "audio", "image", 5, False),
    "synth 5": ("synth", None, None, 5, True),
    "synth-nohelp 5": ("synth-nohelp", None, None, 5, False),
}
# row -> the final-stage entry of the sweep that holds it (None: trained here)
ROWS = {
    "CE (augmented)": "reference-ce",
    "unpaired KD": None,
    "paper defaults (UCMKD)": "reference-ucmkd",
    "ssl_only": "reference-ssl_only",
    "ssl_prior": "reference-ssl_prior",
    "teacher's best config": "teacher",
    "neutral teacher": "control-neutral",
    "permuted teacher": "control-permuted",
    "recommendation": "recommendation",
    "full-label (augmented)": None,
}
KD = {"algorithm": "kd_unpaired", "kd_temperature": 4.0, "kd_alpha": 0.9, "readout": "student"}


def val_per_class(regime: str) -> int:
    """The regime's --val-per-class (default: what the space's sweep draws unless told)."""
    if len(REGIMES[regime]) > 5:
        return REGIMES[regime][5]
    return load_space(SPACE).val_per_class or VAL_PER_CLASS


def epochs(regime: str) -> int | None:
    """The regime's --epochs (None: the space's own schedule)."""
    return REGIMES[regime][6] if len(REGIMES[regime]) > 6 else None


def schedule(regime: str) -> dict:
    """The space's fixed settings with the regime's epochs: what every trial of its sweep ran."""
    fixed = dict(load_space(SPACE).fixed)
    return {**fixed, "epochs": epochs(regime)} if epochs(regime) else fixed


def sweep(regime: str, args) -> dict:
    """The regime's sweep results (run now unless runs/quality/ holds them already)."""
    bench, student, teacher, lpc, _ = REGIMES[regime][:5]
    vpc = val_per_class(regime)
    name = f"quality-{bench}-{lpc}lpc" + (f"-{vpc}val" if vpc != VAL_PER_CLASS else "")
    name += f"-{epochs(regime)}ep" if epochs(regime) else ""
    flags = [
        "--space", SPACE, "--benchmark", bench, "--labels-per-class", str(lpc),
        "--num-samples", str(args.num_samples), "--val-per-class", str(vpc), "--controls",
        *(["--epochs", str(epochs(regime))] if epochs(regime) else []),
        *(["--student", student, "--teacher", teacher] if student else []),
    ]  # fmt: skip
    return sweep_results(name, flags, args, f"the sweep on {regime}")


def sweep_results(name: str, flags: list[str], args, what: str) -> dict:
    """results.json of the sweep ``args.storage/name``, run now with ``cmkd.tune`` and ``flags``
    (resumed if it was started) unless it finished already."""
    results = args.storage / name / "results.json"
    if not results.is_file():
        cmd = [
            sys.executable, "-m", "cmkd.tune", *flags,
            "--storage", str(args.storage), "--name", name, "--wandb", "disabled",
            "--data-root", str(args.data_root),
            *(["--resume"] if (args.storage / name / "sweep.json").is_file() else []),
        ]  # fmt: skip
        print(" ".join(cmd), flush=True)
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0 or not results.is_file():
            raise RuntimeError(f"{what} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return json.loads(results.read_text())


def train_seeds(cfg: dict, data, data_cfg: DataConfig, seeds: list[int]) -> list[dict]:
    runs = []
    for seed in seeds:
        dc = DistillConfig.from_dict({**cfg, "seed": seed}, source="quality benchmark")
        best = fit(dc, data, data_cfg, log=lambda *_: None)["best"]
        runs.append({"seed": seed, **{k: best[k] for k in ("val_acc", "test_acc", "test_bacc")}})
    return runs


def run_regime(regime: str, args) -> dict:
    t0 = time.perf_counter()
    out = sweep(regime, args)
    bench, student, teacher, lpc, _ = REGIMES[regime][:5]
    final, verdict = out["final"], out["verdict"]
    seeds = out["final_seeds"]
    rows = {}
    for row, entry in ROWS.items():
        if entry == "recommendation":
            entry = verdict["recommendation"]
        elif entry == "teacher":  # the teacher-reading config the controls are measured on
            entry = (out.get("attribution") or {}).get("teacher")
        if entry is not None and entry in final:
            rows[row] = final[entry]["runs"]
    fixed = {k: v for k, v in schedule(regime).items() if k != "readout"}
    for row, lpc_row, cfg in (
        ("unpaired KD", lpc, {**fixed, **KD}),
        ("full-label (augmented)", "all", {**fixed, "algorithm": "ce", "readout": "student"}),
    ):
        data_cfg = DataConfig(
            benchmark=bench,
            student=student,
            teacher=teacher,
            labels_per_class=lpc_row,
            val_per_class=val_per_class(regime),
            data_root=str(args.data_root),
        )
        data = load_run_data(data_cfg, log=lambda *_: None)
        rows[row] = train_seeds(cfg, data, data_cfg, seeds)
        print(f"  {regime} | {row}: {fmt(rows[row], 'test_acc')}", flush=True)
    return {
        "rows": rows,
        "recommendation": verdict["recommendation"],
        "config": verdict.get("config", {}),
        "verdict": verdict["sentence"],
        "attribution": out.get("attribution"),
        "teacher_candidate": (out.get("attribution") or {}).get("teacher"),
        "trials": len(out["trials"]),
        "sweep_s": out["total_s"],
        "seeds": seeds,
        "minutes": (time.perf_counter() - t0) / 60,
        "load": os.getloadavg()[0],
        "when": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
    }


def mean(runs: list[dict], key: str = "test_acc") -> float:
    return 100 * statistics.fmean(r[key] for r in runs)


def fmt(runs: list[dict], key: str) -> str:
    vals = [r[key] for r in runs if key in r]
    if not vals:
        return "–"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{100 * statistics.fmean(vals):.1f} ± {100 * sd:.1f}"


def diff(rows: dict, a: str, b: str, key: str) -> dict | None:
    """Paired (over seeds) difference a − b of ``key``, in points."""
    if a not in rows or b not in rows:
        return None
    d = paired(rows[a], rows[b], key)
    return {k: 100 * d[k] if k in ("mean", "std", "se") else d[k] for k in d}


def pts(d: dict | None) -> str:
    if d is None or not math.isfinite(d["mean"]):
        return "–"
    spread = f" ± {d['std']:.1f}" if math.isfinite(d["std"]) else ""
    return f"{d['mean']:+.1f}{spread}"


PARTS = (  # name, a, b: paired a − b over the seeds
    ("recommendation − CE", "recommendation", "CE (augmented)"),
    ("pool: ssl_only − CE", "ssl_only", "CE (augmented)"),
    ("teacher's own part: recommendation − ssl_only", "recommendation", "ssl_only"),
    ("its class proportions: ssl_prior − ssl_only", "ssl_prior", "ssl_only"),
    ("its features: recommendation − ssl_prior", "recommendation", "ssl_prior"),
    ("the teacher's best config − ssl_prior", "teacher's best config", "ssl_prior"),
    ("permuted teacher − ssl_prior", "permuted teacher", "ssl_prior"),
    ("neutral teacher − ssl_prior", "neutral teacher", "ssl_prior"),
)


def targets(cache: dict) -> list[str]:
    """Each target, met or missed and by how much, where its regime was run."""
    out = []
    for key in (k for k in cache if k.startswith("sonified 5")):
        r = cache[key]["rows"]
        ce, full, rec = (
            mean(r["CE (augmented)"]),
            mean(r["full-label (augmented)"]),
            mean(r["recommendation"]),
        )
        need = max(ce + 5.0, ce + 0.5 * (full - ce))
        verdict = "met" if rec >= need else f"MISSED by {need - rec:.1f} points"
        out.append(
            f"- {key} (labels per class; validation rows per class: 25 unless said): "
            f"recommendation {rec:.1f} against CE {ce:.1f} and "
            f"full-label {full:.1f}; the target (≥ +5 and ≥ half the gap) is {need:.1f}: "
            f"**{verdict}**."
        )
    teacher, features, low = [], [], []
    for regime, entry in cache.items():
        r = entry["rows"]
        t = diff(r, "recommendation", "ssl_only", "test_bacc")
        f = diff(r, "recommendation", "ssl_prior", "test_bacc")
        if t is not None:
            teacher.append((regime, t["mean"]))
        if f is not None:
            features.append((regime, f["mean"]))
            if f["mean"] < -0.5:
                low.append(f"{regime} ({f['mean']:+.1f})")
    if teacher:
        best = max(teacher, key=lambda x: x[1])
        ok = best[1] >= 1.5
        out.append(
            f"- The teacher's own part (recommendation − ssl_only, balanced accuracy, paired) ≥ "
            f"+1.5 in at least one regime: best {best[1]:+.1f} ({best[0]}): "
            + ("**met**." if ok else "**MISSED**: no regime found where the teacher adds 1.5.")
        )
    if features:
        best = max(features, key=lambda x: x[1])
        out.append(
            "- Its feature part (recommendation − ssl_prior, balanced accuracy) never below "
            "−0.5: "
            + ("**met**" if not low else f"**MISSED** in {', '.join(low)}")
            + f"; ≥ +1.5 in at least one regime: best {best[1]:+.1f} ({best[0]}): "
            + ("**met**." if best[1] >= 1.5 else "**MISSED**: none found (see the reading).")
        )
    for regime, entry in cache.items():
        if REGIMES[regime][4]:
            continue
        r = entry["rows"]
        d = mean(r["recommendation"]) - mean(r["CE (augmented)"])
        verdict = "met" if d >= -0.5 else f"MISSED by {-0.5 - d:.1f} points"
        out.append(
            f"- Cannot-help regime {regime}: recommendation − CE = {d:+.1f} points (≥ −0.5): "
            f"**{verdict}**."
        )
    return out


def report(cache: dict, args) -> list[str]:
    lines = [
        "# Distillation quality with an unlabelled pool",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, no "
        "GPU. Each regime's date, minutes and load average are in its heading.",
        "",
        f"Command: `python -m benchmarks.quality --num-samples {args.num_samples}`. Test accuracy "
        "and balanced accuracy %, mean ± std over the sweep's final seeds (1, 2, 3), one labelled "
        "subset per regime (data seed 0), the same for every row. Every row but unpaired KD and "
        f"full-label comes from the final stage of a real `cmkd.tune --space {SPACE}` sweep "
        "(the recommendation exactly as the sweep made it, chosen on validation); those two are "
        "trained here with the space's fixed schedule and augmentation. Differences are paired "
        "over the seeds (mean ± std of the per-seed differences).",
        "",
        "## Targets",
        "",
        *targets(cache),
        "",
    ]
    missing = [r for r in REGIMES if r not in cache]
    if missing:
        lines += [f"Not run: {', '.join(missing)}.", ""]
    if cache:
        lines += [
            "## Every regime: test accuracy / balanced accuracy %",
            "",
            "| method | " + " | ".join(cache) + " |",
            "|---|" + "---:|" * len(cache),
        ]
        for row in ROWS:
            cells = [
                f"{mean(e['rows'][row]):.1f} / {mean(e['rows'][row], 'test_bacc'):.1f}"
                if row in e["rows"]
                else "–"
                for e in cache.values()
            ]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "## Who gave the gain: paired differences, balanced accuracy points (accuracy)",
            "",
            "| part | " + " | ".join(cache) + " |",
            "|---|" + "---:|" * len(cache),
        ]
        for name, a, b in PARTS:
            cells = [
                f"{pts(diff(e['rows'], a, b, 'test_bacc'))} ({pts(diff(e['rows'], a, b, 'test_acc'))})"
                for e in cache.values()
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    for regime, entry in cache.items():
        cfg = {
            k: v
            for k, v in entry["config"].items()
            if k not in ("epochs", "batch_size", "steps_per_epoch", "lr", "seed", "pool_batch")
        }
        lines += [
            f"## {regime}",
            "",
            f"{entry['when']}, {entry['minutes']:.1f} min, load {entry['load']:.1f}; the sweep ran "
            f"{entry['trials']} trials, {entry['sweep_s']:.0f} s in all. Recommendation: "
            f"{entry['recommendation']} `{json.dumps(cfg)}`; teacher candidate of the controls: "
            f"{entry['teacher_candidate'] or 'none'}.",
            "",
            f"> {entry['verdict']}",
            "",
            "| method | test acc % | test balanced acc % |",
            "|---|---:|---:|",
        ]
        for row in ROWS:
            if row in entry["rows"]:
                r = entry["rows"][row]
                lines.append(f"| {row} | {fmt(r, 'test_acc')} | {fmt(r, 'test_bacc')} |")
        lines.append("")
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    p.add_argument("--num-samples", type=int, default=8, help="searched trials per sweep")
    p.add_argument("--data-root", type=Path, default=ROOT / "data")
    p.add_argument("--storage", type=Path, default=ROOT / "runs" / "quality")
    p.add_argument("--force", action="store_true", help="redo regimes already cached")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the tables from the cache, train nothing",
    )
    p.add_argument("--cache", type=Path, default=RESULTS / "quality.json")
    p.add_argument("--out", type=Path, default=RESULTS / "quality.md")
    p.add_argument(
        "--reading",
        type=Path,
        default=RESULTS / "quality-reading.md",
        help="a hand-written reading appended to the report, if the file exists",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(2)  # the cores this machine has
    cache = json.loads(args.cache.read_text()) if args.cache.is_file() else {}
    # regimes cached in an earlier format (before the pool) are dropped
    cache = {k: v for k, v in cache.items() if k in REGIMES and "recommendation" in v}
    for regime in [] if args.report_only else args.regimes:
        if regime in cache and not args.force:
            print(f"{regime}: cached, skipped (--force redoes it)", flush=True)
            continue
        print(regime, flush=True)
        cache[regime] = run_regime(regime, args)
        ordered = {k: cache[k] for k in REGIMES if k in cache}
        args.cache.write_text(json.dumps(ordered, indent=1))
    ordered = {k: cache[k] for k in REGIMES if k in cache}
    reading = args.reading.read_text().splitlines() if args.reading.is_file() else []
    publish([*report(ordered, args), *reading], args.out)


if __name__ == "__main__":
    main()
