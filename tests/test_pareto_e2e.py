"""A two-objective sweep end to end on a real local Ray cluster: ``python -m cmkd.tune`` on a
space of accuracy against student size, its front in results.json and pareto/<k>.yaml, a point
run again by ``python -m cmkd.train``, and the report's Pareto figure."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_report import assert_not_blank  # the other figures' check of drawn pixels

from cmkd import report
from cmkd.config import Experiment
from cmkd.data.synth import build_synth
from cmkd.pareto import dominates

pytestmark = pytest.mark.ray

# Four widths of the synth MLP student, three of them tried first (start points), so the front
# spans at least three sizes however TPE proposes; two tiny epochs per trial.
SPACE = """description: two-objective smoke test (student width against accuracy)
objectives:
  - {metric: val_acc, mode: max}
  - {metric: student_params, mode: min}
fixed:
  algorithm: ucmkd_sum
  fa: mmd
  epochs: 2
  steps_per_epoch: 5
  batch_size: 16
  lr: 3.0e-3
params:
  student_width: {choice: [2, 8, 32, 128]}
  w_fa: {loguniform: [0.1, 10]}
start:
  - {student_width: 2}
  - {student_width: 8}
  - {student_width: 32}
"""


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "synth"
    build_synth(out, "synth", seed=0, train_per_class=30, val_per_class=20, test_per_class=20)
    return out


def env():
    e = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "WANDB_"))}
    return {**e, "PYTHONUNBUFFERED": "1"}


def test_two_objective_sweep_writes_a_runnable_front_and_draws_it(bench, tmp_path):
    space = tmp_path / "pareto-smoke.yaml"
    space.write_text(SPACE)
    cmd = [sys.executable, "-m", "cmkd.tune", "--space", str(space), "--benchmark", str(bench),
           "--storage", str(tmp_path), "--name", "front", "--wandb", "disabled",
           "--num-samples", "8", "--final-seeds", "2"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "No early stopping" in out and "stopped by ASHA" not in out
    sweep = tmp_path / "front"
    results = json.loads((sweep / "results.json").read_text())
    assert results["objectives"] == [
        {"metric": "val_acc", "mode": "max"},
        {"metric": "student_params", "mode": "min"},
    ]
    trials = results["trials"]
    assert len(trials) == 10 and all(t["error"] is None for t in trials)
    assert all(t["epochs_run"] == 2 for t in trials)  # no trial cut short
    assert results["verdict"] is None and results["final_seeds"] == [1, 2]

    # the front: at least 3 points, none dominated by any trial, every other trial dominated
    modes = ("max", "min")
    values = {t["trial_id"]: (t["best_val_acc"], t["student_params"]) for t in trials}
    points = results["pareto"]
    on_front = {p["trial_id"] for p in points}
    assert len(points) >= 3, points
    for p in points:
        v = (p["values"]["val_acc"], p["values"]["student_params"])
        assert v == values[p["trial_id"]]
        assert not any(dominates(w, v, modes) for w in values.values())
    for tid, v in values.items():
        if tid not in on_front:
            assert any(dominates(values[f], v, modes) for f in on_front), tid
    # each point trained again on the fresh seeds; on_front re-decided on their means
    assert set(results["final"]) == {p["name"] for p in points}
    means = [(p["fresh_seeds"]["val_acc_mean"], p["values"]["student_params"]) for p in points]
    for p, m in zip(points, means, strict=True):
        assert p["fresh_seeds"]["seeds"] == [1, 2]
        assert p["fresh_seeds"]["val_acc_mean"] == results["final"][p["name"]]["val_mean"]
        assert p["fresh_seeds"]["on_front"] == (not any(dominates(o, m, modes) for o in means))
    costs = [p["values"]["student_params"] for p in points]
    assert costs == sorted(costs) and len(set(costs)) >= 3  # three sizes on the front
    assert [p["values"]["val_acc"] for p in points] == sorted(
        p["values"]["val_acc"] for p in points
    )

    # each point is a runnable experiment, written beside the results and inside them
    for k, p in enumerate(points):
        exp = Experiment.from_yaml(sweep / "pareto" / f"{k}.yaml")
        assert p["file"] == f"pareto/{k}.yaml"
        assert exp.model_dump() == Experiment.from_dict(p["experiment"]).model_dump()
        assert exp.distill.student_width == p["config"].get("student_width")
        assert exp.data.benchmark == str(bench)
    # the console ends with the front as a table, one row per point
    tail = out.rstrip().splitlines()[-len(points) - 2 :]
    assert tail[0].startswith("| # | val_acc | student_params | val_acc on fresh seeds |")
    assert [line.split("|")[1].strip() for line in tail[2:]] == [str(k) for k in range(len(points))]

    # the cheapest point trains again from its file, with the same student size
    run = subprocess.run(
        [sys.executable, "-m", "cmkd.train", "--config", str(sweep / "pareto" / "0.yaml"),
         "--no-reference", "--out", str(tmp_path / "again.json")],
        capture_output=True, text=True, env=env(), timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]

    # the report draws every trial and the front
    assert report.main([str(sweep)]) == 0
    page = (sweep / "report" / "index.html").read_text()
    assert "Pareto front: val_acc against student_params" in page and 'src="pareto.png"' in page
    assert "Final retrain: the front's points on fresh seeds" in page
    assert_not_blank(Path(sweep / "report" / "pareto.png"))

    # the exported Optuna study has both directions; its front (searched trials only) holds
    # the sweep front's searched points, and any other point of it is dominated by a reference
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(sweep / "optuna-study.log")))
    study = optuna.load_study(study_name=results["name"], storage=storage)
    assert study.metric_names == ["val_acc", "student_params"]
    searched = {
        (p["values"]["val_acc"], p["values"]["student_params"])
        for p in points
        if p["role"] == "search"
    }
    study_front = {tuple(t.values) for t in study.best_trials}
    assert searched and searched <= study_front
    refs = [tuple(p["values"].values()) for p in points if p["role"] != "search"]
    for v in study_front - searched:
        assert any(dominates(r, v, modes) for r in refs), v
