"""Distil one student: the per-run loop that every sweep trial runs, and a command to run it alone.

    python -m cmkd.train                              # synth benchmark, UCMKD vs no distillation
    python -m cmkd.train --config best.yaml           # an experiment file (data: + distill:)
    python -m cmkd.train --benchmark avdigits --set algorithm=ucmkd_bilevel --set epochs=30

The teacher is never run here: its features and logits come from the bank, built once.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
import yaml

from cmkd import cli
from cmkd.augment import augment, augment_kind
from cmkd.bank import BankSampler, TeacherBank, control_bank
from cmkd.config import POOL_ALGORITHMS, ConfigError, DataConfig, DistillConfig, Experiment
from cmkd.data import (
    PAIR,
    Meta,
    has_pool,
    load_pool,
    load_split,
    scan_labels,
    split_path,
    subsample_per_class,
    validate_benchmark,
)
from cmkd.methods import Batch, PoolBatch, evaluate, make_step
from cmkd.models import Student, build_student, count_params
from cmkd.stream import TrainStream, local_batches, should_stream
from cmkd.teacher import benchmark_fingerprint, resolve_encoder, train_teacher


def _builders() -> dict[str, Callable[[Path], object]]:
    from cmkd.data.avdigits import build_avdigits
    from cmkd.data.sonified import build_sonified
    from cmkd.data.synth import build_synth

    return {
        "synth": lambda out: build_synth(out, "synth", progress=True),
        "synth-nohelp": lambda out: build_synth(out, "synth-nohelp", progress=True),
        "avdigits": lambda out: build_avdigits(out, progress=True),
        "sonified": lambda out: build_sonified(out, "sonified", progress=True),
        "sonified-lt": lambda out: build_sonified(
            out, "sonified-lt", long_tail=True, progress=True
        ),
        "sonified-paired": lambda out: build_sonified(
            out, "sonified-paired", paired=True, progress=True
        ),
    }


BUILTIN = ("synth", "synth-nohelp", "avdigits", "sonified", "sonified-lt", "sonified-paired")


def resolve_benchmark(name: str, root: str | Path, log=print) -> Path:
    """A built benchmark's folder: a path as given, or a built-in one (built on first use)."""
    path = Path(name)
    if (path / "meta.json").is_file():
        return path
    if name not in BUILTIN:
        raise ConfigError(
            f"benchmark {name!r}: not a built-in ({', '.join(BUILTIN)}) and "
            f"no meta.json in folder {path}"
        )
    out = Path(root) / name
    if not (out / "meta.json").is_file():  # meta.json is written last: its presence = complete
        log(f"building the built-in benchmark {name!r} into {out} (once)")
        _builders()[name](out)
    return out


def ensure_bank(benchmark: Path, modality: str, log=print) -> Path:
    """The teacher bank for ``modality`` beside the benchmark, trained and built on first use."""
    bank_dir = benchmark / f"teacher-{modality}"
    if not (bank_dir / "bank.json").is_file():
        log(f"training the {modality} teacher and building its bank in {bank_dir} (once)")
        train_teacher(benchmark, modality, bank_dir, log=log)
    return bank_dir


@dataclass(frozen=True, eq=False)
class RunData:
    """Everything a run reads: the student's splits (train subsampled) and the teacher bank.

    x_*: (N, *in_shape) float32 tensors, y_*: (N,) int64 tensors. When the labelled rows are
    streamed, ``train_stream`` says where they are and x_train/y_train are empty.
    """

    meta: Meta
    student: str
    teacher: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    bank: TeacherBank
    train_stream: TrainStream | None = None
    x_pool: torch.Tensor | None = None
    """(U, *in_shape) the student modality's unlabelled pool, or None."""
    pair_train: torch.Tensor | None = None
    """(N,) int64: the bank row of each labelled row's partner (the benchmark declares pairs),
    or None."""
    pair_pool: torch.Tensor | None = None
    """(U,) int64: the bank row of each pool row's partner, or None (no partners)."""

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def pick_modalities(meta: Meta, cfg: DataConfig) -> tuple[str, str]:
    """(student, teacher) modality names, defaulting to the benchmark's second and first."""
    mods = list(meta.modalities)
    teacher = cfg.teacher or mods[0]
    student = cfg.student or next((m for m in mods if m != teacher), None)
    for role, m in (("student", student), ("teacher", teacher)):
        if m not in mods:
            raise ConfigError(
                f"data.{role}: modality {m!r} not in benchmark {meta.name!r} ({mods})"
            )
    if student == teacher:
        raise ConfigError(f"data.student and data.teacher are both {student!r}: they must differ")
    return student, teacher


