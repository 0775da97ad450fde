"""The sweep's searcher, driven as Tune drives it (suggest, results, completion), without a
cluster: warm start, one objective, pruned trials, no repeated runs, and TPE that concentrates."""

import math

import numpy as np
import pytest
from optuna.trial import TrialState

from cmkd.leaderboard import references
from cmkd.searcher import make_searcher, startup_trials
from cmkd.space import load_space


@pytest.fixture()
def weights_space(tmp_path):
    path = tmp_path / "weights.yaml"
    path.write_text(
        "fixed: {algorithm: ucmkd_sum, fa: mmd, epochs: 2}\n"
        "params:\n"
        "  w_fa: {loguniform: [1.0e-3, 10]}\n"
        "  w_la: {loguniform: [1.0e-3, 10]}\n"
    )
    return load_space(path)


OPTIMUM = np.array([0.5, -1.0])  # log10 of (w_fa, w_la)


def distance(config: dict) -> float:
    return float(np.linalg.norm(np.log10([config["w_fa"], config["w_la"]]) - OPTIMUM))


def drive(searcher, budget: int, at_once: int, objective) -> list[dict]:
    """Run ``budget`` trials ``at_once`` at a time as Tune would: the oldest running trial
    completes, then the next is suggested. Returns the searched configs in suggestion order."""
    running, proposed, n = [], [], 0
    while n < budget or running:
        while n < budget and len(running) < at_once:
            config = searcher.suggest(f"t{n}")
            running.append((f"t{n}", config))
            if config["role"] == "search":
                proposed.append(config)
            n += 1
        trial_id, config = running.pop(0)
        value = objective(config)
        searcher.on_trial_result(trial_id, {"best_val_acc": value, "epoch": 1})
        searcher.on_trial_complete(trial_id, {"best_val_acc": value, "epoch": 2})
    return proposed


def test_startup_is_sized_for_the_budget():
    assert [startup_trials(b) for b in (1, 8, 12, 30, 100, 1000)] == [2, 3, 3, 5, 10, 10]


def test_tpe_proposals_concentrate_on_the_optimum(weights_space):
    """Budget 12, 2 at once: over 10 search seeds, the last 4 proposals lie closer to the
    optimum than the first 4 (random search would show no such trend)."""
    first, last = [], []
    for seed in range(10):
        searcher = make_searcher(weights_space, seed=seed, budget=12, references=[])
        proposed = drive(searcher, 12, 2, lambda c: -distance(c))
        assert len(proposed) == 12
        first.append(np.mean([distance(c) for c in proposed[:4]]))
        last.append(np.mean([distance(c) for c in proposed[-4:]]))
    first, last = np.array(first), np.array(last)
    assert (last < first).sum() >= 8, (first, last)
    assert last.mean() < 0.6 * first.mean(), (first.mean(), last.mean())


def test_references_run_first_and_warm_start_the_study_when_the_space_holds_them():
    space = load_space("default")
    refs = references(space)
    searcher = make_searcher(space, seed=0, budget=8, references=refs)
    configs = [searcher.suggest(f"t{i}") for i in range(3)]
    assert [c["role"] for c in configs] == ["reference-ce", "reference-ucmkd", "search"]
    assert configs[2]["algorithm"] == "kd_unpaired" and configs[2]["kd_alpha"] == 0.9  # start
    searcher.on_trial_complete("t0", {"best_val_acc": 0.42, "epoch": 10})
    searcher.on_trial_complete("t1", {"best_val_acc": 0.40, "epoch": 10})  # not in the space
    done = [t for t in searcher.study.trials if t.state == TrialState.COMPLETE]
    assert [(t.params, t.value, t.user_attrs["role"]) for t in done] == [
        ({"algorithm": "ce"}, 0.42, "reference-ce")
    ]


def test_asha_stopped_trial_is_pruned_failed_is_fail_finished_is_its_best(weights_space):
    searcher = make_searcher(weights_space, seed=0, budget=8, references=[])
    for i in range(3):
        searcher.suggest(f"t{i}")
    searcher.on_trial_result("t0", {"best_val_acc": 0.3, "val_acc": 0.3, "epoch": 1})
    searcher.on_trial_complete("t0", {"best_val_acc": 0.3, "val_acc": 0.3, "epoch": 1})
    searcher.on_trial_result("t1", {"best_val_acc": 0.7, "epoch": 1})
    searcher.on_trial_complete("t1", error=True)
    searcher.on_trial_result("t2", {"best_val_acc": 0.5, "val_acc": 0.5, "epoch": 1})
    # the last epoch is worse; the objective is the best so far, not the last value
    searcher.on_trial_complete("t2", {"best_val_acc": 0.5, "val_acc": 0.2, "epoch": 2})
    states = [(t.state, t.value) for t in searcher.study.trials]
    assert states == [
        (TrialState.PRUNED, 0.3),
        (TrialState.FAIL, None),
        (TrialState.COMPLETE, 0.5),
    ]


def test_a_run_already_trained_is_never_proposed_again(tmp_path):
    """A space of 6 distinct runs, the ce reference among them: 5 searched trials are the 5
    other runs, each once."""
    path = tmp_path / "small.yaml"
    path.write_text(
        "fixed: {epochs: 2}\n"
        "params:\n"
        "  algorithm: {choice: [ce, kd_unpaired, ucmkd_sum]}\n"
        "  kd_alpha: {choice: [0.5, 0.9], when: {algorithm: kd_unpaired}}\n"
        "  label_cost: {choice: [0.0, 4.0, 8.0], when: {algorithm: ucmkd_sum}}\n"
    )
    space = load_space(path)
    searcher = make_searcher(space, seed=3, budget=5, references=references(space)[:1])
    proposed = drive(searcher, 6, 2, lambda c: 0.5 if c["algorithm"] == "ce" else 0.4)
    runs = {tuple(sorted((k, v) for k, v in c.items() if k != "role")) for c in proposed}
    assert len(proposed) == 5 and len(runs) == 5
    assert all(c["algorithm"] != "ce" for c in proposed)


def test_searcher_survives_save_and_restore(tmp_path, weights_space):
    searcher = make_searcher(weights_space, seed=0, budget=8, references=[])
    first = searcher.suggest("t0")
    searcher.on_trial_complete("t0", {"best_val_acc": 0.5, "epoch": 2})
    searcher.save(str(tmp_path / "s.pkl"))
    again = make_searcher(weights_space, seed=1, budget=8, references=[])
    again.restore(str(tmp_path / "s.pkl"))
    assert [t.params for t in again.study.trials] == [{k: first[k] for k in ("w_fa", "w_la")}]
    nxt = again.suggest("t1")
    assert math.isfinite(nxt["w_fa"]) and nxt != first
