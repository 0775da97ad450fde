"""Faults injected into real sweeps on a real local Ray cluster, with real processes killed.

Each test runs ``python -m cmkd.tune`` as a user would, in a subprocess that starts its own
Ray cluster in its own temp dir (``RAY_TMPDIR``), and ends only the processes it started.
What each one showed is tabled in docs/RELIABILITY.md.
"""

import json
import os
import pickle
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from test_reliability import closed_port

from cmkd.data.synth import build_synth
from cmkd.space import SPACES_DIR

pytestmark = pytest.mark.ray
DONE = re.compile(
    r"\[\s*\d+s \d+/\d+ done\] (\S+) (?:finished|stopped by ASHA) after \d+ epoch\(s\), "
    r"best val_acc ([0-9.]+)"
)
EPOCH = re.compile(r"\] (\S+) epoch (\d+)/\d+: val_acc")

# Searched trials diverge in their first steps: the paper code's plain (not log-domain) Sinkhorn
# at reg 0.001 underflows exp(-C/reg) to 0 and divides by it. The references do not search it:
# reference-ucmkd runs the same OT at reg 0.1, 300 steps per epoch, long enough to be killed
# mid-epoch.
FAULTY_SPACE = """\
description: searched trials diverge (Sinkhorn underflow); references train long epochs
fixed:
  algorithm: fa_only
  fa: reference_ot
  ot_reg: 0.001
  epochs: 4
  steps_per_epoch: 300
  batch_size: 16
params:
  w_fa: {loguniform: [0.5, 2.0]}
"""


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "synth"
    build_synth(out, "synth", seed=0, train_per_class=30, val_per_class=20, test_per_class=20)
    return out


def env(ray_tmp, **extra):
    e = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "WANDB_"))}
    return {**e, "PYTHONUNBUFFERED": "1", "RAY_TMPDIR": ray_tmp, **extra}


def tune_cmd(space, bench, storage, name, *extra):
    return [
        sys.executable, "-m", "cmkd.tune", "--space", str(space), "--benchmark", str(bench),
        "--storage", str(storage), "--name", name, *extra,
    ]  # fmt: skip


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def end(procs: list[psutil.Process]) -> None:
    """Kill these processes (all started by this test), one by one, by their pid."""
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=15)


def trial_processes(pid: int) -> list[psutil.Process]:
    """The processes that train: one-worker trials train in their own (Tune's ImplicitFunc)
    actor; the Ray Train path's workers are RayTrainWorker actors (tests/test_reliability_node)."""
    out = []
    for p in descendants(pid):
        try:
            if "ImplicitFunc" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            continue
    return out


