"""Two-objective sweeps without Ray: the ``objectives`` key of a space (each bad case), the
Pareto front (non-dominated points, ties), the searcher's multi-objective study, the student's
size settings and the costs a trial reports."""

import math
import random
from types import SimpleNamespace

import optuna
import pytest
import torch

from cmkd.config import ConfigError, DataConfig, DistillConfig
from cmkd.cost import latency_ms
from cmkd.data.synth import build_synth
from cmkd.pareto import dominates, front, front_table, pareto_points
from cmkd.searcher import make_searcher
from cmkd.space import SpaceError, load_space
from cmkd.sweep import PARETO_DIR, confirm_front, upload_results
from cmkd.train import load_run_data, make_student
from cmkd.trial import loop_config, train_loop
from cmkd.tune import check_student_size

OBJECTIVES = """objectives:
  - {metric: val_acc, mode: max}
  - {metric: student_params, mode: min}
"""
PARAMS = """params:
  student_width: {choice: [4, 16, 64]}
  w_fa: {loguniform: [0.1, 10]}
"""


def write(tmp_path, text: str, name: str = "s.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------ the objectives key


def test_two_objectives_load_quality_first_with_modes_filled_in(tmp_path):
    space = load_space(
        write(
            tmp_path,
            "objectives:\n  - {metric: student_latency_ms}\n  - {metric: val_ce}\n" + PARAMS,
        )
    )
    assert space.objectives == (("val_ce", "min"), ("student_latency_ms", "min"))
    assert (space.metric, space.mode, space.cost, space.pareto) == (
        "val_ce",
        "min",
        "student_latency_ms",
        True,
    )
    assert space.to_dict()["objectives"][1] == {"metric": "student_latency_ms", "mode": "min"}
    single = load_space("smoke")
    assert not single.pareto and single.cost is None and "objectives" not in single.to_dict()
    shipped = load_space("pareto")
    assert shipped.cost == "student_params" and "student_width" in shipped.names


@pytest.mark.parametrize(
    "text, where, says",
    [
        ("metric: val_acc\n" + OBJECTIVES, ": metric:", "not both"),
        ("mode: max\n" + OBJECTIVES, ": mode:", "not both"),
        ("objectives: {metric: val_acc}\n", ": objectives:", "expected a list"),
        (
            "objectives:\n  - {metric: val_acc, mode: max}\n",
            ": objectives:",
            "got 1; for one objective write metric:",
        ),
        (
            OBJECTIVES + "  - {metric: student_latency_ms, mode: min}\n",
            ": objectives:",
            "exactly 2 objectives (a quality metric and a cost of the student), got 3",
        ),
        (
            "objectives:\n  - {metric: val_acc}\n  - {metric: student_param}\n",
            ": objectives[1].metric:",
            "unknown metric 'student_param' (did you mean 'student_params'?)",
        ),
        (
            "objectives:\n  - {metric: val_acc, mode: maximize}\n  - {metric: student_params}\n",
            ": objectives[0].mode:",
            "expected max or min, got 'maximize'",
        ),
        (
            "objectives:\n  - {metric: val_acc}\n  - {metric: student_params, mode: max}\n",
            ": objectives[1].mode:",
            "student_params is to be minimised",
        ),
        (
            "objectives:\n  - {metric: val_acc}\n  - {metric: val_ce}\n",
            ": objectives:",
            "got two quality metrics",
        ),
        (
            "objectives:\n  - {metric: student_params}\n  - {metric: student_latency_ms}\n",
            ": objectives:",
            "got two costs",
        ),
        (
            "objectives:\n  - {metric: val_acc, direction: max}\n  - {metric: student_params}\n",
            ": objectives[0]:",
            "unknown key 'direction'",
        ),
        (
            "objectives:\n  - {mode: max}\n  - {metric: student_params}\n",
            ": objectives[0].metric:",
            "missing",
        ),
        (
            "objectives:\n  - val_acc\n  - student_params\n",
            ": objectives[0]:",
            "expected a mapping",
        ),
    ],
)
def test_each_bad_objectives_key_is_named(tmp_path, text, where, says):
    path = write(tmp_path, text + ("" if "params:" in text else PARAMS))
    with pytest.raises(SpaceError) as e:
        load_space(path)
    msg = str(e.value)
    assert msg.startswith(str(path) + where), msg
    assert says in msg, msg


def test_a_cost_objective_needs_the_students_size_searched(tmp_path):
    path = write(tmp_path, OBJECTIVES + "params:\n  w_fa: {loguniform: [0.1, 10]}\n")
    with pytest.raises(SpaceError, match=r"objectives: student_params is the same for every"):
        load_space(path)
    fixed = OBJECTIVES + "fixed: {student_width: 8}\nparams:\n  student_depth: {int: [1, 3]}\n"
    assert load_space(write(tmp_path, fixed, "d.yaml")).fixed == {"student_width": 8}


def test_student_size_fields_are_validated_like_any_field(tmp_path):
    with pytest.raises(ConfigError, match="student_width"):
        DistillConfig.from_dict({"student_width": 0})
    bad = OBJECTIVES + "params:\n  student_depth: {int: [0, 3]}\n"
    with pytest.raises(SpaceError, match=r"params.student_depth.int: low 0 is not a valid"):
        load_space(write(tmp_path, bad))


# ------------------------------------------------------------------ the front


def test_front_keeps_the_non_dominated_points_and_every_tie():
    # (accuracy max, params min)
    points = [
        (0.50, 1000),  # 0: on the front (cheapest)
        (0.70, 4000),  # 1: on
        (0.60, 4000),  # 2: dominated by 1 (same cost, lower accuracy)
        (0.70, 4000),  # 3: a tie with 1: kept
        (0.65, 8000),  # 4: dominated by 1 (dearer and worse)
        (0.90, 16000),  # 5: on
        (0.50, 2000),  # 6: dominated by 0 (same accuracy, dearer)
        (float("nan"), 10),  # 7: never on the front
    ]
    assert front(points, ["max", "min"]) == [0, 1, 3, 5]
    assert dominates(points[1], points[2], ["max", "min"])
    assert not dominates(points[1], points[3], ["max", "min"])  # equal: neither dominates
    # a minimised quality (val_ce) turns the first axis around
    assert front([(0.3, 10), (0.2, 10), (0.1, 50)], ["min", "min"]) == [1, 2]
    assert front([], ["max", "min"]) == []


@pytest.mark.parametrize("seed", range(5))
def test_front_is_optunas_best_trials(seed):
    """Against an independent implementation: Optuna's own non-dominated set, with ties (values
    on a coarse grid make many)."""
    rng = random.Random(seed)
    points = [(rng.randint(0, 8) / 8, rng.choice([100, 200, 400, 800])) for _ in range(40)]
    study = optuna.create_study(directions=["maximize", "minimize"])
    for p in points:
        study.add_trial(optuna.trial.create_trial(values=list(p)))
    assert front(points, ["max", "min"]) == sorted(t.number for t in study.best_trials)


def test_pareto_points_from_rows_cheapest_first_without_failed_or_cut_trials():
    rows = [
        {"trial_id": "a", "role": "search", "config": {"student_width": 64}, "error": None,
         "best_val_acc": 0.8, "student_params": 9000},
        {"trial_id": "b", "role": "reference-ce", "config": {}, "error": None,
         "best_val_acc": 0.6, "student_params": 500},
        {"trial_id": "c", "role": "search", "config": {}, "error": "ValueError: x",
         "best_val_acc": 0.99, "student_params": 10},
        {"trial_id": "d", "role": "search", "config": {}, "error": None, "best_val_acc": 0.99},
        {"trial_id": "e", "role": "search", "config": {}, "error": None,
         "best_val_acc": 0.5, "student_params": 800},
        {"trial_id": "f", "role": "search", "config": {}, "error": None, "full": False,
         "best_val_acc": 0.7, "student_params": 100},
    ]  # fmt: skip
    objectives = (("val_acc", "max"), ("student_params", "min"))
    points = pareto_points(rows, objectives)
    assert [p["name"] for p in points] == ["reference-ce", "search-a"]
    assert points[1]["values"] == {"val_acc": 0.8, "student_params": 9000}
    table = front_table(points, objectives).splitlines()
    assert table[0].startswith("| # | val_acc | student_params | student_width")
    assert table[2].startswith("| 0 | 0.6000 | 500 | default") and "| 64 |" in table[3]


# ------------------------------------------------------------------ the searcher


def test_searcher_tells_optuna_both_objectives_and_its_front_is_ours(tmp_path):
    space = load_space(write(tmp_path, OBJECTIVES + PARAMS))
    ce = {"algorithm": "ce", "role": "reference-ce"}  # not a point of the space: not told
    searcher = make_searcher(space, seed=0, budget=8, references=[ce])
    assert [d.name for d in searcher.study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert searcher.suggest("ref") == ce
    searcher.on_trial_complete("ref", {"best_val_acc": 0.4, "student_params": 7000})
    told = []
    for i in range(8):
        config = searcher.suggest(f"t{i}")
        assert config["student_width"] in (4, 16, 64) and config["role"] == "search"
        width = config["student_width"]
        last = config.get("epochs", DistillConfig().epochs)  # the whole schedule ran
        result = {"epoch": last, "best_val_acc": 0.3 + width / 200, "student_params": 100 * width}
        searcher.on_trial_result(f"t{i}", result)  # no intermediate values: must not raise
        if i == 3:
            searcher.on_trial_complete(f"t{i}", result, error=True)
        elif i == 4:  # a result without the cost cannot be told: FAIL, not a crash
            searcher.on_trial_complete(f"t{i}", {"epoch": last, "best_val_acc": 0.9})
        else:
            searcher.on_trial_complete(f"t{i}", result)
            told.append((result["best_val_acc"], result["student_params"]))
    trials = searcher.study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert [tuple(t.values) for t in complete] == told  # both values, in the study's order
    assert sum(t.state == optuna.trial.TrialState.FAIL for t in trials) >= 2
    best = sorted(tuple(t.values) for t in searcher.study.best_trials)
    assert best == sorted(told[i] for i in front(told, ["max", "min"]))


def test_a_reference_the_space_expresses_enters_with_both_values(tmp_path):
    text = OBJECTIVES + "params:\n  algorithm: {choice: [ce, ucmkd_sum]}\n"
    text += "  student_width: {choice: [4, 16]}\n"
    space = load_space(write(tmp_path, text))
    ref = {"algorithm": "ce", "student_width": 16, "role": "reference-ce"}
    searcher = make_searcher(space, seed=0, budget=4, references=[ref])
    searcher.suggest("ref")
    searcher.on_trial_complete("ref", {"best_val_acc": 0.5, "student_params": 1234})
    (trial,) = searcher.study.get_trials(deepcopy=False)
    assert trial.values == [0.5, 1234.0] and trial.params == {
        "algorithm": "ce",
        "student_width": 16,
    }


# ------------------------------------------------------------------ the student's size


def fake_data(in_shape):
    return SimpleNamespace(
        in_shape=in_shape,
        student="b",
        teacher="a",
        meta=SimpleNamespace(num_classes=10),
        bank=SimpleNamespace(feature_dim=16),
    )


@pytest.mark.parametrize("in_shape", [(20,), (1, 16, 16)])
def test_width_and_depth_size_the_student(in_shape):
    def params(width=None, depth=None):
        model = make_student(fake_data(in_shape), DataConfig(), width, depth)
        return sum(p.numel() for p in model.parameters())

    assert params(4) < params(16) < params(64)
    assert params(16, 1) < params(16, 2) < params(16, 3)
    assert params() == params(*((16, 2) if len(in_shape) == 3 else (128, 2)))  # the default


def test_a_cnn_too_deep_for_its_input_is_refused_before_any_trial(tmp_path):
    with pytest.raises(ValueError, match="student_depth 5: each CNN block halves the input"):
        make_student(fake_data((1, 16, 16)), DataConfig(), None, 5)
    space = load_space(write(tmp_path, OBJECTIVES + "params:\n  student_depth: {int: [1, 5]}\n"))
    with pytest.raises(ConfigError, match=r"s.yaml: student_depth: student_depth 5"):
        check_student_size(space, fake_data((1, 16, 16)), DataConfig())
    check_student_size(space, fake_data((1, 32, 32)), DataConfig())  # 2**5 fits


def test_latency_is_a_positive_median_and_leaves_the_mode():
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.BatchNorm1d(64))
    model.train()
    ms = latency_ms(model, (20,), repeats=3)
    assert math.isfinite(ms) and ms > 0 and model.training


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "synth"
    build_synth(out, "synth", seed=0, train_per_class=20, val_per_class=10, test_per_class=10)
    data_cfg = DataConfig(benchmark=str(out))
    return data_cfg, load_run_data(data_cfg, log=lambda *_: None)


def test_every_epoch_reports_the_students_cost(synth):
    data_cfg, data = synth
    cfg = DistillConfig(algorithm="ce", epochs=2, steps_per_epoch=2, batch_size=8, student_width=8)
    reports = []
    for latency in (False, True):
        config = loop_config(cfg.model_dump(), data_cfg.model_dump(), "val_acc", None, latency)
        got = []
        train_loop(config, data, report=lambda m, s, got=got: got.append(m))
        reports.append(got)
    expected = sum(p.numel() for p in make_student(data, data_cfg, 8).parameters())
    for got in reports:
        assert [m["student_params"] for m in got] == [expected, expected]
    assert all("student_latency_ms" not in m for m in reports[0])
    lat = [m["student_latency_ms"] for m in reports[1]]
    assert lat[0] > 0 and lat[0] == lat[1]  # measured once per trial


def test_the_front_files_travel_to_remote_storage(tmp_path):
    local = tmp_path / "runs" / "front"
    (local / PARETO_DIR).mkdir(parents=True)
    (local / "results.json").write_text("{}")
    for k in range(3):
        (local / PARETO_DIR / f"{k}.yaml").write_text(f"distill:\n  student_width: {2**k}\n")
    bucket = tmp_path / "bucket"
    upload_results(local, f"file://{bucket}/front")
    for k in range(3):
        got = (bucket / "front" / PARETO_DIR / f"{k}.yaml").read_text()
        assert got == f"distill:\n  student_width: {2**k}\n"


def test_the_retrained_front_says_which_points_stay_on_it():
    objectives = (("val_acc", "max"), ("student_params", "min"))
    points = [
        {"name": "a", "values": {"val_acc": 0.5, "student_params": 100}, "config": {}},
        {"name": "b", "values": {"val_acc": 0.6, "student_params": 200}, "config": {}},
        {"name": "c", "values": {"val_acc": 0.7, "student_params": 400}, "config": {}},
        {"name": "d", "values": {"val_acc": 0.8, "student_params": 800}, "config": {}},
    ]

    def entry(mean, seeds=(1, 2, 3)):
        runs = [{"seed": s} for s in seeds]
        return {"runs": runs, "val_mean": mean, "val_std": 0.01, "test_acc_mean": mean}

    # b was lucky: on fresh seeds the cheaper a beats it; d (every seed failed) is not valued
    confirm_front(points, {"a": entry(0.55), "b": entry(0.52), "c": entry(0.71)}, objectives)
    assert [p["fresh_seeds"]["on_front"] for p in points[:3]] == [True, False, True]
    assert points[0]["fresh_seeds"]["seeds"] == [1, 2, 3]
    assert points[2]["fresh_seeds"]["val_acc_mean"] == 0.71 and "fresh_seeds" not in points[3]
    rows = front_table(points, objectives).splitlines()
    assert "| val_acc on fresh seeds |" in rows[0]
    assert "0.5200 ± 0.0100 (3 seeds, off the front)" in rows[3]
    assert "0.5500 ± 0.0100 (3 seeds) |" in rows[2] and "| 0.8000 | 800 |  |" in rows[5]
