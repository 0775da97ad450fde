"""The on-disk layout of a benchmark, and its validation on load.

A benchmark is a directory::

    DIR/meta.json                   name, num_classes, class_names, modalities (shape of x), seed
    DIR/{modality}_{split}.parquet  split in train, val, test
    DIR/{modality}_unlabelled.parquet  optional: a pool of unlabelled samples of that modality

Each parquet file has the columns

    id     string, unique within the file
    label  integer in 0..num_classes-1 (read as int64); in the unlabelled pool the column may be
           left out, and if present every value must be -1 (``NO_LABEL``)
    x      fixed_size_list<float32>[prod(shape)]; the field metadata key ``shape`` holds the shape
    group  optional string: speaker, voice or writer, for group-disjoint splits
    pair_id  optional string: the instance a row shows. Rows of two modalities with the same
           pair_id are one instance seen twice (the paired setting); see :func:`check_pairs`

Every problem found in the data raises :class:`DataError` naming the file and the column (or
the meta.json key), what was expected and what was found, so a run fails before training starts.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SPLITS: tuple[str, ...] = ("train", "val", "test")
POOL = "unlabelled"
"""The optional split of unlabelled samples: DIR/{modality}_unlabelled.parquet."""
NO_LABEL = -1
"""The label value a pool row may carry: no label."""
META_FILE = "meta.json"
PAIR = "pair_id"
"""The optional column naming the instance a row shows (the paired setting)."""
ROW_GROUP_BYTES = 64 * 2**20
_MODALITY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class DataError(ValueError):
    """A problem in a benchmark's files: names the file, the column or key, and what is wrong."""

    def __init__(
        self, path: str | Path, problem: str, *, column: str | None = None, key: str | None = None
    ):
        self.path = str(path)
        self.column = column
        self.key = key
        where = f"column '{column}': " if column else f"key '{key}': " if key else ""
        super().__init__(f"{self.path}: {where}{problem}")


@dataclass(frozen=True)
class Meta:
    """What meta.json says about a benchmark.

    shapes maps each modality to the shape of one row of x, e.g. {"image": (1, 28, 28)}.
    params holds the build parameters (free-form, JSON-serialisable).
    """

    name: str
    num_classes: int
    shapes: dict[str, tuple[int, ...]]
    class_names: tuple[str, ...] | None = None
    seed: int | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.shapes)


@dataclass(frozen=True, eq=False)
class Split:
    """One modality's split, loaded and checked.

    x: (N, *shape) float32, y: (N,) int64, ids: (N,) str, groups: (N,) str or None,
    pair_ids: (N,) str or None (no pair_id column).
    """

    x: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    groups: np.ndarray | None
    path: Path
    pair_ids: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)


def split_path(directory: str | Path, modality: str, split: str) -> Path:
    """The file holding one modality's split: DIR/{modality}_{split}.parquet."""
    return Path(directory) / f"{modality}_{split}.parquet"


# --------------------------------------------------------------------------- writing


