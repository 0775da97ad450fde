"""What a whole trial costs against the same training in a plain PyTorch process, side by side.

    flock /tmp/cmkd-heavy.lock python -m benchmarks.overhead [--epochs 10 2] [--workers 1 2]

The default trial: the laptop default's benchmark (sonified, 5 labels per class, its pool, 25
validation rows per class) and the pool space's first point (``ucmkd_pool``) with its fixed
schedule, at ``--epochs`` epochs. For each epochs × workers case, in one run:

- **plain loop**: ``python -m benchmarks.plain_loop`` in a fresh process (``torchrun`` with two
  processes for two workers), timed from launch to exit: process start, imports, reading the
  benchmark and bank from disk, the epochs (:class:`cmkd.train.Run`, one torch thread per rank);
- **Ray trial**: the sweep's own trainable and Tune settings on a local Ray cluster, ``--trials``
  trials of the same configuration one at a time, each timed from the searcher's suggestion to
  the trial's last report as the driver sees them. One worker: the trial's own process (the
  first trial starts it; Tune reuses it for the next, as the sweep does). Two workers: a Ray
  Train ``TorchTrainer`` per trial.

Writes benchmarks/results/overhead.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.publish import publish

TARGET = 1.25


def default_trial(epochs: int) -> tuple[dict, dict]:
    """(distill, data) of the default sweep's first trial, at ``epochs`` epochs."""
    from cmkd.config import DataConfig, DistillConfig
    from cmkd.space import load_space

    space = load_space("pool")
    distill = DistillConfig.from_dict(
        {**space.fixed, **space.start[0], "epochs": epochs}, source="pool space"
    )
    data = DataConfig(benchmark="sonified", labels_per_class=5, val_per_class=space.val_per_class)
    return distill.model_dump(), data.model_dump()


def plain(spec: dict, workers: int, work: Path) -> dict:
    """One plain-loop process (or torchrun group), wall time from launch to exit."""
    cfg = work / "plain.json"
    cfg.write_text(json.dumps(spec))
    module = ["-m", "benchmarks.plain_loop", "--config", str(cfg)]
    if workers > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={workers}", *module]  # fmt: skip
    else:
        cmd = [sys.executable, *module]
    launched = time.time()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    wall = time.time() - launched
    stamps = json.loads(out.strip().splitlines()[-1])
    epochs = [stamps["loaded"], *stamps["epochs"]]
    return {
        "wall": wall,
        "start-up": stamps["loaded"] - launched,
        "training": epochs[-1] - epochs[0],
        "epoch_s": [b - a for a, b in zip(epochs[:-1], epochs[1:], strict=True)],
    }


def in_ray(spec: dict, data, workers: int, trials: int, work: Path) -> list[dict]:
    """``trials`` trials of one config through the sweep's trainable, one at a time."""
    import ray
    from ray import tune
    from ray.tune.search import Searcher

    from cmkd.config import DataConfig
    from cmkd.sweep import make_trainable, uses_local_trials
    from cmkd.trial import for_machine

    resources = for_machine(ray.cluster_resources(), workers, 0.0, None)
    local = uses_local_trials("auto", resources, data)
    data_cfg = DataConfig.model_validate(spec["data"])
    path = work / f"ray-{workers}w-{spec['distill']['epochs']}e"
    trainable, _, _ = make_trainable(data, data_cfg, resources, str(path), local=local)
    suggested: dict[str, float] = {}
    reports: dict[str, list[tuple[float, float]]] = {}

    class Same(Searcher):
        """The searcher: the same configuration ``trials`` times, noting when it suggested it."""

        def suggest(self, trial_id):
            if len(suggested) >= trials:
                return Searcher.FINISHED
            suggested[trial_id] = time.time()
            return dict(spec["distill"])

        def on_trial_complete(self, trial_id, result=None, error=False):
            pass

    class Reports(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            reports.setdefault(trial.trial_id, []).append((time.time(), result["epoch_s"]))

    grid = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=Same(metric="best_val_acc", mode="max"),
            num_samples=trials,
            max_concurrent_trials=1,
            reuse_actors=local,
        ),
        run_config=tune.RunConfig(
            name="overhead",
            storage_path=str(path),
            callbacks=[Reports()],
            failure_config=tune.FailureConfig(max_failures=1),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None if local else 1),
            verbose=0,
        ),
    ).fit()
    assert not grid.errors, grid.errors
    out = []
    for trial_id, at in sorted(suggested.items(), key=lambda kv: kv[1]):
        got = reports[trial_id]
        epoch_s = [e for _, e in got]
        first_epoch_started = got[0][0] - epoch_s[0]
        out.append(
            {
                "wall": got[-1][0] - at,
                "start-up": first_epoch_started - at,
                "training": got[-1][0] - first_epoch_started,
                "epoch_s": epoch_s,
                "path": "own process" if local else f"Ray Train, {workers} workers",
            }
        )
    return out


