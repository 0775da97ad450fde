"""Search efficiency: TPE + ASHA vs random + ASHA vs random without early stopping, same budget.

    python -m benchmarks.search [--benchmark synth] [--budget 400] [--seeds 0 1 2]

The sweep's space and trial (``cmkd.space``'s define-by-run suggestions, ``cmkd.train.Run`` per
trial, one epoch = train + validate) driven by Optuna in this process, one trial at a time, so
that the three searchers differ in nothing else:

- tpe-asha: ``TPESampler`` as the sweep builds it (multivariate, grouped, 5 start-up trials) and
  ``SuccessiveHalvingPruner`` (asynchronous successive halving: first rung at a quarter of the
  epochs, reduction factor 2, as the sweep's ASHA);
- random-asha: ``RandomSampler`` and the same pruner;
- random: ``RandomSampler``, every trial runs all its epochs.

Each (searcher, seed) spends the same budget of trial-epochs; the best validation accuracy seen
so far is recorded after every epoch against cumulative trial-epochs and wall time. The
reference trials of the sweep are left out (they are the same for every searcher). Writes
benchmarks/results/search.md, search.png and search.json (the curves).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks.publish import publish
from cmkd.config import DataConfig, DistillConfig
from cmkd.space import load_space
from cmkd.train import Run, load_run_data

SEARCHERS = ("tpe-asha", "random-asha", "random")
RESULTS = Path(__file__).parent / "results"


def make_study(searcher: str, seed: int, epochs: int):
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if searcher.startswith("tpe"):
        sampler = optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, n_startup_trials=5
        )
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)
    if searcher.endswith("asha"):
        pruner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=max(1, epochs // 4), reduction_factor=2
        )
    else:
        pruner = optuna.pruners.NopPruner()
    return optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)


def search(space, data, data_cfg, searcher: str, seed: int, budget: int, epochs: int) -> list:
    """[(cumulative trial-epochs, seconds, best validation metric so far)] after every epoch."""
    import optuna

    study = make_study(searcher, seed, epochs)
    curve, used, best, t0 = [], 0, float("-inf"), time.perf_counter()
    while used < budget:
        trial = study.ask()
        space.define_by_run(trial)
        cfg = DistillConfig.from_dict(
            {**space.trial_config(trial.params), "epochs": epochs}, source="search"
        )
        run, trial_best, state = Run(cfg, data, data_cfg), float("-inf"), None
        while run.epoch < epochs and used < budget:
            value = run.run_epoch()[space.metric]
            used += 1
            trial_best, best = max(trial_best, value), max(best, value)
            curve.append((used, time.perf_counter() - t0, best))
            trial.report(value, run.epoch)
            if trial.should_prune():
                state = optuna.trial.TrialState.PRUNED
                break
        study.tell(trial, trial_best if state is None else None, state=state)
    return curve


def at_budget(curve: list, epochs: int) -> float:
    """Best metric after ``epochs`` trial-epochs."""
    return max((b for e, _, b in curve if e <= epochs), default=float("nan"))


def epochs_to(curve: list, target: float) -> int | None:
    """Trial-epochs until the best metric first reached ``target``."""
    return next((e for e, _, b in curve if b >= target), None)


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colours = dict(zip(SEARCHERS, ("C0", "C1", "C2"), strict=True))
    for (searcher, seed), curve in curves.items():
        label = searcher if seed == min(s for (_, s) in curves) else None
        e, t, b = zip(*curve, strict=True)
        axes[0].step(e, [100 * v for v in b], where="post", color=colours[searcher], label=label)
        axes[1].step(t, [100 * v for v in b], where="post", color=colours[searcher], label=label)
    axes[0].set_xlabel("cumulative trial-epochs")
    axes[1].set_xlabel("wall time (s)")
    for ax in axes:
        ax.set_ylabel("best validation accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--space", default="default")
    p.add_argument("--benchmark", default="synth")
    p.add_argument("--labels-per-class", type=int, default=5)
    p.add_argument("--data-root", default="data")
    p.add_argument("--budget", type=int, default=400, help="trial-epochs per search")
    p.add_argument("--epochs", type=int, default=None, help="override the space's epochs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--searchers", nargs="+", default=list(SEARCHERS), choices=SEARCHERS)
    p.add_argument("--out", type=Path, default=RESULTS / "search.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # what a Train worker gets
    space = load_space(args.space)
    epochs = args.epochs or space.fixed.get("epochs", DistillConfig().epochs)
    data_cfg = DataConfig(
        benchmark=args.benchmark, labels_per_class=args.labels_per_class, data_root=args.data_root
    )
    data = load_run_data(data_cfg, seed=0, log=lambda *_: None)
    load = os.getloadavg()[0]
    curves = {}
    for seed in args.seeds:  # searchers interleaved per seed: a change in load hits all alike
        for searcher in args.searchers:
            curves[searcher, seed] = search(
                space, data, data_cfg, searcher, seed, args.budget, epochs
            )
            c = curves[searcher, seed]
            print(f"{searcher} seed {seed}: best {c[-1][2]:.4f} in {c[-1][1]:.0f} s", flush=True)

    lines = [
        "# Search efficiency at the same budget",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, one torch thread; load average "
        f"{load:.2f} before the run; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
        f"Space `{args.space}` ({epochs} epochs per trial), {data.meta.name} {data.teacher} → "
        f"{data.student}, {args.labels_per_class} labels per class; {args.budget} trial-epochs "
        f"per search; search seeds {args.seeds}; Optuna in process, one trial at a time; metric "
        f"{space.metric} (best so far).",
        "",
        "| searcher | best at ¼ budget (%) | best at ½ (%) | best at the end (%) | wall (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for searcher in args.searchers:
        cs = [curves[searcher, s] for s in args.seeds]

        def mean_at(k, cs=cs):
            return 100 * statistics.fmean(at_budget(c, k) for c in cs)

        lines.append(
            f"| {searcher} | {mean_at(args.budget // 4):.2f} | {mean_at(args.budget // 2):.2f} | "
            f"{mean_at(args.budget):.2f} | {statistics.fmean(c[-1][1] for c in cs):.0f} |"
        )
    if {"tpe-asha", "random"} <= set(args.searchers):
        lines += [
            "",
            "Target: TPE+ASHA within 0.5 points of the final best with at most ¼ of the "
            "trial-epochs random search without stopping needs to get there (per seed; the final "
            "best is the best of all searchers of that seed):",
            "",
            "| seed | final best (%) | tpe-asha epochs to within 0.5 | random epochs to within 0.5 "
            "| ratio | target ≤ 0.25 |",
            "|---:|---:|---:|---:|---:|---|",
        ]
        for s in args.seeds:
            final = max(curves[k, s][-1][2] for k in args.searchers)
            tpe, rnd = (epochs_to(curves[k, s], final - 0.005) for k in ("tpe-asha", "random"))
            if tpe is None:
                ratio, verdict = "", "NOT met: TPE+ASHA never got there"
            elif rnd is None:  # random needs more than the whole budget
                ratio = f"< {tpe / args.budget:.2f}"
                verdict = (
                    "met"
                    if 4 * tpe <= args.budget
                    else "not decided: random needs more than the budget"
                )
            else:
                ratio = f"{tpe / rnd:.2f}"
                verdict = "met" if tpe / rnd <= 0.25 else f"NOT met ({tpe / rnd:.2f})"
            lines.append(
                f"| {s} | {100 * final:.2f} | {tpe or '—'} | {rnd or f'> {args.budget}'} | {ratio} "
                f"| {verdict} |"
            )
    args.out.with_suffix(".json").write_text(
        json.dumps({f"{k} seed {s}": c for (k, s), c in curves.items()})
    )
    png = args.out.with_suffix(".png")
    plot(curves, png)
    lines += ["", f"![best validation accuracy against trial-epochs and wall time]({png.name})"]
    publish(lines, args.out, png)


if __name__ == "__main__":
    main()
