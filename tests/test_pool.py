"""The unlabelled pool in a run: its file's bad inputs, the teacher-free control, the teacher
controls, the pool steps' gradients, resuming, and the attribution of a gain."""

import math

import numpy as np
import pytest
import torch

from cmkd import methods, train
from cmkd.bank import TeacherBank, control_bank
from cmkd.config import ConfigError, DataConfig, DistillConfig
from cmkd.data import DataError, pool_path, write_pool
from cmkd.data.synth import build_synth
from cmkd.models import freeze, linear_head
from cmkd.verdict import attribute, attribution_sentence

POOL_CFG = dict(epochs=2, steps_per_epoch=4, batch_size=16, pool_batch=32, augment="weak")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    build_synth(out, "synth", seed=0, train_per_class=30, val_per_class=10, test_per_class=10)
    return out


def data_cfg(bench, **kw):
    return DataConfig(benchmark=str(bench), labels_per_class=3, val_per_class=5, **kw)


@pytest.fixture(scope="module")
def data(bench):
    return train.load_run_data(data_cfg(bench), log=lambda *_: None)


def copy_bench(bench, tmp_path):
    import shutil

    out = tmp_path / "b"
    shutil.copytree(bench, out)
    return out


# ----------------------------------------------------------------------------- the pool's file


def test_pool_is_loaded_and_capped(bench, data):
    assert data.x_pool is not None and data.x_pool.shape[1:] == data.x_train.shape[1:]
    capped = train.load_run_data(data_cfg(bench, unlabelled=7), log=lambda *_: None)
    assert len(capped.x_pool) == 7
    none = train.load_run_data(data_cfg(bench, unlabelled=0), log=lambda *_: None)
    assert none.x_pool is None


def test_missing_pool_file_is_named_when_a_size_is_asked_for(bench, tmp_path):
    b = copy_bench(bench, tmp_path)
    pool_path(b, "b").unlink()
    with pytest.raises(DataError, match="b_unlabelled.parquet.*missing file"):
        train.load_run_data(data_cfg(b, unlabelled=10), log=lambda *_: None)
    # 'all' with no file: no pool, and a pool algorithm says what to change before training
    d = train.load_run_data(data_cfg(b), log=lambda *_: None)
    assert d.x_pool is None
    with pytest.raises(ConfigError, match="b_unlabelled.parquet"):
        train.fit(DistillConfig(algorithm="ssl", **POOL_CFG), d, log=lambda *_: None)


@pytest.mark.parametrize(
    "rows, match",
    [
        (np.zeros((5, 3), np.float32), r"column 'x': expected fixed_size_list<float32>\[64\]"),
        (np.full((5, 64), np.nan, np.float32), "column 'x': expected finite values"),
    ],
    ids=["wrong-shape", "nan"],
)
def test_bad_pool_rows_are_named_by_file(bench, tmp_path, rows, match):
    b = copy_bench(bench, tmp_path)
    write_pool(pool_path(b, "b"), rows, [f"u{i}" for i in range(len(rows))])
    with pytest.raises(DataError, match=f"b_unlabelled.parquet: {match}"):
        train.load_run_data(data_cfg(b), log=lambda *_: None)


def test_a_pool_with_real_labels_is_refused(bench, tmp_path):
    from cmkd.data import write_split

    b = copy_bench(bench, tmp_path)
    write_split(pool_path(b, "b"), np.zeros((4, 64)), np.array([0, 1, -1, 2]), list("abcd"))
    with pytest.raises(
        DataError, match=r"label column must be absent or hold only -1.*\[0, 1, 2\]"
    ):
        train.load_run_data(data_cfg(b), log=lambda *_: None)


def test_duplicate_pool_ids_are_named(bench, tmp_path):
    b = copy_bench(bench, tmp_path)
    write_pool(pool_path(b, "b"), np.zeros((3, 64)), ["u", "u", "v"])
    with pytest.raises(DataError, match="b_unlabelled.parquet: column 'id': expected unique"):
        train.load_run_data(data_cfg(b), log=lambda *_: None)


