"""The Ray side of a sweep: searcher, scheduler, Tuner, W&B, resume and the final retrain."""

from __future__ import annotations

import json
import os
import pickle
import statistics
import time
from pathlib import Path

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from cmkd.config import DataConfig, DistillConfig, Experiment
from cmkd.placement import IdleGroupReaper
from cmkd.trial import Resources, for_machine, pack, trial_driver
from cmkd.tune import failure_reason, print_leaderboard, references, summarise


class WithReferences(Searcher):
    """Hands out the fixed reference trials first, then defers to the wrapped searcher.

    The references are not told to Optuna: they are baselines to beat, not samples of the space
    (their settings may lie outside it).
    """

    def __init__(self, inner: Searcher, fixed_trials: list[dict]):
        super().__init__(metric=inner.metric, mode=inner.mode)
        self.inner, self.pending, self.reference_ids = inner, list(fixed_trials), set()

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        ok = self.inner.set_search_properties(metric, mode, config, **spec)
        self._metric, self._mode = self.inner.metric, self.inner.mode
        return ok

    def suggest(self, trial_id: str):
        if self.pending:
            self.reference_ids.add(trial_id)
            return self.pending.pop(0)
        config = self.inner.suggest(trial_id)
        return {**config, "role": "search"} if isinstance(config, dict) else config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self.reference_ids:
            self.inner.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        if trial_id not in self.reference_ids:
            self.inner.on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        # One file (Tune renames it atomically): the wrapped searcher travels inside.
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__.copy(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


def trial_name(trial) -> str:
    return f"{trial.config.get('role', 'search')}-{trial.trial_id}"


class Progress(tune.Callback):
    """One line per trial event: started, each epoch's metric, finished or stopped by ASHA."""

    def __init__(self, total: int, metric: str, max_epochs: int):
        self.total, self.metric, self.max_epochs = total, metric, max_epochs
        self.done, self.t0, self.best = 0, time.perf_counter(), {}

    def _say(self, text: str) -> None:
        print(
            f"[{time.perf_counter() - self.t0:6.0f}s {self.done}/{self.total} done] {text}",
            flush=True,
        )

    def on_trial_start(self, iteration, trials, trial, **info):
        shown = {k: v for k, v in trial.config.items() if k not in ("role",)}
        self._say(
            f"start {trial_name(trial)}: "
            + ", ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in sorted(shown.items())
            )
        )

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.metric in result:
            self.best[trial.trial_id] = result.get("best_" + self.metric, result[self.metric])
            self._say(
                f"{trial_name(trial)} epoch {result.get('epoch')}/{self.max_epochs}: "
                f"{self.metric} {result[self.metric]:.4f}"
            )

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        epochs = (trial.last_result or {}).get("epoch", 0)
        how = "stopped by ASHA" if epochs < self.max_epochs else "finished"
        best = self.best.get(trial.trial_id)
        self._say(
            f"{trial_name(trial)} {how} after {epochs} epoch(s)"
            + (f", best {self.metric} {best:.4f}" if best is not None else "")
        )

    def on_trial_error(self, iteration, trials, trial, **info):
        self.done += 1
        try:
            reason = failure_reason(Path(trial.error_file).read_text())
        except (OSError, TypeError):
            reason = "no error file"
        self._say(
            f"{trial_name(trial)} FAILED: {reason} (the sweep goes on; see {trial.local_path})"
        )


def make_searcher(space, seed: int) -> Searcher:
    import warnings

    import optuna

    # group=True models each branch of a conditional space jointly; Optuna marks it experimental.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    sampler = optuna.samplers.TPESampler(
        seed=seed, multivariate=True, constant_liar=True, group=True, n_startup_trials=5
    )
    inner = OptunaSearch(
        space=space.define_by_run, metric=space.metric, mode=space.mode, sampler=sampler
    )
    return WithReferences(inner, references(space))


class SearchOnlyASHA(ASHAScheduler):
    """ASHA over the searched trials; the reference trials always run their whole schedule
    and stay out of the rungs (a baseline cut at epoch 2 would be no baseline)."""

    @staticmethod
    def _reference(trial) -> bool:
        return trial.config.get("role", "search") != "search"

    def on_trial_result(self, tune_controller, trial, result):
        if self._reference(trial):
            # At max_t ASHA stops every trial; letting a trial end on its own instead left its
            # Train run reporting into a removed placement group (the trial hung, RUNNING).
            done = result.get(self._time_attr, 0) >= self._max_t
            return TrialScheduler.STOP if done else TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        if self._reference(trial):
            self._trial_info.pop(trial.trial_id, None)
            return
        super().on_trial_complete(tune_controller, trial, result)


