"""The two paths a one-worker trial can take (its own process, or a Ray Train run) and the
command line all go through ``cmkd.trial.train_loop``: the same config and seed give the same
epochs on each, and a loop restored from a checkpoint goes on as if never stopped."""

import copy

import pytest
import torch

from cmkd.config import DataConfig, DistillConfig
from cmkd.data.synth import build_synth
from cmkd.train import fit, load_run_data
from cmkd.trial import loop_config, train_loop

KEYS = ("epoch", "val_acc", "test_acc", "val_acc_teacher_head", "train_loss", "best_val_acc")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "synth"
    build_synth(out, "synth", seed=0, train_per_class=30, val_per_class=10, test_per_class=20)
    return out


@pytest.fixture(scope="module")
def data(bench):
    data_cfg = DataConfig(benchmark=str(bench))
    return data_cfg, load_run_data(data_cfg, log=lambda *_: None)


CFG = DistillConfig(algorithm="ucmkd_sum", fa="mmd", epochs=3, steps_per_epoch=4, batch_size=8)


def epochs_of(config, data, restored=None):
    reports = []  # the state is copied as it is reported: a checkpoint is written at once

    def report(metrics, state):
        reports.append((metrics, copy.deepcopy(state)))

    train_loop(config, data, report=report, restored=restored)
    return reports


def test_the_loop_gives_the_command_lines_epochs_and_resumes_exactly(data):
    """train_loop's epochs equal cmkd.train's fit (the CLI) on one thread; restored from its
    epoch-1 checkpoint, it reports epochs 2 and 3 exactly as the uninterrupted loop did."""
    data_cfg, run_data = data
    torch.set_num_threads(1)
    config = loop_config(CFG.model_dump(), data_cfg.model_dump(), "val_acc", None)
    whole = epochs_of(config, run_data)
    assert [m["epoch"] for m, _ in whole] == [1, 2, 3]
    assert all(state is not None for _, state in whole)  # rank 0 checkpoints every epoch
    cli = fit(CFG, run_data, data_cfg, log=lambda *_: None)["history"]
    for (m, _), h in zip(whole, cli, strict=True):
        assert {k: m[k] for k in KEYS if k in h} == {k: h[k] for k in KEYS if k in h}
    resumed = epochs_of(config, run_data, restored=whole[0][1])
    assert [m["epoch"] for m, _ in resumed] == [2, 3]
    for (a, _), (b, _) in zip(resumed, whole[1:], strict=True):
        assert {k: a[k] for k in KEYS} == {k: b[k] for k in KEYS}
    # restored after its last epoch: the epochs are reported again, unchanged, and not trained
    again = epochs_of(config, run_data, restored=whole[-1][1])
    assert [m["epoch"] for m, _ in again] == [1, 2, 3]
    assert all(state is None for _, state in again)
    assert again[-1][0]["best_val_acc"] == whole[-1][0]["best_val_acc"]


@pytest.mark.ray
def test_a_trial_in_its_own_process_reports_what_a_ray_train_trial_reports(data, tmp_path, ray_tmp):
    """The same config and seed through Tune on both paths: identical metrics every epoch."""
    import ray
    from ray import tune

    from cmkd.sweep import make_trainable
    from cmkd.trial import Resources

    data_cfg, run_data = data
    ray.init(num_cpus=2, logging_level="ERROR", log_to_driver=False, _temp_dir=ray_tmp)
    try:
        curves = {}
        for local in (True, False):
            trainable, _, _ = make_trainable(
                run_data, data_cfg, Resources(), str(tmp_path / f"s{local}"), local=local
            )
            grid = tune.Tuner(
                trainable,
                param_space=CFG.model_dump(),
                run_config=tune.RunConfig(
                    name=f"p{local}", storage_path=str(tmp_path / "tune"), verbose=0
                ),
            ).fit()
            assert not grid.errors, grid.errors
            df = grid[0].metrics_dataframe
            curves[local] = df[[k for k in KEYS if k in df]].to_dict("records")
    finally:
        ray.shutdown()
    assert len(curves[True]) == CFG.epochs
    assert curves[True] == curves[False]
