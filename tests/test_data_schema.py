"""The parquet layout: round trip, and one test per problem validation must catch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmkd.data import (
    SPLITS,
    DataError,
    load_split,
    read_meta,
    split_path,
    subsample_per_class,
    validate_benchmark,
    write_meta,
    write_split,
)

SHAPES = {"a": (3,), "b": (1, 2, 2)}
NUM_CLASSES = 3


def _rows(modality: str, split: str, per_class: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(NUM_CLASSES), per_class)
    x = rng.normal(size=(len(y), *SHAPES[modality])).astype(np.float32)
    ids = [f"{modality}-{split}-{i}" for i in range(len(y))]
    return x, y, ids


@pytest.fixture
def bench(tmp_path: Path) -> Path:
    """A valid benchmark: modalities a (3,) and b (1, 2, 2), 3 classes, 2 rows per class."""
    write_meta(tmp_path, "tiny", NUM_CLASSES, SHAPES, seed=0, class_names=["r", "g", "b"])
    for m in SHAPES:
        for s in SPLITS:
            x, y, ids = _rows(m, s)
            groups = [f"g{i % 2}" for i in range(len(y))] if m == "b" else None
            write_split(split_path(tmp_path, m, s), x, y, ids, groups)
    return tmp_path


def _write_raw(path: Path, columns: dict[str, pa.Array]) -> None:
    """Write a parquet file as given, bypassing write_split, to fabricate broken files."""
    pq.write_table(pa.table(columns), path)


def _good_columns(modality: str = "a", split: str = "train") -> dict[str, pa.Array]:
    x, y, ids = _rows(modality, split)
    size = int(np.prod(SHAPES[modality]))
    return {
        "id": pa.array(ids),
        "label": pa.array(y, pa.int64()),
        "x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), size),
    }


def _raises(directory: Path, path: Path, column: str | None, match: str) -> DataError:
    with pytest.raises(DataError) as info:
        validate_benchmark(directory)
    err = info.value
    assert str(path) in str(err)
    assert err.path == str(path)
    if column is not None:
        assert err.column == column
        assert f"column '{column}'" in str(err)
    assert match in str(err)
    return err


# --------------------------------------------------------------------------- round trip


def test_round_trip_keeps_values_dtypes_groups_and_shape(bench: Path) -> None:
    x, y, ids = _rows("b", "val")
    split = load_split(bench, "b", "val")
    assert split.x.dtype == np.float32 and split.x.shape == (6, 1, 2, 2)
    np.testing.assert_array_equal(split.x, x)
    assert split.y.dtype == np.int64
    np.testing.assert_array_equal(split.y, [0, 0, 1, 1, 2, 2])
    assert split.ids.tolist() == ids
    assert split.groups.tolist() == ["g0", "g1"] * 3
    assert split.path == bench / "b_val.parquet"
    assert len(split) == 6
    assert load_split(bench, "a", "val").groups is None
    field = pq.read_schema(bench / "b_val.parquet").field("x")
    assert json.loads(field.metadata[b"shape"]) == [1, 2, 2]
    assert field.type == pa.list_(pa.float32(), 4)


def test_validate_returns_meta(bench: Path) -> None:
    meta = validate_benchmark(bench)
    assert meta.name == "tiny" and meta.num_classes == 3 and meta.seed == 0
    assert meta.shapes == {"a": (3,), "b": (1, 2, 2)}
    assert meta.modalities == ("a", "b")
    assert meta.class_names == ("r", "g", "b")
    assert validate_benchmark(bench, modalities=["b"]) == meta


def test_write_split_casts_float64_to_float32(tmp_path: Path) -> None:
    write_meta(tmp_path, "t", 2, {"a": (2,)})
    x = np.array([[0.1, 0.2], [0.3, 0.4]])
    write_split(tmp_path / "a_train.parquet", x, np.array([0, 1]), ["p", "q"])
    got = load_split(tmp_path, "a", "train").x
    np.testing.assert_array_equal(got, x.astype(np.float32))


# --------------------------------------------------------------------------- meta.json


def test_missing_meta(bench: Path) -> None:
    (bench / "meta.json").unlink()
    _raises(bench, bench / "meta.json", None, "missing meta.json")


def test_meta_missing_key(bench: Path) -> None:
    raw = json.loads((bench / "meta.json").read_text())
    del raw["num_classes"]
    (bench / "meta.json").write_text(json.dumps(raw))
    err = _raises(bench, bench / "meta.json", None, "key 'num_classes'")
    assert err.key == "num_classes"


def test_meta_bad_shape(bench: Path) -> None:
    raw = json.loads((bench / "meta.json").read_text())
    raw["modalities"]["a"]["shape"] = [3, 0]
    (bench / "meta.json").write_text(json.dumps(raw))
    _raises(bench, bench / "meta.json", None, "key 'modalities.a.shape'")


def test_unknown_modality_requested(bench: Path) -> None:
    with pytest.raises(DataError, match="no modality 'c'") as info:
        validate_benchmark(bench, modalities=["a", "c"])
    assert "meta.json" in str(info.value) and info.value.key == "modalities"


# --------------------------------------------------------------------------- files and schema


def test_missing_parquet_file(bench: Path) -> None:
    path = bench / "b_test.parquet"
    path.unlink()
    _raises(bench, path, None, "missing file")


def test_truncated_parquet_file(bench: Path) -> None:
    path = bench / "a_val.parquet"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _raises(bench, path, None, "unreadable parquet")


def test_missing_column(bench: Path) -> None:
    path = bench / "a_train.parquet"
    columns = _good_columns()
    del columns["label"]
    _write_raw(path, columns)
    _raises(bench, path, "label", "missing")


def test_label_wrong_dtype(bench: Path) -> None:
    path = bench / "a_train.parquet"
    columns = _good_columns()
    columns["label"] = pa.array(np.repeat([0.0, 1.0, 2.0], 2))
    _write_raw(path, columns)
    _raises(bench, path, "label", "found double")


def test_id_wrong_dtype(bench: Path) -> None:
    path = bench / "a_train.parquet"
    columns = _good_columns()
    columns["id"] = pa.array(np.arange(6))
    _write_raw(path, columns)
    _raises(bench, path, "id", "expected string, found int64")


def test_features_wrong_value_dtype(bench: Path) -> None:
    path = bench / "a_train.parquet"
    columns = _good_columns()
    columns["x"] = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(18)), 3)  # float64
    _write_raw(path, columns)
    _raises(bench, path, "x", "found fixed_size_list<element: double>[3]")


def test_features_variable_size_list(bench: Path) -> None:
    path = bench / "a_train.parquet"
    columns = _good_columns()
    columns["x"] = pa.array([[0.0, 1.0, 2.0]] * 6, pa.list_(pa.float32()))
    _write_raw(path, columns)
    _raises(bench, path, "x", "expected fixed_size_list<float32>[3]")


def test_features_wrong_list_size(bench: Path) -> None:
    path = bench / "b_val.parquet"
    columns = _good_columns("b", "val")
    columns["x"] = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(30, np.float32)), 5)
    _write_raw(path, columns)
    _raises(bench, path, "x", "found list size 5")


def test_features_shape_metadata_disagrees_with_meta(bench: Path) -> None:
    path = bench / "b_val.parquet"
    x, y, ids = _rows("b", "val")
    write_split(path, x.reshape(6, 2, 2), y, ids)  # same size 4, other shape
    _raises(bench, path, "x", "expected field metadata shape [1, 2, 2]")


def test_group_wrong_dtype(bench: Path) -> None:
    path = bench / "a_train.parquet"
    columns = _good_columns()
    columns["group"] = pa.array(np.zeros(6, np.int32))
    _write_raw(path, columns)
    _raises(bench, path, "group", "expected string")


def test_schema_of_every_file_is_checked_before_reading_columns(bench: Path) -> None:
    x, y, ids = _rows("a", "train")
    x[0, 0] = np.nan
    write_split(bench / "a_train.parquet", x, y, ids)  # a value problem, read later
    columns = _good_columns("b", "test")
    del columns["x"]
    _write_raw(bench / "b_test.parquet", columns)  # a schema problem, found first
    _raises(bench, bench / "b_test.parquet", "x", "missing")


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features(bench: Path, bad: float) -> None:
    path = bench / "b_train.parquet"
    x, y, ids = _rows("b", "train")
    x[4, 0, 1, 1] = bad
    write_split(path, x, y, ids)
    _raises(bench, path, "x", "NaN or inf in 1 rows (first id 'b-train-4')")


@pytest.mark.parametrize("label", [-1, 3])
def test_label_out_of_range(bench: Path, label: int) -> None:
    path = bench / "a_test.parquet"
    x, y, ids = _rows("a", "test")
    y[2] = label
    write_split(path, x, y, ids)
    _raises(bench, path, "label", f"expected labels in 0..2, found [{label}] in 1 rows")


def test_null_label(bench: Path) -> None:
    path = bench / "a_train.parquet"
    columns = _good_columns()
    columns["label"] = pa.array([0, 0, 1, None, 2, 2], pa.int64())
    _write_raw(path, columns)
    _raises(bench, path, "label", "expected no nulls, found 1")


def test_empty_file(bench: Path) -> None:
    path = bench / "a_val.parquet"
    write_split(path, np.zeros((0, 3), np.float32), np.zeros(0, np.int64), [])
    _raises(bench, path, "label", "expected at least one row")


def test_duplicate_ids(bench: Path) -> None:
    path = bench / "b_train.parquet"
    x, y, ids = _rows("b", "train")
    ids[5] = ids[1]
    write_split(path, x, y, ids)
    _raises(bench, path, "id", "found 1 repeated (e.g. 'b-train-1' x2)")


def test_empty_class_in_train(bench: Path) -> None:
    path = bench / "b_train.parquet"
    x, y, ids = _rows("b", "train")
    keep = y != 1
    write_split(path, x[keep], y[keep], [i for i, k in zip(ids, keep, strict=True) if k])
    _raises(bench, path, "label", "found none for class [1] (['g'])")


def test_label_sets_differ_between_modalities(bench: Path) -> None:
    # val may lack a class, but then both modalities must lack it
    path = bench / "b_val.parquet"
    x, y, ids = _rows("b", "val")
    keep = y != 2
    write_split(path, x[keep], y[keep], [i for i, k in zip(ids, keep, strict=True) if k])
    err = _raises(bench, path, "label", "found labels [] only here and [2] only there")
    assert str(bench / "a_val.parquet") in str(err)


def test_same_missing_class_in_val_of_both_modalities_is_allowed(bench: Path) -> None:
    for m in SHAPES:
        x, y, ids = _rows(m, "val")
        keep = y != 2
        kept_ids = [i for i, k in zip(ids, keep, strict=True) if k]
        write_split(split_path(bench, m, "val"), x[keep], y[keep], kept_ids)
    assert validate_benchmark(bench).num_classes == 3


def test_load_split_checks_values_too(bench: Path) -> None:
    path = bench / "a_val.parquet"
    x, y, ids = _rows("a", "val")
    y[0] = 7
    write_split(path, x, y, ids)
    with pytest.raises(DataError, match="column 'label'") as info:
        load_split(bench, "a", "val")
    assert info.value.path == str(path)
    assert read_meta(bench).num_classes == 3


# --------------------------------------------------------------------------- subsample_per_class


def test_subsample_counts_and_determinism() -> None:
    y = np.repeat(np.arange(4), [5, 7, 9, 6])
    idx = subsample_per_class(y, 3, seed=1)
    assert np.bincount(y[idx]).tolist() == [3, 3, 3, 3]
    assert np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, subsample_per_class(y, 3, seed=1))
    assert not np.array_equal(idx, subsample_per_class(y, 3, seed=2))


@pytest.mark.parametrize("k", [None, "all"])
def test_subsample_all(k: str | None) -> None:
    np.testing.assert_array_equal(subsample_per_class(np.array([2, 0, 1, 0]), k, 0), [0, 1, 2, 3])


def test_subsample_too_few_and_bad_k() -> None:
    y = np.array([0, 0, 0, 1])
    with pytest.raises(ValueError, match="class 1 has 1 samples, fewer than k=2"):
        subsample_per_class(y, 2, seed=0)
    for bad in (0, -1, 1.5, "some", True):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            subsample_per_class(y, bad, seed=0)


@settings(max_examples=50, deadline=None)
@given(
    counts=st.lists(st.integers(3, 12), min_size=1, max_size=5),
    k=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_subsample_nested_in_larger_k(counts: list[int], k: int, seed: int) -> None:
    y = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(counts)), counts))
    small = subsample_per_class(y, k, seed)
    large = subsample_per_class(y, min(counts), seed)
    assert len(small) == k * len(counts)
    assert set(small.tolist()) <= set(large.tolist())