def write_split(
    path: str | Path,
    x: np.ndarray,
    y: np.ndarray,
    ids: Sequence[str],
    groups: Sequence[str] | None = None,
    *,
    pair_ids: Sequence[str] | None = None,
    row_group_rows: int | None = None,
) -> Path:
    """Write one modality's split as parquet.

    x: (N, *shape) floating, stored as float32; y: (N,) integer; ids: N unique strings;
    groups: N strings or None; pair_ids: N strings (each row's partner in another modality
    has the same one) or None. The shape goes into the field metadata of x. Row groups hold
    ``row_group_rows`` rows (default: about 64 MiB of features each), the unit a streamed
    epoch reads at a time.
    """
    path = Path(path)
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.asarray(y)
    if x.ndim < 2:
        raise ValueError(f"x must be (N, *shape), got shape {x.shape}")
    n, shape = x.shape[0], tuple(int(s) for s in x.shape[1:])
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (n,):
        raise ValueError(f"y must be ({n},) integer, got {y.shape} {y.dtype}")
    if any(v is not None and len(v) != n for v in (ids, groups, pair_ids)):
        raise ValueError(f"ids, groups and pair_ids must have {n} entries like x")
    x_type = pa.list_(pa.float32(), math.prod(shape))
    columns = {
        "id": pa.array([str(i) for i in ids], pa.string()),
        "label": pa.array(y.astype(np.int64), pa.int64()),
        "x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), math.prod(shape)),
    }
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("label", pa.int64(), nullable=False),
        pa.field("x", x_type, nullable=False, metadata={"shape": json.dumps(list(shape))}),
    ]
    if groups is not None:
        columns["group"] = pa.array([str(g) for g in groups], pa.string())
        fields.append(pa.field("group", pa.string(), nullable=False))
    if pair_ids is not None:
        columns[PAIR] = pa.array([str(p) for p in pair_ids], pa.string())
        fields.append(pa.field(PAIR, pa.string(), nullable=False))
    table = pa.Table.from_arrays(list(columns.values()), schema=pa.schema(fields))
    path.parent.mkdir(parents=True, exist_ok=True)
    if row_group_rows is None:
        row_group_rows = max(1, ROW_GROUP_BYTES // (4 * math.prod(shape)))
    pq.write_table(table, path, compression="zstd", row_group_size=row_group_rows)
    return path


def write_pool(
    path: str | Path,
    x: np.ndarray,
    ids: Sequence[str],
    groups: Sequence[str] | None = None,
    *,
    pair_ids: Sequence[str] | None = None,
    row_group_rows: int | None = None,
) -> Path:
    """Write an unlabelled pool: the columns of :func:`write_split` without ``label``.

    x: (N, *shape) floating; ids: N unique strings; groups, pair_ids: N strings or None.
    """
    path = Path(
        write_split(
            path,
            x,
            np.full(len(x), NO_LABEL),
            ids,
            groups,
            pair_ids=pair_ids,
            row_group_rows=row_group_rows,
        )
    )
    table = pq.read_table(path)
    pq.write_table(
        table.drop(["label"]),
        path,
        compression="zstd",
        row_group_size=row_group_rows or max(1, ROW_GROUP_BYTES // (4 * math.prod(x.shape[1:]))),
    )
    return path


def write_meta(
    directory: str | Path,
    name: str,
    num_classes: int,
    shapes: dict[str, Sequence[int]],
    *,
    seed: int | None = None,
    class_names: Sequence[str] | None = None,
    params: dict[str, Any] | None = None,
) -> Path:
    """Write DIR/meta.json. shapes maps modality -> shape of one row of x."""
    meta = {
        "name": name,
        "num_classes": int(num_classes),
        "class_names": list(class_names) if class_names is not None else None,
        "modalities": {m: {"shape": [int(s) for s in shape]} for m, shape in shapes.items()},
        "seed": seed,
        "params": params or {},
    }
    path = Path(directory) / META_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- reading


def read_meta(directory: str | Path) -> Meta:
    """Read and check DIR/meta.json."""
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise DataError(path, "missing meta.json: expected it in the benchmark directory")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(path, f"not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise DataError(path, f"expected a JSON object, found {type(raw).__name__}")
    for key in ("name", "num_classes", "modalities"):
        if key not in raw:
            raise DataError(path, "missing", key=key)
    num_classes = raw["num_classes"]
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise DataError(path, f"expected an integer >= 2, found {num_classes!r}", key="num_classes")
    modalities = raw["modalities"]
    if not isinstance(modalities, dict) or not modalities:
        raise DataError(
            path, f"expected {{modality: {{shape}}}}, found {modalities!r}", key="modalities"
        )
    shapes: dict[str, tuple[int, ...]] = {}
    for modality, spec in modalities.items():
        key = f"modalities.{modality}.shape"
        if not _MODALITY_NAME.match(modality):
            raise DataError(path, f"modality name {modality!r} must match [A-Za-z0-9_-]+", key=key)
        shape = spec.get("shape") if isinstance(spec, dict) else None
        if not isinstance(shape, list) or not shape or not all(_positive_int(s) for s in shape):
            raise DataError(path, f"expected a list of positive integers, found {shape!r}", key=key)
        shapes[modality] = tuple(shape)
    class_names = raw.get("class_names")
    if class_names is not None and (
        not isinstance(class_names, list) or len(class_names) != num_classes
    ):
        raise DataError(
            path, f"expected {num_classes} names, found {class_names!r}", key="class_names"
        )
    return Meta(
        name=str(raw["name"]),
        num_classes=num_classes,
        shapes=shapes,
        class_names=tuple(class_names) if class_names is not None else None,
        seed=raw.get("seed"),
        params=raw.get("params") or {},
    )


def load_split(directory: str | Path, modality: str, split: str, meta: Meta | None = None) -> Split:
    """Load DIR/{modality}_{split}.parquet and check it against meta.json.

    Checks the schema, nulls, non-finite features, the label range and duplicate ids.
    Returns x: (N, *shape) float32, y: (N,) int64, ids: (N,) str, groups: (N,) str or None.
    """
    path, shape, columns = _open_split(directory, modality, split, meta)
    meta = meta or read_meta(directory)
    try:
        table = pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as err:
        raise DataError(path, f"unreadable parquet data ({err})") from None
    if table.num_rows == 0:
        raise DataError(path, "expected at least one row, found none", column="label")
    ids, y, x = _checked_rows(path, table, shape, meta)
    _check_unique_ids(path, ids)
    groups = pair_ids = None
    if "group" in columns:
        groups = np.asarray(table.column("group").to_pylist(), dtype=str)
    if PAIR in columns:
        pair_ids = np.asarray(table.column(PAIR).to_pylist(), dtype=str)
    return Split(x=x, y=y, ids=ids, groups=groups, path=path, pair_ids=pair_ids)


@dataclass(frozen=True, eq=False)
class Pool:
    """A modality's unlabelled pool, loaded and checked: x (N, *shape) float32, ids (N,) str,
    pair_ids (N,) str or None."""

    x: np.ndarray
    ids: np.ndarray
    path: Path
    pair_ids: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.x)


def pool_path(directory: str | Path, modality: str) -> Path:
    return split_path(directory, modality, POOL)


def has_pool(directory: str | Path, modality: str) -> bool:
    return pool_path(directory, modality).is_file()


def load_pool(
    directory: str | Path,
    modality: str,
    meta: Meta | None = None,
    *,
    limit: int | None = None,
    seed: int = 0,
    chunk_rows: int = 65_536,
) -> Pool:
    """Load DIR/{modality}_unlabelled.parquet, checked like a labelled split, reading
    ``chunk_rows`` rows at a time and keeping at most ``limit`` rows (a uniform draw by ``seed``
    when the pool is larger: memory is bounded by the rows kept).

    Checks: the file exists and is parquet; columns id (string) and x (the modality's shape);
    a ``label`` column, if present, holds only -1; no nulls; finite features; unique ids.
    """
    meta = meta or read_meta(directory)
    if modality not in meta.shapes:
        raise DataError(
            Path(directory) / META_FILE,
            f"no modality {modality!r}; found {list(meta.shapes)}",
            key="modalities",
        )
    path, shape = pool_path(directory, modality), meta.shapes[modality]
    if not path.is_file():
        raise DataError(
            path,
            "missing file: an unlabelled pool was asked for (data.unlabelled / --unlabelled); "
            "expected this parquet file with columns id and x, or set data.unlabelled: 0",
        )
    schema = _read_schema(path)
    _check_schema(path, schema, shape, label=False)
    columns = ["id", "x"] + [c for c in ("label", PAIR) if c in schema.names]
    rows = pq.ParquetFile(path).metadata.num_rows
    if rows == 0:
        raise DataError(path, "expected at least one row, found none", column="x")
    keep = None
    if limit is not None and limit < rows:
        keep = np.zeros(rows, bool)
        keep[np.random.default_rng([seed, 4049]).choice(rows, limit, replace=False)] = True
    ids_all, xs, pairs, start = [], [], [], 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows, columns=columns):
            table = pa.Table.from_batches([batch])
            if "label" in columns:
                labels = table.column("label").to_numpy(zero_copy_only=False)
                if (labels != NO_LABEL).any():
                    bad = np.unique(labels[labels != NO_LABEL])[:10].tolist()
                    raise DataError(
                        path,
                        f"an unlabelled pool's label column must be absent or hold only "
                        f"{NO_LABEL} (no label), found {bad}",
                        column="label",
                    )
                table = table.drop(["label"])
            n = table.num_rows
            if keep is not None:
                table = table.filter(pa.array(keep[start : start + n]))
            start += n
            if table.num_rows == 0:
                continue
            table = table.append_column("label", pa.array(np.zeros(table.num_rows, np.int64)))
            ids, _, x = _checked_rows(path, table, shape, meta)
            ids_all.append(ids)
            xs.append(x)
            if PAIR in columns:
                pairs.append(np.asarray(table.column(PAIR).to_pylist(), dtype=str))
    except (pa.ArrowException, OSError) as err:
        raise DataError(path, f"unreadable parquet data ({err})") from None
    ids = np.concatenate(ids_all)
    _check_unique_ids(path, ids)
    pair_ids = np.concatenate(pairs) if PAIR in columns else None
    return Pool(x=np.concatenate(xs), ids=ids, path=path, pair_ids=pair_ids)


def scan_labels(
    directory: str | Path,
    modality: str,
    split: str,
    meta: Meta | None = None,
    *,
    chunk_rows: int = 65_536,
) -> tuple[np.ndarray, np.ndarray]:
    """The ids and labels of a split, with every check of :func:`load_split`, reading the file
    ``chunk_rows`` rows at a time: memory stays bounded for tables larger than memory.

    Returns ids: (N,) str, y: (N,) int64.
    """
    path, shape, columns = _open_split(directory, modality, split, meta)
    meta = meta or read_meta(directory)
    ids_all, y_all = [], []
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows, columns=columns):
            ids, y, _ = _checked_rows(path, pa.Table.from_batches([batch]), shape, meta)
            ids_all.append(ids)
            y_all.append(y)
    except (pa.ArrowException, OSError) as err:
        raise DataError(path, f"unreadable parquet data ({err})") from None
    if not y_all or sum(len(y) for y in y_all) == 0:
        raise DataError(path, "expected at least one row, found none", column="label")
    ids = np.concatenate(ids_all)
    _check_unique_ids(path, ids)
    return ids, np.concatenate(y_all)


