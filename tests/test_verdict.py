"""The verdict: a gain is claimed only on paired seeds, above noise; otherwise no distillation."""

from cmkd.verdict import decide, paired, passes, sentence


def runs(vals, tests=None):
    tests = tests or vals
    return [
        {"seed": s, "val": v, "test_acc": t}
        for s, (v, t) in enumerate(zip(vals, tests, strict=True))
    ]


def entry(vals, tests=None, config=None):
    import statistics

    tests = tests or vals
    return {
        "config": config or {},
        "runs": runs(vals, tests),
        "val_mean": statistics.fmean(vals),
        "test_acc_mean": statistics.fmean(tests),
        "test_acc_std": statistics.stdev(tests),
    }


def test_paired_difference_removes_what_the_seeds_share():
    # seed-to-seed spread of 10 points, but the candidate is 2 points above on every seed
    a, b = runs([0.52, 0.62, 0.42]), runs([0.50, 0.60, 0.40])
    d = paired(a, b, "val")
    assert d["n"] == 3 and abs(d["mean"] - 0.02) < 1e-12 and d["std"] < 1e-9
    assert passes(d)


def test_a_consistent_gain_is_recommended_with_its_numbers():
    final = {
        "reference-ce": entry([0.50, 0.60, 0.40], [0.5, 0.5, 0.5]),
        "search-a": entry([0.55, 0.64, 0.46], [0.55, 0.56, 0.54]),
        "search-b": entry([0.70, 0.40, 0.45], [0.6, 0.6, 0.6]),  # higher once, noisy
    }
    v = decide(final)
    assert v["status"] == "helped" and v["recommendation"] == "search-a"
    assert not v["candidates"]["search-b"]["passes"]
    text = sentence(v, final, "val_acc")
    assert text.startswith("Distillation helped: search-a") and "+5.0" in text


def test_noise_is_no_gain_and_no_distillation_is_recommended():
    final = {
        "reference-ce": entry([0.50, 0.60, 0.40]),
        "search-a": entry([0.56, 0.58, 0.42]),  # +2 on average, but -2 on one seed
    }
    v = decide(final)
    assert v["status"] == "did_not_help" and v["recommendation"] == "reference-ce"
    text = sentence(v, final, "val_acc")
    assert text.startswith("Distillation did not help here") and "no-distillation" in text


def test_two_seeds_decide_nothing_and_a_loss_never_passes():
    final = {"reference-ce": entry([0.5, 0.6]), "search-a": entry([0.6, 0.7])}
    assert decide(final)["status"] == "undecided"
    assert not passes(paired(runs([0.4, 0.5, 0.3]), runs([0.5, 0.6, 0.4]), "val"))


def test_a_minimised_metric_counts_a_decrease_as_a_gain():
    final = {"reference-ce": entry([1.0, 1.2, 0.9]), "search-a": entry([0.8, 1.0, 0.7])}
    assert decide(final, mode="min")["recommendation"] == "search-a"
    assert decide(final, mode="max")["recommendation"] == "reference-ce"


def test_a_gain_carried_by_a_few_validation_rows_is_not_called_a_gain():
    """The same +6 points on every seed (no training noise), but made of 6 rows out of 100 that
    one model gets right and the other not, and 0 elsewhere: the validation sample's own noise
    (about 2.4 points) makes it 2.5 standard errors; from 3 rows of 50 it is not enough."""
    base_rows = [0.0] * 100
    a_rows = [1.0] * 6 + [0.0] * 94
    final = {
        "reference-ce": {
            "runs": [{"seed": s, "val": 0.5, "val_rows": base_rows} for s in range(3)],
            "val_mean": 0.5,
        },
        "search-a": {
            "runs": [{"seed": s, "val": 0.56, "val_rows": a_rows} for s in range(3)],
            "val_mean": 0.56,
        },
    }
    d = decide(final)["candidates"]["search-a"]["val"]
    assert d["se_seeds"] < 1e-9 and abs(d["se_rows"] - 0.0239) < 1e-3 and d["rows"] == 100
    assert decide(final)["status"] == "helped"
    few = [1.0] * 3 + [0.0] * 47
    for e, rows, v in ((final["search-a"], few, 0.56), (final["reference-ce"], [0.0] * 50, 0.5)):
        for r in e["runs"]:
            r["val_rows"], r["val"] = rows, v
    assert decide(final)["status"] == "did_not_help"
    # ... and the sentence says what 50 validation rows can resolve, and that more rows help
    text = sentence(decide(final), final, "val_acc")
    assert "With 50 validation rows a gain must exceed about" in text
    assert "(this one: +6.0)" in text and "--val-per-class" in text


def test_no_resolution_note_without_rows_or_without_a_gain():
    final = {"reference-ce": entry([0.50, 0.60, 0.40]), "search-a": entry([0.48, 0.58, 0.38])}
    text = sentence(decide(final), final, "val_acc")
    assert (
        text.startswith("Distillation did not help here") and "validation rows a gain" not in text
    )
