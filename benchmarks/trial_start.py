"""What a trial costs besides its training: the two paths a one-worker trial can take, side by side.

    flock /tmp/cmkd-heavy.lock python -m benchmarks.trial_start [--trials 6] [--epochs 2]

One Ray cluster (2 CPUs), one small synth benchmark, and the same sweep three ways: every trial a
Ray Train ``TorchTrainer`` (``--runner train``: a trial actor, a Train controller and a worker
process per trial), every trial in its own Tune actor (``--runner auto``, one worker), and the
same with Tune's actor reuse (what ``cmkd.tune`` does on that path). Each runs ``--trials``
trials of ``--epochs`` short epochs one at a time, so wall time over trials is the cost of a
trial; the training itself is the same on every path (``tests/test_trial_paths.py``). Writes
benchmarks/results/trial-start.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.publish import publish


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "trial-start.md")
    args = p.parse_args(argv)
    import ray
    from ray import tune

    from cmkd.config import DataConfig, DistillConfig
    from cmkd.data.synth import build_synth
    from cmkd.sweep import make_trainable, ray_env
    from cmkd.train import load_run_data
    from cmkd.trial import Resources

    work = Path(tempfile.mkdtemp(prefix="cmkd-trial-start-"))
    build_synth(work / "synth", "synth", seed=0, train_per_class=30, val_per_class=10,
                test_per_class=20)  # fmt: skip
    data_cfg = DataConfig(benchmark=str(work / "synth"))
    data = load_run_data(data_cfg, log=lambda *_: None)
    cfg = DistillConfig(algorithm="ucmkd_sum", fa="mmd", epochs=args.epochs, steps_per_epoch=10)
    ray_env()
    load = os.getloadavg()[0]
    ray.init(num_cpus=2, logging_level="ERROR", log_to_driver=False)
    rows = []
    try:
        for name, local, reuse in (
            ("Ray Train run (--runner train)", False, False),
            ("own process, no reuse", True, False),
            ("own process, reused (--runner auto)", True, True),
        ):
            trainable, _, _ = make_trainable(
                data, data_cfg, Resources(), str(work / name.split()[0]), local=local
            )
            t0 = time.perf_counter()
            grid = tune.Tuner(
                trainable,
                param_space=cfg.model_dump(),
                tune_config=tune.TuneConfig(
                    num_samples=args.trials, max_concurrent_trials=1, reuse_actors=reuse
                ),
                run_config=tune.RunConfig(
                    name=f"t{len(rows)}", storage_path=str(work / "tune"), verbose=0
                ),
            ).fit()
            wall = time.perf_counter() - t0
            assert not grid.errors, grid.errors
            train_s = sum(r.metrics_dataframe["epoch_s"].sum() for r in grid)
            rows.append((name, wall, train_s))
            print(f"{name}: {wall:.1f} s for {args.trials} trials", flush=True)
    finally:
        ray.shutdown()
    base = rows[0][1]
    lines = [
        "# What a trial costs besides its training",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores; load average before the run "
        f"{load:.2f}; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Command: "
        f"`python -m benchmarks.trial_start --trials {args.trials} --epochs {args.epochs}`: "
        f"{args.trials} one-worker trials one at a time, each {args.epochs} epochs of 10 steps "
        "(UCMKD, MMD) on a small synth benchmark, the same config on every path.",
        "",
        "| path | wall s | per trial s | of which training s | start-up per trial s | "
        "wall vs Ray Train |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, wall, train_s in rows:
        per = wall / args.trials
        lines.append(
            f"| {name} | {wall:.1f} | {per:.1f} | {train_s / args.trials:.2f} | "
            f"{per - train_s / args.trials:.1f} | {wall / base:.2f} |"
        )
    lines += [
        "",
        "Start-up per trial is wall time per trial less its epochs' own time: process starts "
        "and imports (torch, and torch._dynamo on the first optimizer), the Train controller, "
        "worker group and process group on the Ray Train path, Tune's scheduling.",
    ]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