# ----------------------------------------------------------------------------- the steps


def _step_batch(seed=0, n=8, u=10, d=6, c=3, in_dim=5, prior=None):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % c
    return methods.Batch(
        torch.randn(n, in_dim, generator=g),
        y,
        torch.randn(n, d, generator=g),
        y.clone(),
        torch.randn(n, c, generator=g),
        methods.PoolBatch(
            torch.randn(u, in_dim, generator=g),
            torch.randn(u, in_dim, generator=g),
            torch.randn(u, d, generator=g),
            torch.arange(u) % c,
            torch.full((u,), 1 / u),
            torch.full((c,), 1 / c) if prior is None else prior,
        ),
    )


def _after_step(algorithm, batch, h_t=None, **hyper):
    from cmkd.models import build_student

    torch.manual_seed(0)
    student = build_student("mlp", (5,), 3, feature_dim=6, hidden=8)
    h_t = h_t or freeze(linear_head(6, 3))
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    step = methods.make_step(
        algorithm,
        **{
            "fa": methods.make_fa("mmd"),
            "la": methods.make_la("teacher_ce"),
            "grad_clip": None,
            "w_pl": 1.0,
            "pl_threshold": 0.0,
            **hyper,
        },
    )
    step(student, h_t, opt, batch)
    return torch.cat([p.detach().flatten() for p in student.parameters()])


def test_ssl_reads_nothing_of_the_teacher_but_the_prior():
    a, b = _step_batch(seed=0), _step_batch(seed=0)
    other = methods.Batch(  # other teacher rows, logits, bank sample and head
        b.x_s,
        b.y_s,
        torch.randn_like(b.z_t),
        b.y_t,
        torch.randn_like(b.logits_t),
        methods.PoolBatch(
            b.pool.x_weak,
            b.pool.x_strong,
            torch.randn_like(b.pool.z_b),
            b.pool.y_b.roll(1),
            b.pool.b,
            b.pool.prior,
        ),
    )
    h_other = freeze(linear_head(6, 3))
    torch.nn.init.normal_(h_other.weight)
    assert torch.equal(_after_step("ssl", a), _after_step("ssl", other, h_t=h_other))
    skewed = _step_batch(seed=0, prior=torch.tensor([0.8, 0.1, 0.1]))
    assert not torch.equal(_after_step("ssl", a), _after_step("ssl", skewed))


def test_ucmkd_pool_reads_the_bank_sample_and_ramps_up():
    a = _step_batch(seed=0)
    moved = methods.Batch(
        *[getattr(a, f) for f in ("x_s", "y_s", "z_t", "y_t", "logits_t")],
        methods.PoolBatch(
            a.pool.x_weak, a.pool.x_strong, a.pool.z_b + 1.0, a.pool.y_b, a.pool.b, a.pool.prior
        ),
    )
    hyper = dict(w_fa=0.0, w_la=0.0, w_pl=0.0, w_prior=0.0, w_uot=1.0)
    assert not torch.equal(
        _after_step("ucmkd_pool", a, **hyper), _after_step("ucmkd_pool", moved, **hyper)
    )

    # at ramp 0 the pool terms weigh nothing: the bank sample no longer matters
    def ramp0(batch):
        return methods.Batch(
            *[getattr(batch, f) for f in ("x_s", "y_s", "z_t", "y_t", "logits_t")],
            methods.PoolBatch(
                *[
                    getattr(batch.pool, f)
                    for f in ("x_weak", "x_strong", "z_b", "y_b", "b", "prior")
                ],
                ramp=0.0,
            ),
        )

    assert torch.equal(
        _after_step("ucmkd_pool", ramp0(a), **hyper),
        _after_step("ucmkd_pool", ramp0(moved), **hyper),
    )


# ----------------------------------------------------------------------------- controls


