"""What the search got wrong before, one test each: a searched `epochs` capped by ASHA, best.yaml
on another labelled subset, resumes that ignored their arguments, the best epoch picked by
`val_acc` whatever the metric, and a study export that hid every error. Validation rows drawn
from the labelled train rows, disjoint from the training labels."""

import json

import numpy as np
import pytest

from cmkd import train, tune
from cmkd.config import ConfigError, DataConfig, DistillConfig, Experiment
from cmkd.data.synth import build_synth
from cmkd.space import load_space


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    build_synth(out, "synth", seed=0, train_per_class=30, val_per_class=10, test_per_class=10)
    return out


def test_a_searched_epochs_sets_ashas_horizon_and_each_trial_stops_at_its_own(tmp_path):
    from ray.tune.schedulers import TrialScheduler

    from cmkd.sweep import make_scheduler

    path = tmp_path / "epochs.yaml"
    path.write_text("params:\n  epochs: {int: [4, 20]}\n  w_fa: {loguniform: [0.1, 1.0]}\n")
    space = load_space(path)
    assert space.max_epochs == 20
    asha = make_scheduler(space, space.max_epochs)
    assert asha._max_t == 20 and asha._metric == "best_val_acc"

    class Trial:
        trial_id, config = "t1", {"epochs": 4, "role": "search"}

    asha.on_trial_add(None, Trial)
    verdicts = [
        asha.on_trial_result(None, Trial, {"epoch": e, "best_val_acc": 0.5}) for e in (1, 4)
    ]
    assert verdicts[-1] == TrialScheduler.STOP  # at its own last epoch, not at max_t