def _open_split(directory, modality: str, split: str, meta: Meta | None):
    meta = meta or read_meta(directory)
    if modality not in meta.shapes:
        raise DataError(
            Path(directory) / META_FILE,
            f"no modality {modality!r}; found {list(meta.shapes)}",
            key="modalities",
        )
    path = split_path(directory, modality, split)
    shape = meta.shapes[modality]
    schema = _read_schema(path)
    _check_schema(path, schema, shape)
    columns = ["id", "label", "x"] + [c for c in ("group", PAIR) if c in schema.names]
    return path, shape, columns


def _checked_rows(path: Path, table: pa.Table, shape: tuple[int, ...], meta: Meta):
    """ids, y, x of a table (or a chunk of one) after the per-row checks: nulls, finite
    features, labels in range."""
    for name in table.column_names:
        if table.column(name).null_count:
            nulls = table.column(name).null_count
            raise DataError(path, f"expected no nulls, found {nulls}", column=name)
    ids = np.asarray(table.column("id").to_pylist(), dtype=str)
    y = table.column("label").to_numpy().astype(np.int64)
    values = table.column("x").combine_chunks().flatten()
    if values.null_count:
        raise DataError(path, f"expected no null values, found {values.null_count}", column="x")
    x = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    x = x.reshape((table.num_rows, *shape))
    finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise DataError(
            path,
            f"expected finite values, found NaN or inf in {len(bad)} rows "
            f"(first id {str(ids[bad[0]])!r})",
            column="x",
        )
    out_of_range = (y < 0) | (y >= meta.num_classes)
    if out_of_range.any():
        bad = np.unique(y[out_of_range])
        raise DataError(
            path,
            f"expected labels in 0..{meta.num_classes - 1}, found {bad[:10].tolist()} "
            f"in {int(out_of_range.sum())} rows",
            column="label",
        )
    return ids, y, x


