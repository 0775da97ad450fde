"""Search spaces: shipped files load, trials honour conditions and bounds, every bad file is named."""

import textwrap
import warnings

import optuna
import pytest
import yaml

from cmkd.config import DistillConfig
from cmkd.space import SPACES_DIR, SearchSpace, SpaceError, available_spaces, load_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

SHIPPED = ["bilevel", "default", "mmd", "paired", "pareto", "pool", "sinkhorn", "smoke"]
DEFAULTS = DistillConfig()


def run_trials(space: SearchSpace, sampler, n: int = 30) -> list[optuna.trial.FrozenTrial]:
    """Ask/tell loop as a sweep runs it; the objective is any deterministic function of params."""
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for _ in range(n):
        trial = study.ask()
        assert space.define_by_run(trial) == space.fixed
        study.tell(trial, float(trial.params.get("w_fa", 1.0)))
    return study.trials


def test_every_shipped_space_is_listed_and_loads():
    assert available_spaces() == SHIPPED
    for name in SHIPPED:
        space = load_space(name)
        assert space.path == str(SPACES_DIR / f"{name}.yaml")
        assert space.description and space.metric == "val_acc" and space.mode == "max"
        assert load_space(SPACES_DIR / f"{name}.yaml") == space


@pytest.mark.parametrize("name", SHIPPED)
def test_random_trials_honour_conditions_bounds_and_validate(name):
    space = load_space(name)
    raw = yaml.safe_load((SPACES_DIR / f"{name}.yaml").read_text())
    trials = run_trials(space, optuna.samplers.RandomSampler(seed=0))
    for t in trials:
        for pname, spec in raw["params"].items():
            when = spec.get("when", {})
            expected = all(
                t.params.get(k) in (v if isinstance(v, list) else [v]) for k, v in when.items()
            )
            assert (pname in t.params) == expected, (pname, t.params)
        for p in space.params:
            if p.name not in t.params:
                continue
            value = t.params[p.name]
            if p.kind == "choice":
                assert value in p.choices
            else:
                assert p.low <= value <= p.high
                assert isinstance(value, int) == (p.kind == "int")
        cfg = space.trial_config(t.params)
        assert DistillConfig.from_dict(cfg).model_dump() == cfg
        assert all(cfg[k] == v for k, v in {**space.fixed, **t.params}.items())
        for p in space.params:  # a parameter not suggested keeps DistillConfig's default
            if p.name not in t.params:
                assert cfg[p.name] == getattr(DEFAULTS, p.name)


def test_default_space_explores_both_alignment_branches():
    space = load_space("default")
    trials = run_trials(space, optuna.samplers.RandomSampler(seed=0))
    by_fa = {
        fa: [t.params for t in trials if t.params.get("fa") == fa] for fa in ("sinkhorn", "mmd")
    }
    assert by_fa["sinkhorn"] and by_fa["mmd"]
    no_distillation = [t.params for t in trials if t.params["algorithm"] == "ce"]
    assert no_distillation and all(p == {"algorithm": "ce"} for p in no_distillation)
    assert all("epsilon" in p and "mmd_multiplier" not in p for p in by_fa["sinkhorn"])
    assert all("mmd_multiplier" in p and "epsilon" not in p for p in by_fa["mmd"])
    assert space.fixed == {
        "epochs": 10,
        "batch_size": 32,
        "steps_per_epoch": 15,
        "lr": 3e-3,
        "readout": "best",
    }


def test_to_dict_round_trips_through_a_file(tmp_path):
    space = load_space("default")
    path = tmp_path / "copy.yaml"
    path.write_text(yaml.safe_dump(space.to_dict(), sort_keys=False))
    again = load_space(path)
    assert again.params == space.params and again.fixed == space.fixed
    assert again.names == space.names


def test_choice_values_and_conditions_take_the_field_type(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "params:\n  label_cost: {choice: [0, 4]}\n  w_fa: {uniform: [0, 1], when: {label_cost: 4}}\n"
    )
    space = load_space(path)
    assert space.params[0].choices == (0.0, 4.0) and isinstance(space.params[0].choices[1], float)
    assert space.params[1].active({"label_cost": 4.0})
    assert not space.params[1].active({"label_cost": 0.0})
    assert not space.params[1].active({})


