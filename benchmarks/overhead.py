"""Ray's cost per epoch: the same run inside a Ray Tune trial (Ray Train worker) and in a plain loop.

    python -m benchmarks.overhead [--benchmark avdigits] [--epochs 8] [--workers 1]

Both sides train the same configuration on the same data with one torch thread (what a Train
worker gets). Plain: ``cmkd.train.fit`` in this process, wall time between epoch ends. Ray: one
trial of the sweep's own trainable; Tune's ``time_this_iter_s`` between reports (train, evaluate,
all-reduce, report, checkpoint). The first epoch is left out of both means; the trial's start-up
(worker start, process group, data shard) is reported on its own. Writes
benchmarks/results/overhead.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from cmkd.config import DataConfig, DistillConfig
from cmkd.train import fit, load_run_data

CONFIG = {
    "algorithm": "ucmkd_sum",
    "fa": "sinkhorn",
    "epsilon": 0.1,
    "la": "teacher_ce",
    "batch_size": 32,
    "steps_per_epoch": 15,
    "lr": 3e-3,
}


def plain(cfg: DistillConfig, data, data_cfg) -> list[float]:
    torch.set_num_threads(1)
    stamps = [time.perf_counter()]
    fit(
        cfg,
        data,
        data_cfg,
        on_epoch=lambda m, s: stamps.append(time.perf_counter()),
        log=lambda *_: None,
    )
    return [b - a for a, b in zip(stamps[:-1], stamps[1:], strict=True)]


def in_ray(cfg: DistillConfig, data, data_cfg, workers: int) -> tuple[list[float], float, float]:
    import ray
    from ray import tune

    from cmkd.sweep import make_trainable, ray_env
    from cmkd.trial import for_machine

    ray_env()
    ray.init(logging_level="ERROR", log_to_driver=False)
    try:
        resources = for_machine(ray.cluster_resources(), workers, 0.0, None)
        with tempfile.TemporaryDirectory() as tmp:
            trainable, _, _ = make_trainable(data, data_cfg, resources, tmp)
            t0 = time.perf_counter()
            grid = tune.Tuner(
                trainable,
                param_space={**cfg.model_dump(), "role": "search"},
                run_config=tune.RunConfig(name="overhead", storage_path=tmp, verbose=0),
            ).fit()
            wall = time.perf_counter() - t0
        df = grid[0].metrics_dataframe
        iters = df["time_this_iter_s"].tolist()
        return iters, wall, float(df["epoch_s"].iloc[0])
    finally:
        ray.shutdown()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--benchmark", default="avdigits")
    p.add_argument("--labels-per-class", type=int, default=5)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--data-root", default="data")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "overhead.md")
    args = p.parse_args(argv)
    data_cfg = DataConfig(
        benchmark=args.benchmark, labels_per_class=args.labels_per_class, data_root=args.data_root
    )
    data = load_run_data(data_cfg, seed=0)
    cfg = DistillConfig(**CONFIG, epochs=args.epochs)
    load = os.getloadavg()[0]
    plain_s = plain(cfg, data, data_cfg)
    ray_s, wall, first_epoch = in_ray(cfg, data, data_cfg, args.workers)
    p_mean, r_mean = statistics.fmean(plain_s[1:]), statistics.fmean(ray_s[1:])
    startup = ray_s[0] - first_epoch
    ratio = r_mean / p_mean
    verdict = "met" if ratio <= 1.25 else "NOT met"
    text = (
        "\n".join(
            [
                "# Ray overhead per epoch",
                "",
                f"{os.cpu_count()} cores, load average {load:.2f} before the run, "
                f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. {args.benchmark}, "
                f"{data.teacher} teacher → {data.student} student, {args.labels_per_class} labels per class, "
                f"config `{CONFIG}`, {args.epochs} epochs, one torch thread; Ray: {args.workers} Train worker(s).",
                "",
                "| | plain loop | Ray trial | ratio |",
                "|---|---:|---:|---:|",
                f"| mean epoch, epochs 2..{args.epochs} (s) | {p_mean:.3f} | {r_mean:.3f} | {ratio:.2f} |",
                f"| first epoch (s) | {plain_s[0]:.3f} | {ray_s[0]:.3f} | |",
                f"| trial start-up before the first epoch (s) | | {startup:.1f} | |",
                f"| whole trial, wall (s) | {sum(plain_s):.1f} | {wall:.1f} | {wall / sum(plain_s):.1f} |",
                "",
                f"Target: per-epoch ratio ≤ 1.25: {verdict} ({ratio:.2f}).",
            ]
        )
        + "\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
