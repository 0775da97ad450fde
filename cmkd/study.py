"""A finished (or running) sweep read from its folder, and kept as an Optuna study on disk.

A sweep folder (``runs/NAME``) holds one Tune trial folder per trial (``params.json``: the
trial's config and role; ``progress.csv``: one row per reported epoch) and, once the sweep has
ended, ``results.json`` (the leaderboard and the final retrain). :func:`load_sweep` reads them;
:func:`export_study` writes the searched trials as an Optuna study in a journal file that
optuna-dashboard opens::

    optuna-dashboard runs/NAME/optuna-study.log

The reference trials are not samples of the search space, so they are not trials of the study;
their best scores are the study's user attributes. Exporting again rewrites the file from the
sweep folder (atomically), so calling it after every sweep, or twice, gives the same study.
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

STUDY_FILE = "optuna-study.log"
NOT_CONFIG = ("role",)


def _number(text: str) -> Any:
    try:
        v = float(text)
    except ValueError:
        return text
    return int(v) if v.is_integer() and "." not in text and "e" not in text.lower() else v


def read_progress(path: Path) -> list[dict]:
    """A trial's progress.csv as one dict per epoch (the last row of an epoch reported twice,
    as after a resume), in epoch order."""
    if not path.is_file():
        return []
    by_epoch: dict[int, dict] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            rec = {k: _number(v) for k, v in row.items() if k and v not in ("", None)}
            if "epoch" in rec:
                by_epoch[int(rec["epoch"])] = rec
    return [by_epoch[e] for e in sorted(by_epoch)]


def load_sweep(sweep_dir: str | Path) -> dict:
    """Everything the report and the study read from a local sweep folder.

    Returns {"name", "dir", "results" (results.json or None), "metric", "mode", "max_epochs",
    "space" (a SearchSpace or None), "trials": [{"trial_id", "role", "config", "history",
    "best", "best_epoch", "epochs_run", "error"}]} with trials ranked best first.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: no such sweep folder")
    results_file = sweep_dir / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else None
    space = _space(results)
    metric = (results or {}).get("metric") or (space.metric if space else "val_acc")
    mode = "min" if metric.endswith("_ce") else "max"
    errors = {t["trial_id"]: t.get("error") for t in (results or {}).get("trials", [])}

    trials = []
    for d in sorted(p for p in sweep_dir.iterdir() if (p / "params.json").is_file()):
        params = json.loads((d / "params.json").read_text())
        history = read_progress(d / "progress.csv")
        trial_id = d.name.rsplit("-", 1)[-1]
        t = {
            "trial_id": trial_id,
            "dir": d.name,
            "role": params.get("role", "search"),
            "config": {k: v for k, v in params.items() if k not in NOT_CONFIG},
            "history": history,
            "error": errors.get(trial_id),
            "epochs_run": max((int(h["epoch"]) for h in history), default=0),
        }
        scored = [h for h in history if isinstance(h.get(metric), (int, float))]
        if scored:
            pick = max if mode == "max" else min
            best = pick(scored, key=lambda h: h[metric])
            t.update(best=float(best[metric]), best_epoch=int(best["epoch"]), at_best=best)
        trials.append(t)
    if not trials:
        raise FileNotFoundError(
            f"{sweep_dir}: no trial folders (params.json) found; is this a sweep's storage "
            "folder (runs/NAME)?"
        )
    sign = -1 if mode == "max" else 1
    trials.sort(key=lambda t: sign * t["best"] if "best" in t else math.inf)
    # the trials' own epochs first: --epochs overrides the space's fixed value
    max_epochs = int(
        max((t["config"].get("epochs", 0) for t in trials), default=0)
        or (space.fixed.get("epochs", 0) if space else 0)
        or max(t["epochs_run"] for t in trials)
    )
    return {
        "name": (results or {}).get("name") or sweep_dir.name,
        "dir": sweep_dir,
        "results": results,
        "metric": metric,
        "mode": mode,
        "max_epochs": max_epochs,
        "space": space,
        "trials": trials,
    }


def _space(results: dict | None):
    """The sweep's search space: its file as recorded, else the space of that name here."""
    from cmkd.space import SpaceError, load_space

    recorded = (results or {}).get("space")
    if not recorded:
        return None
    for candidate in (recorded, Path(recorded).stem):
        try:
            return load_space(candidate)
        except (SpaceError, FileNotFoundError, OSError):
            continue
    return None