def test_condition_on_a_bool_does_not_match_an_int(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "params:\n  class_conditional: {choice: [false, true]}\n"
        "  label_cost: {uniform: [0, 4], when: {class_conditional: true}}\n"
    )
    p = load_space(path).params[1]
    assert p.active({"class_conditional": True})
    assert not p.active({"class_conditional": 1})


GOOD_PARAMS = "params:\n  fa: {choice: [sinkhorn, mmd]}\n"

BAD = {
    "malformed yaml": ("params: {fa: [sinkhorn\n", "not valid YAML"),
    "top level a list": ("- fa\n- w_fa\n", "(top level): expected a mapping"),
    "empty file": ("", "(top level): expected a mapping with keys"),
    "unknown top-level key": (
        "param:\n  fa: {choice: [mmd]}\n",
        "unknown top-level key 'param' (did you mean 'params'?)",
    ),
    "params missing": ("fixed: {epochs: 2}\n", "params: empty search space"),
    "val_per_class not a count": (
        "val_per_class: 2.5\n" + GOOD_PARAMS,
        "val_per_class: expected a whole number >= 1 of validation rows per class, got 2.5",
    ),
    "val_per_class zero": (
        "val_per_class: 0\n" + GOOD_PARAMS,
        "val_per_class: expected a whole number >= 1 of validation rows per class, got 0",
    ),
    "params empty": ("params: {}\n", "params: empty search space"),
    "params a list": ("params: [fa, w_fa]\n", "params: expected a mapping of parameter name"),
    "param not a field": (
        "params:\n  epsilom: {loguniform: [0.01, 1.0]}\n",
        "params.epsilom: 'epsilom' is not a DistillConfig field (did you mean 'epsilon'?)",
    ),
    "param also fixed": (
        "fixed: {fa: mmd}\n" + GOOD_PARAMS,
        "params.fa: 'fa' is both fixed and searched",
    ),
    "spec not a mapping": (
        "params:\n  epsilon: [0.01, 1.0]\n",
        "params.epsilon: expected a mapping such as {choice: [a, b]}",
    ),
    "no distribution": (
        "params:\n  epsilon: {log: true}\n",
        "params.epsilon: expected exactly one distribution of ['uniform', 'loguniform', 'int', 'choice'], got none",
    ),
    "two distributions": (
        "params:\n  epsilon: {uniform: [0.1, 1.0], loguniform: [0.1, 1.0]}\n",
        "params.epsilon: expected exactly one distribution",
    ),
    "unknown spec key": (
        "params:\n  epsilon: {loguniform: [0.1, 1.0], whn: {fa: mmd}}\n",
        "params.epsilon: unknown key 'whn' (did you mean 'when'?)",
    ),
    "bound not a number": (
        "params:\n  epsilon: {uniform: [small, 1.0]}\n",
        "params.epsilon.uniform: low must be a number, got 'small'",
    ),
    "1e-3 read as text": (
        "params:\n  inner_lr: {loguniform: [1e-5, 1.0e-3]}\n",
        "params.inner_lr.loguniform: low must be a number, got '1e-5' (YAML reads 1e-3 as text; write 1.0e-3)",
    ),
    "bounds not a pair": (
        "params:\n  epsilon: {uniform: [0.1, 0.5, 1.0]}\n",
        "params.epsilon.uniform: expected [low, high], got [0.1, 0.5, 1.0]",
    ),
    "infinite bound": (
        "params:\n  reach: {uniform: [0.1, .inf]}\n",
        "params.reach.uniform: high must be finite, got inf",
    ),
    "choice empty": (
        "params:\n  fa: {choice: []}\n",
        "params.fa.choice: expected a non-empty list",
    ),
    "choice not a list": (
        "params:\n  fa: {choice: sinkhorn}\n",
        "params.fa.choice: expected a non-empty list of values, got 'sinkhorn'",
    ),
    "choice repeated": (
        "params:\n  label_cost: {choice: [0, 0.0]}\n",
        "params.label_cost.choice[1]: 0.0 is listed twice",
    ),
    "int bound not an integer": (
        "params:\n  n1: {int: [1.5, 3]}\n",
        "params.n1.int: int bounds must be integers, low is 1.5",
    ),
    "low not below high": (
        "params:\n  epsilon: {uniform: [0.5, 0.5]}\n",
        "params.epsilon.uniform: low must be < high, got low=0.5, high=0.5",
    ),
    "log range from a negative": (
        "params:\n  epsilon: {loguniform: [-1, 1.0]}\n",
        "params.epsilon.loguniform: low must be > 0 for a log range, got -1",
    ),
    "int log range from zero": (
        "params:\n  n1: {int: [0, 3], log: true}\n",
        "params.n1.int: low must be > 0 for a log range, got 0",
    ),
    "log on a float range": (
        "params:\n  epsilon: {uniform: [0.1, 1.0], log: true}\n",
        "params.epsilon.log: log applies to int only; use loguniform",
    ),
    "bound outside the field": (
        "params:\n  scaling: {uniform: [0.5, 0.95]}\n",
        "params.scaling.uniform: low 0.5 is not a valid scaling: Input should be greater than or equal to 0.8",
    ),
    "open bound of the field": (
        "params:\n  scaling: {uniform: [0.8, 1.0]}\n",
        "params.scaling.uniform: high 1.0 is not a valid scaling: Input should be less than 1",
    ),
    "choice outside the field": (
        "params:\n  fa: {choice: [sinkhorn, wasserstein]}\n",
        "params.fa.choice[1]: 'wasserstein' is not a valid fa: Input should be 'sinkhorn', 'mmd' or 'reference_ot'",
    ),
    "float range on an int field": (
        "params:\n  n1: {uniform: [1, 3]}\n",
        "params.n1.uniform: 'n1' is not a float field; use int: [low, high]",
    ),
    "range on a categorical field": (
        "params:\n  class_conditional: {int: [0, 1]}\n",
        "params.class_conditional.int: 'class_conditional' is not a numeric field; use choice",
    ),
    "fixed unknown key": (
        "fixed: {epoch: 3}\n" + GOOD_PARAMS,
        "unknown key 'fixed.epoch' (did you mean 'epochs'?)",
    ),
    "fixed out of range": (
        "fixed: {epochs: 0}\n" + GOOD_PARAMS,
        "key 'fixed.epochs': Input should be greater than or equal to 1 (got 0)",
    ),
    "fixed not a mapping": ("fixed: [epochs]\n" + GOOD_PARAMS, "fixed: expected a mapping"),
    "when unknown param": (
        GOOD_PARAMS + "  epsilon: {loguniform: [0.01, 1.0], when: {fas: sinkhorn}}\n",
        "params.epsilon.when.fas: 'fas' is not a searched parameter (did you mean 'fa'?)",
    ),
    "when later param": (
        "params:\n  epsilon: {loguniform: [0.01, 1.0], when: {fa: sinkhorn}}\n"
        "  fa: {choice: [sinkhorn, mmd]}\n",
        "params.epsilon.when.fa: 'fa' is searched after 'epsilon'; move it earlier",
    ),
    "when impossible value": (
        GOOD_PARAMS
        + "  epsilon: {loguniform: [0.01, 1.0], when: {fa: [sinkhorn, reference_ot]}}\n",
        "params.epsilon.when.fa: 'fa' can never be 'reference_ot'; it takes one of ['sinkhorn', 'mmd']",
    ),
    "when outside an int range": (
        "params:\n  n1: {int: [1, 3]}\n  n2: {int: [1, 3], when: {n1: 5}}\n",
        "params.n2.when.n1: 'n1' can never be 5; it takes an integer in [1, 3]",
    ),
    "when on a fixed key": (
        "fixed: {fa: mmd}\nparams:\n  mmd_kernels: {int: [1, 7], when: {fa: mmd}}\n",
        "params.mmd_kernels.when.fa: 'fa' is fixed to 'mmd', not searched",
    ),
    "when on a continuous param": (
        "params:\n  w_fa: {uniform: [0, 1]}\n  w_la: {uniform: [0, 1], when: {w_fa: 0.5}}\n",
        "params.w_la.when.w_fa: 'w_fa' is continuous (uniform); a condition can only test a choice or int",
    ),
    "grid search": (
        "params:\n  fa: {grid_search: [sinkhorn, mmd]}\n",
        "params.fa.grid_search: grid searches are not supported: Optuna samples",
    ),
    "unknown metric": (
        "metric: val_accuracy\n" + GOOD_PARAMS,
        "metric: unknown metric 'val_accuracy' (did you mean 'val_acc'?)",
    ),
    "mode against the metric": (
        "metric: val_ce\nmode: max\n" + GOOD_PARAMS,
        "mode: val_ce is to be minimised; mode must be min",
    ),
}


