"""The sweep's W&B callback: one offline run per trial, concurrent runs in one process."""

from pathlib import Path

import pytest

from cmkd.wandb_log import WandbRuns


class FakeTrial:
    def __init__(self, trial_id: str, config: dict, local_path: str):
        self.trial_id, self.config, self.local_path = trial_id, config, local_path

    def __str__(self) -> str:
        return f"trial_{self.trial_id}"


@pytest.fixture()
def wandb_dir(tmp_path, monkeypatch):
    for var, sub in (("WANDB_DIR", ""), ("WANDB_CACHE_DIR", ".cache"), ("WANDB_CONFIG_DIR", ".c")):
        (tmp_path / sub).mkdir(exist_ok=True)
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path


def test_concurrent_trials_each_get_their_own_run(wandb_dir):
    cb = WandbRuns(project="cmkd", group="g", mode="offline", excludes=("checkpoint_path",))
    trials = [FakeTrial(f"t{i}", {"lr": 0.1 * (i + 1), "role": "search"}, "/x") for i in range(2)]
    for t in trials:
        cb.log_trial_start(t)
    runs = dict(cb._runs)
    for epoch in (1, 2):
        for t in trials:
            cb.log_trial_result(
                epoch,
                t,
                {
                    "training_iteration": epoch,
                    "val_acc": 0.5,
                    "checkpoint_path": "/ckpt",
                    "trial_id": t.trial_id,
                    "config": {"lr": 1},
                    "done": False,
                },
            )
    run = runs[trials[0]]
    assert run.id == "t0" and run.name == "trial_t0" and run.group == "g"
    assert run.config["lr"] == pytest.approx(0.1) and run.config["trial_id"] == "t0"
    assert "checkpoint_path" not in run.config
    assert run.summary["val_acc"] == 0.5 and "checkpoint_path" not in run.summary.keys()
    cb.log_trial_end(trials[0])
    cb.on_experiment_end(trials)  # ends the other one
    assert cb._runs == {}
    # Each run's own folder (W&B keeps the folder it was first given for the whole process, so
    # ask the run where it wrote rather than assume this test's WANDB_DIR).
    found = [Path(r.settings.sync_dir) for r in runs.values()]
    assert [p.name.rsplit("-", 1)[1] for p in found] == ["t0", "t1"]
    assert all(p.name.startswith("offline-run-") for p in found)
    assert all(
        any(f.suffix == ".wandb" and f.stat().st_size > 0 for f in p.iterdir()) for p in found
    )


def test_an_upload_that_hangs_holds_the_sweep_only_wait_s(monkeypatch, capsys):
    import time

    from cmkd import wandb_log

    class HangingRun:
        def finish(self, exit_code=0):
            time.sleep(30)

    monkeypatch.setattr(wandb_log, "WAIT_S", 0.5)
    cb = WandbRuns(project="cmkd", group="g", mode="online")
    trials = [FakeTrial(f"t{i}", {}, "/x") for i in range(2)]
    cb._runs = {t: HangingRun() for t in trials}
    t0 = time.perf_counter()
    for t in trials:
        cb.log_trial_end(t)
    assert time.perf_counter() - t0 < 3 and not cb._runs
    out = capsys.readouterr().out
    assert out.count("did not finish uploading") == 1 and "wandb sync" in out


def test_a_server_lost_mid_sweep_turns_later_runs_offline(wandb_dir, monkeypatch, capsys):
    import wandb

    real_init, modes, started = wandb.init, [], []

    def init(**kw):
        modes.append(kw["mode"])
        assert kw["settings"].init_timeout <= 10
        if kw["mode"] == "online":
            raise wandb.errors.CommError("timed out")
        started.append(real_init(**kw))
        return started[-1]

    monkeypatch.setattr(wandb, "init", init)
    cb = WandbRuns(project="cmkd", group="g", mode="online")
    trial = FakeTrial("t0", {"lr": 0.1}, "/x")
    cb.log_trial_result(1, trial, {"training_iteration": 1, "val_acc": 0.5})
    cb.log_trial_end(trial)
    cb.log_trial_start(FakeTrial("t1", {}, "/x"))
    cb.on_experiment_end([])
    assert modes == ["online", "offline", "offline"] and cb.mode == "offline"
    assert capsys.readouterr().out.count("W&B unreachable during the sweep") == 1
    assert len(started) == 2 and all(r.offline for r in started)
    assert [r.id for r in started] == ["t0", "t1"]
