"""Benchmarks on disk: one parquet table per modality and split, validated on load.

Build one with ``python -m cmkd.data build NAME --out DIR``; load it with :func:`load_split`
after :func:`validate_benchmark`.
"""

from cmkd.data.schema import (
    SPLITS,
    DataError,
    Meta,
    Split,
    load_split,
    read_meta,
    split_path,
    subsample_per_class,
    validate_benchmark,
    write_meta,
    write_split,
)

__all__ = [
    "SPLITS",
    "DataError",
    "Meta",
    "Split",
    "load_split",
    "read_meta",
    "split_path",
    "subsample_per_class",
    "validate_benchmark",
    "write_meta",
    "write_split",
]
