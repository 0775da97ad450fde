"""The teacher bank: the frozen teacher's features and logits, computed once per dataset.

Trials never run the teacher. They read this table and draw, for every student sample, a row of
the teacher's modality of the *same class* (never the same instance: the modalities share no
instances), or rows drawn independently of labels. The bank directory holds

    bank.parquet  id, label, z (fixed-size float32 [D]), logits (fixed-size float32 [C])
    head.pt       the teacher head h_t (a linear layer), the only teacher part a trial runs
    bank.json     provenance: benchmark name and fingerprint, teacher modality, sizes

:mod:`cmkd.teacher` writes it, computing the rows in process or through Ray Data
(``--engine ray``: ``map_batches`` actors that load the teacher once, on GPUs with ``--gpu``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from cmkd.models import freeze, linear_head

BANK_FILE, HEAD_FILE, INFO_FILE = "bank.parquet", "head.pt", "bank.json"


class BankError(ValueError):
    """A teacher bank that cannot serve this run; the message names the file and the problem."""


def _fixed(a: np.ndarray) -> pa.FixedSizeListArray:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), a.shape[1])


def write_bank(
    directory: str | Path,
    *,
    ids,
    y: np.ndarray,
    z: np.ndarray,
    logits: np.ndarray,
    head: nn.Linear,
    info: dict,
) -> Path:
    """Write a bank. y: (M,) int64, z: (M, D) float32, logits: (M, C) float32."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "id": pa.array([str(i) for i in ids]),
            "label": pa.array(y, pa.int64()),
            "z": _fixed(z),
            "logits": _fixed(logits),
        }
    )
    pq.write_table(table, directory / BANK_FILE)
    torch.save(head.state_dict(), directory / HEAD_FILE)
    info = {
        **info,
        "rows": len(y),
        "feature_dim": int(z.shape[1]),
        "num_classes": int(logits.shape[1]),
    }
    (directory / INFO_FILE).write_text(json.dumps(info, indent=2))
    return directory


def _read(path: Path, reader):
    """reader(path), with any failure to parse turned into a BankError that names the file."""
    try:
        return reader(path)
    except Exception as err:
        raise BankError(
            f"{path}: cannot be read ({type(err).__name__}: {str(err)[:200]}); the bank is "
            f"corrupt or truncated, rebuild it with `python -m cmkd.teacher ... --out {path.parent}`"
        ) from err


@dataclass(frozen=True, eq=False)
class TeacherBank:
    """A loaded bank. z: (M, D) float32, logits: (M, C) float32, y: (M,) int64, ids: (M,) str
    the teacher rows' ids (what pairs a student row with its partner), or None."""

    z: np.ndarray
    logits: np.ndarray
    y: np.ndarray
    head: nn.Linear
    info: dict
    ids: np.ndarray | None = None

    @classmethod
    def load(cls, directory: str | Path, *, fingerprint: str | None = None) -> TeacherBank:
        """Load and check a bank; ``fingerprint`` must match the benchmark it was built from."""
        directory = Path(directory)
        for name in (BANK_FILE, HEAD_FILE, INFO_FILE):
            if not (directory / name).is_file():
                raise BankError(
                    f"{directory / name}: missing; build the bank with "
                    f"`python -m cmkd.teacher --benchmark ... --modality ... --out {directory}`"
                )
        info = _read(directory / INFO_FILE, lambda f: json.loads(f.read_text()))
        if fingerprint is not None and info.get("fingerprint") != fingerprint:
            raise BankError(
                f"{directory / INFO_FILE}: this bank was built from benchmark "
                f"{info.get('benchmark')!r} (fingerprint {info.get('fingerprint')}), not from the "
                f"benchmark of this run (fingerprint {fingerprint}); rebuild it"
            )
        table = _read(directory / BANK_FILE, pq.read_table)
        d, c = info["feature_dim"], info["num_classes"]
        # Copies: arrays read from parquet are read-only, and torch.from_numpy warns on those.
        z = table.column("z").combine_chunks().flatten().to_numpy().reshape(-1, d).copy()
        logits = table.column("logits").combine_chunks().flatten().to_numpy().reshape(-1, c).copy()
        head = linear_head(d, c)
        head.load_state_dict(
            _read(directory / HEAD_FILE, lambda f: torch.load(f, weights_only=True))
        )
        return cls(
            z=z,
            logits=logits,
            y=table.column("label").to_numpy().copy(),
            head=freeze(head),
            info=info,
            ids=np.asarray(table.column("id").to_pylist(), dtype=str),
        )

    @property
    def feature_dim(self) -> int:
        return self.z.shape[1]