def _check_unique_ids(path: Path, ids: np.ndarray) -> None:
    unique, counts = np.unique(ids, return_counts=True)
    if len(unique) != len(ids):
        dup = unique[counts > 1]
        raise DataError(
            path,
            f"expected unique ids, found {len(dup)} repeated "
            f"(e.g. {str(dup[0])!r} x{counts.max()})",
            column="id",
        )


def validate_benchmark(directory: str | Path, modalities: Sequence[str] | None = None) -> Meta:
    """Check every file of a benchmark before any training; raise DataError on the first problem.

    Cheap checks first: meta.json, then every file's presence and schema (parquet footers only),
    then the rows of each file (read in bounded chunks), then across files: every class has a row in each train
    split, and each split holds the same label set in every modality.
    """
    meta = read_meta(directory)
    modalities = list(modalities) if modalities is not None else list(meta.modalities)
    for m in modalities:
        if m not in meta.shapes:
            raise DataError(
                Path(directory) / META_FILE,
                f"no modality {m!r}; found {list(meta.shapes)}",
                key="modalities",
            )
    for m in modalities:
        for s in SPLITS:
            path = split_path(directory, m, s)
            _check_schema(path, _read_schema(path), meta.shapes[m])

    labels: dict[tuple[str, str], set[int]] = {}
    for m in modalities:
        for s in SPLITS:
            labels[m, s] = set(np.unique(scan_labels(directory, m, s, meta)[1]).tolist())

    for m in modalities:
        missing = sorted(set(range(meta.num_classes)) - labels[m, "train"])
        if missing:
            names = [meta.class_names[c] for c in missing] if meta.class_names else missing
            raise DataError(
                split_path(directory, m, "train"),
                f"expected a row for every class 0..{meta.num_classes - 1}, "
                f"found none for class {missing} ({names})",
                column="label",
            )
    first = modalities[0]
    for s in SPLITS:
        for m in modalities[1:]:
            if labels[m, s] != labels[first, s]:
                only_m = sorted(labels[m, s] - labels[first, s])
                only_first = sorted(labels[first, s] - labels[m, s])
                raise DataError(
                    split_path(directory, m, s),
                    f"expected the label set of {split_path(directory, first, s)}, "
                    f"found labels {only_m} only here and {only_first} only there",
                    column="label",
                )
    check_pairs(directory, meta, modalities)
    return meta


