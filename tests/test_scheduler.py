"""ASHA stops poor searched trials but never a reference trial."""

from types import SimpleNamespace

from ray.tune.schedulers import TrialScheduler

from cmkd.sweep import SearchOnlyASHA


def trial(i, role):
    return SimpleNamespace(trial_id=f"t{i}", config={"role": role})


def test_references_run_on_while_poor_searched_trials_stop():
    asha = SearchOnlyASHA(
        time_attr="epoch", metric="val_acc", mode="max", max_t=8, grace_period=1, reduction_factor=2
    )
    good = [trial(i, "search") for i in range(4)]
    poor_search, poor_ref = trial(10, "search"), trial(11, "reference-ce")
    for t in [*good, poor_search, poor_ref]:
        asha.on_trial_add(None, t)
    for t in good:
        asha.on_trial_result(None, t, {"epoch": 1, "val_acc": 0.9})
    assert (
        asha.on_trial_result(None, poor_search, {"epoch": 1, "val_acc": 0.1}) == TrialScheduler.STOP
    )
    for epoch in range(1, 8):  # the reference trial is never cut short...
        result = {"epoch": epoch, "val_acc": 0.1}
        assert asha.on_trial_result(None, poor_ref, result) == TrialScheduler.CONTINUE
    # ...and ends at max_t as every trial does
    assert asha.on_trial_result(None, poor_ref, {"epoch": 8, "val_acc": 0.1}) == TrialScheduler.STOP
    asha.on_trial_complete(None, poor_ref, {"epoch": 8, "val_acc": 0.1})
    assert poor_ref.trial_id not in asha._trial_info
