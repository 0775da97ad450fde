"""The paired and the unpaired setting on the same data, on the test split.

    flock /tmp/cmkd-heavy.lock python -m benchmarks.paired [--num-samples 8]

`sonified-paired` is the sonified benchmark with true pairs: every audio clip, labelled or in the
pool, is the sound of an MNIST image of the teacher's tables, and both rows carry its pair_id.
The student has 5 labels per class (data seed 0, one labelled subset for every row) and 25
validation rows per class. Two real sweeps run on it, 8 searched trials each:

- the paired setting, ``cmkd.tune --space paired`` (each row meets its partner's bank row);
- the unpaired setting, ``cmkd.tune --space pool`` (the same data, pairs ignored: class-matched
  rows and a label-independent bank sample for the pool);

and each sweep's recommendation, retrained by its own final stage on the fresh seeds 1, 2, 3, is
a row. Beside them, trained here on the same seeds and subset with the spaces' shared schedule
and augmentation (``pool.yaml``'s fixed settings):

- CE: no distillation;
- ssl_only: the pool without a teacher (what the pool alone gives);
- paired KD: Hinton KD (T = 4, alpha = 0.9) toward each row's partner, the pool's rows included;
- paired KD, labelled rows only: the same with no pool (what 50 pairs give);
- paired UCMKD: ``ucmkd_pool`` at the pool space's start point, each row meeting its partner;
- unpaired UCMKD: the same configuration, class-matched (pairs ignored);
- unpaired KD: Hinton KD toward a same-class row (``kd_unpaired``).

Writes benchmarks/results/paired.md (with paired differences over the seeds) and caches the rows
in benchmarks/results/paired.json; the sweeps stay in runs/paired/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks.publish import publish
from benchmarks.quality import diff, fmt, pts, sweep_results, train_seeds
from cmkd.config import DataConfig
from cmkd.space import load_space
from cmkd.train import load_run_data

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
BENCHMARK, LABELS, VAL = "sonified-paired", 5, 25
SETTINGS = {"paired": "paired", "unpaired": "pool"}
"""setting -> the space its sweep searches."""
START = dict(load_space("pool").start[0])
"""The pool space's start point: the teacher's terms on the pool, as the sweeps begin."""
ROWS: dict[str, dict | None] = {
    "CE": {"algorithm": "ce"},
    "ssl_only (pool, no teacher)": {"algorithm": "ssl", "prior": "uniform"},
    "paired KD": {"algorithm": "kd", "pairing": "paired", "kd_temperature": 4.0, "kd_alpha": 0.9},
    "paired KD, labelled rows only": None,
    "paired UCMKD": {**START, "pairing": "paired"},
    "unpaired UCMKD (pairs ignored)": {**START, "pairing": "class_matched"},
    "unpaired KD": {"algorithm": "kd_unpaired", "kd_temperature": 4.0, "kd_alpha": 0.9},
    "recommendation, paired setting": None,
    "recommendation, unpaired setting": None,
}
PARTS = (  # name, a, b: paired a − b over the seeds
    ("paired KD − CE", "paired KD", "CE"),
    ("paired UCMKD − CE", "paired UCMKD", "CE"),
    ("unpaired UCMKD − CE", "unpaired UCMKD (pairs ignored)", "CE"),
    ("what the pairs add: paired − unpaired UCMKD", "paired UCMKD", "unpaired UCMKD (pairs ignored)"),
    ("paired KD − ssl_only", "paired KD", "ssl_only (pool, no teacher)"),
    ("the pool's pairs: paired KD − paired KD on labelled rows", "paired KD", "paired KD, labelled rows only"),
    ("recommendation, paired − CE", "recommendation, paired setting", "CE"),
    ("recommendation, unpaired − CE", "recommendation, unpaired setting", "CE"),
    ("recommendations: paired − unpaired", "recommendation, paired setting", "recommendation, unpaired setting"),
)  # fmt: skip


def sweep(setting: str, args) -> dict:
    """The setting's sweep results (run now unless runs/paired/ holds them already)."""
    flags = [
        "--space", SETTINGS[setting], "--benchmark", BENCHMARK,
        "--labels-per-class", str(LABELS), "--val-per-class", str(VAL),
        "--num-samples", str(args.num_samples),
    ]  # fmt: skip
    return sweep_results(f"paired-{setting}-{LABELS}lpc", flags, args, f"the {setting} sweep")


