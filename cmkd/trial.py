"""One sweep trial: a Ray Train ``TorchTrainer`` of K data-parallel workers inside a Tune trial.

The Ray layer only wires: the trial's driver builds the trainer (run named from the trial id, so
a retried trial resumes from its checkpoint), the workers load their shard and the bank, and
every epoch they report metrics summed across ranks and a checkpoint written by rank 0. The
training itself is :class:`cmkd.train.Run`, which knows nothing of Ray.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import ray.train
import torch
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from cmkd.bank import TeacherBank
from cmkd.config import DataConfig, DistillConfig
from cmkd.cost import latency_ms
from cmkd.data import Meta
from cmkd.losses import NonFiniteError
from cmkd.stream import TrainStream, table_to_xy
from cmkd.train import Run, RunData

STATE_FILE = "state.pt"
DIVERGED_FILE = "diverged.txt"
"""Written beside a Train run whose loss went NaN or inf; a retry reads it and fails at once."""
DRIVER_RESOURCE = "cmkd_driver"  # the custom resource of cluster/*.yaml's non-preemptible nodes


@dataclass(frozen=True)
class Resources:
    """What one trial asks of the cluster, sized for the machine (2 CPUs included)."""

    workers: int = 1
    """Train workers (data-parallel ranks) per trial."""
    cpus_per_worker: float = 1.0
    """CPUs each worker holds (fractional on small machines)."""
    gpus_per_worker: float = 0.0
    """GPUs each worker holds: 0 or a whole number (fractional GPUs break NCCL)."""

    driver_resource: str | None = None
    """A custom resource the trial's own actor asks a sliver of, so that it only lands on nodes
    that carry it (cluster/*.yaml: ``cmkd_driver`` on the head and the on-demand CPU workers,
    never on preemptible GPU nodes whose loss would kill the trial's driver)."""

    @property
    def local_request(self) -> dict[str, float]:
        """A one-worker trial run in its own process (:func:`trial_local`) holds its worker's
        resources itself."""
        return {
            "CPU": self.cpus_per_worker,
            **({"GPU": self.gpus_per_worker} if self.gpus_per_worker else {}),
        }

    @property
    def trial_request(self) -> dict[str, float]:
        # The trial's own actor only waits for its workers: it holds no CPU (a CPU it held would
        # starve its workers on a 2-CPU machine). Ray refuses an empty request; memory=1 is not.
        return {"memory": 1, **({self.driver_resource: 0.001} if self.driver_resource else {})}

    def fits(self, cluster: dict) -> int:
        """Trials these cluster resources hold: its CPUs (or GPUs) over one trial's need (0 where
        it has none: Ray leaves out a resource the cluster has none of)."""
        if self.gpus_per_worker > 0:
            return int(cluster.get("GPU", 0) // (self.workers * self.gpus_per_worker))
        return int(cluster.get("CPU", 0) // (self.workers * self.cpus_per_worker))

    def concurrency(self, cluster: dict) -> int:
        """Trials the cluster can run at once (at least one)."""
        return max(1, self.fits(cluster))


class TrialDiverged(RuntimeError):
    """A trial's loss went NaN or inf. Training is deterministic from its checkpoint, so a retry
    would diverge again: the trial fails with this reason instead of being trained again."""


def read_marker(uri: str) -> str | None:
    """The text of a small file at a local path or an s3:// / gs:// URI, None if there is none."""
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def write_marker(uri: str, text: str) -> None:
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def for_machine(cluster: dict, workers: int, gpus_per_worker: float, cpus_per_worker: float | None):
    """Resource requests that start on this cluster: on 2 CPUs, 2 workers get 0.5 CPU each; on a
    cluster with no CPU yet (its worker nodes start at zero), 1 CPU each. Where nodes carry the ``cmkd_driver`` resource, trial actors are kept on those nodes."""
    if gpus_per_worker and gpus_per_worker != int(gpus_per_worker):
        raise ValueError(
            f"--gpus-per-worker {gpus_per_worker}: fractional GPUs break DDP "
            "(NCCL needs a whole device per rank); use 1"
        )
    if cpus_per_worker is None:
        cpus = cluster.get("CPU", 0)  # Ray leaves out a resource the cluster has none of
        if cpus <= 0:  # an autoscaling cluster whose trial nodes have not come: whole CPUs
            cpus_per_worker = 1.0
        else:
            cpus_per_worker = 1.0 if cpus >= 2 * workers else max(cpus / (2 * workers), 0.1)
    driver = DRIVER_RESOURCE if cluster.get(DRIVER_RESOURCE) else None
    return Resources(workers, cpus_per_worker, gpus_per_worker, driver)


def pack(data: RunData) -> dict:
    """What every trial needs, as plain arrays (put in the object store once per sweep)."""
    return {
        "meta": data.meta,
        "student": data.student,
        "teacher": data.teacher,
        "x_val": data.x_val.numpy(),
        "y_val": data.y_val.numpy(),
        "x_test": data.x_test.numpy(),
        "y_test": data.y_test.numpy(),
        "bank_z": data.bank.z,
        "bank_logits": data.bank.logits,
        "bank_y": data.bank.y,
        "bank_head": data.bank.head.state_dict(),
        "bank_info": data.bank.info,
        "train_stream": data.train_stream,
        "x_pool": None if data.x_pool is None else data.x_pool.numpy(),
        "pair_train": None if data.pair_train is None else data.pair_train.numpy(),
        "pair_pool": None if data.pair_pool is None else data.pair_pool.numpy(),
    }


def unpack(
    payload: dict, x_train: np.ndarray, y_train: np.ndarray, rank: int = 0, world: int = 1
) -> RunData:
    """A rank's RunData from :func:`pack`'s payload and its labelled rows (those
    :func:`_train_shard` gives ``rank`` of ``world``: the partners are cut the same way)."""
    from cmkd.models import freeze, linear_head

    meta: Meta = payload["meta"]
    head = linear_head(payload["bank_z"].shape[1], meta.num_classes)
    head.load_state_dict(payload["bank_head"])
    bank = TeacherBank(
        z=payload["bank_z"],
        logits=payload["bank_logits"],
        y=payload["bank_y"],
        head=freeze(head),
        info=payload["bank_info"],
    )
    pairs = payload.get("pair_train")
    if pairs is not None:
        pairs = pairs[rank : len(pairs) // world * world : world]
    t = torch.tensor  # copies: arrays from the object store are read-only
    return RunData(
        meta,
        payload["student"],
        payload["teacher"],
        t(x_train),
        t(y_train),
        t(payload["x_val"]),
        t(payload["y_val"]),
        t(payload["x_test"]),
        t(payload["y_test"]),
        bank,
        payload["train_stream"],
        None if payload.get("x_pool") is None else t(payload["x_pool"]),
        None if pairs is None else t(pairs),
        None if payload.get("pair_pool") is None else t(payload["pair_pool"]),
    )


def _train_shard(train_ref: list | None, rank: int, world: int) -> tuple[np.ndarray, np.ndarray]:
    """This rank's labelled rows, kept in memory: from the sweep's object-store copy of the rows
    (``train_ref``, put once for every trial), every ``world``-th row from ``rank`` on and the same
    count on every rank, as Ray Data's equal split; without it, read once from the rank's Ray
    Data shard. The object store spares each trial Ray Data's split coordinator (0.12 GB) and
    the sweep Ray Data's stats actor (0.11 GB)."""
    if train_ref is not None:
        x, y = ray.get(train_ref[0])
        keep = slice(rank, len(y) // world * world, world)
        return x[keep].astype(np.float32), y[keep].astype(np.int64)
    shard = ray.train.get_dataset_shard("train")
    xs, ys = [], []
    for batch in shard.iter_batches(batch_size=4096, batch_format="numpy"):
        xs.append(batch["x"])
        ys.append(batch["y"])
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)


def _shard_batches(batch_size: int, seed: int):
    """A pass over this rank's streamed shard as (x, y) tensors (Ray Data reads ahead)."""
    shard = ray.train.get_dataset_shard("train")

    def batches():
        for b in shard.iter_batches(
            batch_size=batch_size,
            batch_format="numpy",
            local_shuffle_buffer_size=max(8 * batch_size, 1024),
            local_shuffle_seed=seed,
        ):
            if len(b["y"]) > 1:  # BatchNorm needs two rows
                yield torch.from_numpy(b["x"]), torch.from_numpy(b["y"])

    return batches


def train_loop(
    config: dict,
    data: RunData,
    *,
    report: Callable[[dict, dict | None], None],
    restored: dict | None = None,
    rank: int = 0,
    world: int = 1,
    device: str | torch.device = "cpu",
    batches: Callable | None = None,
) -> None:
    """The one road from a trial's configuration to its epochs, on every path a trial takes.

    ``config``: the trial's ``distill`` and ``data`` settings, ``metric``, ``diverged_uri`` and
    ``latency`` (:func:`loop_config`); ``data``: this rank's rows; ``restored``: the state of the last
    checkpoint, if any; ``report(metrics, state)``: called once per epoch, with the run's state
    to checkpoint on rank 0 (None on the other ranks); ``batches``: a streamed shard's batches.
    A loss that turns NaN or inf writes the diverged marker (a retry then fails at once).
    Every epoch also reports what the student costs: ``student_params``, and when
    ``latency`` is asked, ``student_latency_ms`` (measured once, before training).
    """
    marker = config.get("diverged_uri")
    cfg = DistillConfig.from_dict(config["distill"], source="trial config")
    run = Run(
        cfg,
        data,
        DataConfig.model_validate(config["data"]),
        rank=rank,
        world=world,
        device=device,
        metric=config.get("metric", "val_acc"),
    )
    if batches is not None:
        run.batch_source = batches
    costs = {"student_params": run.student_params}
    if config.get("latency"):
        costs["student_latency_ms"] = latency_ms(run.student, data.in_shape, device)
    if restored is not None:
        run.load_state_dict(restored)
    if run.epoch >= cfg.epochs and run.history:
        # Restored after its last epoch (a driver killed before Tune saved the trial's end):
        # report its epochs again, unchanged, or the trial would end on a result without its
        # metric and its resumed record would lack its curve.
        run.best = None
        for m in run.history:
            run.best = m if run.improves(m) else run.best
            report({**_with_best(m, run), **costs}, None)
    while run.epoch < cfg.epochs:
        try:
            metrics = run.run_epoch()
        except NonFiniteError as e:
            if marker:
                write_marker(marker, f"diverged in epoch {run.epoch}: {e}")
            raise
        report({**_with_best(metrics, run), **costs}, run.state_dict() if rank == 0 else None)


def loop_config(
    config: dict,
    data_cfg: dict,
    metric: str,
    diverged_uri: str | None,
    latency: bool = False,
    **refs,
) -> dict:
    """What :func:`train_loop` reads of a trial (and a Train worker of its rows' refs)."""
    return {
        "distill": {k: v for k, v in config.items() if k in DistillConfig.model_fields},
        "data": data_cfg,
        "diverged_uri": diverged_uri,
        "metric": metric,
        "latency": latency,
        **refs,
    }


def _load_state(checkpoint, device) -> dict | None:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        # weights_only: a checkpoint is data; unpickling arbitrary objects could run code
        return torch.load(Path(d) / STATE_FILE, weights_only=True, map_location=device)


def _checkpointed(report_fn, checkpoint_cls) -> Callable[[dict, dict | None], None]:
    """A :func:`train_loop` ``report`` through Ray's ``report(metrics, checkpoint=...)`` (Train's
    or Tune's, each with its own Checkpoint class)."""

    def report(metrics: dict, state: dict | None) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if state is not None:
                torch.save(state, Path(tmp) / STATE_FILE)
                ckpt = checkpoint_cls.from_directory(tmp)
            report_fn(metrics, checkpoint=ckpt)

    return report


def _not_diverged(storage: str) -> str:
    """This Tune trial's diverged marker, beside its Train run in ``storage``; a retry of a trial
    that diverged fails at once (the same state would diverge again) and trains nothing."""
    uri = f"{storage}/train-{ray.tune.get_context().get_trial_id()}/{DIVERGED_FILE}"
    reason = read_marker(uri)
    if reason is not None:
        raise TrialDiverged(reason)
    return uri


def _rank_data(payload: dict, train_ref: list | None, rank: int, world: int) -> RunData:
    """This rank's RunData from the sweep's object-store copies (no labelled rows when they are
    streamed: the rank reads its Ray Data shard instead)."""
    if payload["train_stream"] is not None:
        x, y = np.zeros(0, np.float32), np.zeros(0, np.int64)
    else:
        x, y = _train_shard(train_ref, rank, world)
    return unpack(payload, x.reshape(-1, *payload["x_val"].shape[1:]), y, rank, world)


def worker_loop(config: dict) -> None:
    """Runs on every Train worker: its rows and the last checkpoint, then :func:`train_loop`."""
    torch.set_num_threads(1)  # one thread per worker: oversubscribed threads ran 7-30x slower
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    marker = config.get("diverged_uri")  # absent when a test runs the loop on its own
    diverged = read_marker(marker) if marker else None
    if diverged is not None:  # an earlier attempt diverged: the same state would diverge again
        raise NonFiniteError(diverged)
    payload = ray.get(config["payload"][0])
    streamed = payload["train_stream"] is not None
    data = _rank_data(payload, config.get("train"), rank, world)
    device = ray.train.torch.get_device()  # this rank's GPU when the trial has GPUs
    cfg = DistillConfig.from_dict(config["distill"], source="trial config")
    train_loop(
        config,
        data,
        report=_checkpointed(ray.train.report, ray.train.Checkpoint),
        restored=_load_state(ray.train.get_checkpoint(), device),
        rank=rank,
        world=world,
        device=device,
        batches=_shard_batches(cfg.batch_size, cfg.seed * 1000 + rank) if streamed else None,
    )


def trial_local(
    config: dict,
    *,
    payload_ref: list,
    train_ref: list,
    data_cfg: dict,
    resources: Resources,
    storage: str,
    metric: str = "val_acc",
    latency: bool = False,
) -> None:
    """The Tune trainable of a one-worker trial whose rows are in memory: :func:`train_loop` in
    the trial's own process, checkpointed through Tune (a failed trial is retried from its last
    epoch). No Train controller, worker group or process group: a trial costs its training,
    and with Tune's actor reuse the next trial starts in a process that has imported it all.
    The same epochs, metrics and checkpoints as :func:`trial_driver` with one worker."""
    torch.set_num_threads(1)  # as a Train worker: the same threads, the same numbers
    diverged_uri = _not_diverged(storage)
    data = _rank_data(ray.get(payload_ref[0]), train_ref, 0, 1)
    device = "cuda" if resources.gpus_per_worker else "cpu"
    try:
        train_loop(
            loop_config(config, data_cfg, metric, diverged_uri, latency),
            data,
            report=_checkpointed(ray.tune.report, ray.tune.Checkpoint),
            restored=_load_state(ray.tune.get_checkpoint(), device),
            device=device,
        )
    except NonFiniteError as e:
        raise TrialDiverged(read_marker(diverged_uri) or str(e)) from None


BEST_KEYS = ("val_acc", "val_acc_teacher_head", "val_ce", "test_acc", "test_acc_teacher_head")


def _with_best(metrics: dict, run: Run) -> dict:
    """The epoch's metrics with ``best_*``: the values at the best epoch so far on the run's
    metric. ``best_<metric>`` is the sweep's objective: ASHA, Optuna and the leaderboard all
    read it (the best validation value up to this epoch)."""
    return {**metrics, **{f"best_{k}": run.best[k] for k in BEST_KEYS if k in run.best}}


def train_dataset(x: np.ndarray, y: np.ndarray, stream: TrainStream | None) -> ray.data.Dataset:
    """The labelled student rows as a Ray Dataset, split across the trial's workers: the rows in
    memory, or (streamed) a lazy ``read_parquet`` of the student's table, filtered to the
    labelled subset and decoded to x (n, *shape) float32, y (n,) int64 block by block."""
    if stream is None:
        return ray.data.from_items([{"x": x[i], "y": int(y[i])} for i in range(len(y))])
    columns = ["id", "label", "x"] if stream.ids is not None else ["label", "x"]

    def decode(table):
        x, y = table_to_xy(table, stream.shape, stream.ids)
        return {"x": x, "y": y}

    return (
        ray.data.read_parquet(stream.path)
        .select_columns(columns)
        .map_batches(decode, batch_format="pyarrow")
    )


def trial_driver(
    config: dict,
    *,
    payload_ref: list,
    train_ref: list,
    stream: TrainStream | None,
    data_cfg: dict,
    resources: Resources,
    storage: str,
    max_failures: int,
    metric: str = "val_acc",
    latency: bool = False,
) -> None:
    # ``storage`` is the sweep's folder: each trial's Train run lives beside Tune's trial dirs.
    """The Tune trainable: one TorchTrainer, named from the trial id so a retry resumes."""
    diverged_uri = _not_diverged(storage)
    trainer = make_trainer(
        config,
        payload_ref=payload_ref,
        train_ref=train_ref,
        stream=stream,
        data_cfg=data_cfg,
        resources=resources,
        storage=storage,
        name=f"train-{ray.tune.get_context().get_trial_id()}",
        max_failures=max_failures,
        diverged_uri=diverged_uri,
        metric=metric,
        callbacks=[TuneReportCallback()],
        latency=latency,
    )
    try:
        trainer.fit()
    except Exception:
        reason = read_marker(diverged_uri)
        if reason is not None:
            raise TrialDiverged(reason) from None
        raise
    _drain_reports()


def make_trainer(
    config: dict,
    *,
    payload_ref: list,
    train_ref: list,
    stream: TrainStream | None,
    data_cfg: dict,
    resources: Resources,
    storage: str,
    name: str,
    max_failures: int,
    diverged_uri: str | None,
    metric: str,
    callbacks: list,
    latency: bool = False,
) -> TorchTrainer:
    """The ``TorchTrainer`` of one run: K workers running :func:`worker_loop` on ``config``."""
    # Rows in memory travel through the object store (each worker takes its share of
    # ``train_ref``); only streamed rows are a Ray Data dataset, read lazily from parquet.
    datasets = {} if stream is None else {"train": train_dataset(None, None, stream)}
    return TorchTrainer(
        worker_loop,
        train_loop_config=loop_config(
            config,
            data_cfg,
            metric,
            diverged_uri,
            latency,
            payload=payload_ref,
            train=train_ref if stream is None else None,
        ),
        torch_config=TorchConfig(backend="nccl" if resources.gpus_per_worker else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.workers,
            use_gpu=resources.gpus_per_worker > 0,
            resources_per_worker={
                "CPU": resources.cpus_per_worker,
                **({"GPU": resources.gpus_per_worker} if resources.gpus_per_worker else {}),
            },
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            callbacks=callbacks,
        ),
        datasets=datasets,
    )


def retrain_distributed(config: dict, *, name: str, metric: str, **wiring) -> dict:
    """One final-retrain run with the trials' own K-worker recipe (run as a Ray task).

    ``wiring``: :func:`make_trainer`'s ``payload_ref``, ``train_ref``, ``data_cfg``,
    ``resources`` and ``storage``. Returns ``val`` (``metric`` at the best epoch) and the best
    epoch's accuracies."""
    result = make_trainer(
        config,
        stream=None,
        name=name,
        max_failures=1,
        diverged_uri=None,
        metric=metric,
        callbacks=[],
        **wiring,
    ).fit()
    m = result.metrics
    if result.error is not None or not m:
        raise RuntimeError(f"final retrain {name} failed: {result.error}")
    return {
        "val": m[f"best_{metric}"],
        "val_acc": m["best_val_acc"],
        "test_acc": m["best_test_acc"],
        "test_acc_teacher_head": m["best_test_acc_teacher_head"],
        "epoch": m["epoch"],
    }


def _drain_reports(timeout_s: float = 30.0) -> None:
    """Wait until Tune has taken every report the Train run forwarded.

    The forwarding queue holds one report; when the last epochs report in quick succession and
    the trial function returns at once, the last report was left in it: Tune never saw the
    final epoch and the trial stayed RUNNING for ever. Returning only once the queue is empty
    lets Tune's own loop (which drains it while the function runs) take that report.
    """
    from ray.train._internal.session import get_session

    session = get_session()
    queue = session._get_or_create_inter_actor_queue() if session is not None else None
    deadline = time.monotonic() + timeout_s
    while queue is not None and not queue.empty() and time.monotonic() < deadline:
        time.sleep(0.05)
