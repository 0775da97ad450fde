"""The sweep's W&B callback: one offline run per trial, concurrent runs in one process."""

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
    found = sorted((wandb_dir / "wandb").glob("offline-run-*"))
    assert len(found) == 2 and {p.name.rsplit("-", 1)[1] for p in found} == {"t0", "t1"}
    assert all(
        any(f.suffix == ".wandb" and f.stat().st_size > 0 for f in p.iterdir()) for p in found
    )