def mean(rows: list[dict], key: str) -> float:
    return statistics.fmean(r[key] for r in rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--epochs", type=int, nargs="+", default=[10, 2])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--trials", type=int, default=3, help="Ray trials per case, one at a time")
    p.add_argument("--repeats", type=int, default=2, help="plain-loop processes per case")
    p.add_argument("--data-root", default="data")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "overhead.md")
    args = p.parse_args(argv)

    import ray

    from cmkd.config import DataConfig
    from cmkd.sweep import ray_env
    from cmkd.train import load_run_data

    work = Path(tempfile.mkdtemp(prefix="cmkd-overhead-"))
    load = os.getloadavg()[0]
    distill, data_spec = default_trial(args.epochs[0])
    data_spec["data_root"] = str(Path(args.data_root).resolve())
    data = load_run_data(DataConfig.model_validate(data_spec), log=lambda *_: None)  # builds once
    ray_env()
    ray.init(num_cpus=os.cpu_count(), logging_level="ERROR", log_to_driver=False)
    cases = []
    try:
        for workers in args.workers:
            for epochs in args.epochs:
                spec = {"distill": {**distill, "epochs": epochs}, "data": data_spec}
                plains = [plain(spec, workers, work) for _ in range(args.repeats)]
                rays = in_ray(spec, data, workers, args.trials, work)
                cases.append((workers, epochs, plains, rays))
                walls = ", ".join(f"{r['wall']:.1f}" for r in rays)
                print(
                    f"{workers} worker(s), {epochs} epochs: plain {mean(plains, 'wall'):.1f} s, "
                    f"Ray {walls} s",
                    flush=True,
                )
    finally:
        ray.shutdown()
    publish(report(cases, distill, data, load, args), args.out)


def report(cases, distill: dict, data, load: float, args) -> list[str]:
    lines = [
        "# A whole trial against the same training in a plain PyTorch process",
        "",
        f"{os.cpu_count()} cores, load average {load:.2f} before the run, "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Command: `python -m benchmarks.overhead "
        f"--epochs {' '.join(map(str, args.epochs))} --workers "
        f"{' '.join(map(str, args.workers))} --trials {args.trials} --repeats {args.repeats}`. "
        f"The default trial: {data.meta.name}, {data.teacher} teacher → {data.student} student, "
        f"{len(data.y_train)} labelled rows, {len(data.y_val)} validation rows, pool of "
        f"{0 if data.x_pool is None else len(data.x_pool)}; the pool space's first point "
        f"(`{distill['algorithm']}`, {distill['steps_per_epoch']} steps of {distill['batch_size']} "
        f"labelled + {distill['pool_batch']} pool rows per epoch and worker), one torch thread "
        "per worker.",
        "",
        "Ray trial: from the searcher's suggestion to the trial's last report, as the sweep's "
        "driver sees them. Plain loop: a fresh `python -m benchmarks.plain_loop` process "
        "(`torchrun` with two processes for two workers) from launch to exit, reading the data "
        "from disk. Both train the same epochs on the same rows.",
        "",
        "| workers | epochs | trial | plain loop s | Ray trial s | ratio | start-up s (plain / Ray) "
        "| training s (plain / Ray) |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for workers, epochs, plains, rays in cases:
        base = mean(plains, "wall")
        groups = (
            [("first (starts its process)", rays[:1]), ("reused process", rays[1:])]
            if workers == 1
            else [("every trial (Ray Train)", rays)]
        )
        for label, rows in groups:
            if not rows:
                continue
            ratio = mean(rows, "wall") / base
            lines.append(
                f"| {workers} | {epochs} | {label} | {base:.1f} | {mean(rows, 'wall'):.1f} | "
                f"{ratio:.2f} | {mean(plains, 'start-up'):.1f} / {mean(rows, 'start-up'):.1f} | "
                f"{mean(plains, 'training'):.1f} / {mean(rows, 'training'):.1f} |"
            )
            if workers == 1:
                verdicts.append((epochs, label, ratio))
    lines += ["", f"Target: whole-trial ratio ≤ {TARGET} for the default trial with one worker."]
    for epochs, label, ratio in verdicts:
        verdict = "met" if ratio <= TARGET else f"NOT met, by {ratio - TARGET:.2f}"
        lines.append(f"- {epochs} epochs, {label}: {ratio:.2f}, {verdict}.")
    lines += [
        "",
        "Start-up: launch (plain) or suggestion (Ray) to the first epoch's start: process start "
        "and imports, the data (plain: parquet and bank from disk; Ray: the sweep's object-store "
        "copy), and on the Ray side scheduling, the trial's actor and, with two workers, Train's "
        "controller, worker group and gloo process group. Training: the first epoch's start to "
        "the last epoch's end (Ray: its last report, checkpoints included).",
    ]
    return lines


if __name__ == "__main__":
    main()