def run(args) -> dict:
    t0 = time.perf_counter()
    sweeps = {s: sweep(s, args) for s in SETTINGS}
    seeds = sweeps["paired"]["final_seeds"]
    if seeds != sweeps["unpaired"]["final_seeds"]:
        raise RuntimeError(f"the sweeps retrained on different seeds: {seeds} and "
                           f"{sweeps['unpaired']['final_seeds']}")  # fmt: skip
    rows, chosen = {}, {}
    for setting, out in sweeps.items():
        verdict = out["verdict"]
        rows[f"recommendation, {setting} setting"] = out["final"][verdict["recommendation"]]["runs"]
        chosen[setting] = {
            "name": verdict["recommendation"],
            "config": verdict.get("config", {}),
            "sentence": verdict["sentence"],
            "trials": len(out["trials"]),
            "sweep_s": out["total_s"],
        }
    fixed = {k: v for k, v in load_space("pool").fixed.items()}
    for row, cfg in ROWS.items():
        if row.startswith("recommendation"):
            continue
        unlabelled = "all"
        if row == "paired KD, labelled rows only":
            cfg, unlabelled = ROWS["paired KD"], 0
        data_cfg = DataConfig(
            benchmark=BENCHMARK,
            labels_per_class=LABELS,
            val_per_class=VAL,
            unlabelled=unlabelled,
            data_root=str(args.data_root),
        )
        data = load_run_data(data_cfg, log=lambda *_: None)
        rows[row] = train_seeds({**fixed, **cfg}, data, data_cfg, seeds)
        print(f"  {row}: test {fmt(rows[row], 'test_acc')}", flush=True)
    return {
        "rows": rows,
        "chosen": chosen,
        "seeds": seeds,
        "minutes": (time.perf_counter() - t0) / 60,
        "load": os.getloadavg()[0],
        "when": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
    }


def report(entry: dict, args) -> list[str]:
    rows = entry["rows"]
    lines = [
        "# The paired and the unpaired setting on the same data",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, no "
        f"GPU. {entry['when']}, {entry['minutes']:.0f} min, load {entry['load']:.1f}.",
        "",
        f"Command: `python -m benchmarks.paired --num-samples {args.num_samples}`. Benchmark "
        f"`{BENCHMARK}`: every audio clip (1,000 labelled-table clips, 1,000 pool clips) is the "
        "sound of an MNIST image of the teacher's tables, and both rows carry the image's "
        f"pair_id; test: 400 clips in 2 held-out voices. {LABELS} labels per class (data seed "
        f"0, the same subset for every row), {VAL} validation rows per class. Test accuracy "
        f"and balanced accuracy %, mean ± std over the seeds {entry['seeds']}; differences are "
        "paired over those seeds (mean ± std of the per-seed differences). The two "
        "recommendations are the sweeps' own, retrained by their final stage on those seeds; "
        "every other row is trained here with `pool.yaml`'s fixed schedule and augmentation "
        "(12 epochs of 40 steps, strong augmentation).",
        "",
        "| method | test acc % | test balanced acc % |",
        "|---|---:|---:|",
    ]
    for row in ROWS:
        if row in rows:
            r = rows[row]
            lines.append(f"| {row} | {fmt(r, 'test_acc')} | {fmt(r, 'test_bacc')} |")
    lines += [
        "",
        "## Paired differences, test accuracy points (balanced accuracy)",
        "",
        "| difference | accuracy | balanced accuracy |",
        "|---|---:|---:|",
    ]
    for name, a, b in PARTS:
        lines.append(
            f"| {name} | {pts(diff(rows, a, b, 'test_acc'))} | "
            f"{pts(diff(rows, a, b, 'test_bacc'))} |"
        )
    lines += ["", "## What each sweep recommended", ""]
    for setting, c in entry["chosen"].items():
        cfg = {
            k: v
            for k, v in c["config"].items()
            if k not in ("epochs", "batch_size", "steps_per_epoch", "lr", "seed", "pool_batch")
        }
        lines += [
            f"**{setting}** (`--space {SETTINGS[setting]}`, {c['trials']} trials, "
            f"{c['sweep_s']:.0f} s): {c['name']} `{json.dumps(cfg)}`",
            "",
            f"> {c['sentence']}",
            "",
        ]
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--num-samples", type=int, default=8, help="searched trials per sweep")
    p.add_argument("--data-root", type=Path, default=ROOT / "data")
    p.add_argument("--storage", type=Path, default=ROOT / "runs" / "paired")
    p.add_argument("--report-only", action="store_true", help="rewrite the table from the cache")
    p.add_argument("--cache", type=Path, default=RESULTS / "paired.json")
    p.add_argument("--out", type=Path, default=RESULTS / "paired.md")
    p.add_argument(
        "--reading",
        type=Path,
        default=RESULTS / "paired-reading.md",
        help="a hand-written reading appended to the report, if the file exists",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(2)  # the cores this machine has
    if args.report_only:
        entry = json.loads(args.cache.read_text())
    else:
        entry = run(args)
        args.cache.write_text(json.dumps(entry, indent=1))
    reading = args.reading.read_text().splitlines() if args.reading.is_file() else []
    publish([*report(entry, args), *reading], args.out)


if __name__ == "__main__":
    main()