def _bank(seed=0, n=60, d=12, c=4):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(c), n // c)
    centres = rng.standard_normal((c, d)) * 3
    z = (centres[y] + rng.standard_normal((n, d))).astype(np.float32)
    head = linear_head(d, c)
    with torch.no_grad():
        head.weight.copy_(torch.tensor(centres, dtype=torch.float32))
        head.bias.zero_()
    logits = (z @ centres.T).astype(np.float32)
    return TeacherBank(z, logits, y, freeze(head), {})


def test_permuted_teacher_moves_every_class_and_stays_self_consistent():
    bank = _bank()
    perm = control_bank(bank, "permuted", 4)
    assert (perm.y != bank.y).all()  # no class keeps its name
    assert np.bincount(perm.y).tolist() == np.bincount(bank.y).tolist()
    with torch.no_grad():
        pred = perm.head(torch.tensor(bank.z)).argmax(-1).numpy()
    real = bank.logits.argmax(-1)
    assert (pred == perm.y).mean() == pytest.approx((real == bank.y).mean())
    assert (perm.logits.argmax(-1) == perm.y).mean() == pytest.approx((real == bank.y).mean())


def test_neutral_teacher_keeps_the_labels_and_nothing_of_the_features():
    bank = _bank()
    neutral = control_bank(bank, "neutral", 4)
    assert np.array_equal(neutral.y, bank.y)
    assert np.allclose(np.linalg.norm(neutral.z, axis=1), 1.0, atol=1e-5)
    with torch.no_grad():
        assert (neutral.head(torch.tensor(neutral.z)).argmax(-1).numpy() == bank.y).all()
    # evenly spaced: the class means are (nearly) equidistant
    means = np.stack([neutral.z[bank.y == c].mean(0) for c in range(4)])
    dist = np.linalg.norm(means[:, None] - means[None], axis=-1)[np.triu_indices(4, 1)]
    assert dist.max() / dist.min() < 1.1
    # and unrelated to the real features (correlation of pairwise distances near 0)
    real = np.linalg.norm(bank.z[:, None] - bank.z[None], axis=-1)
    assert (
        np.corrcoef(
            real.ravel(), np.linalg.norm(neutral.z[:, None] - neutral.z[None], axis=-1).ravel()
        )[0, 1]
        < 0.9
    )
    with pytest.raises(ValueError, match="teacher control 'nope'"):
        control_bank(bank, "nope", 4)


# ----------------------------------------------------------------------------- in a run


@pytest.mark.parametrize("algorithm", ["ssl", "ucmkd_pool"])
def test_a_pool_run_resumed_from_its_state_matches_an_uninterrupted_one(data, algorithm):
    cfg = DistillConfig(algorithm=algorithm, **{**POOL_CFG, "epochs": 4})
    whole = train.Run(cfg, data)
    for _ in range(4):
        whole.run_epoch()
    first = train.Run(cfg, data)
    for _ in range(2):
        first.run_epoch()
    state = first.state_dict()
    resumed = train.Run(cfg, data)
    resumed.load_state_dict(state)
    for _ in range(2):
        resumed.run_epoch()
    keys = ("train_loss", "val_acc", "val_bacc")
    assert [[h[k] for k in keys] for h in resumed.history] == [
        [h[k] for k in keys] for h in whole.history
    ]
    assert "train_pl" in whole.history[-1] and "test_bacc" in whole.best


def test_augmentation_changes_ce_training_and_none_does_not(data):
    runs = {
        a: train.fit(
            DistillConfig(algorithm="ce", **{**POOL_CFG, "augment": a}), data, log=lambda *_: None
        )["history"]
        for a in ("none", "strong")
    }
    plain = train.fit(
        DistillConfig(algorithm="ce", **{**POOL_CFG, "augment": "none"}), data, log=lambda *_: None
    )["history"]
    assert [h["train_loss"] for h in runs["none"]] == [h["train_loss"] for h in plain]
    assert [h["train_loss"] for h in runs["none"]] != [h["train_loss"] for h in runs["strong"]]