class BankSampler:
    """Draws unpaired teacher rows for student batches: class-matched or label-independent."""

    def __init__(self, y_bank: np.ndarray, num_classes: int, seed: int):
        self.rng = np.random.default_rng(seed)
        order = np.argsort(y_bank, kind="stable")
        counts = np.bincount(y_bank, minlength=num_classes)
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.counts, self.order, self.n = counts, order, len(y_bank)

    def class_matched(self, y_s: np.ndarray) -> np.ndarray:
        """For each student label, the index of a random bank row of that class. (B,) -> (B,)."""
        counts = self.counts[y_s]
        if (counts == 0).any():
            missing = sorted(set(y_s[counts == 0].tolist()))
            raise BankError(f"the teacher bank has no row of class(es) {missing}")
        offset = (self.rng.random(len(y_s)) * counts).astype(np.int64)
        return self.order[self.starts[y_s] + offset]

    def independent(self, n: int) -> np.ndarray:
        """n bank rows drawn uniformly, ignoring labels. -> (n,)"""
        return self.rng.integers(0, self.n, size=n)


TEACHER_CONTROLS = ("real", "permuted", "neutral")


def control_bank(bank: TeacherBank, kind: str, num_classes: int, seed: int = 0) -> TeacherBank:
    """The bank itself (``real``), or a control that keeps its size and class histogram:

    permuted  a teacher whose class structure is scrambled: labels, logit columns and head rows
              moved by one fixed permutation with no fixed point (as if trained on permuted
              labels; the features still cluster, under the wrong names);
    neutral   features replaced by random, evenly spaced class clusters (orthonormal centres in
              D dimensions plus isotropic noise, unit norm) read by a nearest-centre head: class
              structure and nothing of the teacher's modality.
    """
    if kind == "real":
        return bank
    rng = np.random.default_rng([seed, 90210])
    c, d = num_classes, bank.feature_dim
    if kind == "permuted":
        perm = (np.arange(c) + 1 + rng.permutation(c - 1)[0]) % c  # a shift: no fixed point
        weight, bias = bank.head.weight.detach().clone(), bank.head.bias.detach().clone()
        head = linear_head(d, c)
        with torch.no_grad():
            head.weight[perm] = weight
            head.bias[perm] = bias
        logits = np.empty_like(bank.logits)
        logits[:, perm] = bank.logits
        y = perm[bank.y]
        info = {**bank.info, "control": kind}
        return TeacherBank(bank.z, logits, y, freeze(head), info, bank.ids)
    if kind == "neutral":
        if d < c:
            raise BankError(f"a neutral teacher needs feature_dim >= num_classes, got {d} < {c}")
        centres, _ = np.linalg.qr(rng.standard_normal((d, c)))  # (D, C) orthonormal columns
        z = centres.T[bank.y] + rng.standard_normal((len(bank.y), d)) * (0.5 / np.sqrt(d))
        z = (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)
        scale = 10.0
        head = linear_head(d, c)
        with torch.no_grad():
            head.weight.copy_(torch.tensor(scale * centres.T, dtype=torch.float32))
            head.bias.zero_()
        logits = (scale * z @ centres).astype(np.float32)
        return TeacherBank(
            z, logits, bank.y, freeze(head), {**bank.info, "control": kind}, bank.ids
        )
    raise ValueError(f"teacher control {kind!r}: expected one of {list(TEACHER_CONTROLS)}")