def test_best_yaml_trains_on_the_sweeps_labelled_subset(bench, tmp_path):
    cfg = DataConfig(benchmark=str(bench), labels_per_class=3, seed=3)
    swept = train.load_run_data(cfg, log=lambda *_: None)
    Experiment(data=cfg, distill=DistillConfig()).to_yaml(tmp_path / "best.yaml")
    again = train.load_run_data(Experiment.from_yaml(tmp_path / "best.yaml").data)
    for a, b in ((swept.x_train, again.x_train), (swept.x_val, again.x_val)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    other = train.load_run_data(DataConfig(benchmark=str(bench), labels_per_class=3))
    assert not np.array_equal(swept.x_train.numpy(), other.x_train.numpy())


def test_validation_rows_come_from_the_train_table_disjoint_from_the_labels(bench):
    data = train.load_run_data(
        DataConfig(benchmark=str(bench), labels_per_class=5, val_per_class=7), log=print
    )
    k = data.meta.num_classes
    assert len(data.y_train) == 5 * k and len(data.y_val) == 7 * k
    assert np.bincount(data.y_val.numpy()).tolist() == [7] * k
    train_rows = {tuple(r) for r in data.x_train.numpy().round(6)}
    assert not train_rows & {tuple(r) for r in data.x_val.numpy().round(6)}
    split = train.load_run_data(
        DataConfig(benchmark=str(bench), labels_per_class=5, val_per_class="split")
    )
    assert len(split.y_val) == 10 * k  # the benchmark's own validation table
    with pytest.raises(ConfigError, match="val_per_class 26: class 0 has only 25"):
        train.load_run_data(DataConfig(benchmark=str(bench), labels_per_class=5, val_per_class=26))


def test_the_best_epoch_is_chosen_on_the_sweeps_metric(bench):
    from cmkd.trial import _with_best

    data = train.load_run_data(DataConfig(benchmark=str(bench), labels_per_class=2))
    cfg = DistillConfig(algorithm="ce", epochs=5, steps_per_epoch=4, batch_size=8, lr=3e-2)
    run = train.Run(cfg, data, metric="val_ce")
    reported = [_with_best(run.run_epoch(), run) for _ in range(cfg.epochs)]
    lowest = min(h["val_ce"] for h in run.history)
    assert run.best["val_ce"] == lowest and reported[-1]["best_val_ce"] == lowest
    assert [r["best_val_ce"] for r in reported] == list(
        np.minimum.accumulate([h["val_ce"] for h in run.history])
    )


def test_study_export_warns_on_a_disk_problem_and_lets_a_bug_through(monkeypatch, tmp_path):
    import cmkd.study
    from cmkd.sweep import write_study

    def disk_full(_):
        raise OSError("No space left on device")

    monkeypatch.setattr(cmkd.study, "export_study", disk_full)
    assert write_study(tmp_path) is None

    def bug(_):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(cmkd.study, "export_study", bug)
    with pytest.raises(TypeError):
        write_study(tmp_path)


# --------------------------------------------------------------------------- --resume


def tune_args(bench, storage, *extra):
    return ["--space", "smoke", "--benchmark", str(bench), "--storage", str(storage), *extra]


def test_resume_of_a_sweep_that_does_not_exist_lists_those_that_do(bench, tmp_path, capsys):
    from cmkd.sweep_record import write_record

    write_record(str(tmp_path), "first", {"seed": 0})
    code = tune.main(tune_args(bench, tmp_path, "--name", "frist", "--resume"))
    err = capsys.readouterr().err
    assert code == 2 and "no sweep named 'frist'" in err and "first" in err
    assert not (tmp_path / "frist").exists()


def test_resume_with_other_arguments_names_each_difference(bench, tmp_path, capsys):
    from cmkd.sweep_record import record, write_record

    args = tune.parse_args(tune_args(bench, tmp_path, "--name", "s", "--epochs", "2"))
    space = load_space("smoke")
    space = type(space)(**{**space.__dict__, "fixed": {**space.fixed, "epochs": 2}})
    data_cfg = DataConfig(benchmark=str(bench), labels_per_class=5, seed=0)
    write_record(str(tmp_path), "s", record(args, space, data_cfg))
    code = tune.main(
        tune_args(
            bench,
            tmp_path,
            *("--name", "s", "--resume", "--epochs", "3"),
            *("--labels-per-class", "2", "--num-samples", "12", "--encoder", "mlp"),
        )
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--labels-per-class was 5, now 2" in err
    assert "--encoder was 'auto', now 'mlp'" in err
    assert "--num-samples was 8, now 12" in err
    assert "the space's fixed.epochs was 2, now 3" in err
    stored = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert stored["labels_per_class"] == 5  # untouched


def test_without_early_stopping_every_trial_runs_its_schedule(tmp_path):
    from ray.tune.schedulers import TrialScheduler

    from cmkd.sweep import make_scheduler

    space = load_space("smoke")
    asha = make_scheduler(space, 8, prune=False)

    class Trial:
        def __init__(self, i):
            self.trial_id, self.config = f"t{i}", {"epochs": 8, "role": "search"}

    trials = [Trial(i) for i in range(4)]
    for t in trials:
        asha.on_trial_add(None, t)
    for epoch in range(1, 8):  # a worse trial at every rung is never cut
        for i, t in enumerate(trials):
            d = asha.on_trial_result(None, t, {"epoch": epoch, "best_val_acc": 0.1 * (i + 1)})
            assert d == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, trials[0], {"epoch": 8, "best_val_acc": 0.1}) == "STOP"


def test_random_searcher_is_plain_random_search():
    space = load_space("default")
    from cmkd.searcher import make_searcher

    searcher = make_searcher(space, seed=0, budget=8, references=[], sampler="random")
    first = searcher.suggest("t0")
    assert not (first["algorithm"] == "kd_unpaired" and first.get("kd_alpha") == 0.9)
    assert type(searcher.study.sampler).__name__ == "RandomSampler"


def test_a_time_budget_must_be_positive(bench, tmp_path, capsys):
    code = tune.main(tune_args(bench, tmp_path, "--time-budget", "0"))
    assert (
        code == 2
        and "--time-budget 0: expected a number of seconds, a finite number > 0"
        in capsys.readouterr().err
    )