@pytest.mark.parametrize("text,expected", list(BAD.values()), ids=list(BAD))
def test_bad_space_is_named_with_file_and_key(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError) as e:
        load_space(path)
    assert str(e.value).startswith(f"{path}: ")
    assert expected in str(e.value)


def test_missing_file_and_unknown_name_list_the_shipped_spaces(tmp_path):
    with pytest.raises(SpaceError, match="search space file not found") as e:
        load_space(tmp_path / "nope.yaml")
    assert str(e.value).startswith(str(tmp_path / "nope.yaml"))
    with pytest.raises(SpaceError) as e:
        load_space("defualt")
    assert "no search space named 'defualt' (did you mean 'default'?)" in str(e.value)
    assert "available: " + ", ".join(SHIPPED) in str(e.value)


def test_mode_follows_the_metric(tmp_path):
    path = tmp_path / "ce.yaml"
    path.write_text(textwrap.dedent("metric: val_ce\n") + GOOD_PARAMS)
    space = load_space(path)
    assert (space.metric, space.mode) == ("val_ce", "min")


@pytest.mark.parametrize("group", [False, True])
def test_multivariate_tpe_with_constant_liar_handles_the_conditional_space(group):
    space = load_space("default")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(
            multivariate=True, constant_liar=True, group=group, seed=0, n_startup_trials=4
        )
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for _ in range(6):  # two trials in flight at a time, as with parallel Ray workers
        pending = [study.ask(), study.ask()]
        for trial in pending:
            space.define_by_run(trial)
            space.trial_config(trial.params)
        for trial in pending:
            study.tell(trial, trial.params.get("w_fa", 0) - trial.params.get("w_la", 0))
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 12
    sampled = [t.params for t in study.trials[4:]]  # past the random start-up trials
    assert {p.get("fa") for p in sampled} <= {"sinkhorn", "mmd", None}
    assert all(("epsilon" in p) == (p.get("fa") == "sinkhorn") for p in sampled)
    assert all(("fa" in p) == p["algorithm"].startswith("ucmkd") for p in sampled)


def test_ray_optuna_search_merges_fixed_constants_into_the_suggestion():
    from ray.tune.search.optuna import OptunaSearch

    space = load_space("smoke")
    searcher = OptunaSearch(
        space=space.define_by_run,
        metric=space.metric,
        mode=space.mode,
        sampler=optuna.samplers.TPESampler(seed=0),
    )
    config = searcher.suggest("t1")
    assert {k: config[k] for k in space.fixed} == space.fixed
    assert {"w_fa", "mmd_multiplier", "label_cost", "la"} <= set(config)
    assert set(config) - set(space.fixed) <= set(space.names)
    assert space.trial_config(config)["epochs"] == 2
    searcher.on_trial_complete("t1", {space.metric: 0.5})
    (done,) = searcher._ot_study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert done.value == 0.5 and done.params == {k: config[k] for k in done.params}
    assert set(searcher.suggest("t2")) >= set(space.fixed)