def make_scheduler(space, max_epochs: int) -> ASHAScheduler:
    # time_attr is the epoch each trial reports: Tune does not persist its own counters on resume
    return SearchOnlyASHA(
        time_attr="epoch",
        metric=space.metric,
        mode=space.mode,
        max_t=max_epochs,
        grace_period=max(1, max_epochs // 4),
        reduction_factor=2,
    )


def wandb_callbacks(mode: str, project: str, group: str) -> list:
    if mode == "disabled":
        return []
    from cmkd.wandb_log import WandbRuns

    # One run per trial, logged from this process (not an actor and a service per trial).
    return [WandbRuns(project=project, group=group, mode=mode, excludes=("checkpoint_path",))]


def final_retrain(
    configs: dict[str, dict],
    data_cfg: DataConfig,
    seeds: list[int],
    payload_ref: list,
    train_ref: list,
    cpus: float,
) -> tuple[dict[str, dict], dict[str, list]]:
    """Retrain each named config with every seed on the full schedule, in parallel Ray tasks.

    Returns (final, failed): final[name] holds the seeds that finished and their mean and std;
    failed[name] lists {seed, error} for every seed that did not, so results.json keeps both.
    """

    @ray.remote(num_cpus=cpus)
    def retrain(distill: dict, seed: int) -> dict:
        import torch

        from cmkd.train import fit
        from cmkd.trial import unpack

        torch.set_num_threads(max(1, int(cpus)))
        x, y = ray.get(train_ref[0])
        data = unpack(ray.get(payload_ref[0]), x, y)
        cfg = DistillConfig.from_dict({**distill, "seed": seed}, source="final retrain")
        best = fit(cfg, data, data_cfg, log=lambda *_: None)["best"]
        return {k: best[k] for k in ("val_acc", "test_acc", "test_acc_teacher_head", "epoch")}

    futures = {(name, s): retrain.remote(cfg, s) for name, cfg in configs.items() for s in seeds}
    out = {name: {"config": cfg, "runs": []} for name, cfg in configs.items()}
    failed: dict[str, list] = {}
    for (name, s), fut in futures.items():
        try:
            out[name]["runs"].append({"seed": s, **ray.get(fut)})
        except ray.exceptions.RayError as e:  # a seed that diverges is reported, not fatal
            reason = failure_reason(e)
            print(f"warning: final retrain of {name} with seed {s} failed: {reason}", flush=True)
            failed.setdefault(name, []).append({"seed": s, "error": reason})
    for name, entry in list(out.items()):
        if not entry["runs"]:
            del out[name]  # every seed failed: kept in `failed`, no mean to report
            continue
        for key in ("test_acc", "test_acc_teacher_head", "val_acc"):
            vals = [r[key] for r in entry["runs"]]
            entry[key + "_mean"] = statistics.fmean(vals)
            entry[key + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return out, failed


RESULT_FILES = ("results.json", "best.yaml")


def upload_results(local_dir: Path, uri: str, attempts: int = 3) -> None:
    """Copy the sweep's result files beside its trials in remote storage (s3://, gs://).

    On a cluster the driver's folder is a job's temporary working directory; the bucket is what
    outlives it. A failed upload is reported, never raised: the local copy stays in
    ``local_dir`` and the trials themselves are already in the bucket.
    """
    import pyarrow.fs as pafs

    for attempt in range(1, attempts + 1):
        try:
            fs, path = pafs.FileSystem.from_uri(uri)
            fs.create_dir(path, recursive=True)
            for f in RESULT_FILES:
                if (local_dir / f).is_file():
                    with fs.open_output_stream(f"{path}/{f}") as out:
                        out.write((local_dir / f).read_bytes())
            print(f"results copied to {uri}", flush=True)
            return
        except (OSError, pa_errors()) as e:
            if attempt == attempts:
                print(
                    f"warning: could not copy the results to {uri} ({e}); they are in {local_dir}",
                    flush=True,
                )
            else:
                time.sleep(2 * attempt)


def pa_errors() -> type[Exception]:
    import pyarrow as pa

    return pa.ArrowException


def log_summary_to_wandb(
    mode: str, project: str, group: str, rows: list[dict], final: dict
) -> None:
    if mode == "disabled":
        return
    import wandb

    run = wandb.init(
        project=project,
        group=group,
        name=f"{group}-summary",
        job_type="summary",
        mode=mode,
        reinit=True,
    )
    table = wandb.Table(columns=["rank", "role", "trial", "best_val_acc", "epochs", "config"])
    for i, r in enumerate(rows, 1):
        table.add_data(
            i,
            r["role"],
            r["trial_id"],
            r.get("best_val_acc"),
            r.get("epochs_run"),
            json.dumps(r["config"]),
        )
    final_table = wandb.Table(columns=["config", "test_acc_mean", "test_acc_std", "seeds"])
    for name, e in final.items():
        final_table.add_data(name, e["test_acc_mean"], e["test_acc_std"], len(e["runs"]))
    run.log({"leaderboard": table, "final": final_table})
    run.finish()


def ray_env() -> None:
    """Settings read when Ray starts (a user's own environment wins)."""
    # Train's controller collects reports when it polls its workers, every 2 s by default: on
    # short epochs that wait was 10x the epoch itself (benchmarks/results/overhead.md).
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
    # Tune's own tables would bury the Progress lines; with the legacy output, verbose=0 is silent.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def make_trainable(data, data_cfg: DataConfig, resources: Resources, sweep_path: str):
    """The Tune trainable of a sweep, and the object-store refs of what every trial reads."""
    # Put once; wrapped in lists so that the refs travel as refs (Ray resolves only top-level ones).
    payload_ref = [ray.put(pack(data))]
    train_ref = [ray.put((data.x_train.numpy(), data.y_train.numpy()))]
    trainable = tune.with_resources(
        tune.with_parameters(
            trial_driver,
            payload_ref=payload_ref,
            train_ref=train_ref,
            stream=data.train_stream,
            data_cfg=data_cfg.model_dump(),
            resources=resources,
            storage=f"{sweep_path}/train-runs",
            max_failures=1,
        ),
        resources.trial_request,
    )
    return trainable, payload_ref, train_ref


def run_sweep(args, space, data_cfg: DataConfig, data, name: str, root: str, t_start: float) -> int:
    """Start (or resume) the sweep on the cluster, then retrain and write the results."""
    ray_env()
    if not ray.is_initialized():
        # The local cluster started here: Train's preemption watcher, an actor per trial (about
        # 0.1 GB) that watches for nodes being drained, has no other node to watch. (Attached
        # to a running cluster, its processes keep their own environment.) The dashboard stays:
        # without it Ray serves no State API, and Train's placement group cleaner, which asks it
        # whether a trial's controller is gone, never frees the CPUs of a trial ASHA stopped.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        ray.init(logging_level="ERROR", log_to_driver=False)
    cluster = ray.cluster_resources()
    resources = for_machine(
        cluster, args.workers_per_trial, args.gpus_per_worker, args.cpus_per_worker
    )
    concurrency = args.max_concurrent or resources.concurrency(cluster)
    if not args.max_concurrent and resources.gpus_per_worker > cluster.get("GPU", 0):
        print(
            f"warning: the cluster has {cluster.get('GPU', 0):g} GPU(s) now, so trials run "
            f"{concurrency} at a time; on an autoscaling cluster whose GPU nodes start at zero, "
            "pass --max-concurrent (the GPUs you allow at once / GPUs per trial)",
            flush=True,
        )
    max_epochs = space.fixed.get("epochs", DistillConfig().epochs)
    print(
        f"sweep {name!r}: {args.num_samples} searched + 2 reference trials, up to {concurrency} at "
        f"once, {resources.workers} worker(s) x {resources.cpus_per_worker:g} CPU"
        f"{f' + {resources.gpus_per_worker:g} GPU' if resources.gpus_per_worker else ''} per trial; "
        f"storage {root}/{name}",
        flush=True,
    )

    trainable, payload_ref, train_ref = make_trainable(data, data_cfg, resources, f"{root}/{name}")
    path = f"{root}/{name}"
    if args.resume and tune.Tuner.can_restore(path):
        print(f"resuming the sweep in {path}", flush=True)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=make_searcher(space, args.seed),
                scheduler=make_scheduler(space, max_epochs),
                num_samples=args.num_samples + 2,
                max_concurrent_trials=concurrency,
                trial_name_creator=trial_name,
                trial_dirname_creator=trial_name,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=root,
                callbacks=[
                    Progress(args.num_samples + 2, space.metric, max_epochs),
                    *wandb_callbacks(args.wandb, args.wandb_project, name),
                ],
                failure_config=tune.FailureConfig(max_failures=1),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                verbose=0,  # Progress prints one line per event instead of Tune's tables
            ),
        )
    # Frees the CPUs a stopped trial's Train worker group can leave reserved (cmkd/placement.py).
    with IdleGroupReaper(idle_s=60, say=lambda m: print(f"note: {m}", flush=True)):
        grid = tuner.fit()
    sweep_s = time.perf_counter() - t_start
    finished = grid.num_terminated + grid.num_errors
    if finished < args.num_samples + 2:  # Ctrl-C or a stopped driver: keep what is done
        print(
            f"\nsweep interrupted: {finished} of {args.num_samples + 2} trials done, kept in "
            f"{path}. Continue it with the same command and --resume.",
            flush=True,
        )
        return 130
    rows = summarise(grid, space.metric, space.mode)
    print_leaderboard(rows, space.metric, max_epochs)
    # Failed trials (a diverged loss, a crash) are never the winner nor a reference to retrain.
    ok = [r for r in rows if r["error"] is None and "best_" + space.metric in r]
    searched = [r for r in ok if r["role"] == "search"]
    by_role = {r["role"]: r for r in ok if r["role"] != "search"}
    configs = {}
    if searched:
        configs["winner"] = searched[0]["config"]
    for role in ("reference-ce", "reference-ucmkd"):
        if role in by_role:
            configs[role] = by_role[role]["config"]
    final, final_failed = {}, {}
    if args.final_seeds > 0 and configs:
        seeds = list(range(args.final_seeds))
        print(
            f"\nfinal stage: retraining {', '.join(configs)} with seeds {seeds} on the full "
            f"schedule ({max_epochs} epochs)",
            flush=True,
        )
        final, final_failed = final_retrain(
            configs, data_cfg, seeds, payload_ref, train_ref, cpus=min(1.0, cluster.get("CPU", 1))
        )
    total_s = time.perf_counter() - t_start
    out_dir = Path(root) / name if "://" not in root else Path("runs") / name
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {
        "name": name,
        "space": str(space.path),
        "benchmark": data.meta.name,
        "student": data.student,
        "teacher": data.teacher,
        "labels_per_class": data_cfg.labels_per_class,
        "metric": space.metric,
        "trials": rows,
        "final": final,
        "final_failed": final_failed,
        "sweep_s": sweep_s,
        "total_s": total_s,
        "prepare_s": getattr(args, "prepare_s", None),
        "final_s": total_s - sweep_s,
        "resources": resources.__dict__,
        "concurrency": concurrency,
        "storage": f"{root}/{name}",
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    if "winner" in configs:
        Experiment(data=data_cfg, distill=DistillConfig.from_dict(configs["winner"])).to_yaml(
            out_dir / "best.yaml"
        )
    study = None
    if "://" not in root:
        try:  # a convenience: a failure here must not lose the results written above
            from cmkd.study import export_study

            study = export_study(out_dir)
        except Exception as e:  # noqa: BLE001
            print(f"warning: the Optuna study file was not written ({e})", flush=True)
    if "://" in root:
        upload_results(out_dir, f"{root}/{name}")
    print_final(final)
    log_summary_to_wandb(args.wandb, args.wandb_project, name, rows, final)
    print(f"\nsweep {sweep_s:.0f} s, total {total_s:.0f} s. Written to {out_dir}:")
    print("  results.json  every trial's config and curve, the final retrain")
    if study is not None:
        print(f"  {study.name}  the searched trials as an Optuna study: optuna-dashboard {study}")
    print(f"  report        python -m cmkd.report {out_dir}")
    if "winner" in configs:
        print(
            f"  best.yaml     the winner; run it again: python -m cmkd.train --config {out_dir}/best.yaml"
        )
    if args.wandb != "disabled":
        print(
            f"  W&B ({args.wandb}): project {args.wandb_project!r}, group {name!r}"
            + (
                f"; sync later with `wandb sync {out_dir}/wandb/wandb/offline-run-*`"
                if args.wandb == "offline"
                else ""
            )
        )
    return 0


def print_final(final: dict) -> None:
    if not final:
        return
    print("\n| config | test acc (mean ± std) | via teacher head | seeds |\n|---|---:|---:|---:|")
    for name, e in final.items():
        print(
            f"| {name} | {100 * e['test_acc_mean']:.2f} ± {100 * e['test_acc_std']:.2f} | "
            f"{100 * e['test_acc_teacher_head_mean']:.2f} ± {100 * e['test_acc_teacher_head_std']:.2f} "
            f"| {len(e['runs'])} |"
        )
    if "winner" in final:
        w = final["winner"]["test_acc_mean"]
        for ref in ("reference-ce", "reference-ucmkd"):
            if ref in final:
                gain = 100 * (w - final[ref]["test_acc_mean"])
                label = (
                    "no distillation" if ref == "reference-ce" else "the reference UCMKD defaults"
                )
                print(f"winner vs {label}: {gain:+.2f} test accuracy points")
