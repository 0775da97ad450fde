"""The Ray side of a sweep: searcher, scheduler, Tuner, W&B, resume and the final retrain.

A two-objective space (``objectives``) stops no trial early and ends with its Pareto front,
retrained on the final seeds, instead of the finalists and the verdict (:func:`finish_pareto`)."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from cmkd.capacity import GrowingLimit, fits_now
from cmkd.capacity import grows as cluster_grows
from cmkd.config import POOL_ALGORITHMS, DataConfig, DistillConfig, Experiment
from cmkd.leaderboard import (
    failure_reason,
    family_best,
    print_leaderboard,
    summarise,
    sweep_references,
)
from cmkd.pareto import format_value, front, front_table, pareto_points
from cmkd.placement import IdleGroupReaper
from cmkd.searcher import canonical, make_searcher
from cmkd.trial import (
    Resources,
    for_machine,
    pack,
    retrain_distributed,
    trial_driver,
    trial_local,
)
from cmkd.verdict import (
    CONTROLS,
    TEACHER_FREE,
    attribute,
    attribution_sentence,
    decide,
    sentence,
)


def trial_name(trial) -> str:
    return f"{trial.config.get('role', 'search')}-{trial.trial_id}"


class Progress(tune.Callback):
    """One line per trial event: started, each epoch's metric, finished or stopped by ASHA."""

    def __init__(self, total: int, metric: str, max_epochs: int, cost: str | None = None):
        self.total, self.metric, self.max_epochs = total, metric, max_epochs
        self.cost = cost  # a two-objective sweep's cost of the student, said when a trial ends
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
        how = (
            "stopped by ASHA"
            if epochs < trial.config.get("epochs", self.max_epochs)
            else "finished"
        )
        best = self.best.get(trial.trial_id)
        cost = (trial.last_result or {}).get(self.cost) if self.cost else None
        self._say(
            f"{trial_name(trial)} {how} after {epochs} epoch(s)"
            + (f", best {self.metric} {best:.4f}" if best is not None else "")
            + (f", {self.cost} {format_value(self.cost, cost)}" if cost is not None else "")
        )

    def on_trial_recover(self, iteration, trials, trial, **info):
        epoch = (trial.last_result or {}).get("epoch", 0)
        self._say(
            f"{trial_name(trial)} lost its process or node after epoch {epoch}: retrying from "
            "its last checkpoint"
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


class SearchOnlyASHA(ASHAScheduler):
    """ASHA over the searched trials; the reference trials always run their whole schedule
    and stay out of the rungs (a baseline cut at epoch 2 would be no baseline). Every trial is
    stopped at its own last epoch (a space may search ``epochs`` below ``max_t``). With
    ``prune=False`` no trial is stopped early (the no-early-stopping baseline)."""

    def __init__(self, *, prune: bool = True, **asha):
        super().__init__(**asha)
        self.prune = prune

    @staticmethod
    def _reference(trial) -> bool:
        return trial.config.get("role", "search") != "search"

    def on_trial_result(self, tune_controller, trial, result):
        # At its last epoch a trial is stopped, not left to end on its own: that left its Train
        # run reporting into a removed placement group (the trial hung, RUNNING).
        last = min(self._max_t, trial.config.get("epochs", self._max_t))
        if result.get(self._time_attr, 0) >= last:
            if not self._reference(trial):
                super().on_trial_result(tune_controller, trial, result)  # its rung records it
            return TrialScheduler.STOP
        if self._reference(trial) or not self.prune:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        if self._reference(trial):
            self._trial_info.pop(trial.trial_id, None)
            return
        super().on_trial_complete(tune_controller, trial, result)


def make_scheduler(space, max_epochs: int, prune: bool = True) -> ASHAScheduler:
    """ASHA on the sweep's objective, ``best_<metric>`` (the best value up to each epoch).

    ``time_attr`` is the epoch each trial reports: Tune does not persist its own counters on
    resume. ``max_epochs`` is the longest schedule in the space (:attr:`SearchSpace.max_epochs`).
    """
    return SearchOnlyASHA(
        time_attr="epoch",
        metric="best_" + space.metric,
        mode=space.mode,
        max_t=max_epochs,
        grace_period=max(1, max_epochs // 4),
        reduction_factor=2,
        prune=prune,
    )


def wandb_callbacks(mode: str, project: str, group: str) -> list:
    if mode == "disabled":
        return []
    from cmkd.wandb_log import WandbRuns

    # One run per trial, logged from this process (not an actor and a service per trial).
    return [WandbRuns(project=project, group=group, mode=mode, excludes=("checkpoint_path",))]


FINAL_KEYS = (
    "val",
    "val_acc",
    "val_bacc",
    "test_acc",
    "test_bacc",
    "test_acc_teacher_head",
    "epoch",
)


def final_retrain(
    configs: dict[str, dict],
    data_cfg: DataConfig,
    seeds: list[int],
    payload_ref: list,
    train_ref: list,
    cpus: float,
    *,
    metric: str = "val_acc",
    resources: Resources | None = None,
    storage: str | None = None,
) -> tuple[dict[str, dict], dict[str, list]]:
    """Retrain each named config with every seed on the full schedule, in parallel Ray tasks,
    with the trials' own recipe: one process for one-worker trials (what a trial's single
    Train worker runs), the trials' ``TorchTrainer`` of K workers otherwise.

    Each run record holds ``val``: the sweep's ``metric`` at the run's best epoch on it.
    Returns (final, failed): final[name] holds the seeds that finished and their mean and std;
    failed[name] lists {seed, error} for every seed that did not, so results.json keeps both.
    """
    distributed = resources is not None and resources.workers > 1

    @ray.remote(num_cpus=cpus)
    def retrain(distill: dict, seed: int) -> dict:
        import torch

        from cmkd.train import fit
        from cmkd.trial import unpack

        torch.set_num_threads(max(1, int(cpus)))
        x, y = ray.get(train_ref[0])
        data = unpack(ray.get(payload_ref[0]), x, y)
        cfg = DistillConfig.from_dict({**distill, "seed": seed}, source="final retrain")
        run = fit(cfg, data, data_cfg, log=lambda *_: None, metric=metric)
        best, rows = run["best"], run["best_val_rows"]
        out = {"val": best[metric], **{k: best[k] for k in FINAL_KEYS if k in best}}
        return {**out, "val_rows": rows.tolist()} if rows is not None else out

    def launch(name: str, distill: dict, seed: int):
        if not distributed:
            return retrain.remote(distill, seed)
        # The task only waits for its Train workers (which hold the CPUs): it asks for none.
        return (
            ray.remote(retrain_distributed)
            .options(num_cpus=0)
            .remote(
                {**distill, "seed": seed},
                payload_ref=payload_ref,
                train_ref=train_ref,
                data_cfg=data_cfg.model_dump(),
                resources=resources,
                storage=storage,
                name=f"final-{name}-s{seed}",
                metric=metric,
            )
        )

    futures = {(name, s): launch(name, cfg, s) for name, cfg in configs.items() for s in seeds}
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
        for key in ("val", "test_acc", "test_acc_teacher_head", "val_acc", "test_bacc"):
            vals = [r[key] for r in entry["runs"] if key in r]
            if vals:
                entry[key + "_mean"] = statistics.fmean(vals)
                entry[key + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return out, failed


def finalists(rows: list[dict], metric: str, mode: str, k: int) -> list[dict]:
    """The top ``k`` candidates, references included: trials that ran their whole schedule
    first (a value cut short by ASHA is partial), then by the objective; one per distinct run."""
    key, sign = "best_" + metric, (-1 if mode == "max" else 1)
    ok = [r for r in rows if r["error"] is None and key in r]
    ok.sort(key=lambda r: (not r.get("full", True), sign * r[key]))
    out, seen = [], set()
    for r in ok:
        c = canonical(r["config"])
        if c not in seen:
            seen.add(c)
            out.append(r)
    return out[:k]


def fresh_seeds(rows: list[dict], n: int) -> list[int]:
    """``n`` seeds that no trial of the sweep trained with (the smallest such)."""
    used = {int(r["config"].get("seed", DistillConfig().seed)) for r in rows}
    out, s = [], 0
    while len(out) < n:
        if s not in used:
            out.append(s)
        s += 1
    return out


def pool_refs_note(pool: bool, balanced: bool) -> str:
    if not pool:
        return ""
    if balanced:
        return (
            " (the pool: ssl_only among them; the bank's classes are balanced, so ssl_prior is "
            "ssl_only)"
        )
    return " (the pool: ssl_only and ssl_prior among them)"


def row_name(row: dict) -> str:
    return row["role"] if row["role"] != "search" else f"search-{row['trial_id']}"


RESULT_FILES = ("results.json", "best.yaml")
PARETO_DIR = "pareto"
"""A two-objective sweep's front, one runnable experiment per point: ``pareto/<k>.yaml``."""


def front_files(local_dir: Path) -> list[str]:
    folder = local_dir / PARETO_DIR
    return (
        sorted(f"{PARETO_DIR}/{f.name}" for f in folder.glob("*.yaml")) if folder.is_dir() else []
    )


def confirm_front(points: list[dict], final: dict, objectives) -> None:
    """Each point's final retrain: ``fresh_seeds`` holds its seeds, the quality metric's mean
    and std over them, and ``on_front``: whether, with every point valued by those means, no
    other point dominates it (a point the search's luck put there may not stay)."""
    quality = objectives[0][0]
    valued = [p for p in points if p["name"] in final]
    means = [(final[p["name"]]["val_mean"], p["values"][objectives[1][0]]) for p in valued]
    kept = set(front(means, [mode for _, mode in objectives]))
    for i, p in enumerate(valued):
        e = final[p["name"]]
        p["fresh_seeds"] = {
            "seeds": [r["seed"] for r in e["runs"]],
            f"{quality}_mean": e["val_mean"],
            f"{quality}_std": e["val_std"],
            **{k: e[k] for k in ("test_acc_mean", "test_acc_std") if k in e},
            "on_front": i in kept,
        }


def results_dir(root: str, name: str) -> Path:
    """Where a sweep's results are written here: its folder, or runs/NAME for remote storage
    (uploaded from there)."""
    return Path(root) / name if "://" not in root else Path("runs") / name


def results_head(name: str, space, data, data_cfg: DataConfig) -> dict:
    """The keys that open every results.json: what was searched, on which data, for what."""
    return {
        "name": name,
        "space": str(space.path),
        "benchmark": data.meta.name,
        "student": data.student,
        "teacher": data.teacher,
        "labels_per_class": data_cfg.labels_per_class,
        "val_per_class": data_cfg.val_per_class,
        "metric": space.metric,
        "objective": "best_" + space.metric,
    }


def write_front(out_dir: Path, points: list[dict], data_cfg: DataConfig) -> None:
    """``out_dir/pareto/<k>.yaml`` for each point (``python -m cmkd.train --config``); each
    point gains ``file`` and ``experiment`` (the same, as results.json keeps it). Files of an
    earlier front (a resumed sweep) are replaced."""
    folder = out_dir / PARETO_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.yaml"):
        old.unlink()
    for k, point in enumerate(points):
        exp = Experiment(
            data=data_cfg, distill=DistillConfig.from_dict(distill_only(point["config"]))
        )
        exp.to_yaml(folder / f"{k}.yaml")
        point["file"] = f"{PARETO_DIR}/{k}.yaml"
        point["experiment"] = exp.model_dump()


def finish_pareto(
    args, space, data, data_cfg: DataConfig, rows: list[dict], name: str, root: str,
    t_start: float, facts: dict, retrain=None, seeds: list[int] = (),
) -> int:  # fmt: skip
    """The end of a two-objective sweep: its Pareto front in results.json and as
    ``pareto/<k>.yaml``, and the front as a table. The front is chosen on the trials' own
    values, the best of several and so optimistic; ``retrain`` (the final retrain on the fresh
    ``seeds``; None with --final-seeds 0) trains each point again, and each point keeps its mean
    and whether it stays on the front with those means. No verdict: it picks one candidate
    against no distillation on one metric, and a front is a set of trade-offs to choose from."""
    path = f"{root}/{name}"
    points = pareto_points(rows, space.objectives)
    if not points:
        first = next((r["error"] for r in rows if r["error"]), "no trial reported both objectives")
        print(
            f"\nerror: no trial of sweep {name!r} finished with both objectives "
            f"({space.metric}, {space.cost}), so there is no front; the first failure: {first} "
            f"(each trial's error.txt is under {path})",
            file=sys.stderr,
            flush=True,
        )
        return 1
    final, final_failed = {}, {}
    if retrain is not None:
        print(
            f"\nfinal stage: retraining the {len(points)} points of the front with fresh seeds "
            f"{list(seeds)} on the full schedule",
            flush=True,
        )
        final, final_failed = retrain({p["name"]: p["config"] for p in points})
        confirm_front(points, final, space.objectives)
    out_dir = results_dir(root, name)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_front(out_dir, points, data_cfg)
    total_s = time.perf_counter() - t_start
    results = {
        **results_head(name, space, data, data_cfg),
        "objectives": [{"metric": m, "mode": mode} for m, mode in space.objectives],
        "pareto": points,
        "trials": rows,
        "finalists": [],
        "final_seeds": list(seeds) if retrain is not None else [],
        "final": final,
        "final_failed": final_failed,
        "verdict": None,
        "searcher": args.searcher,
        "early_stop": "none",
        "time_budget_s": args.time_budget,
        "total_s": total_s,
        "prepare_s": getattr(args, "prepare_s", None),
        "final_s": total_s - facts["sweep_s"],
        "storage": path,
        **facts,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    study = write_study(out_dir) if "://" not in root else None
    if "://" in root:
        upload_results(out_dir, path)
    log_summary_to_wandb(args.wandb, args.wandb_project, name, rows, final)
    ok = sum(r["error"] is None for r in rows)
    print(f"\nsweep {facts['sweep_s']:.0f} s, total {total_s:.0f} s. Written to {out_dir}:")
    print("  results.json  every trial's config and curve, and the Pareto front (`pareto`)")
    print(f"  {PARETO_DIR}/<k>.yaml  point k of the front; run it again: "
          f"python -m cmkd.train --config {out_dir}/{PARETO_DIR}/0.yaml")  # fmt: skip
    if study is not None:
        print(f"  {study.name}  the searched trials as an Optuna study: optuna-dashboard {study}")
    print(f"  report        python -m cmkd.report {out_dir}")
    if retrain is None:
        print(
            "\nno final retrain (--final-seeds 0): the values below are the trials' own (the "
            "best of several, so optimistic); check a point on other seeds with --set seed=N",
            flush=True,
        )
    print(
        f"\nPareto front of {space.metric} against {space.cost}: {len(points)} of {ok} "
        "finished trials, cheapest first:",
        flush=True,
    )
    print(front_table(points, space.objectives), flush=True)
    return 0


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
            if (local_dir / PARETO_DIR).is_dir():
                fs.create_dir(f"{path}/{PARETO_DIR}", recursive=True)
            for f in (*RESULT_FILES, *front_files(local_dir)):
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
    # Tune saves the experiment state (which trials ended, and with what) at most every 10 s by
    # default: a driver killed then loses the trials that ended since, which on a laptop can be
    # several. Every second costs a few milliseconds.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # Tune's own tables would bury the Progress lines; with the legacy output, verbose=0 is silent.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def uses_local_trials(runner: str, resources: Resources, data) -> bool:
    """Whether the sweep's trials run in their own process (:func:`cmkd.trial.trial_local`):
    ``--runner auto`` with one worker per trial and the labelled rows in memory; otherwise each
    trial is a Ray Train ``TorchTrainer`` (``--runner train``, several workers, streamed rows)."""
    return runner == "auto" and resources.workers == 1 and data.train_stream is None


def make_trainable(
    data,
    data_cfg: DataConfig,
    resources: Resources,
    sweep_path: str,
    metric: str = "val_acc",
    local: bool = False,
    latency: bool = False,
):
    """The Tune trainable of a sweep, and the object-store refs of what every trial reads
    (``latency``: each trial measures ``student_latency_ms``)."""
    # Put once; wrapped in lists so that the refs travel as refs (Ray resolves only top-level ones).
    payload_ref = [ray.put(pack(data))]
    train_ref = [ray.put((data.x_train.numpy(), data.y_train.numpy()))]
    wiring = {
        "payload_ref": payload_ref,
        "train_ref": train_ref,
        "data_cfg": data_cfg.model_dump(),
        "resources": resources,
        "storage": f"{sweep_path}/train-runs",
        "metric": metric,
        "latency": latency,
    }
    if local:
        trainable = tune.with_resources(
            tune.with_parameters(trial_local, **wiring), resources.local_request
        )
    else:
        trainable = tune.with_resources(
            tune.with_parameters(trial_driver, stream=data.train_stream, max_failures=1, **wiring),
            resources.trial_request,
        )
    return trainable, payload_ref, train_ref


class StopSignal:
    """SIGTERM (``ray job stop``, a scheduler, a preempted node) ends a sweep as Ctrl-C does:
    while Tune runs, its own graceful stop (experiment state saved, trials kept); at any other
    moment, an exit with status 143. Either way the local Ray cluster is shut down on exit."""

    received = False

    @classmethod
    def install(cls) -> None:
        import signal

        def on_sigterm(signum, frame):
            cls.received = True
            handler = signal.getsignal(signal.SIGINT)
            if callable(handler) and handler is not signal.default_int_handler:
                handler(signal.SIGINT, frame)  # Tune's handler while it runs: stop gracefully
            else:
                raise SystemExit(143)

        signal.signal(signal.SIGTERM, on_sigterm)


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
    StopSignal.install()  # after ray.init: Ray's core installs a SIGTERM handler that aborts
    cluster = ray.cluster_resources()
    resources = for_machine(
        cluster, args.workers_per_trial, args.gpus_per_worker, args.cpus_per_worker
    )
    concurrency = args.max_concurrent or resources.concurrency(cluster)
    # An autoscaling cluster: trials follow its nodes (cmkd/capacity.py), up to --max-concurrent
    grows = cluster_grows(resources)
    if not grows and not args.max_concurrent and resources.gpus_per_worker > cluster.get("GPU", 0):
        print(
            f"warning: the cluster has {cluster.get('GPU', 0):g} GPU(s) now, so trials run "
            f"{concurrency} at a time; on an autoscaling cluster whose GPU nodes start at zero, "
            "pass --max-concurrent (the GPUs you allow at once / GPUs per trial)",
            flush=True,
        )
    max_epochs = space.max_epochs
    all_refs, refs, pool, balanced = sweep_references(space, data)
    budget = args.num_samples + len(refs)
    local = uses_local_trials(args.runner, resources, data)
    where = "in the trial's own process" if local else "Ray Train"
    if grows:
        at_once = (
            f"as many at once as the cluster's nodes hold (now {fits_now(resources)}), growing "
            f"as its autoscaler adds nodes, up to {args.max_concurrent or budget}"
        )
    else:
        at_once = f"up to {concurrency} at once"
    if space.pareto:
        args.early_stop = "none"  # every trial runs its schedule: a small student is no loser
        print(
            f"two objectives: {space.metric} ({space.mode}) against {space.cost} (min); the "
            "sweep ends with their Pareto front. No early stopping: ASHA ranks on one metric "
            "and would cut small students that belong on the front. The final retrain trains "
            "the front's points on fresh seeds; no verdict (it weighs one candidate against no "
            "distillation on one metric).",
            flush=True,
        )
    print(
        f"sweep {name!r}: {args.num_samples} searched + {len(refs)} reference trials"
        f"{pool_refs_note(pool, balanced)}, {at_once}, {resources.workers} worker(s) x {resources.cpus_per_worker:g} CPU"
        f"{f' + {resources.gpus_per_worker:g} GPU' if resources.gpus_per_worker else ''} per trial "
        f"({where}); "
        f"storage {root}/{name}",
        flush=True,
    )

    path = f"{root}/{name}"
    trainable, payload_ref, train_ref = make_trainable(
        data,
        data_cfg,
        resources,
        path,
        metric=space.metric,
        local=local,
        latency=space.cost == "student_latency_ms",
    )
    if args.resume and tune.Tuner.can_restore(path):
        print(f"resuming the sweep in {path}", flush=True)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        searcher = make_searcher(space, args.seed, args.num_samples, refs, args.searcher)
        if grows:
            cap = args.max_concurrent or budget
            searcher = GrowingLimit(searcher, cap, partial(fits_now, resources))
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=make_scheduler(space, max_epochs, prune=args.early_stop == "asha"),
                time_budget_s=args.time_budget,
                num_samples=budget,
                max_concurrent_trials=None if grows else concurrency,
                trial_name_creator=trial_name,
                trial_dirname_creator=trial_name,
                # a trial in its own process leaves it, imports and all, to the next trial
                reuse_actors=local,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=root,
                callbacks=[
                    Progress(budget, space.metric, max_epochs, space.cost),
                    *wandb_callbacks(args.wandb, args.wandb_project, name),
                ],
                failure_config=tune.FailureConfig(max_failures=1),
                # A trial in its own process checkpoints through Tune: every epoch's is kept, as a
                # Train run keeps its own, since the experiment state a killed driver leaves may
                # name an older checkpoint than the last (resumed from, it must still exist).
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None if local else 1),
                verbose=0,  # Progress prints one line per event instead of Tune's tables
            ),
        )
    # Frees the CPUs a stopped trial's Train worker group can leave reserved (cmkd/placement.py).
    tune_started_at, t_fit = time.time(), time.perf_counter()
    with IdleGroupReaper(idle_s=60, say=lambda m: print(f"note: {m}", flush=True)):
        grid = tuner.fit()
    sweep_s = time.perf_counter() - t_start
    finished = grid.num_terminated + grid.num_errors
    out_of_time = args.time_budget is not None and (
        time.perf_counter() - t_fit >= 0.95 * args.time_budget
    )
    if out_of_time:
        print(
            f"\ntime budget of {args.time_budget:g} s spent: {finished} trial(s) ended; the "
            "trials cut short are ranked on the epochs they ran",
            flush=True,
        )
    elif finished < budget or StopSignal.received:  # Ctrl-C, SIGTERM: keep what is done
        how = "stopped by SIGTERM" if StopSignal.received else "interrupted"
        print(
            f"\nsweep {how}: {finished} of {budget} trials done, kept in "
            f"{path}. Continue it with the same command and --resume.",
            flush=True,
        )
        return 143 if StopSignal.received else 130
    rows = summarise(grid, space.metric, space.mode)
    print_leaderboard(rows, space.metric, max_epochs, cost=space.cost)
    seeds = fresh_seeds(rows, args.final_seeds)

    def retrain(named: dict[str, dict]) -> tuple[dict, dict]:
        """The named configs on the final seeds, with the trials' own recipe."""
        return final_retrain(
            named,
            data_cfg,
            seeds,
            payload_ref,
            train_ref,
            cpus=min(1.0, cluster.get("CPU", 0)) or 1.0,  # no CPU yet: on the nodes to come
            metric=space.metric,
            resources=resources,
            storage=f"{path}/final-runs",
        )

    if space.pareto:
        facts = {
            "tune_started_at": tune_started_at,
            "sweep_s": sweep_s,
            "resources": resources.__dict__,
            "concurrency": "grows with the cluster" if grows else concurrency,
        }
        again = retrain if args.final_seeds > 0 else None
        return finish_pareto(
            args, space, data, data_cfg, rows, name, root, t_start, facts, again, seeds
        )
    top = finalists(rows, space.metric, space.mode, space.finalists)
    if not top:
        print(
            f"\nerror: every trial of sweep {name!r} failed, so there is nothing to recommend; "
            f"the first failure: {rows[0]['error'] if rows else 'no trial ran'} "
            f"(each trial's error.txt is under {path})",
            file=sys.stderr,
            flush=True,
        )
        return 1
    # The finalists (references are candidates like any other) and both references, retrained
    # on seeds none of them was searched with; the verdict is decided on paired seeds.
    # A tunable reference (ce, ssl_only, ssl_prior) is stood for by the best of its family.
    configs = {row_name(r): r["config"] for r in top}
    for role in (r["role"] for r in all_refs):
        best = family_best(
            rows, role, space.metric, space.mode, ignore=("prior",) if balanced else ()
        )
        if best is not None:  # even when the reference itself is a finalist: it stands for all
            configs[role] = best["config"]
    final, final_failed = {}, {}
    if args.final_seeds > 0:
        print(
            f"\nfinal stage: retraining the top {len(top)} ({', '.join(row_name(r) for r in top)}) "
            f"and the references with fresh seeds {seeds} on the full schedule",
            flush=True,
        )
        runs, same = distinct_runs(configs, uniform_bank=balanced)
        final, final_failed = retrain(runs)
        for alias, target in same.items():  # the same run under another name: trained once
            if target in final:
                final[alias] = {**final[target], "config": configs[alias], "same_run_as": target}
    verdict = decide(final, space.mode) if final else None
    teacher = teacher_candidate(final, configs, verdict, space.mode) if pool else None
    controls = {}
    if pool and teacher is None:  # no finalist reads the teacher: measure the best trial that does
        best = best_teacher_trial(rows, space.metric, space.mode)
        if best is not None:
            teacher = row_name(best)
            configs[teacher] = controls[teacher] = best["config"]
    if teacher is not None and args.final_seeds > 0 and args.controls:
        # Controls of the teacher's part: the same config with its class structure scrambled,
        # and with a neutral teacher (evenly spaced class clusters), on the same seeds.
        controls.update({f"control-{c}": {**configs[teacher], "teacher": c} for c in CONTROLS})
    if controls and args.final_seeds > 0:  # the teacher's part is measured on the candidate
        with_controls = " with a permuted-label and a neutral teacher" if args.controls else ""
        print(f"\nthe teacher's part is measured on {teacher}{with_controls}", flush=True)
        more, more_failed = retrain(controls)
        final.update(more)
        final_failed.update(more_failed)
    attribution = attribute(final, teacher, space.mode) if pool and final else None
    for entry in final.values():  # per-row values served the verdict; results.json stays small
        for run in entry["runs"]:
            run.pop("val_rows", None)
    if verdict is None or verdict["recommendation"] is None:
        chosen = row_name(top[0])  # not checked on fresh seeds: said so below
        verdict = {
            "status": "undecided",
            "recommendation": chosen,
            "why": "no final retrain (--final-seeds 0) or no reference to compare with",
            "candidates": (verdict or {}).get("candidates", {}),
        }
    chosen = verdict["recommendation"]
    chosen_config = configs.get(chosen) or final[chosen]["config"]

    def describe(n: str) -> str:
        return f"{n} ({summary_of(configs.get(n, {}))})"

    verdict["sentence"] = (
        sentence(verdict, final, space.metric, describe)
        if final and verdict["candidates"] is not None and "reference-ce" in final
        else f"Not decided whether distillation helps: {verdict['why']}; best.yaml holds the "
        f"top search candidate {describe(chosen)}, unchecked on fresh seeds."
    )
    total_s = time.perf_counter() - t_start
    out_dir = results_dir(root, name)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {
        **results_head(name, space, data, data_cfg),
        "trials": rows,
        "finalists": [row_name(r) for r in top],
        "final_seeds": seeds if args.final_seeds > 0 else [],
        "final": final,
        "final_failed": final_failed,
        "verdict": {**verdict, "config": chosen_config},
        "attribution": attribution,
        "searcher": args.searcher,
        "early_stop": args.early_stop,
        "time_budget_s": args.time_budget,
        "tune_started_at": tune_started_at,
        "sweep_s": sweep_s,
        "total_s": total_s,
        "prepare_s": getattr(args, "prepare_s", None),
        "final_s": total_s - sweep_s,
        "resources": resources.__dict__,
        "concurrency": "grows with the cluster" if grows else concurrency,
        "storage": f"{root}/{name}",
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    Experiment(data=data_cfg, distill=DistillConfig.from_dict(distill_only(chosen_config))).to_yaml(
        out_dir / "best.yaml"
    )
    study = write_study(out_dir) if "://" not in root else None
    if "://" in root:
        upload_results(out_dir, f"{root}/{name}")
    print_final(final, verdict)
    log_summary_to_wandb(args.wandb, args.wandb_project, name, rows, final)
    print(f"\nsweep {sweep_s:.0f} s, total {total_s:.0f} s. Written to {out_dir}:")
    print("  results.json  every trial's config and curve, the final retrain, the verdict")
    if study is not None:
        print(f"  {study.name}  the searched trials as an Optuna study: optuna-dashboard {study}")
    print(f"  report        python -m cmkd.report {out_dir}")
    print(
        f"  best.yaml     the recommendation ({chosen}); run it again: "
        f"python -m cmkd.train --config {out_dir}/best.yaml"
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
    print(f"\n{verdict['sentence']}", flush=True)
    if attribution:
        print(attribution_sentence(attribution, space.metric), flush=True)
    return 0


def distinct_runs(configs: dict[str, dict], uniform_bank: bool) -> tuple[dict, dict[str, str]]:
    """The configs that train different runs, and each other name -> the name whose run it
    shares (a finalist that is also the best of a reference family; ``prior: bank`` when the
    bank's class histogram is uniform, where it is the uniform prior)."""
    runs, same, seen = {}, {}, {}
    for name, cfg in configs.items():
        key_cfg = cfg
        if uniform_bank and cfg.get("prior") == "bank":
            key_cfg = {**cfg, "prior": "uniform"}
        key = canonical(key_cfg)
        if key in seen:
            same[name] = seen[key]
        else:
            seen[key] = name
            runs[name] = cfg
    return runs, same


def best_teacher_trial(rows: list[dict], metric: str, mode: str) -> dict | None:
    """The best trial (full schedules first) that reads the teacher on the pool."""
    key, sign = "best_" + metric, (-1 if mode == "max" else 1)
    ok = [
        r
        for r in rows
        if r["error"] is None
        and key in r
        and r["config"].get("algorithm") in POOL_ALGORITHMS
        and r["config"].get("algorithm") not in TEACHER_FREE
    ]
    ok.sort(key=lambda r: (not r.get("full", True), sign * r[key]))
    return ok[0] if ok else None


def teacher_candidate(final: dict, configs: dict, verdict: dict | None, mode: str) -> str | None:
    """The final candidate whose teacher part is measured: the recommendation when it reads the
    teacher, else the best finalist (on validation) that does; None if no finalist reads it."""

    def reads_teacher(name: str) -> bool:
        algo = configs.get(name, {}).get("algorithm", DistillConfig().algorithm)
        return name in final and algo not in TEACHER_FREE

    chosen = (verdict or {}).get("recommendation")
    if chosen and reads_teacher(chosen):
        return chosen
    sign = 1.0 if mode == "max" else -1.0
    readers = [n for n in final if reads_teacher(n) and n != "reference-ucmkd"]
    return max(readers, key=lambda n: sign * final[n]["val_mean"], default=None)


def distill_only(config: dict) -> dict:
    return {k: v for k, v in config.items() if k in DistillConfig.model_fields}


SUMMARY_KEYS = ("algorithm", "fa", "la", "w_fa", "w_la")


def summary_of(config: dict) -> str:
    """A config in a few words: its algorithm and, when it distils, its main terms."""
    if not config:
        return "?"
    if config.get("algorithm") == "ce":
        return "no distillation"
    keys = {
        "kd_unpaired": ("algorithm",),
        "kd": ("algorithm", "pairing", "kd_temperature", "kd_alpha", "w_fm"),
    }.get(config.get("algorithm"), SUMMARY_KEYS)
    if config.get("pairing") == "paired" and "pairing" not in keys:
        keys = (*keys, "pairing")
    return ", ".join(
        f"{k}={config[k]:.3g}" if isinstance(config[k], float) else f"{k}={config[k]}"
        for k in keys
        if k in config
    )


def write_study(out_dir: Path) -> Path | None:
    """The searched trials as an Optuna journal study beside the results: a convenience, so a
    disk or format problem is a warning (the results are written already); a bug still raises."""
    from cmkd.study import export_study

    try:
        return export_study(out_dir)
    except (OSError, ValueError) as e:
        print(f"warning: the Optuna study file was not written ({e})", flush=True)
        return None


def _pct(entry: dict, key: str) -> str:
    if key + "_mean" not in entry:
        return ""
    return f"{100 * entry[key + '_mean']:.2f} ± {100 * entry[key + '_std']:.2f}"


def print_final(final: dict, verdict: dict | None = None) -> None:
    """The final retrain as a table: validation decides (paired with no distillation), test is
    reported."""
    if not final:
        return
    cands = (verdict or {}).get("candidates", {})
    chosen = (verdict or {}).get("recommendation")
    print(
        "\n| config | val (mean ± std) | vs no distillation (val, paired) | test acc | "
        "test balanced acc | via teacher head | seeds |\n|---|---:|---:|---:|---:|---:|---:|"
    )
    for name, e in final.items():
        c = cands.get(name)
        diff = (
            f"{100 * c['val']['mean']:+.2f} ± {100 * c['val']['se']:.2f}"
            + (" (passes)" if c["passes"] else "")
            if c and c["val"]["n"] > 1
            else ""
        )
        mark = " **recommended**" if name == chosen else ""
        print(
            f"| {name}{mark} | {100 * e['val_mean']:.2f} ± {100 * e['val_std']:.2f} | {diff} | "
            f"{100 * e['test_acc_mean']:.2f} ± {100 * e['test_acc_std']:.2f} | "
            f"{_pct(e, 'test_bacc')} | "
            f"{100 * e['test_acc_teacher_head_mean']:.2f} ± {100 * e['test_acc_teacher_head_std']:.2f} "
            f"| {len(e['runs'])} |"
        )
