"""Reliability without a cluster: bad input refused before Ray with what to fix, checkpoints
loaded as data only, failed trials reported to the searcher and ranked last, W&B outages."""

import os
import socket
import time
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from cmkd import tune
from cmkd.config import DataConfig, DistillConfig

# --------------------------------------------------------------------------- bad command lines


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from cmkd.data.synth import build_synth

    out = tmp_path_factory.mktemp("bench") / "synth"
    build_synth(out, "synth", train_per_class=20, val_per_class=5, test_per_class=5)
    return out


@pytest.fixture(autouse=True)
def no_sweep(monkeypatch):
    """Input these tests expect refused must never reach Ray: a sweep here fails the test."""
    import cmkd.sweep

    def started(*_, **__):
        raise AssertionError("the sweep started: the input was not refused")

    monkeypatch.setattr(cmkd.sweep, "run_sweep", started)


def refused(capsys, tmp_path, synth, *argv) -> str:
    """Run `python -m cmkd.tune` in-process; it must refuse (exit 2) before starting Ray."""
    import ray

    code = tune.main(
        ["--space", "smoke", "--benchmark", str(synth), "--storage", str(tmp_path), *argv]
    )
    assert code == 2 and not ray.is_initialized()
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["--epochs", "0"], "--epochs: key 'epochs': Input should be greater than or equal to 1"),
        (["--gpus-per-worker", "0.5"], "--gpus-per-worker 0.5: fractional GPUs break DDP"),
        (["--student", "video"], "data.student: modality 'video' not in benchmark"),
        (["--student", "a", "--teacher", "a"], "data.student and data.teacher are both 'a'"),
        (["--labels-per-class", "500"], "data.labels_per_class 500 (--labels-per-class): class 0"),
    ],
    ids=["epochs-zero", "fractional-gpu", "unknown-modality", "same-modality", "too-few-labels"],
)
def test_bad_command_line_is_refused_before_ray(capsys, tmp_path, synth, argv, expected):
    assert expected in refused(capsys, tmp_path, synth, *argv)


def test_epochs_given_twice_is_refused(capsys, tmp_path, synth):
    space = tmp_path / "epochs.yaml"
    space.write_text("params:\n  epochs: {int: [2, 4]}\n")
    code = tune.main(
        ["--space", str(space), "--benchmark", str(synth), "--storage", str(tmp_path)]
        + ["--epochs", "3"]
    )
    assert code == 2
    assert f"--epochs: {space} searches epochs; drop one of the two" in capsys.readouterr().err


def test_bank_of_another_benchmark_is_refused_through_the_command_line(
    capsys, tmp_path, synth, tmp_path_factory
):
    """A teacher bank copied from another build is caught by its fingerprint, before Ray."""
    import shutil

    from cmkd.data.synth import build_synth
    from cmkd.train import ensure_bank

    other = tmp_path_factory.mktemp("other") / "synth"
    build_synth(other, "synth", seed=1, train_per_class=20, val_per_class=5, test_per_class=5)
    here = ensure_bank(synth, "a", log=lambda *_: None)
    shutil.rmtree(here)
    shutil.copytree(ensure_bank(other, "a", log=lambda *_: None), here)
    try:
        err = refused(capsys, tmp_path, synth)
        assert f"{here / 'bank.json'}: this bank was built from benchmark" in err
        assert "rebuild it" in err
    finally:
        shutil.rmtree(here)  # the module's benchmark gets its own bank back on next use


# --------------------------------------------------------------------------- checkpoints


def test_trial_state_loads_with_weights_only_and_resumes_the_same_run(synth, tmp_path):
    """The state a Train worker checkpoints every epoch is plain tensors, numbers and strings:
    ``torch.load(weights_only=True)`` reads it, and the run resumed from it trains the next
    epoch exactly as the uninterrupted run does."""
    from cmkd.train import Run, load_run_data

    dc = DataConfig(benchmark=str(synth))
    data = load_run_data(dc, log=lambda *_: None)
    cfg = DistillConfig(epochs=3, steps_per_epoch=2, batch_size=16, fa="mmd")
    run = Run(cfg, data, dc)
    run.run_epoch()
    torch.save(run.state_dict(), tmp_path / "state.pt")
    straight = run.run_epoch()

    resumed = Run(cfg, data, dc)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    again = resumed.run_epoch()
    assert again["epoch"] == 2 and again["train_loss"] == pytest.approx(straight["train_loss"])
    assert again["val_acc"] == straight["val_acc"]


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    """What weights_only buys: a pickled object with a __reduce__ never gets to run."""

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "ran"),))

    torch.save({"student": Payload()}, tmp_path / "state.pt")
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(tmp_path / "state.pt", weights_only=True)
    assert not (tmp_path / "ran").exists()


