"""What the search got wrong before, on a real local Ray cluster: the final retrain of a
multi-worker sweep ran another recipe (one process), and a sweep whose every trial failed
exited 0."""

import os
import subprocess
import sys

import pytest

from cmkd.config import DataConfig, DistillConfig
from cmkd.data.synth import build_synth

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "synth"
    build_synth(out, "synth", seed=0, train_per_class=30, val_per_class=10, test_per_class=20)
    return out


def test_final_retrain_of_a_two_worker_sweep_runs_the_trials_recipe(bench, ray_tmp, tmp_path):
    """Seed 0 retrained by the final stage gives exactly what a trial of two Train workers
    gives for that config and seed, and not what one process gives."""
    import ray

    from cmkd.sweep import final_retrain
    from cmkd.train import fit, load_run_data
    from cmkd.trial import Resources, make_trainer, pack

    data_cfg = DataConfig(benchmark=str(bench))
    data = load_run_data(data_cfg, log=lambda *_: None)
    cfg = DistillConfig(
        algorithm="ucmkd_sum", fa="mmd", epochs=2, steps_per_epoch=3, batch_size=8
    ).model_dump()
    two = Resources(workers=2, cpus_per_worker=0.5)
    one_process = fit(DistillConfig(**cfg), data, data_cfg, log=lambda *_: None)["best"]
    ray.init(num_cpus=2, logging_level="ERROR", log_to_driver=False, _temp_dir=ray_tmp)
    try:
        payload, rows = (
            [ray.put(pack(data))],
            [ray.put((data.x_train.numpy(), data.y_train.numpy()))],
        )
        final, failed = final_retrain(
            {"c": cfg},
            data_cfg,
            [0],
            payload,
            rows,
            cpus=1.0,
            resources=two,
            storage=str(tmp_path / "final"),
        )
        trial = (
            make_trainer(
                cfg,
                payload_ref=payload,
                train_ref=rows,
                stream=None,
                data_cfg=data_cfg.model_dump(),
                resources=two,
                storage=str(tmp_path / "trial"),
                name="trial",
                max_failures=0,
                diverged_uri=None,
                metric="val_acc",
                callbacks=[],
            )
            .fit()
            .metrics
        )
    finally:
        ray.shutdown()
    assert not failed
    (run,) = final["c"]["runs"]
    assert run["val"] == trial["best_val_acc"] and run["test_acc"] == trial["best_test_acc"]
    assert (run["val"], run["test_acc"]) != (one_process["val_acc"], one_process["test_acc"])


def test_a_sweep_whose_every_trial_failed_exits_1_and_says_so(bench, tmp_path, ray_tmp):
    space = tmp_path / "diverges.yaml"
    space.write_text(  # SGD at lr 9.9 with weight decay 0.9 multiplies the weights by -7.9 a step: NaN
        "fixed: {algorithm: ucmkd_sum, fa: mmd, epochs: 2, steps_per_epoch: 20, batch_size: 16,"
        " lr: 9.9, optimizer: sgd, weight_decay: 0.9, grad_clip: null}\n"
        "params:\n  w_fa: {loguniform: [0.1, 1.0]}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "WANDB_"))}
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "cmkd.tune", "--space", str(space), "--benchmark", str(bench)),
            *("--storage", str(tmp_path / "runs"), "--name", "nan", "--wandb", "disabled"),
            *("--num-samples", "0", "--final-seeds", "0"),
        ],
        capture_output=True,
        text=True,
        env={**env, "RAY_TMPDIR": ray_tmp},
        timeout=600,
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "every trial of sweep 'nan' failed" in proc.stderr
    assert "non-finite" in proc.stderr or "diverged" in proc.stderr
    assert not (tmp_path / "runs" / "nan" / "best.yaml").exists()
