"""The sweep end to end on a real local Ray cluster: Optuna, ASHA, W&B offline, resume.

Each test runs ``python -m cmkd.tune`` as a user would, in a subprocess that starts and stops
its own local Ray cluster, on a small synth benchmark built here.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cmkd.config import Experiment
from cmkd.data.synth import build_synth

pytestmark = pytest.mark.ray
LINE = re.compile(
    r"\[\s*\d+s (\d+)/(\d+) done\] (\S+) (finished|stopped by ASHA) after (\d+) "
    r"epoch\(s\), best val_acc ([0-9.]+)"
)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "synth"
    build_synth(out, "synth", seed=0, train_per_class=30, val_per_class=20, test_per_class=20)
    return out


def tune_cmd(bench, storage, name, *extra):
    return [
        sys.executable,
        "-m",
        "cmkd.tune",
        "--space",
        "smoke",
        "--benchmark",
        str(bench),
        "--storage",
        str(storage),
        "--name",
        name,
        "--wandb",
        "offline",
        *extra,
    ]


def env():
    e = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "WANDB_"))}
    return {**e, "PYTHONUNBUFFERED": "1"}


def test_smoke_sweep_runs_searches_stops_logs_and_writes_results(bench, tmp_path):
    cmd = tune_cmd(
        bench, tmp_path, "e2e", "--num-samples", "5", "--epochs", "3", "--final-seeds", "2"
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    sweep = tmp_path / "e2e"
    results = json.loads((sweep / "results.json").read_text())

    trials = results["trials"]
    assert len(trials) == 7 and all(t["error"] is None for t in trials)
    roles = [t["role"] for t in trials]
    assert roles.count("reference-ce") == 1 and roles.count("reference-ucmkd") == 1
    assert next(t for t in trials if t["role"] == "reference-ce")["config"]["algorithm"] == "ce"
    # ASHA stopped at least one trial before the last epoch, and said so
    assert any(t["epochs_run"] < 3 for t in trials), [t["epochs_run"] for t in trials]
    assert all(t["epochs_run"] == 3 for t in trials if t["role"] != "search")  # never cut
    assert "stopped by ASHA" in out
    # the search explored: searched trials differ from each other
    searched = [json.dumps(t["config"], sort_keys=True) for t in trials if t["role"] == "search"]
    assert len(set(searched)) == 5

    final, verdict = results["final"], results["verdict"]
    finalists = results["finalists"]
    assert len(finalists) == 3 and set(final) == set(finalists) | {
        "reference-ce",
        "reference-ucmkd",
    }
    assert results["final_seeds"] == [1, 2] and verdict["status"] == "undecided"
    assert all(len(e["runs"]) == 2 and 0 <= e["test_acc_mean"] <= 1 for e in final.values())
    assert "at least 3 are needed" in out.strip().splitlines()[-1]

    # the finalists are the top of the leaderboard on the sweep's objective, references included
    ranked = [t for t in trials if t.get("full")]
    top = ranked[: len(finalists)]
    assert [
        f"{t['role']}-{t['trial_id']}" if t["role"] == "search" else t["role"] for t in top
    ] == (finalists)
    best = Experiment.from_yaml(sweep / "best.yaml")
    chosen = final[verdict["recommendation"]]["config"]
    assert best.distill.model_dump() | chosen == best.distill.model_dump()
    assert best.data.benchmark == str(bench)

    import optuna  # the searched trials, kept as a study optuna-dashboard opens

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(sweep / "optuna-study.log"))
    )
    (summary,) = optuna.get_all_study_summaries(storage)
    assert summary.n_trials == 5
    assert f"optuna-dashboard {sweep / 'optuna-study.log'}" in out

    runs = sorted((sweep / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) >= 7  # one per trial, plus the summary run
    assert all(
        any(f.suffix == ".wandb" and f.stat().st_size > 0 for f in r.iterdir()) for r in runs
    )
    assert not list(Path.cwd().glob("wandb"))  # W&B wrote nothing outside the sweep folder


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(bench, tmp_path):
    cmd = tune_cmd(
        bench, tmp_path, "resume", "--num-samples", "4", "--epochs", "2", "--final-seeds", "0"
    )
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env()
    )
    finished_before, lines = {}, []
    deadline = time.time() + 600
    for line in proc.stdout:
        lines.append(line)
        m = LINE.search(line)
        if m:
            finished_before[m.group(3)] = float(m.group(6))
            if len(finished_before) >= 2:
                # what `ray job stop` and a preempted node send; handled as Ctrl-C is
                proc.send_signal(signal.SIGTERM)
                break
        assert time.time() < deadline, "".join(lines[-40:])
    rest, _ = proc.communicate(timeout=300)
    assert proc.returncode == 143, "".join(lines[-40:]) + rest[-3000:]
    assert "sweep stopped by SIGTERM" in rest and "--resume" in rest
    assert "Traceback" not in rest and "core dumped" not in rest

    resumed = subprocess.run(
        [*cmd, "--resume"], capture_output=True, text=True, env=env(), timeout=900
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming the sweep" in resumed.stdout
    for name in finished_before:  # finished trials are not started again
        assert f"start {name}:" not in resumed.stdout
    trials = json.loads((tmp_path / "resume" / "results.json").read_text())["trials"]
    assert len(trials) == 6
    by_name = {f"{t['role']}-{t['trial_id']}": t for t in trials}
    for name, best in finished_before.items():  # kept, with the same result
        assert by_name[name]["best_val_acc"] == pytest.approx(best, abs=5e-5)