def test_trial_loads_checkpoints_with_weights_only():
    import inspect

    from cmkd import trial

    source = inspect.getsource(trial)
    assert "weights_only=True" in source and "weights_only=False" not in source


# --------------------------------------------------------------------------- failed trials


TRAIN_ERROR = """ray::ImplicitFunc.train() (pid=4242, ip=127.0.0.1, actor_id=ab, repr=trial_driver)
  File "/x/ray/tune/trainable/function_trainable.py", line 250, in _trainable_func
    output = fn()
  File "/x/cmkd/trial.py", line 290, in trial_driver
    raise TrialDiverged(reason) from None
cmkd.trial.TrialDiverged: diverged in epoch 1: non-finite loss term(s): fa=nan
"""


def test_failure_reason_is_the_innermost_exception_line():
    assert tune.failure_reason(TRAIN_ERROR) == (
        "TrialDiverged: diverged in epoch 1: non-finite loss term(s): fa=nan"
    )
    assert tune.failure_reason("just one line\nand more") == "just one line"
    assert tune.failure_reason(RuntimeError("")) == "RuntimeError"


def _result(trial_id, role, vals, error=None):
    df = pd.DataFrame({"epoch": range(1, len(vals) + 1), "val_acc": vals})
    return SimpleNamespace(
        metrics_dataframe=df,
        config={"role": role, "w_fa": 1.0},
        metrics={"trial_id": trial_id},
        path=f"/x/{trial_id}",
        error=error,
    )


def test_a_failed_trial_ranks_last_whatever_it_reached_before():
    grid = [
        _result("good", "search", [0.5, 0.6]),
        _result("nan", "search", [0.9], error=TRAIN_ERROR),
        _result("ref", "reference-ce", [0.4, 0.55]),
    ]
    rows = tune.summarise(grid, "val_acc", "max")
    assert [r["trial_id"] for r in rows] == ["good", "ref", "nan"]
    assert rows[-1]["error"].startswith("TrialDiverged: diverged in epoch 1")
    assert rows[-1]["best_val_acc"] == 0.9  # kept for the record, never the winner


# --------------------------------------------------------------------------- W&B


@pytest.fixture()
def clean_wandb_env(monkeypatch, tmp_path):
    for var in [v for v in os.environ if v.startswith("WANDB_")]:
        monkeypatch.delenv(var)
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var))  # setup_wandb_env only sets defaults
    return monkeypatch


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_wandb_online_with_unreachable_server_falls_back_offline_quickly(
    clean_wandb_env, capsys, tmp_path
):
    clean_wandb_env.setenv("WANDB_API_KEY", "fake-" + "k" * 35)
    clean_wandb_env.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    t0 = time.perf_counter()
    assert tune.setup_wandb_env("online", str(tmp_path), "s") == "offline"
    assert time.perf_counter() - t0 < 10
    out = capsys.readouterr().out
    assert out.count("warning:") == 1 and "cannot be reached" in out and "offline" in out
    assert os.environ["WANDB_MODE"] == "offline"
    assert "WANDB_API_KEY" not in os.environ  # not handed on to Ray's runtime environments
    assert "k" * 35 not in out


def test_wandb_online_with_a_server_that_never_answers_is_bounded(clean_wandb_env, capsys):
    """A server that accepts the connection and then says nothing (a black-holed proxy)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    clean_wandb_env.setenv("WANDB_API_KEY", "fake-key")
    clean_wandb_env.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
    try:
        t0 = time.perf_counter()
        problem = tune.wandb_problem(2.0)
        assert time.perf_counter() - t0 < 4
        assert problem and "127.0.0.1" in problem and "fake-key" not in problem
    finally:
        server.close()


def test_wandb_online_without_a_key_falls_back_offline(clean_wandb_env, capsys, tmp_path):
    assert tune.setup_wandb_env("online", str(tmp_path), "s") == "offline"
    out = capsys.readouterr().out
    assert out.count("warning:") == 1 and "WANDB_API_KEY is not set" in out
    assert os.environ["WANDB_MODE"] == "offline"


def test_divergence_marker_round_trips_beside_the_train_run(tmp_path):
    """What a diverged worker leaves for the retries Train and Tune would make (local path here;
    the same code reads s3:// and gs:// through pyarrow)."""
    from cmkd.trial import read_marker, write_marker

    uri = str(tmp_path / "a sweep" / "train-runs" / "train-1" / "diverged.txt")
    assert read_marker(uri) is None
    write_marker(uri, "diverged in epoch 3: non-finite loss term(s): fa=nan")
    assert read_marker(uri) == "diverged in epoch 3: non-finite loss term(s): fa=nan"