PAIR_GROUPS: tuple[tuple[str, ...], ...] = (("train", POOL), ("val",), ("test",))
"""Where a row's partner lies: in the other modality's table of the same split, the train table
and the unlabelled pool counting as one (a pool row's partner is a training row of the other
modality, the rows a teacher bank is built from, or a pool row)."""


def paired_modalities(directory: str | Path, meta: Meta) -> list[str]:
    """The modalities whose train table has a ``pair_id`` column (footers only)."""
    return [
        m for m in meta.modalities if PAIR in _read_schema(split_path(directory, m, "train")).names
    ]


def read_pairs(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """A table's pair ids (N,) str and labels (N,) int64 (None in a pool), no features read."""
    labelled = not path.name.endswith(f"_{POOL}.parquet")  # a pool's label column is all -1
    table = pq.read_table(path, columns=[PAIR, "label"] if labelled else [PAIR])
    labels = table.column("label").to_numpy() if labelled else None
    return np.asarray(table.column(PAIR).to_pylist(), dtype=str), labels


def check_pairs(directory: str | Path, meta: Meta, modalities: Sequence[str]) -> None:
    """The pairs a benchmark declares, checked across its paired modalities when one of
    ``modalities`` is paired (only the pair_id and label columns are read); no-op without pairs.

    A modality declares pairs with a ``pair_id`` column in its train table; then its val and
    test tables need one too (its pool may have one). Every pair id is unique within a
    modality's train table and pool together, and within each of its val and test tables; each
    has its partner (the same pair id) in every other paired modality's tables of the same
    split (:data:`PAIR_GROUPS`); partners with labels have the same label.
    """
    paired = paired_modalities(directory, meta)
    if not set(paired) & set(modalities):
        return
    if len(paired) == 1:
        other = next((m for m in meta.modalities if m != paired[0]), paired[0])
        raise DataError(
            split_path(directory, paired[0], "train"),
            f"declares pairs, but no table of modality {other!r} has a {PAIR} column: every "
            f"{PAIR} needs a partner in another modality (or drop the column)",
            column=PAIR,
        )
    seen: dict[tuple[str, tuple[str, ...]], dict[str, tuple[Path, int | None]]] = {}
    for m in paired:
        for group in PAIR_GROUPS:
            rows: dict[str, tuple[Path, int | None]] = {}
            for split in group:
                path = split_path(directory, m, split)
                if split == POOL and not path.is_file():
                    continue
                if PAIR not in _read_schema(path).names:
                    if split == POOL:
                        continue
                    raise DataError(
                        path,
                        f"missing: {split_path(directory, m, 'train').name} declares pairs, so "
                        f"every labelled table of {m!r} needs a {PAIR} column",
                        column=PAIR,
                    )
                pairs, labels = read_pairs(path)
                for i, pid in enumerate(pairs.tolist()):
                    if pid in rows:
                        raise DataError(
                            path,
                            f"expected unique pair ids within {m!r}'s {' and '.join(group)} "
                            f"tables, found {pid!r} twice (also in {rows[pid][0].name})",
                            column=PAIR,
                        )
                    rows[pid] = (path, None if labels is None else int(labels[i]))
            seen[m, group] = rows
    first = paired[0]
    for m in paired[1:]:
        for group in PAIR_GROUPS:
            a, b = seen[first, group], seen[m, group]
            for mine, theirs, other in ((a, b, m), (b, a, first)):
                lonely = next((pid for pid in mine if pid not in theirs), None)
                if lonely is not None:
                    raise DataError(
                        mine[lonely][0],
                        f"pair id {lonely!r} has no partner: no row of {other!r}'s "
                        f"{' or '.join(group)} table has it",
                        column=PAIR,
                    )
            for pid, (path, label) in a.items():
                other_path, other_label = b[pid]
                if label is not None and other_label is not None and label != other_label:
                    raise DataError(
                        path,
                        f"pair id {pid!r} has label {label} here but label {other_label} in "
                        f"its partner's table {other_path}: a pair shows one instance, so one "
                        "class",
                        column=PAIR,
                    )


def subsample_per_class(y: np.ndarray, k: int | str | None, seed: int) -> np.ndarray:
    """Indices of k samples of every class in y (k None or "all": every index), sorted.

    y: (N,) int. Deterministic by seed, and nested: the indices for k are a subset of those
    for any larger k with the same seed, so a sweep over k adds labels instead of redrawing.
    """
    y = np.asarray(y)
    if k is None or k == "all":
        return np.arange(len(y))
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, 'all' or None, found {k!r}")
    chosen = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) < k:
            raise ValueError(f"class {c} has {len(idx)} samples, fewer than k={k}")
        # One generator per class: the draw of class c does not depend on the other classes.
        rng = np.random.default_rng([seed, int(c)])
        chosen.append(idx[rng.permutation(len(idx))[:k]])
    return np.sort(np.concatenate(chosen))


