"""Does the distillability diagnostic agree with what distillation actually does?

    flock /tmp/cmkd-heavy.lock python -m benchmarks.diagnose [--seeds 0 1 2 3 4] [--tune]

For the synth regime where the modalities share their decisive dims (`synth`) and the one where
they share none (`synth-nohelp`), it runs ``cmkd.diagnose`` (one CE warm-up per seed) and then
measures the outcome a sweep would find: CE (no distillation) and a small grid of distillation
configs, each trained with every seed on the same labelled subsample (paired by seed); the
winner is the distillation config with the best mean validation accuracy, as a sweep picks it,
and the outcome is its test accuracy minus CE's, paired over seeds. With ``--tune`` it also runs
a real sweep per regime (``python -m cmkd.tune --space default``) and reads the final retrain's
winner minus the no-distillation reference from its results.json. Writes
benchmarks/results/diagnose.md.
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

import torch

from cmkd.config import DataConfig, DistillConfig
from cmkd.diagnose import diagnose
from cmkd.train import fit, load_run_data
from cmkd.tune import REFERENCE_UCMKD

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
REGIMES = ("synth", "synth-nohelp")
# The default space's schedule and read-out (the reference defaults keep the student head).
SCHEDULE = {"epochs": 10, "steps_per_epoch": 15, "batch_size": 32, "lr": 3e-3, "readout": "best"}
CONFIGS = {
    "ce": {"algorithm": "ce"},
    "ucmkd_sum sinkhorn label-aware": {
        "algorithm": "ucmkd_sum",
        "fa": "sinkhorn",
        "label_cost": 4.0,
        "la": "teacher_ce",
        "w_fa": 1.0,
        "w_la": 1.0,
    },
    "ucmkd_sum sinkhorn label-aware w3": {
        "algorithm": "ucmkd_sum",
        "fa": "sinkhorn",
        "label_cost": 4.0,
        "la": "teacher_ce",
        "w_fa": 3.0,
        "w_la": 3.0,
    },
    "ucmkd_sum mmd class-conditional": {
        "algorithm": "ucmkd_sum",
        "fa": "mmd",
        "class_conditional": True,
        "la": "teacher_ce",
        "w_fa": 1.0,
        "w_la": 0.1,
    },
    "fa_only sinkhorn label-aware": {
        "algorithm": "fa_only",
        "fa": "sinkhorn",
        "label_cost": 4.0,
        "w_fa": 1.0,
    },
    "ucmkd_sum kl": {
        "algorithm": "ucmkd_sum",
        "fa": "sinkhorn",
        "label_cost": 4.0,
        "la": "kl",
        "w_fa": 0.3,
        "w_la": 1.0,
    },
    "UCMKD reference defaults": dict(REFERENCE_UCMKD),
}
LOADS: list[float] = []


def mean_sd(xs: list[float], mul: float = 100.0) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{mul * statistics.fmean(xs):.1f} ± {mul * sd:.1f}"


def run_regime(regime: str, seeds: list[int], data_root: Path, lpc: int) -> dict:
    """Diagnose and train every config with every seed on ``regime``."""
    data_cfg = DataConfig(benchmark=regime, labels_per_class=lpc, data_root=str(data_root))
    diags, runs = [], {name: [] for name in CONFIGS}
    for seed in seeds:
        data = load_run_data(data_cfg, seed, log=lambda m: print(f"    {m}", flush=True))
        t0 = time.perf_counter()
        d = diagnose(data, data_cfg, seed=seed, log=lambda *_: None)
        diags.append(d)
        print(
            f"  {regime} seed {seed}: diagnostic {d.verdict} (score {d.score:+.1f}, FA z "
            f"{d.z['fa_sinkhorn']:+.1f}, LA z {d.z['la_acc']:+.1f}) {time.perf_counter() - t0:.0f}s",
            flush=True,
        )
        for name, over in CONFIGS.items():
            cfg = DistillConfig.from_dict({**SCHEDULE, **over, "seed": seed}, source=name)
            best = fit(cfg, data, data_cfg, log=lambda *_: None)["best"]
            runs[name].append(
                {k: best[k] for k in ("val_acc", "test_acc", "test_acc_teacher_head")}
            )
            LOADS.append(os.getloadavg()[0])
            print(f"    {name}: val {best['val_acc']:.3f} test {best['test_acc']:.3f}", flush=True)
    distill = [n for n in CONFIGS if n != "ce"]
    winner = max(distill, key=lambda n: statistics.fmean(r["val_acc"] for r in runs[n]))
    gains = [w["test_acc"] - c["test_acc"] for w, c in zip(runs[winner], runs["ce"], strict=True)]
    return {"diagnoses": diags, "runs": runs, "winner": winner, "gains": gains}


def run_tune(regime: str, num_samples: int, lpc: int, data_root: Path) -> float | None:
    """Winner minus no-distillation (test points) of a real default-space sweep, or None."""
    with tempfile.TemporaryDirectory(prefix="cmkd-diag-sweep-") as tmp:
        cmd = [
            sys.executable, "-m", "cmkd.tune", "--space", "default", "--benchmark", regime,
            "--storage", tmp, "--name", regime, "--wandb", "disabled", "--num-samples",
            str(num_samples), "--final-seeds", "3", "--labels-per-class", str(lpc),
            "--data-root", str(data_root),
        ]  # fmt: skip
        print(" ".join(cmd), flush=True)
        proc = subprocess.run(cmd, cwd=ROOT)
        results = Path(tmp) / regime / "results.json"
        if proc.returncode != 0 or not results.is_file():
            return None
        out = json.loads(results.read_text())
        final, chosen = out["final"], out["verdict"]["recommendation"]
        return 100 * (final[chosen]["test_acc_mean"] - final["reference-ce"]["test_acc_mean"])


def agrees(verdict: str, gain: float, se: float) -> str:
    helped = gain > 2 * se
    if verdict == "likely to help":
        return "yes" if helped else "no"
    if verdict == "unlikely to help":
        return "yes" if not helped else "no"
    return "n/a (unclear)"


def report(results: dict, tune: dict, args, minutes: float) -> str:
    lines = [
        "# The distillability diagnostic against what distillation does",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}. Run "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {minutes:.1f} min; 1-minute load "
        f"average {min(LOADS):.1f} to {max(LOADS):.1f} (median {statistics.median(LOADS):.1f}): "
        "other jobs shared the machine.",
        "",
        f"Command: `python -m benchmarks.diagnose --seeds {' '.join(map(str, args.seeds))} "
        f"--epochs {args.epochs} --steps {args.steps}{' --tune' if args.tune else ''}`. Student b, teacher a, {args.labels_per_class} labels "
        "per class. Diagnostic: `cmkd.diagnose` defaults (10 CE warm-up epochs × 20 steps, 20 "
        "shuffled class correspondences), one per seed; z is (true − shuffled mean) / shuffled "
        "std, score = −z(FA) + z(LA). Outcome: CE and "
        f"{len(CONFIGS) - 1} distillation configs ({', '.join(n for n in CONFIGS if n != 'ce')}) "
        f"on the default space's schedule ({SCHEDULE}), every seed on the same labelled subsample; "
        "the winner is the distillation config with the best mean validation accuracy (as a sweep "
        "picks it); gain = its test accuracy minus CE's, paired by seed (mean ± standard error); "
        "the gain via teacher head reads the winner out through the teacher head instead. "
        "'Agrees': 'likely to help' with a gain above 2 standard errors, or 'unlikely' without.",
        "",
        "| regime | FA Sinkhorn: true / shuffled (z) | LA teacher-head acc %: true / shuffled (z) "
        "| score | verdicts (per seed) | CE test % | winner (by val) | winner test % | gain, points "
        "| gain via teacher head, points | sweep gain, points | verdict agrees |",
        "|---|---|---|---:|---|---:|---|---:|---:|---:|---:|---|",
    ]
    scores, outcomes = {}, {}
    for regime, r in results.items():
        ds = r["diagnoses"]
        fa_t = statistics.fmean(d.true["fa_sinkhorn"] for d in ds)
        fa_s = statistics.fmean(d.shuffled_mean["fa_sinkhorn"] for d in ds)
        la_t = statistics.fmean(d.true["la_acc"] for d in ds)
        la_s = statistics.fmean(d.shuffled_mean["la_acc"] for d in ds)
        z_fa = statistics.fmean(d.z["fa_sinkhorn"] for d in ds)
        z_la = statistics.fmean(d.z["la_acc"] for d in ds)
        score = statistics.fmean(d.score for d in ds)
        verdicts = [d.verdict for d in ds]
        majority = max(set(verdicts), key=verdicts.count)
        g = r["gains"]
        gain = 100 * statistics.fmean(g)
        se = 100 * statistics.stdev(g) / len(g) ** 0.5 if len(g) > 1 else 0.0
        scores[regime], outcomes[regime] = score, gain
        ce = [x["test_acc"] for x in r["runs"]["ce"]]
        win = [x["test_acc"] for x in r["runs"][r["winner"]]]
        tg = tune.get(regime)
        g_t = [
            w["test_acc_teacher_head"] - c["test_acc"]
            for w, c in zip(r["runs"][r["winner"]], r["runs"]["ce"], strict=True)
        ]
        se_t = 100 * statistics.stdev(g_t) / len(g_t) ** 0.5 if len(g_t) > 1 else 0.0
        lines.append(
            f"| {regime} | {fa_t:.3f} / {fa_s:.3f} ({z_fa:+.1f}) | {100 * la_t:.1f} / "
            f"{100 * la_s:.1f} ({z_la:+.1f}) | {score:+.1f} | "
            f"{', '.join(verdicts)} | {mean_sd(ce)} | {r['winner']} | {mean_sd(win)} | "
            f"{gain:+.1f} ± {se:.1f} | {100 * statistics.fmean(g_t):+.1f} ± {se_t:.1f} | "
            f"{'' if tg is None else f'{tg:+.1f}'} | "
            f"{agrees(majority, gain, se)} |"
        )
    lines += ["", "Every config, test accuracy % (mean ± std over seeds):", ""]
    lines.append("| config | " + " | ".join(results) + " |")
    lines.append("|---|" + "---:|" * len(results))
    for name in CONFIGS:
        cells = [mean_sd([x["test_acc"] for x in r["runs"][name]]) for r in results.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if len(results) == 2:
        a, b = REGIMES
        rank_ok = (scores[a] > scores[b]) == (outcomes[a] > outcomes[b])
        lines += [
            "",
            f"Ranking: the diagnostic scores {a} {scores[a]:+.1f} and {b} {scores[b]:+.1f}; "
            f"distillation's gain was {outcomes[a]:+.1f} and {outcomes[b]:+.1f} points: the "
            f"diagnostic ranks the regimes {'correctly' if rank_ok else 'WRONGLY'}.",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--labels-per-class", type=int, default=5)
    p.add_argument("--tune", action="store_true", help="also run a real sweep per regime")
    p.add_argument("--num-samples", type=int, default=6, help="searched trials with --tune")
    p.add_argument("--data-root", type=Path, default=ROOT / "data")
    p.add_argument("--epochs", type=int, default=SCHEDULE["epochs"])
    p.add_argument("--steps", type=int, default=SCHEDULE["steps_per_epoch"])
    p.add_argument("--append", action="store_true", help="add the table to --out, keep the rest")
    p.add_argument("--out", type=Path, default=RESULTS / "diagnose.md")
    args = p.parse_args(argv)
    torch.set_num_threads(2)  # the cores this machine has
    SCHEDULE.update(epochs=args.epochs, steps_per_epoch=args.steps)
    LOADS.append(os.getloadavg()[0])
    t0 = time.perf_counter()
    results = {}
    for regime in REGIMES:
        print(regime, flush=True)
        results[regime] = run_regime(regime, args.seeds, args.data_root, args.labels_per_class)
    tune = {}
    if args.tune:
        for regime in REGIMES:
            tune[regime] = run_tune(regime, args.num_samples, args.labels_per_class, args.data_root)
    text = report(results, tune, args, (time.perf_counter() - t0) / 60)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.append and args.out.is_file():
        head, _, body = text.partition("\n\n")  # one title per file
        text = (
            args.out.read_text()
            + f"\n## Schedule {args.epochs} epochs x {args.steps} steps\n\n"
            + body
        )
    args.out.write_text(text)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
