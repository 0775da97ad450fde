"""The distillability diagnostic with an unlabelled pool, beside what the sweeps found.

    python -m benchmarks.diagnose_pool [--seeds 0 1 2]

Runs ``cmkd.diagnose`` (its student warmed up on the labels and the unlabelled pool, no teacher)
on ``sonified``, on ``sonified`` with a permuted-label teacher and on ``avdigits``, 5 labels per
class, and sets each verdict beside the outcome that ``benchmarks.quality`` recorded for the same
regime in ``benchmarks/results/quality.json``: the pool's part (ssl_only − CE), the teacher's own
part (recommendation − ssl_only) and, for the permuted teacher, its run against ssl_prior, test
accuracy points paired over the final seeds. Writes ``benchmarks/results/diagnose-pool.md``.
Run it on an idle machine, after ``benchmarks.quality``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks.data import machine
from cmkd.bank import control_bank
from cmkd.config import DataConfig
from cmkd.diagnose import diagnose
from cmkd.train import load_run_data

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
# name: (benchmark, teacher control, quality.json regime, the attribution part that is its outcome)
CASES = {
    "sonified": ("sonified", "real", "sonified 5", "teacher"),
    "sonified, permuted teacher": ("sonified", "permuted", "sonified 5", "control-permuted"),
    "avdigits": ("avdigits", "real", "avdigits+pool 5", "teacher"),
}
QUANTITIES = (("fa_sinkhorn", "FA", 1, ".3f"), ("la_acc", "LA %", 100, ".1f"))


def run_case(bench: str, control: str, seeds: list[int], data_root: Path) -> list[dict]:
    out = []
    for seed in seeds:
        data_cfg = DataConfig(benchmark=bench, labels_per_class=5, data_root=str(data_root))
        data = load_run_data(data_cfg, seed, log=lambda *_: None)
        data = replace(data, bank=control_bank(data.bank, control, data.meta.num_classes))
        torch.manual_seed(seed)
        d = diagnose(data, data_cfg, seed=seed, log=lambda *_: None)
        print(f"{bench} ({control}) seed {seed}: {d.verdict}, score {d.score:+.1f}", flush=True)
        out.append({**d.__dict__, "score": d.score})
    return out


def outcome(quality: dict, regime: str, part: str) -> str:
    entry = quality.get(regime, {}).get("attribution") or {}
    p = (entry.get("parts") or {}).get(part)
    if p is None:
        return "not measured"
    t = p["test_acc"]
    return f"{100 * t['mean']:+.1f} ± {100 * t['std']:.1f} ({p['says']})"


def mean_sd(xs: list[float], mul: float = 1.0, fmt: str = ".1f") -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{mul * statistics.fmean(xs):{fmt}} ± {mul * sd:{fmt}}"


def report(results: dict[str, list[dict]], quality: dict, args, minutes: float) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# The distillability diagnostic with an unlabelled pool",
        "",
        f"Machine: {machine()}. Run {when}, {minutes:.1f} min, load {os.getloadavg()[0]:.1f}.",
        "",
        f"Command: `python -m benchmarks.diagnose_pool --seeds {' '.join(map(str, args.seeds))}`."
        " 5 labels per class, 10 validation rows per class. The diagnostic (`cmkd.diagnose` "
        "defaults) warms the student up on its labels and its unlabelled pool with no teacher "
        "(`ssl`, uniform prior, strong augmentation) and, beside it, on its labels only (CE); z "
        "is (true − shuffled mean) / shuffled std over 20 shuffled class correspondences; score "
        "= −z(FA) + z(LA). The outcome columns come from `benchmarks/results/quality.json` (the "
        "same regime's sweep, test accuracy points, paired over its final seeds): the pool's "
        "part is ssl_only − CE, the teacher's own part is the recommendation − ssl_only, and for "
        "the permuted teacher its run against ssl_prior.",
        "",
        "| case | verdicts | score | FA: true / shuffled (z) | LA %: true / shuffled (z) | "
        "pool: h_t agrees with h_s %, true / shuffled (z) | val acc %: CE → with the pool | "
        "outcome: the pool's part | outcome: the teacher's part |",
        "|---|---|---:|---|---|---|---|---:|---:|",
    ]
    for name, ds in results.items():
        _, _, regime, part = CASES[name]
        cells = []
        for key, _, mul, fmt in (*QUANTITIES, ("pool_agree", "", 100, ".1f")):
            true = mean_sd([d["true"][key] for d in ds], mul, fmt)
            shuf = mean_sd([d["shuffled_mean"][key] for d in ds], mul, fmt)
            z = statistics.fmean(d["z"][key] for d in ds)
            cells.append(f"{true} / {shuf} ({z:+.1f})")
        verdicts = ", ".join(d["verdict"] for d in ds)
        score = mean_sd([d["score"] for d in ds])
        ce = mean_sd([d["ce_val_acc"] for d in ds], 100)
        pool = mean_sd([d["student_val_acc"] for d in ds], 100)
        lines.append(
            f"| {name} | {verdicts} | {score} | {' | '.join(cells)} | {ce} → {pool} | "
            f"{outcome(quality, regime, 'pool')} | {outcome(quality, regime, part)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--data-root", type=Path, default=ROOT / "data")
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument("--out", type=Path, default=RESULTS / "diagnose-pool.md")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    results = {}
    for name in args.cases:
        bench, control, _, _ = CASES[name]
        results[name] = run_case(bench, control, args.seeds, args.data_root)
    quality_file = RESULTS / "quality.json"
    quality = json.loads(quality_file.read_text()) if quality_file.is_file() else {}
    text = report(results, quality, args, (time.perf_counter() - t0) / 60)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