def distributions(sweep: dict) -> dict:
    """Optuna distributions of the searched parameters: from the space file when there is one,
    else inferred from the values the searched trials took."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
    )

    space = sweep["space"]
    if space is not None:
        return space.distributions({p.name: None for p in space.params})
    searched = [t["config"] for t in sweep["trials"] if t["role"] == "search"]
    keys = sorted({k for c in searched for k in c})
    out = {}
    for k in keys:
        vals = [c[k] for c in searched if k in c]
        distinct = sorted(set(vals), key=repr)
        if len(distinct) < 2:
            continue  # a constant is no searched parameter
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            lo, hi = float(min(vals)), float(max(vals))
            out[k] = FloatDistribution(lo, hi, log=lo > 0 and hi / lo > 10)
        else:
            out[k] = CategoricalDistribution(distinct)
    return out


def _time(rec: dict | None, key: str = "timestamp") -> datetime | None:
    if rec and isinstance(rec.get(key), (int, float)):
        return datetime.fromtimestamp(rec[key])
    return None


def to_study(sweep: dict, storage=None):
    """The searched trials as an Optuna study (in memory unless ``storage`` is given).

    A trial's value is its best metric over the epochs it ran (what the sweep ranks by);
    every epoch is an intermediate value; a two-objective sweep's study has both directions,
    each trial valued by its best metric and the student's cost, and no intermediate values; ASHA's stop shows in the user attribute
    ``stopped_by_asha``. Failed trials are FAIL; while the sweep runs (no results.json yet),
    trials with no report yet are RUNNING.
    """
    import optuna
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = distributions(sweep)
    # a two-objective sweep: the quality metric and the student's cost, as its searcher saw them
    objectives = [(sweep["metric"], sweep["mode"])]
    cost = None
    for o in (sweep["results"] or {}).get("objectives") or []:
        if o["metric"] != sweep["metric"]:
            cost = o["metric"]
            objectives.append((cost, o["mode"]))
    study = optuna.create_study(
        study_name=sweep["name"],
        storage=storage,
        directions=["maximize" if mode == "max" else "minimize" for _, mode in objectives],
        load_if_exists=False,
    )
    with warnings.catch_warnings():  # set_metric_names is marked experimental
        warnings.simplefilter("ignore")
        study.set_metric_names([m for m, _ in objectives])
    for t in sweep["trials"]:
        if t["role"] != "search" and "best" in t:
            study.set_user_attr(f"{t['role']} best {sweep['metric']}", t["best"])
    frozen = []
    for t in sorted(
        (t for t in sweep["trials"] if t["role"] == "search"),
        key=lambda t: t["history"][0].get("timestamp", 0) if t["history"] else math.inf,
    ):
        params = {
            k: t["config"][k]
            for k, d in dists.items()
            if k in t["config"] and _contains(d, t["config"][k])
        }
        if t.get("error") or ("best" not in t and sweep["results"] is not None):
            state, value = TrialState.FAIL, None  # failed, or never reported in a finished sweep
        elif "best" not in t:
            state, value = TrialState.RUNNING, None
        else:
            state, value = TrialState.COMPLETE, t["best"]
        spent = t["history"][-1].get(cost) if cost and t["history"] else None
        if cost and state == TrialState.COMPLETE and not isinstance(spent, (int, float)):
            state, value = TrialState.FAIL, None  # no cost reported: not a point of the study
        trial = create_trial(
            state=state,
            values=None if value is None else [value, float(spent)] if cost else [value],
            params=params,
            distributions={k: dists[k] for k in params},
            # Optuna keeps no intermediate values for several objectives
            intermediate_values={}
            if cost
            else {
                int(h["epoch"]): float(h[sweep["metric"]])
                for h in t["history"]
                if isinstance(h.get(sweep["metric"]), (int, float))
            },
            user_attrs={
                "trial_id": t["trial_id"],
                "epochs_run": t["epochs_run"],
                "stopped_by_asha": 0 < t["epochs_run"] < sweep["max_epochs"],
                **({"best_epoch": t["best_epoch"]} if "best_epoch" in t else {}),
                **(
                    {"test_acc_at_best": t["at_best"]["test_acc"]}
                    if "test_acc" in t.get("at_best", {})
                    else {}
                ),
            },
        )
        if state != TrialState.RUNNING and t["history"]:
            start = _time(t["history"][0])
            end = _time(t["history"][-1])
            if start and end:  # Tune's report times, so the dashboard's timeline is the sweep's
                trial.datetime_start, trial.datetime_complete = start, end
        frozen.append(trial)
    study.add_trials(frozen)
    return study


def _contains(dist, value) -> bool:
    try:
        return dist._contains(dist.to_internal_repr(value))
    except (ValueError, TypeError):
        return False


def export_study(sweep_dir: str | Path) -> Path:
    """Write (or rewrite) ``sweep_dir/optuna-study.log``, an Optuna JournalStorage file of the
    sweep's searched trials, and return its path. Open it with ``optuna-dashboard PATH``.

    Idempotent: the file is rebuilt from the sweep folder and replaced in one rename, so a
    reader never sees a half-written study.
    """
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    sweep = load_sweep(sweep_dir)
    path = Path(sweep_dir) / STUDY_FILE
    tmp = path.with_name(f".{STUDY_FILE}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        to_study(sweep, storage=JournalStorage(JournalFileBackend(str(tmp))))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