def test_nan_trials_fail_a_killed_worker_resumes_wandb_falls_back_and_no_key_leaks(
    bench, tmp_path, ray_tmp
):
    """One sweep, four faults: searched trials whose loss turns NaN, the process training a
    trial SIGKILLed mid-epoch, W&B online with a fake key and a closed port, and the key as a
    marker to grep."""
    key = "cmkdsecret" + secrets.token_hex(16)
    space = tmp_path / "faulty.yaml"
    space.write_text(FAULTY_SPACE)
    storage = tmp_path / "runs"
    cmd = tune_cmd(
        space, bench, storage, "faults", "--num-samples", "2", "--final-seeds", "1",
        "--max-concurrent", "1", "--wandb", "online",
    )  # fmt: skip
    e = env(ray_tmp, WANDB_API_KEY=key, WANDB_BASE_URL=f"http://127.0.0.1:{closed_port()}")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=e)
    lines, killed, deadline = [], None, time.time() + 600
    try:
        for line in proc.stdout:
            lines.append(line)
            m = EPOCH.search(line)
            if (
                killed is None
                and m
                and m.group(1).startswith("reference-ucmkd")
                and m.group(2) == "2"
            ):
                # One trial at a time: the trial training is this one, in its epoch 3 (an idle
                # trial actor Tune keeps for reuse, if any, goes too)
                workers = trial_processes(proc.pid)
                assert workers, "".join(lines[-40:])
                for worker in workers:
                    worker.kill()
                killed = (m.group(1), workers[0].pid)
            assert time.time() < deadline, "".join(lines[-40:])
        proc.wait(timeout=120)
    finally:
        leftover = descendants(proc.pid)
        if proc.poll() is None:
            proc.kill()
        end(leftover)
    out = "".join(lines)
    assert proc.returncode == 0, out[-5000:]
    assert killed is not None, out[-3000:]

    # W&B: one warning, then the sweep logged offline
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and "cannot be reached" in warnings[0] and "offline" in warnings[0]
    assert list((storage / "faults" / "wandb" / "wandb").glob("offline-run-*"))

    results = json.loads((storage / "faults" / "results.json").read_text())
    trials = {f"{t['role']}-{t['trial_id']}": t for t in results["trials"]}
    assert len(trials) == 4
    # NaN: both searched trials failed, with the reason, ranked last; the sweep went on
    searched = [t for t in results["trials"] if t["role"] == "search"]
    assert len(searched) == 2 and results["trials"][-2:] == searched
    for t in searched:
        assert t["error"].startswith("TrialDiverged: diverged in epoch 1: non-finite loss term(s)")
        assert "fa=nan" in t["error"] or "fa=inf" in t["error"]
        assert f"{t['role']}-{t['trial_id']} FAILED: TrialDiverged" in out
    # ... and Optuna was told they failed (the searcher's own saved state, not our summary)
    (state_file,) = (storage / "faults").glob("searcher-state-*.pkl")
    with open(state_file, "rb") as f:
        study = pickle.load(f)["study"]
    searched = [t for t in study.trials if "role" not in t.user_attrs]  # not the references
    assert [t.state.name for t in searched] == ["FAIL", "FAIL"]
    # no diverged trial is a finalist: only the references were retrained, nothing crashed,
    # and best.yaml holds one of them
    assert set(results["final"]) == {"reference-ce", "reference-ucmkd"}
    assert results["verdict"]["recommendation"] in ("reference-ce", "reference-ucmkd")
    assert (storage / "faults" / "best.yaml").exists()

    # the killed trial resumed from a checkpoint, not from the start: epoch 1 ran once. (Tune
    # registers an epoch's checkpoint just after it prints the epoch, so a kill at that moment
    # may redo that epoch: epoch 2 is reported once or twice, never epoch 1.)
    name, _ = killed
    assert trials[name]["error"] is None and trials[name]["epochs_run"] == 4
    assert len(trials[name]["curve"]) == 4, trials[name]["curve"]
    assert [int(m.group(2)) for m in EPOCH.finditer(out) if m.group(1) == name] in (
        [1, 2, 3, 4],
        [1, 2, 2, 3, 4],
    )
    assert (
        trials[
            "reference-ce-"
            + next(t["trial_id"] for t in results["trials"] if t["role"] == "reference-ce")
        ]["epochs_run"]
        == 4
    )

    # the key is nowhere: output, every file the sweep wrote, Ray's own session logs
    assert key not in out
    for root in (storage, Path(ray_tmp)):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert key.encode() not in path.read_bytes(), path


def saved_ended(sweep: Path) -> set[str]:
    """Ids of the trials Tune's newest saved experiment state holds as ended."""
    out: set[str] = set()
    for path in sorted(sweep.glob("experiment_state-*.json"), key=lambda f: f.stat().st_mtime)[-1:]:
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):  # being written
            return out
        for trial, _ in state["trial_data"]:
            t = json.loads(trial)
            if t.get("status") == "TERMINATED":
                out.add(t["trial_id"])
    return out


