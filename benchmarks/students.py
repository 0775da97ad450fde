"""What a student reaches without distillation: CE only, at 2, 5, 20 labels per class and all.

    python -m benchmarks.students [--seeds 0 1 2] [--epochs 20] [--steps 30] [--batch-size 32]

For every direction (teacher modality -> student modality) it reports the teacher's test
accuracy and the CE-only student's test accuracy at its best validation epoch (mean ± std over
seeds), and the gap between 5 labels per class and all labels: the room distillation has to
close. Writes benchmarks/results/students.md and students.png. Teacher banks are built on first
use beside each benchmark (``cmkd.train.ensure_bank``).
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

from cmkd.config import DataConfig, DistillConfig
from cmkd.train import fit, load_run_data

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
DIRECTIONS = {  # name: (benchmark, teacher modality, student modality)
    "avdigits image→audio": ("avdigits", "image", "audio"),
    "avdigits audio→image": ("avdigits", "audio", "image"),
    "synth a→b": ("synth", "a", "b"),
    "synth-nohelp a→b": ("synth-nohelp", "a", "b"),
}
BUDGETS: tuple[int | str, ...] = (2, 5, 20, "all")
LOADS: list[float] = []  # 1-minute load average after every run


def run_direction(name, epochs, steps, batch_size, seeds, budgets, data_root) -> dict:
    """{"teacher": test acc, budget: [student test acc per seed]} for one direction."""
    bench, teacher, student = DIRECTIONS[name]
    out: dict = {}
    for k in budgets:
        accs = []
        for seed in seeds:
            t0 = time.perf_counter()
            data_cfg = DataConfig(
                benchmark=bench,
                teacher=teacher,
                student=student,
                labels_per_class=k,
                data_root=str(data_root),
            )
            data = load_run_data(data_cfg, seed, log=lambda m: print(f"    {m}", flush=True))
            out["teacher"] = data.bank.info["teacher"]["test_acc"]
            cfg = DistillConfig(
                algorithm="ce",
                epochs=epochs,
                steps_per_epoch=steps,
                batch_size=batch_size,
                seed=seed,
            )
            best = fit(cfg, data, data_cfg, log=lambda *_: None)["best"]
            accs.append(best["test_acc"])
            LOADS.append(os.getloadavg()[0])
            print(
                f"  {name}  labels/class {k}  seed {seed}: test acc {best['test_acc']:.4f} "
                f"(best epoch {best['epoch']}, {len(data.y_train)} labelled)  "
                f"{time.perf_counter() - t0:.1f}s",
                flush=True,
            )
        out[k] = accs
    return out


def mean_std(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * statistics.mean(xs):.1f} ± {100 * sd:.1f}"


def report(results, budgets, args, minutes) -> str:
    lines = [
        "# CE-only students: the gap distillation attacks",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}. "
        f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {minutes:.1f} min; "
        f"1-minute load average {min(LOADS):.1f} to {max(LOADS):.1f} "
        f"(median {statistics.median(LOADS):.1f}) over the runs: other jobs shared the machine.",
        "",
        f"Student: `DistillConfig(algorithm='ce', epochs={args.epochs}, "
        f"steps_per_epoch={args.steps}, batch_size={args.batch_size})`, AdamW lr 1e-3, "
        "weight decay 1e-2, the default student encoder (CNN for images and log-mel, MLP for "
        "vectors); every budget gets the same number of steps. Test accuracy (%) at the best "
        f"validation epoch, mean ± std over seeds {args.seeds}. Teacher: test accuracy of the "
        "bank's teacher (`cmkd.teacher` defaults).",
        "",
        "| direction | teacher | "
        + " | ".join(f"CE {k}/class" if k != "all" else "CE all" for k in budgets)
        + " | gap (all − 5) |",
        "|---|---:|" + "---:|" * len(budgets) + "---:|",
    ]
    gaps = []
    for name, r in results.items():
        gap = ""
        if 5 in r and "all" in r:
            g = 100 * (statistics.mean(r["all"]) - statistics.mean(r[5]))
            gaps.append((name, g))
            gap = f"{g:+.1f}"
        cells = " | ".join(mean_std(r[k]) for k in budgets)
        lines.append(f"| {name} | {100 * r['teacher']:.1f} | {cells} | {gap} |")
    if gaps:
        lines += [
            "",
            "Gap between CE-only at 5 labels per class and at all labels (accuracy points): "
            + "; ".join(f"{n} {g:+.1f}" for n, g in gaps)
            + ". That gap is what distillation from the unpaired teacher can close.",
        ]
    return "\n".join(lines) + "\n"


def plot(results, budgets, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = list(range(len(budgets)))
    for name, r in results.items():
        means = [100 * statistics.mean(r[k]) for k in budgets]
        sds = [100 * statistics.stdev(r[k]) if len(r[k]) > 1 else 0.0 for k in budgets]
        ax.errorbar(xs, means, yerr=sds, marker="o", capsize=3, label=name)
    ax.set_xticks(xs, [str(k) for k in budgets])
    ax.set_xlabel("labelled student samples per class")
    ax.set_ylabel("CE-only student test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--directions", nargs="+", default=list(DIRECTIONS), choices=list(DIRECTIONS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--steps", type=int, default=30, help="batches per epoch, at every budget")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--data-root", type=Path, default=ROOT / "data")
    p.add_argument("--out", type=Path, default=RESULTS / "students.md")
    args = p.parse_args(argv)
    torch.set_num_threads(2)  # the cores this machine has; more threads only oversubscribe
    budgets = BUDGETS
    LOADS.append(os.getloadavg()[0])
    t0 = time.perf_counter()
    results = {}
    for name in args.directions:
        print(f"{name}", flush=True)
        results[name] = run_direction(
            name, args.epochs, args.steps, args.batch_size, args.seeds, budgets, args.data_root
        )
    minutes = (time.perf_counter() - t0) / 60
    text = report(results, budgets, args, minutes)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    plot(results, budgets, args.out.with_suffix(".png"))
    print(f"written to {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
