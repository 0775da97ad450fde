"""Benchmarks on disk: one parquet table per modality and split, validated on load.

schema    the layout, its validation, loading, per-class subsampling (exported here)
synth     two-view Gaussian benchmarks `synth` and `synth-nohelp`, with unlabelled pools
avdigits  MNIST digits and espeak-ng spoken digits (`image`, `audio`), an unlabelled audio pool
sonified  MNIST digits (`image`) and other MNIST digits made audible by the vOICe mapping
          (`audio`, held-out voices, an unlabelled pool): `sonified`, the long-tailed
          `sonified-lt`, and `sonified-paired`, whose clips are the sounds of the teacher's
          images (true pairs: a shared pair_id)
convert   RAVDESS (audio, face video frames) and CREMA-D (audio) raw releases to the layout
ave       the AVE raw release (audio of each event, the frame at its middle), official splits
video     PyAV decoding: a clip's audio track, the frame at a time, thumbnails
audio     log-mel features and wav files; espeak: speech synthesis through ctypes

Build one with ``python -m cmkd.data build NAME --out DIR``; load it with :func:`load_split`
after :func:`validate_benchmark`.
"""

from cmkd.data.schema import (
    NO_LABEL,
    PAIR,
    POOL,
    SPLITS,
    DataError,
    Meta,
    Pool,
    Split,
    has_pool,
    load_pool,
    load_split,
    pool_path,
    read_meta,
    scan_labels,
    split_path,
    subsample_per_class,
    validate_benchmark,
    write_meta,
    write_pool,
    write_split,
)

__all__ = [
    "NO_LABEL",
    "PAIR",
    "POOL",
    "Pool",
    "has_pool",
    "load_pool",
    "pool_path",
    "write_pool",
    "SPLITS",
    "DataError",
    "Meta",
    "Split",
    "load_split",
    "read_meta",
    "scan_labels",
    "split_path",
    "subsample_per_class",
    "validate_benchmark",
    "write_meta",
    "write_split",
]