def draw_val(y: np.ndarray, labelled: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Indices of ``k`` validation rows per class among the rows of ``y`` outside ``labelled``.

    y: (N,) int; labelled: indices already taken as training labels. Deterministic by seed.
    """
    rest = np.setdiff1d(np.arange(len(y)), labelled)
    counts = np.bincount(y[rest], minlength=int(y.max()) + 1)
    short = [c for c in np.unique(y) if counts[c] < k]
    if short:
        c = int(short[0])
        raise ConfigError(
            f"data.val_per_class {k}: class {c} has only {counts[c]} labelled train row(s) left "
            f"after the training labels; lower --val-per-class or --labels-per-class, or pass "
            f"--val-per-class split to validate on the benchmark's own validation table"
        )
    return rest[subsample_per_class(y[rest], k, seed + 7919)]


def load_run_data(cfg: DataConfig, seed: int | None = None, log=print) -> RunData:
    """Resolve, validate and load a run's data; every check happens here, before any training.

    The labelled subset (and the validation rows when ``cfg.val_per_class`` is a number) are
    drawn with ``cfg.seed``; ``seed``, when given, overrides it (benchmarks that redraw).
    With a number K of validation rows per class, they come from the student's train table,
    disjoint from the training labels: with ``labels_per_class: all`` the labels are every
    train row but those.
    """
    seed = cfg.seed if seed is None else seed
    bench = resolve_benchmark(cfg.benchmark, cfg.data_root, log)
    meta = validate_benchmark(bench)
    student, teacher = pick_modalities(meta, cfg)
    student_encoder(cfg, meta.shapes[student], student)  # before a teacher is trained for it
    bank = TeacherBank.load(
        ensure_bank(bench, teacher, log), fingerprint=benchmark_fingerprint(bench)
    )
    student_encoder(cfg, meta.shapes[student], student, bank.feature_dim, teacher)
    ids, y = scan_labels(bench, student, "train", meta)
    counts = np.bincount(y, minlength=meta.num_classes)
    if cfg.labels_per_class != "all" and counts.min() < cfg.labels_per_class:
        c = int(counts.argmin())
        raise ConfigError(
            f"data.labels_per_class {cfg.labels_per_class} (--labels-per-class): class {c} has "
            f"only {counts[c]} row(s) in {split_path(bench, student, 'train')}; ask for at "
            f"most {counts.min()}"
        )
    if cfg.val_per_class == "split":
        val_idx = None
        idx = subsample_per_class(y, cfg.labels_per_class, seed)
    elif cfg.labels_per_class == "all":
        val_idx = draw_val(y, np.zeros(0, np.int64), cfg.val_per_class, seed)
        idx = np.setdiff1d(np.arange(len(y)), val_idx)
    else:
        idx = subsample_per_class(y, cfg.labels_per_class, seed)
        val_idx = draw_val(y, idx, cfg.val_per_class, seed)
    shape = meta.shapes[student]
    stream = TrainStream(
        str(split_path(bench, student, "train")),
        tuple(shape),
        None if len(idx) == len(y) else frozenset(ids[idx].tolist()),
        len(idx),
    )
    train = None
    if should_stream(cfg.loading, stream.nbytes, cfg.stream_above_mb):
        log(
            f"streaming {stream.rows} labelled rows ({stream.nbytes / 2**20:.0f} MiB) from {stream.path}"
        )
        x_train, y_train = np.zeros((0, *shape), np.float32), np.zeros(0, np.int64)
    else:
        train, stream = load_split(bench, student, "train", meta), None
        x_train, y_train = train.x[idx], train.y[idx]
    if val_idx is None:
        val = load_split(bench, student, "val", meta)
        x_val, y_val = val.x, val.y
    elif train is not None:
        x_val, y_val = train.x[val_idx], train.y[val_idx]
    else:  # streamed: read only the validation rows, in bounded chunks
        x_val, y_val = read_rows(split_path(bench, student, "train"), shape, ids[val_idx])
    test = load_split(bench, student, "test", meta)
    pool = pool_pairs = None
    if cfg.unlabelled != 0 and (cfg.unlabelled != "all" or has_pool(bench, student)):
        limit = None if cfg.unlabelled == "all" else cfg.unlabelled
        loaded = load_pool(bench, student, meta, limit=limit, seed=seed)
        pool, pool_pairs = torch.tensor(loaded.x), loaded.pair_ids
        log(f"unlabelled pool: {len(pool)} {student} rows")
    pair_train = pair_pool = None
    if train is not None and train.pair_ids is not None:
        find = partner_finder(bench, teacher, bank)
        pair_train = torch.tensor(find(train.pair_ids[idx]))
        if pool_pairs is not None:
            pair_pool = torch.tensor(find(pool_pairs))
    t = torch.tensor  # a copy: arrays read from parquet are not writable
    return RunData(
        meta,
        student,
        teacher,
        t(x_train),
        t(y_train),
        t(x_val),
        t(y_val),
        t(test.x),
        t(test.y),
        bank,
        stream,
        pool,
        pair_train,
        pair_pool,
    )


def partner_finder(bench: Path, teacher: str, bank: TeacherBank):
    """pair ids (n,) str -> the bank rows of their partners (n,) int64, -1 where the bank has
    none (a partner in the teacher's val or test table). The bank's rows are the teacher's train
    table's, found by id."""
    path = split_path(bench, teacher, "train")
    table = pq.read_table(path, columns=["id", PAIR])
    pair_of = dict(zip(table.column("id").to_pylist(), table.column(PAIR).to_pylist(), strict=True))
    if bank.ids is None or any(i not in pair_of for i in bank.ids.tolist()):
        raise ConfigError(
            f"the {teacher} teacher bank's rows are not the rows of {path}: rebuild the bank "
            "(its ids find each student row's partner)"
        )
    row_of = {pair_of[i]: k for k, i in enumerate(bank.ids.tolist())}
    return lambda pairs: np.array([row_of.get(p, -1) for p in pairs.tolist()], np.int64)


def check_pairing(cfg: DistillConfig, data: RunData, source: str = "distill.pairing") -> None:
    """The paired setting needs pairs: say so before training, naming what to change."""
    cfg.check_pairing(source)
    if cfg.pairing != "paired":
        return
    if data.pair_train is None:
        why = (
            "its labelled rows are streamed (data.loading: stream); pairs need them in memory"
            if data.train_stream is not None
            else f"it declares no pairs (no pair_id column in its {data.student} train table)"
        )
        raise ConfigError(
            f"{source} 'paired': benchmark {data.meta.name!r} cannot pair its rows: {why}; use "
            f"pairing: class_matched"
        )
    lonely = int((data.pair_train < 0).sum())
    if lonely:
        raise ConfigError(
            f"{source} 'paired': {lonely} labelled {data.student} row(s) have no partner in the "
            f"{data.teacher} teacher bank (their partners are not in its train table)"
        )


def check_pool(cfg: DistillConfig, data: RunData, source: str = "distill.algorithm") -> None:
    """A pool algorithm needs a pool: say so before training, naming what to change."""
    if cfg.algorithm in POOL_ALGORITHMS and data.x_pool is None:
        raise ConfigError(
            f"{source} {cfg.algorithm!r} trains on an unlabelled pool, but benchmark "
            f"{data.meta.name!r} has no {data.student}_unlabelled.parquet (or data.unlabelled "
            f"is 0); add a pool or pick another algorithm"
        )


def balanced(class_correct: list[float], class_n: list[float]) -> float:
    """Balanced accuracy: the mean over classes present of each class's accuracy."""
    rates = [c / n for c, n in zip(class_correct, class_n, strict=True) if n > 0]
    return sum(rates) / max(len(rates), 1)


def read_rows(path, shape, ids: np.ndarray, chunk_rows: int = 65_536):
    """x (n, *shape) float32 and y (n,) int64 of the rows of a parquet table whose id is in
    ``ids``, read ``chunk_rows`` rows at a time (memory bounded by the rows kept)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cmkd.stream import table_to_xy

    wanted, xs, ys = frozenset(ids.tolist()), [], []
    for batch in pq.ParquetFile(path).iter_batches(
        batch_size=chunk_rows, columns=["id", "label", "x"]
    ):
        x, y = table_to_xy(pa.Table.from_batches([batch]), tuple(shape), wanted)
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


# The student is the small model: half the teacher CNN's channels (a quarter of its FLOPs).
STUDENT_ENCODER = {"cnn": {"width": 16}, "mlp": {"hidden": 128}}


def student_encoder(
    cfg: DataConfig,
    in_shape,
    modality: str,
    teacher_dim: int | None = None,
    teacher: str = "",
) -> tuple[str, dict, int]:
    """(kind, builder kwargs, feature size) of the student's encoder; a ConfigError naming the
    data.encoder (or data.feature_dim) key when it cannot read ``modality``'s rows."""
    return resolve_encoder(
        cfg.encoder,
        tuple(in_shape),
        modality=modality,
        feature_dim=cfg.feature_dim,
        target_dim=teacher_dim,
        target=f"the {teacher!r} teacher's bank",
    )


STUDENT_SIZE = {"cnn": ("width", "blocks"), "mlp": ("hidden", "depth")}
"""The encoder arguments a student's ``student_width`` and ``student_depth`` set, per kind."""


def make_student(
    data: RunData, cfg: DataConfig, width: int | None = None, depth: int | None = None
) -> Student:
    """The student encoder of ``cfg`` with its head; ``width``/``depth`` override the default
    size of a CNN or MLP student (:data:`STUDENT_ENCODER`; None keeps it)."""
    kind, kwargs, feature_dim = student_encoder(
        cfg, data.in_shape, data.student, data.bank.feature_dim, data.teacher
    )
    size = dict(STUDENT_ENCODER.get(kind, {}))
    for key, value in zip(STUDENT_SIZE.get(kind, ()), (width, depth), strict=False):
        if value is not None:
            size[key] = value
    if kind == "cnn" and min(data.in_shape[1:]) < 2 ** size.get("blocks", 2):
        raise ValueError(
            f"student_depth {size['blocks']}: each CNN block halves the input, and "
            f"{tuple(data.in_shape)} allows at most {int(math.log2(min(data.in_shape[1:])))}"
        )
    return build_student(
        kind,
        data.in_shape,
        data.meta.num_classes,
        feature_dim=feature_dim,
        teacher_dim=data.bank.feature_dim,
        **size,
        **kwargs,
    )


def make_optimizer(cfg: DistillConfig, student: Student) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            student.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_batches(n: int, batch_size: int, steps: int | None, rng: np.random.Generator):
    """Index batches of one epoch: a shuffled pass, or ``steps`` batches drawn with replacement
    of the pass order (a few-label student needs many steps per pass). No batch of size 1."""
    batch_size = min(batch_size, n)
    if steps is None:
        order = rng.permutation(n)
        batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
        return [b for b in batches if len(b) > 1]
    return [rng.choice(n, size=batch_size, replace=batch_size > n) for _ in range(steps)]


class SyncedOptimizer:
    """An optimizer whose gradients are averaged across ranks where DDP would average them.

    The training steps call ``sync_gradients()`` after backward and before clipping and
    stepping (one flattened all-reduce through torch.distributed: gloo on CPU, NCCL on GPU).
    Everything else is the wrapped optimizer's.
    """

    def __init__(self, opt: torch.optim.Optimizer, world: int):
        self.opt, self.world = opt, world

    def sync_gradients(self) -> None:
        grads = [p.grad for g in self.opt.param_groups for p in g["params"] if p.grad is not None]
        flat = torch._utils._flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= self.world
        for g, synced in zip(
            grads, torch._utils._unflatten_dense_tensors(flat, grads), strict=True
        ):
            g.copy_(synced)

    def __getattr__(self, name):
        return getattr(self.opt, name)


def broadcast_from_rank0(module: torch.nn.Module) -> None:
    """Every rank starts from rank 0's parameters and buffers (channels-last ones included)."""
    for t in [*module.parameters(), *module.buffers()]:
        dist.broadcast(t.data, src=0)


def _all_sum(values: list[float], world: int, device: torch.device | str = "cpu") -> list[float]:
    """Sum across ranks; the tensor lives on the run's device (NCCL reduces only GPU tensors)."""
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


class Run:
    """One student's training state: what an epoch needs and what a checkpoint holds.

    Under data parallelism each rank holds its shard of the labelled set in ``data.x_train``,
    the whole bank, and evaluates every ``world``-th validation and test row; counts are summed
    across ranks, so every rank reports the same metrics.
    """

    def __init__(
        self,
        cfg: DistillConfig,
        data: RunData,
        data_cfg: DataConfig | None = None,
        *,
        rank: int = 0,
        world: int = 1,
        device: torch.device | str = "cpu",
        metric: str = "val_acc",
    ):
        torch.manual_seed(cfg.seed)
        # The epoch a run is scored by (``best``) is chosen on the sweep's own metric.
        self.metric, self.sign = metric, (-1.0 if metric.endswith("_ce") else 1.0)
        self.cfg, self.data, self.rank, self.world = cfg, data, rank, world
        self.device = torch.device(device)
        self.rng = np.random.default_rng([cfg.seed, rank])
        # Channels-last conv weights: the CNN student's forward and backward on 128 spectrograms
        # took 0.066 s against 0.080 s on one CPU thread (max-pooling and convolution have NHWC
        # kernels); a no-op for MLPs.
        self.student = make_student(
            data, data_cfg or DataConfig(), cfg.student_width, cfg.student_depth
        ).to(self.device, memory_format=torch.channels_last)
        self.student_params = count_params(self.student)  # the size a two-objective sweep reads
        check_pool(cfg, data)
        check_pairing(cfg, data)
        self.paired = cfg.pairing == "paired"
        bank = control_bank(data.bank, cfg.teacher, data.meta.num_classes)
        self.h_t = bank.head.to(self.device)  # frozen; the only teacher part a run runs
        opt = make_optimizer(cfg, self.student)
        if world > 1:
            broadcast_from_rank0(self.student)
            opt = SyncedOptimizer(opt, world)
        self.opt = opt
        self.step = make_step(cfg.algorithm, **cfg.step_kwargs())
        num_classes = data.meta.num_classes
        self.sampler = BankSampler(bank.y, num_classes, cfg.seed * 1000 + rank)
        self.bank_t = tuple(
            torch.tensor(a, device=self.device) for a in (bank.z, bank.logits, bank.y)
        )
        self.aug_kind = augment_kind(data.student, data.in_shape)
        self.gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank + 17)
        histogram = np.bincount(bank.y, minlength=num_classes).astype(np.float64)
        prior = np.full(num_classes, 1.0 / num_classes) if cfg.prior == "uniform" else histogram
        self.prior = torch.tensor(prior / prior.sum(), dtype=torch.float32, device=self.device)
        # paired KD distils the pool rows that have partners
        self.uses_pool = cfg.algorithm in POOL_ALGORITHMS or (
            cfg.algorithm == "kd" and data.x_pool is not None and data.pair_pool is not None
        )
        n_train = data.train_stream.rows // world if data.train_stream else len(data.y_train)
        per_epoch = cfg.steps_per_epoch or max(n_train // min(cfg.batch_size, max(n_train, 1)), 1)
        self.total_steps, self.steps_done = cfg.epochs * per_epoch, 0
        self.epoch, self.best, self.history = 0, None, []
        self._val_rows = self._epoch_val_rows = self.best_val_rows = None
        """Per validation row, at the best epoch, the quantity the metric averages (correct 0/1,
        or cross-entropy): one process only (None under data parallelism)."""
        self.batch_source: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]] | None = None
        """Where streamed (x, y) batches come from; a Ray Train worker sets its shard's."""
        if data.train_stream is not None:
            self.batch_source = lambda: local_batches(data.train_stream, cfg.batch_size, self.rng)

    def _batches(self) -> Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """This epoch's labelled (x, y, partners) batches: index batches of the rows in memory,
        or a pass over the streamed rows (at most ``steps_per_epoch`` batches of it). partners:
        the bank rows of the rows' partners when the run is paired, else None."""
        if self.batch_source is not None:
            return (
                (x, y, None)
                for x, y in itertools.islice(self.batch_source(), self.cfg.steps_per_epoch)
            )
        data = self.data
        return (
            (data.x_train[idx], data.y_train[idx], data.pair_train[idx] if self.paired else None)
            for idx in train_batches(
                len(data.y_train), self.cfg.batch_size, self.cfg.steps_per_epoch, self.rng
            )
        )

    def _set_lr(self) -> None:
        """The learning rate of the coming step (``lr_schedule``), from the steps done: the same
        after a restore, since ``steps_done`` is checkpointed."""
        if self.cfg.lr_schedule == "constant":
            return
        t = min(self.steps_done / max(self.total_steps, 1), 1.0)
        for group in self.opt.param_groups:
            group["lr"] = self.cfg.lr * 0.5 * (1.0 + math.cos(math.pi * t))

    def train_epoch(self) -> dict[str, float]:
        z_bank, logits_bank, y_bank = self.bank_t
        sums, steps, rows_seen = {}, 0, 0
        for x_s, y_s, partners in self._batches():
            if partners is None:
                rows = torch.from_numpy(self.sampler.class_matched(y_s.numpy())).to(self.device)
            else:  # paired: each row meets its own partner
                rows = partners.to(self.device)
            # index_select: advanced indexing of the bank took ~1000x longer at batch 256 under load
            z_t, y_t, logits_t = (t.index_select(0, rows) for t in (z_bank, y_bank, logits_bank))
            x_s, y_s = self._augment(x_s, self.cfg.augment).to(self.device), y_s.to(self.device)
            batch = Batch(
                x_s, y_s, z_t, y_t, logits_t, self._pool_batch() if self.uses_pool else None
            )
            self._set_lr()
            self.steps_done += 1
            for k, v in self.step(self.student, self.h_t, self.opt, batch).items():
                sums[k] = sums.get(k, 0.0) + v
            steps, rows_seen = steps + 1, rows_seen + len(y_s)
        out = {f"train_{k}": v / max(steps, 1) for k, v in sums.items()}
        return {**out, "train_rows": rows_seen}

    def _augment(self, x: torch.Tensor, strength: str) -> torch.Tensor:
        return augment(
            x, self.aug_kind, strength, generator=self.gen, magnitude=self.cfg.aug_magnitude
        )

    def _pool_batch(self) -> PoolBatch:
        """Pool rows for one step (two views), a label-independent bank sample and its OT
        weights: the prior spread evenly over the sample's rows of each class."""
        cfg, pool = self.cfg, self.data.x_pool
        draw = torch.from_numpy(self.rng.integers(0, len(pool), size=cfg.pool_batch))
        x_u = pool[draw]
        weak, strong = self._augment(x_u, "weak"), self._augment(x_u, "strong")
        z_bank, logits_bank, y_bank = self.bank_t
        paired = self.paired and self.data.pair_pool is not None
        if paired:  # the pool rows' partners: the OT sample and the instance-level targets
            rows = self.data.pair_pool[draw].to(self.device)
        else:
            rows = torch.from_numpy(self.sampler.independent(cfg.pool_batch)).to(self.device)
        z_b, y_b = z_bank.index_select(0, rows), y_bank.index_select(0, rows)
        counts = torch.bincount(y_b, minlength=len(self.prior)).to(self.prior.dtype)
        b = self.prior[y_b] / counts[y_b]
        ramp_steps = cfg.pl_rampup * self.total_steps
        ramp = 1.0 if ramp_steps < 1 else min(1.0, self.steps_done / ramp_steps)
        logits_p = logits_bank.index_select(0, rows) if paired else None
        return PoolBatch(
            weak.to(self.device),
            strong.to(self.device),
            z_b,
            y_b,
            b / b.sum(),
            self.prior,
            ramp,
            z_b if paired else None,
            logits_p,
        )

    def _score(self, split: str) -> dict[str, float]:
        x, y = getattr(self.data, f"x_{split}"), getattr(self.data, f"y_{split}")
        x, y = x[self.rank :: self.world], y[self.rank :: self.world]
        # one process holds every validation row: keep them per row for paired comparisons
        keep = split == "val" and self.world == 1
        ev = evaluate(self.student, self.h_t, x, y, per_sample=keep)
        self._val_rows = ev.get("samples") if keep else None
        n, c = ev["n"], len(ev["class_n"])
        summed = _all_sum(
            [
                ev["acc"] * n,
                ev["acc_teacher_head"] * n,
                ev["ce"] * n,
                n,
                *ev["class_n"],
                *ev["class_acc"],
                *ev["class_acc_teacher_head"],
            ],
            self.world,
            self.device,
        )
        acc, acc_t, ce, n = summed[:4]
        class_n, class_acc, class_acc_t = (
            summed[4 : 4 + c],
            summed[4 + c : 4 + 2 * c],
            summed[4 + 2 * c :],
        )
        return {
            f"{split}_acc_student_head": acc / n,
            f"{split}_acc_teacher_head": acc_t / n,
            f"{split}_bacc_student_head": balanced(class_acc, class_n),
            f"{split}_bacc_teacher_head": balanced(class_acc_t, class_n),
            f"{split}_ce": ce / n,
        }

    def improves(self, metrics: dict) -> bool:
        """Whether ``metrics`` beat the best epoch so far on the run's metric (ties keep the
        earlier epoch)."""
        if self.best is None:
            return True
        return self.sign * metrics[self.metric] > self.sign * self.best[self.metric]

    def evaluate(self) -> dict[str, float]:
        """Validation every epoch; the test split only when validation improves (the test score
        reported is the one at the best-validation epoch, and evaluating it every epoch tripled
        the cost of evaluation). ``val_acc`` and ``test_acc`` are the read-out's
        (``cfg.readout``); both heads' accuracies are always reported beside them."""
        if self.world > 1:  # ranks' BatchNorm statistics drift apart; rank 0's are the model's
            for b in self.student.buffers():
                dist.broadcast(b.data, src=0)
        out = self._score("val")
        head = {"student": "student_head", "teacher": "teacher_head"}.get(self.cfg.readout)
        if head is None:  # best: the head that reads validation better (the student's on a tie)
            better = out["val_acc_teacher_head"] > out["val_acc_student_head"]
            head = "teacher_head" if better else "student_head"
        out["val_acc"] = out[f"val_acc_{head}"]
        out["val_bacc"] = out[f"val_bacc_{head}"]
        per_row = {
            "val_acc": "acc" if head == "student_head" else "acc_teacher_head",
            "val_acc_teacher_head": "acc_teacher_head",
            "val_ce": "ce",
        }[self.metric]
        self._epoch_val_rows = (self._val_rows or {}).get(per_row)
        out["readout_teacher_head"] = float(head == "teacher_head")
        if self.improves(out):
            out.update(self._score("test"))
            out["test_acc"] = out[f"test_acc_{head}"]
            out["test_bacc"] = out[f"test_bacc_{head}"]
        return out

    def run_epoch(self) -> dict[str, float]:
        """Train one epoch, evaluate, and keep the history and the best-validation epoch."""
        t0 = time.perf_counter()
        self.epoch += 1
        metrics = {"epoch": self.epoch, **self.train_epoch(), **self.evaluate()}
        rows = _all_sum([metrics["train_rows"]], self.world, self.device)[0]
        metrics["train_rows"] = int(rows)
        metrics["epoch_s"] = time.perf_counter() - t0
        self.history.append(metrics)
        if self.improves(metrics):
            self.best = metrics
            self.best_val_rows = self._epoch_val_rows
        return metrics

    def state_dict(self) -> dict:
        return {
            "student": self.student.state_dict(),
            "opt": self.opt.state_dict(),
            "epoch": self.epoch,
            "best": self.best,
            "history": self.history,
            "rng": self.rng.bit_generator.state,
            "sampler_rng": self.sampler.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "aug_rng": self.gen.get_state(),
            "steps_done": self.steps_done,
        }

    def load_state_dict(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.opt.load_state_dict(state["opt"])
        self.epoch, self.best, self.history = state["epoch"], state["best"], state["history"]
        self.rng.bit_generator.state = state["rng"]
        self.sampler.rng.bit_generator.state = state["sampler_rng"]
        torch.set_rng_state(state["torch_rng"])
        if "aug_rng" in state:
            self.gen.set_state(state["aug_rng"])
            self.steps_done = state["steps_done"]


def fit(
    cfg: DistillConfig,
    data: RunData,
    data_cfg: DataConfig | None = None,
    *,
    on_epoch: Callable[[dict, Student], None] | None = None,
    log=print,
    metric: str = "val_acc",
) -> dict:
    """Train a student with ``cfg.algorithm`` on one process and report every epoch.

    Each epoch's metrics: the mean of every loss term, validation and test accuracy through the
    student head and through the teacher head. Returns the best-validation epoch's metrics and
    the history.
    """
    run = Run(cfg, data, data_cfg, metric=metric)
    while run.epoch < cfg.epochs:
        m = run.run_epoch()
        if on_epoch is not None:
            on_epoch(m, run.student)
        log(
            f"epoch {m['epoch']:3d}/{cfg.epochs}  loss {m.get('train_loss', float('nan')):.4f}  "
            f"val acc {m['val_acc']:.4f}  (teacher head {m['val_acc_teacher_head']:.4f})  "
            f"{m['epoch_s']:.2f}s"
        )
    return {"best": run.best, "history": run.history, "best_val_rows": run.best_val_rows}


def check_benchmark(name: str, flag: str) -> None:
    """Refuse (exit 2) a benchmark that resolve_benchmark would not take, before it builds one."""
    if name not in BUILTIN and not (Path(name) / "meta.json").is_file():
        cli.fail(
            f"{flag} {name!r}: not a built-in ({', '.join(BUILTIN)}) and no meta.json in that "
            "folder; expected a built-in's name or a built benchmark's folder"
        )


def _set(pair: str) -> tuple[str, object]:
    """An argparse ``type=`` for ``--set KEY=VALUE``: the value read as YAML (0.5, true, null)."""
    key, eq, value = pair.partition("=")
    if not eq or not key.strip():
        raise argparse.ArgumentTypeError(f"got {pair!r}, expected KEY=VALUE, e.g. --set w_fa=0.5")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(
            f"got {pair!r}, expected KEY=VALUE with a YAML value, e.g. --set w_fa=0.5"
        ) from None


def check_args(argv=None) -> tuple[argparse.Namespace, Experiment]:
    """Parse and validate the command line, building nothing: a bad value exits 2 (cmkd.cli)."""
    p = cli.parser("python -m cmkd.train", __doc__)
    p.add_argument("--config", help="experiment YAML with 'data:' and 'distill:' sections")
    p.add_argument("--benchmark", help=f"{', '.join(BUILTIN)}, or a built benchmark's folder")
    p.add_argument(
        "--labels-per-class",
        type=cli.labels_per_class,
        help="labelled student samples per class, or 'all'",
    )
    p.add_argument(
        "--unlabelled",
        type=cli.unlabelled,
        help="rows of the student's unlabelled pool the pool algorithms may use: N, 'all' or 0",
    )
    p.add_argument(
        "--set",
        type=_set,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a distill hyperparameter (repeatable), e.g. --set w_fa=0.5",
    )
    p.add_argument(
        "--no-reference", action="store_true", help="skip the no-distillation (ce) reference run"
    )
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    try:
        exp = (
            Experiment.from_yaml(args.config)
            if args.config
            else Experiment(distill=DistillConfig(epochs=30, steps_per_epoch=20, batch_size=32))
        )
    except ConfigError as e:
        cli.fail(f"--config {e}")
    data = exp.data.model_dump()
    for key in ("benchmark", "labels_per_class", "unlabelled"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    distill = exp.distill.model_dump()
    try:
        for key, value in args.set:  # each alone first, so that the error names its --set
            DistillConfig.from_dict({**distill, key: value}, f"--set {key}", "distill.", False)
        exp = Experiment.from_dict(
            {"data": data, "distill": {**distill, **dict(args.set)}}, source="command line"
        )
    except ConfigError as e:
        cli.fail(str(e))
    flag = "--benchmark" if args.benchmark else f"--config {args.config}: data.benchmark"
    check_benchmark(exp.data.benchmark, flag)
    return args, exp


def main(argv=None) -> int:
    try:
        args, exp = check_args(argv)
    except SystemExit as e:  # a bad argument, already said on stderr (or --help)
        return e.code
    try:
        torch.set_num_threads(torch.get_num_threads())
        data = load_run_data(exp.data)
    except (ConfigError, ValueError, FileNotFoundError) as e:  # what only the data can tell
        return cli.error(str(e))
    print(
        f"student {data.student} ({len(data.y_train)} labelled), teacher {data.teacher} "
        f"(bank {len(data.bank.y)} rows), benchmark {data.meta.name}"
    )
    runs = {exp.distill.algorithm: exp.distill}
    if not args.no_reference and exp.distill.algorithm != "ce":
        runs = {"ce (no distillation)": exp.distill.model_copy(update={"algorithm": "ce"}), **runs}
    results = {}
    for name, cfg in runs.items():
        print(f"\n== {name}")
        results[name] = fit(cfg, data, exp.data)["best"]
    print("\n| run | best val acc | test acc | test acc (teacher head) |\n|---|---:|---:|---:|")
    for name, best in results.items():
        print(
            f"| {name} | {best['val_acc']:.4f} | {best['test_acc']:.4f} | "
            f"{best['test_acc_teacher_head']:.4f} |"
        )
    if len(results) == 2:
        ref, run = results.values()
        print(
            f"\n{exp.distill.algorithm}: {100 * (run['test_acc'] - ref['test_acc']):+.2f} test "
            f"accuracy points over no distillation (at the best validation epoch)"
        )
    if args.out:
        Path(args.out).write_text(
            json.dumps({"experiment": exp.model_dump(), "results": results}, indent=2)
        )
        print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