# ----------------------------------------------------------------------------- attribution


def _runs(vals, bvals=None):
    return {
        "runs": [
            {
                "seed": s,
                "val": v,
                "test_acc": v,
                "test_bacc": (bvals or vals)[i],
                "val_rows": [v] * 4,
            }
            for i, (s, v) in enumerate(zip((1, 2, 3), vals, strict=True))
        ]
    }


def test_attribution_splits_the_teachers_part_into_prior_and_features():
    final = {
        "reference-ce": _runs([0.50, 0.52, 0.51]),
        "reference-ssl_only": _runs([0.70, 0.71, 0.72]),
        "reference-ssl_prior": _runs([0.75, 0.76, 0.77]),
        "search-x": _runs([0.75, 0.765, 0.77]),
        "control-permuted": _runs([0.40, 0.42, 0.41]),
    }
    att = attribute(final, "search-x")
    parts = att["parts"]
    assert parts["pool"]["val"]["mean"] == pytest.approx(0.20)
    assert parts["prior"]["val"]["mean"] == pytest.approx(0.05)
    assert parts["features"]["val"]["mean"] == pytest.approx(0.005 / 3)
    assert parts["teacher"]["val"]["mean"] == pytest.approx(0.05 + 0.005 / 3)
    assert parts["pool"]["says"] == "helped" and parts["prior"]["says"] == "helped"
    assert parts["features"]["says"] == "within noise"
    assert parts["control-permuted"]["says"] == "harmed"
    assert "control-neutral" not in parts  # not run: not reported
    text = attribution_sentence(att, "val_acc")
    assert "the teacher's class proportions: +5.0" in text and "search-x" in text
    assert math.isfinite(parts["features"]["test_bacc"]["mean"])
    no_teacher = attribute(final, None)["parts"]
    assert "features" not in no_teacher and "teacher" not in no_teacher and "prior" in no_teacher


def test_ucmkd_pool_with_every_teacher_term_off_is_ssl():
    """The search can switch the teacher off inside ucmkd_pool: with FA, LA and the OT at 0 and
    the student's own pseudo-labels, a step is exactly ssl's."""
    a = _step_batch(seed=3)
    off = dict(w_fa=0.0, w_la=0.0, w_uot=0.0, pl_source="student", w_prior=0.5)
    assert torch.equal(_after_step("ssl", a, w_prior=0.5), _after_step("ucmkd_pool", a, **off))
    on = {**off, "pl_source": "teacher_head"}
    assert not torch.equal(_after_step("ssl", a, w_prior=0.5), _after_step("ucmkd_pool", a, **on))


def test_reference_families_stand_for_their_best_member():
    from cmkd.leaderboard import family_best

    def row(role, val, full=True, **cfg):
        return {"role": role, "config": cfg, "error": None, "best_val_acc": val, "full": full}

    rows = [
        row("reference-ssl_only", 0.60, algorithm="ssl", prior="uniform"),
        row("reference-ssl_prior", 0.62, algorithm="ssl", prior="bank"),
        row("search", 0.70, algorithm="ssl", prior="uniform", w_pl=2.0),
        row("search", 0.90, full=False, algorithm="ssl", prior="bank"),  # cut short by ASHA
        row("search", 0.95, algorithm="ucmkd_pool"),
        row("reference-ce", 0.50, algorithm="ce"),
    ]
    best = lambda role, **kw: family_best(rows, role, "val_acc", "max", **kw)  # noqa: E731
    assert best("reference-ssl_only")["config"].get("w_pl") == 2.0
    assert best("reference-ssl_prior")["best_val_acc"] == 0.62  # full schedules first
    assert best("reference-ce")["best_val_acc"] == 0.50
    # a balanced bank: the two priors are one, and so are the two families
    assert best("reference-ssl_prior", ignore=("prior",))["config"].get("w_pl") == 2.0