def test_driver_killed_with_sigkill_resumes_with_every_finished_trial_kept(
    bench, tmp_path, ray_tmp
):
    # The smoke space with epochs long enough (a few seconds a trial) that the sweep cannot end
    # between the second finished trial and the kill: with 3 steps an epoch it once did.
    space = tmp_path / "smoke-longer.yaml"
    space.write_text(
        (SPACES_DIR / "smoke.yaml")
        .read_text()
        .replace("steps_per_epoch: 3", "steps_per_epoch: 300")
    )
    cmd = tune_cmd(
        space, bench, tmp_path, "killed", "--num-samples", "6", "--epochs", "2",
        "--final-seeds", "0", "--wandb", "disabled",
    )  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(ray_tmp)
    )
    finished, lines, deadline = {}, [], time.time() + 600
    try:
        for line in proc.stdout:
            lines.append(line)
            m = DONE.search(line)
            if m:
                finished[m.group(1)] = float(m.group(2))
                if len(finished) >= 2:
                    break
            assert time.time() < deadline, "".join(lines[-40:])
        # Tune saves which trials ended every second (cmkd.sweep.ray_env): kill once the saved
        # state holds the two, before the rest of the sweep ends.
        saved_until = time.time() + 15
        while not set(n.rsplit("-", 1)[1] for n in finished) <= saved_ended(tmp_path / "killed"):
            assert time.time() < saved_until, "the experiment state never held the trials"
            time.sleep(0.1)
        cluster = descendants(proc.pid)  # its Ray cluster: ended with it, or by us below
        proc.send_signal(signal.SIGKILL)  # no clean-up of any kind in the driver
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    end(cluster)
    assert len(finished) >= 2, "".join(lines[-40:])
    assert not (tmp_path / "killed" / "results.json").exists()

    def checkpoints(name: str) -> list[str]:
        run = tmp_path / "killed" / name  # a one-worker trial checkpoints through Tune
        return sorted(d.name for d in run.glob("checkpoint_*") if d.is_dir())

    before = {name: checkpoints(name) for name in finished}
    resumed = subprocess.run(
        [*cmd, "--resume"], capture_output=True, text=True, env=env(ray_tmp), timeout=600
    )
    out = resumed.stdout
    assert resumed.returncode == 0, out[-4000:] + resumed.stderr[-3000:]
    assert "resuming the sweep" in out
    trials = json.loads((tmp_path / "killed" / "results.json").read_text())["trials"]
    assert len(trials) == 8 and all(t["error"] is None for t in trials)
    by_name = {f"{t['role']}-{t['trial_id']}": t for t in trials}
    full = {n: b for n, b in finished.items() if f"{n} finished after 2" in "".join(lines)}
    assert full, "".join(lines[-40:])  # the references always run their whole schedule
    for name, best in full.items():
        assert by_name[name]["best_val_acc"] == pytest.approx(best, abs=5e-5)  # same result
        assert by_name[name]["epochs_run"] == 2 and len(by_name[name]["curve"]) == 2
        # not trained again: no new checkpoint. A trial whose end Tune had not saved before the
        # kill is restored from its last checkpoint, which holds every epoch, and only reports
        # its epochs again, unchanged.
        assert before[name] and checkpoints(name) == before[name], name
        earlier = [
            float(v)
            for v in re.findall(
                rf"\] {re.escape(name)} epoch \d/2: val_acc ([0-9.]+)", "".join(lines)
            )
        ]
        again = [
            float(v)
            for v in re.findall(rf"\] {re.escape(name)} epoch \d/2: val_acc ([0-9.]+)", out)
        ]
        assert again in ([], earlier), (name, earlier, again)


def test_final_retrain_records_a_seed_that_diverges_and_keeps_the_others(bench, ray_tmp):
    """A config whose every seed diverges is named in `failed` with its reason, not dropped
    silently; the config beside it keeps its seeds and its mean."""
    import ray

    from cmkd.config import DataConfig, DistillConfig
    from cmkd.sweep import final_retrain
    from cmkd.train import load_run_data
    from cmkd.trial import pack

    data_cfg = DataConfig(benchmark=str(bench))
    data = load_run_data(data_cfg, log=lambda *_: None)
    ok = DistillConfig(epochs=1, steps_per_epoch=2, batch_size=16).model_dump()
    bad = {**ok, "algorithm": "fa_only", "fa": "reference_ot", "ot_reg": 0.001}
    ray.init(num_cpus=2, logging_level="ERROR", log_to_driver=False, _temp_dir=ray_tmp)
    try:
        final, failed = final_retrain(
            {"ok": ok, "bad": bad},
            data_cfg,
            [0, 1],
            [ray.put(pack(data))],
            [ray.put((data.x_train.numpy(), data.y_train.numpy()))],
            cpus=1.0,
        )
    finally:
        ray.shutdown()
    assert list(final) == ["ok"] and [r["seed"] for r in final["ok"]["runs"]] == [0, 1]
    assert 0.0 <= final["ok"]["test_acc_mean"] <= 1.0
    assert [f["seed"] for f in failed["bad"]] == [0, 1] and "ok" not in failed
    assert all("non-finite" in f["error"] or "NaN" in f["error"] for f in failed["bad"]), failed
