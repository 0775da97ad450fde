"""The synth generator: sizes, determinism, and what the two regimes share."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cmkd.data import POOL, SPLITS, has_pool, load_pool, load_split, pool_path, validate_benchmark
from cmkd.data.synth import MODALITIES, REGIMES, SynthParams, build_synth, sample_synth

SMALL = SynthParams(train_per_class=30, val_per_class=5, test_per_class=20)


def test_sizes_dtypes_and_balance() -> None:
    data = sample_synth(SMALL, seed=0)
    assert set(data) == {(m, s) for m in MODALITIES for s in SPLITS}
    for (_, s), (x, y) in data.items():
        n = SMALL.per_class(s)
        assert x.shape == (10 * n, 64) and x.dtype == np.float32
        assert y.dtype == np.int64
        assert np.bincount(y).tolist() == [n] * 10
        assert np.isfinite(x).all()


def test_deterministic_by_seed() -> None:
    one, two, other = (sample_synth(SMALL, s) for s in (3, 3, 4))
    for key in one:
        np.testing.assert_array_equal(one[key][0], two[key][0])
        np.testing.assert_array_equal(one[key][1], two[key][1])
        assert not np.array_equal(one[key][0], other[key][0])


def test_train_split_does_not_depend_on_test_size() -> None:
    small = sample_synth(SMALL, seed=0)
    large = sample_synth(replace(SMALL, test_per_class=50), seed=0)
    np.testing.assert_array_equal(small["a", "train"][0], large["a", "train"][0])
    assert large["a", "test"][0].shape == (500, 64)


def _class_means(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.stack([x[y == c].mean(0) for c in np.unique(y)])  # (C, D)


def _geometry_agreement(params: SynthParams, seed: int = 0) -> float:
    """Correlation between the class-mean distance matrices of modality a and modality b.

    Distillation without pairs can only pass on what the modalities share: the arrangement of
    the classes. With shared decisive dims it agrees across modalities; without, it does not.
    """
    params = replace(params, num_classes=40, train_per_class=200)  # 780 pairs of classes
    data = sample_synth(params, seed)
    d = []
    for m in MODALITIES:
        mu = _class_means(*data[m, "train"])
        d.append(np.linalg.norm(mu[:, None] - mu[None], axis=-1)[np.triu_indices(len(mu), 1)])
    return float(np.corrcoef(d[0], d[1])[0, 1])


def test_synth_shares_class_geometry_and_nohelp_does_not() -> None:
    assert _geometry_agreement(REGIMES["synth"]) > 0.6
    assert abs(_geometry_agreement(REGIMES["synth-nohelp"])) < 0.25


@pytest.mark.parametrize("regime", sorted(REGIMES))
def test_each_modality_alone_is_learnable_but_not_trivial(regime: str) -> None:
    data = sample_synth(REGIMES[regime], seed=0)
    for m in MODALITIES:
        x, y = data[m, "train"]
        x_test, y_test = data[m, "test"]
        mu = _class_means(x, y)
        pred = np.argmin(((x_test[:, None] - mu[None]) ** 2).sum(-1), axis=1)
        accuracy = (pred == y_test).mean()
        assert 0.5 < accuracy < 0.97, (regime, m, accuracy)


def test_regimes_have_the_same_number_of_decisive_dims() -> None:
    a, b = REGIMES["synth"], REGIMES["synth-nohelp"]
    assert a.shared + a.specific == b.shared + b.specific
    assert a.shared > a.specific and b.shared == 0


def test_build_writes_a_valid_benchmark(tmp_path: Path) -> None:
    meta = build_synth(tmp_path, "synth-nohelp", seed=5, train_per_class=3, test_per_class=2)
    assert validate_benchmark(tmp_path) == meta
    assert meta.name == "synth-nohelp" and meta.seed == 5 and meta.num_classes == 10
    assert meta.shapes == {"a": (64,), "b": (64,)}
    assert meta.params["shared"] == 0 and meta.params["train_per_class"] == 3
    split = load_split(tmp_path, "b", "test")
    assert split.x.shape == (20, 64) and split.groups is None
    assert split.ids[0] == "b-test-000000"
    x, y = sample_synth(replace(REGIMES["synth-nohelp"], train_per_class=3, test_per_class=2), 5)[
        "b", "test"
    ]
    np.testing.assert_array_equal(split.x, x)
    np.testing.assert_array_equal(split.y, y)


def test_build_writes_an_unlabelled_pool_per_modality(tmp_path: Path) -> None:
    sizes = dict(train_per_class=6, val_per_class=2, test_per_class=3)
    build_synth(tmp_path / "pool", "synth", seed=2, **sizes)
    validate_benchmark(tmp_path / "pool")
    drawn = sample_synth(replace(REGIMES["synth"], **sizes), 2, (POOL,))
    for m in MODALITIES:
        pool = load_pool(tmp_path / "pool", m)
        assert pool.x.shape == (60, 64)  # as many as train by default
        assert "label" not in pq.read_schema(pool_path(tmp_path / "pool", m)).names
        np.testing.assert_array_equal(pool.x, drawn[m, POOL][0])
        assert np.bincount(drawn[m, POOL][1]).tolist() == [6] * 10
        train = load_split(tmp_path / "pool", m, "train")
        assert not set(pool.ids.tolist()) & set(train.ids.tolist())
        assert not (pool.x[:, None] == train.x[None]).all(-1).any()  # other samples
    # Without a pool the labelled files are the same bytes: the pool has its own streams.
    build_synth(tmp_path / "none", "synth", seed=2, pool_per_class=0, **sizes)
    assert not has_pool(tmp_path / "none", "a")
    for m in MODALITIES:
        for s in SPLITS:
            name = f"{m}_{s}.parquet"
            assert (tmp_path / "pool" / name).read_bytes() == (
                tmp_path / "none" / name
            ).read_bytes()
    assert len(load_pool(tmp_path / "pool", "b", limit=7)) == 7
    build_synth(tmp_path / "big", "synth", seed=2, pool_per_class=9, **sizes)
    assert len(load_pool(tmp_path / "big", "b")) == 90


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"shared": 0, "specific": 0}, "shared \\+ specific must be >= 1"),
        ({"dim": 8}, "dim=8 must be >= shared \\+ specific \\+ nondecisive = 26"),
        ({"num_classes": 1}, "num_classes must be >= 2"),
        ({"val_per_class": 0}, "at least one sample per class"),
        ({"pool_per_class": -1}, "pool_per_class must be >= 0 or None"),
    ],
)
def test_bad_params(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SynthParams(**bad)


def test_unknown_regime(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown regime 'synth-x'"):
        build_synth(tmp_path, "synth-x")