# --------------------------------------------------------------------------- helpers


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _read_schema(path: Path) -> pa.Schema:
    if not path.is_file():
        raise DataError(path, "missing file: expected a parquet file for this modality and split")
    try:
        return pq.read_schema(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(path, f"unreadable parquet (truncated or not parquet): {err}") from None


def _check_schema(
    path: Path, schema: pa.Schema, shape: tuple[int, ...], *, label: bool = True
) -> None:
    """Raise DataError unless the schema holds id, label, x (and maybe group) as documented;
    ``label=False`` (an unlabelled pool): the label column is optional."""
    size = math.prod(shape)
    expected_x = f"fixed_size_list<float32>[{size}] (shape {list(shape)} in meta.json)"
    for name in ("id", "label", "x") if label else ("id", "x"):
        if name not in schema.names:
            raise DataError(path, f"missing; found columns {schema.names}", column=name)
    for name in ("id", "group", PAIR):
        if name in schema.names:
            t = schema.field(name).type
            if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
                raise DataError(path, f"expected string, found {t}", column=name)
    t = schema.field("label").type if "label" in schema.names else pa.int64()
    if not pa.types.is_integer(t):
        raise DataError(path, f"expected an integer type (int64), found {t}", column="label")
    x_field = schema.field("x")
    t = x_field.type
    if not pa.types.is_fixed_size_list(t) or t.value_type != pa.float32():
        raise DataError(path, f"expected {expected_x}, found {t}", column="x")
    if t.list_size != size:
        raise DataError(path, f"expected {expected_x}, found list size {t.list_size}", column="x")
    stored = (x_field.metadata or {}).get(b"shape")
    if stored is not None:
        try:
            stored_shape = tuple(json.loads(stored))
        except (json.JSONDecodeError, TypeError):
            stored_shape = None
        if stored_shape != tuple(shape):
            raise DataError(
                path,
                f"expected field metadata shape {list(shape)} as in meta.json, "
                f"found {stored.decode(errors='replace')}",
                column="x",
            )
