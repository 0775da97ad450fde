"""The teacher bank: written once, checked against its benchmark, sampled class-matched."""

import numpy as np
import pytest
import torch

from cmkd.bank import BankError, BankSampler, TeacherBank, write_bank
from cmkd.models import linear_head


def make_bank(tmp_path, fingerprint="abc"):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), [5, 1, 7, 3]).astype(np.int64)
    z = rng.standard_normal((len(y), 6)).astype(np.float32)
    logits = rng.standard_normal((len(y), 4)).astype(np.float32)
    head = linear_head(6, 4)
    write_bank(
        tmp_path / "bank",
        ids=[f"t{i}" for i in range(len(y))],
        y=y,
        z=z,
        logits=logits,
        head=head,
        info={"benchmark": "toy", "fingerprint": fingerprint},
    )
    return y, z, logits, head


def test_bank_round_trips_and_its_head_is_frozen(tmp_path):
    y, z, logits, head = make_bank(tmp_path)
    bank = TeacherBank.load(tmp_path / "bank", fingerprint="abc")
    assert (
        np.array_equal(bank.y, y)
        and np.array_equal(bank.z, z)
        and np.array_equal(bank.logits, logits)
    )
    assert torch.equal(bank.head.weight, head.weight)
    assert not any(p.requires_grad for p in bank.head.parameters())
    assert bank.feature_dim == 6 and bank.info["rows"] == len(y)


def test_bank_from_another_benchmark_is_refused(tmp_path):
    make_bank(tmp_path, fingerprint="abc")
    with pytest.raises(BankError, match="built from benchmark 'toy'.*rebuild it"):
        TeacherBank.load(tmp_path / "bank", fingerprint="xyz")


def test_missing_bank_file_is_named(tmp_path):
    make_bank(tmp_path)
    (tmp_path / "bank" / "head.pt").unlink()
    with pytest.raises(BankError, match="head.pt: missing"):
        TeacherBank.load(tmp_path / "bank")


@pytest.mark.parametrize("name", ["head.pt", "bank.parquet", "bank.json"])
def test_corrupt_bank_file_is_named(tmp_path, name):
    make_bank(tmp_path)
    path = tmp_path / "bank" / name
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(BankError, match=rf"{name}: cannot be read .*rebuild it"):
        TeacherBank.load(tmp_path / "bank")


def test_class_matched_rows_have_the_students_classes_and_vary():
    y_bank = np.repeat(np.arange(4), [5, 1, 7, 3])
    sampler = BankSampler(y_bank, 4, seed=0)
    y_s = np.array([0, 1, 2, 3, 2, 2, 0, 1] * 50)
    rows = sampler.class_matched(y_s)
    assert np.array_equal(y_bank[rows], y_s)
    for c, n in zip(range(4), [5, 1, 7, 3], strict=True):  # every row of the class gets drawn
        assert len(set(rows[y_s == c].tolist())) == n
    again = BankSampler(y_bank, 4, seed=0).class_matched(y_s)
    assert np.array_equal(rows, again)


def test_independent_rows_ignore_labels_and_missing_classes_are_named():
    y_bank = np.repeat(np.arange(3), 10)
    sampler = BankSampler(y_bank, 4, seed=1)
    rows = sampler.independent(300)
    assert set(np.bincount(y_bank[rows], minlength=3)[:3] > 50) == {True}
    with pytest.raises(BankError, match=r"no row of class\(es\) \[3\]"):
        sampler.class_matched(np.array([0, 3]))
