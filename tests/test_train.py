"""A single distillation run end to end on a small synth benchmark built here."""

import json
import math

import pytest

from cmkd import train
from cmkd.config import DataConfig, DistillConfig
from cmkd.data.synth import build_synth


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    build_synth(out, "synth", seed=0, train_per_class=30, val_per_class=10, test_per_class=10)
    return out


def test_train_command_runs_distillation_against_the_reference(bench, tmp_path, capsys):
    out = tmp_path / "result.json"
    code = train.main(
        [
            "--benchmark",
            str(bench),
            "--labels-per-class",
            "5",
            "--set",
            "epochs=2",
            "--set",
            "steps_per_epoch=3",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| ce (no distillation) |" in printed and "| ucmkd_sum |" in printed
    assert "test accuracy points over no distillation" in printed
    result = json.loads(out.read_text())
    assert set(result["results"]) == {"ce (no distillation)", "ucmkd_sum"}
    assert (bench / "teacher-a" / "bank.parquet").is_file()  # built on first use, then reused


def test_low_label_subsample_and_history(bench):
    data = train.load_run_data(DataConfig(benchmark=str(bench), labels_per_class=2), seed=0)
    assert len(data.y_train) == 2 * data.meta.num_classes
    assert data.student == "b" and data.teacher == "a"
    seen = []
    result = train.fit(
        DistillConfig(algorithm="ucmkd_bilevel", epochs=2, batch_size=8, inner_lr=1e-3),
        data,
        on_epoch=lambda m, s: seen.append(m["epoch"]),
        log=lambda *_: None,
    )
    assert seen == [1, 2]
    assert {"train_ce", "train_fa", "train_la", "val_acc", "test_acc_teacher_head"} <= set(
        result["best"]
    )


def test_bad_command_line_names_the_problem(bench, capsys):
    assert train.main(["--benchmark", str(bench), "--set", "epsilom=0.1"]) == 2
    assert "unknown key 'distill.epsilom' (did you mean 'epsilon'?)" in capsys.readouterr().err
    assert train.main(["--benchmark", "nowhere"]) == 2
    assert "not a built-in" in capsys.readouterr().err


def test_experiment_file_runs_again(bench, tmp_path, capsys):
    """A sweep's best.yaml (data + distill) is a runnable experiment."""
    from cmkd.config import Experiment

    path = tmp_path / "best.yaml"
    Experiment(
        data=DataConfig(benchmark=str(bench), labels_per_class=2),
        distill=DistillConfig(
            algorithm="ucmkd_sum", fa="mmd", epochs=1, steps_per_epoch=2, batch_size=8
        ),
    ).to_yaml(path)
    assert train.main(["--config", str(path), "--no-reference"]) == 0
    out = capsys.readouterr().out
    assert "| ucmkd_sum |" in out and "ce (no distillation)" not in out
    assert "student b (20 labelled)" in out


@pytest.mark.parametrize("readout", ["student", "teacher", "best"])
def test_readout_decides_which_head_scores_the_run(bench, readout):
    data = train.load_run_data(DataConfig(benchmark=str(bench), labels_per_class=5), seed=0)
    cfg = DistillConfig(algorithm="ucmkd_sum", label_cost=4.0, epochs=3, batch_size=16)
    hist = train.fit(cfg.model_copy(update={"readout": readout}), data, log=lambda *_: None)[
        "history"
    ]
    for m in hist:
        s, t = m["val_acc_student_head"], m["val_acc_teacher_head"]
        want = {"student": s, "teacher": t, "best": max(s, t)}[readout]
        assert m["val_acc"] == want
        assert m["readout_teacher_head"] == float(
            readout == "teacher" or (readout == "best" and t > s)
        )
        if "test_acc" in m:  # read through the same head as validation
            head = "teacher_head" if m["readout_teacher_head"] else "student_head"
            assert m["test_acc"] == m[f"test_acc_{head}"]


def test_cosine_lr_decays_to_zero_and_resumes_where_it_was(bench):
    """lr_schedule: cosine sets each step's rate from the steps done (lr at the first step,
    half of it midway, near 0 at the last); a run restored from its state continues the
    schedule, and constant leaves the rate alone."""
    data = train.load_run_data(DataConfig(benchmark=str(bench), labels_per_class=3), seed=0)
    cfg = DistillConfig(
        algorithm="ce", epochs=4, steps_per_epoch=5, batch_size=8, lr=0.01, lr_schedule="cosine"
    )
    run = train.Run(cfg, data)
    seen = []
    step = run.step
    run.step = lambda *a: (seen.append(run.opt.param_groups[0]["lr"]), step(*a))[1]
    run.run_epoch()
    run.run_epoch()
    assert len(seen) == 10 and seen[0] == pytest.approx(0.01)
    assert all(a > b for a, b in zip(seen, seen[1:], strict=False))
    state = run.state_dict()
    again = train.Run(cfg, data)
    again.load_state_dict(state)
    later = []
    step2 = again.step
    again.step = lambda *a: (later.append(again.opt.param_groups[0]["lr"]), step2(*a))[1]
    again.run_epoch()
    again.run_epoch()
    assert later[0] == pytest.approx(0.005)  # step 10 of 20: halfway down
    assert later[-1] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 19 / 20)))
    constant = train.Run(cfg.model_copy(update={"lr_schedule": "constant"}), data)
    constant.run_epoch()
    assert constant.opt.param_groups[0]["lr"] == pytest.approx(0.01)
