"""Student training rows too large to hold in memory: read from parquet a few rows at a time.

Whether a run holds its labelled rows in memory or streams them is decided by their size
(``DataConfig.loading``, ``stream_above_mb``). Streamed, an epoch is one shuffled pass over the
rows: the file's row groups in a random order through a shuffle buffer. In a sweep trial the same
rows come from a Ray Data ``read_parquet`` shard instead (:mod:`cmkd.trial`); this module is the
Ray-free reader used by a run on one process and by the final retrain.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch


@dataclass(frozen=True)
class TrainStream:
    """Where a run's labelled rows live when they are streamed.

    path: the student's train parquet; shape: one row's feature shape; ids: the labelled subset
    (None: every row); rows: how many rows the run trains on.
    """

    path: str
    shape: tuple[int, ...]
    ids: frozenset[str] | None
    rows: int

    @property
    def nbytes(self) -> int:
        return self.rows * math.prod(self.shape) * 4


def should_stream(loading: str, nbytes: int, stream_above_mb: float) -> bool:
    """The size rule: ``stream`` and ``memory`` force it, ``auto`` streams above the threshold."""
    if loading not in ("auto", "memory", "stream"):
        raise ValueError(f"loading must be auto, memory or stream, found {loading!r}")
    if loading != "auto":
        return loading == "stream"
    return nbytes > stream_above_mb * 2**20


def table_to_xy(
    table: pa.Table, shape: tuple[int, ...], ids: frozenset[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """x: (n, *shape) float32 and y: (n,) int64 of a table of rows (only ``ids`` when given)."""
    if ids is not None:
        keep = np.isin(np.asarray(table.column("id").to_pylist(), dtype=str), list(ids))
        table = table.filter(pa.array(keep))
    x = table.column("x").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    x = x.astype(np.float32, copy=False).reshape((table.num_rows, *shape))
    return x, table.column("label").to_numpy().astype(np.int64)


def local_batches(
    stream: TrainStream,
    batch_size: int,
    rng: np.random.Generator,
    *,
    buffer_rows: int = 8192,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One shuffled pass over the streamed rows, as (x, y) tensors of ``batch_size`` rows.

    Row groups are read in a random order into a buffer of at least ``buffer_rows`` rows that is
    shuffled before batches leave it; memory stays bounded by the buffer and one row group.
    The last batch may be smaller; a batch of a single row is dropped (BatchNorm needs two).
    """
    pf = pq.ParquetFile(stream.path)
    columns = ["id", "label", "x"] if stream.ids is not None else ["label", "x"]
    xs, ys, held = [], [], 0

    def drain(final: bool):
        nonlocal xs, ys, held
        x, y = np.concatenate(xs), np.concatenate(ys)
        order = rng.permutation(len(y))
        x, y = x[order], y[order]
        cut = len(y) if final else len(y) - len(y) % batch_size
        for i in range(0, cut, batch_size):
            if len(y[i : i + batch_size]) > 1:
                yield (
                    torch.from_numpy(x[i : i + batch_size]),
                    torch.from_numpy(y[i : i + batch_size]),
                )
        xs, ys, held = [x[cut:]], [y[cut:]], len(y) - cut

    for g in rng.permutation(pf.num_row_groups):
        x, y = table_to_xy(pf.read_row_group(int(g), columns=columns), stream.shape, stream.ids)
        xs.append(x)
        ys.append(y)
        held += len(y)
        if held >= max(buffer_rows, batch_size):
            yield from drain(final=False)
    if held:
        yield from drain(final=True)
