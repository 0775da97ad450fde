"""Streaming labelled rows from parquet: the size rule, one shuffled pass per epoch, bounded
validation, and a Ray Train trial that reads its rows through a Ray Data ``read_parquet`` shard."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from cmkd import train
from cmkd.config import DataConfig, DistillConfig
from cmkd.data import DataError, load_split, scan_labels, write_split
from cmkd.data.synth import build_synth
from cmkd.stream import TrainStream, local_batches, should_stream


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    build_synth(out, "synth", seed=0, train_per_class=30, val_per_class=10, test_per_class=10)
    split = load_split(out, "b", "train")  # rewritten in row groups of 7 rows: 43 groups
    write_split(out / "b_train.parquet", split.x, split.y, split.ids, row_group_rows=7)
    return out


def test_size_rule_and_overrides():
    assert not should_stream("auto", 2**20, stream_above_mb=1.0)
    assert should_stream("auto", 2**20 + 1, stream_above_mb=1.0)
    assert should_stream("stream", 10, stream_above_mb=1.0)
    assert not should_stream("memory", 2**40, stream_above_mb=1.0)
    with pytest.raises(ValueError, match="auto, memory or stream"):
        should_stream("lazy", 1, 1.0)


def test_default_row_groups_bound_memory(tmp_path):
    x = np.zeros((300, 1, 200, 200), np.float32)  # 160 kB a row: about 420 rows per 64 MiB
    path = write_split(tmp_path / "a_train.parquet", x, np.zeros(300, int), range(300))
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == 1 and meta.row_group(0).num_rows == 300
    x = np.zeros((1000, 1, 200, 200), np.float32)
    path = write_split(tmp_path / "a_train.parquet", x, np.zeros(1000, int), range(1000))
    assert pq.ParquetFile(path).metadata.row_group(0).num_rows == 64 * 2**20 // (4 * 40_000)


@pytest.mark.parametrize("subset", [False, True])
def test_one_pass_visits_every_labelled_row_once_in_a_new_order(bench, subset):
    split = load_split(bench, "b", "train")
    assert pq.ParquetFile(bench / "b_train.parquet").metadata.num_row_groups == 43
    chosen = np.arange(0, len(split.y), 3) if subset else np.arange(len(split.y))
    ids = frozenset(split.ids[chosen].tolist()) if subset else None
    stream = TrainStream(str(bench / "b_train.parquet"), (64,), ids, len(chosen))
    rng = np.random.default_rng(0)
    passes = []
    for _ in range(2):
        batches = list(local_batches(stream, 8, rng, buffer_rows=16))
        assert all(1 < len(y) <= 8 for _, y in batches)
        x = np.concatenate([b[0].numpy() for b in batches])
        y = np.concatenate([b[1].numpy() for b in batches])
        assert x.shape[1:] == (64,) and x.dtype == np.float32
        passes.append((x, y))
    for x, y in passes:
        # Every chosen row exactly once (a last batch of one row may be dropped), with its label.
        want = {tuple(r): lab for r, lab in zip(split.x[chosen], split.y[chosen], strict=True)}
        got = {tuple(r): lab for r, lab in zip(x, y, strict=True)}
        assert len(got) == len(x) >= len(chosen) - 1
        assert all(want[r] == lab for r, lab in got.items())
    assert not np.array_equal(passes[0][0], passes[1][0])  # reshuffled each pass
    rows_in_first_group = split.x[:7]
    first_seven = passes[0][0][:7]
    assert not np.array_equal(first_seven, rows_in_first_group)  # not file order


def test_streamed_run_trains_on_the_same_rows_without_holding_them(bench):
    kw = dict(benchmark=str(bench), labels_per_class=2)
    held = train.load_run_data(DataConfig(**kw, loading="memory"), seed=0, log=lambda *_: None)
    streamed = train.load_run_data(
        DataConfig(**kw, loading="auto", stream_above_mb=1e-4), seed=0, log=lambda *_: None
    )
    assert held.train_stream is None and len(held.y_train) == 20  # 2 labels x 10 classes
    assert len(streamed.y_train) == 0 and streamed.train_stream.rows == 20
    assert streamed.in_shape == held.in_shape == (64,)
    cfg = DistillConfig(algorithm="ucmkd_sum", epochs=2, batch_size=4, steps_per_epoch=None)
    result = train.fit(cfg, streamed, log=lambda *_: None)
    # One pass per epoch over the 20 labelled rows, in batches of 4.
    assert [m["train_rows"] for m in result["history"]] == [20, 20]
    assert np.isfinite(result["best"]["train_fa"]) and result["best"]["val_acc"] > 0


def test_bounded_validation_finds_problems_in_any_chunk(bench, tmp_path):
    split = load_split(bench, "b", "train")
    ids, y = scan_labels(bench, "b", "train", chunk_rows=5)
    assert np.array_equal(y, split.y) and np.array_equal(ids, split.ids)
    x = split.x.copy()
    x[-1, 3] = np.nan  # in the last chunk only
    bad = tmp_path / "bench"
    bad.mkdir()
    (bad / "meta.json").write_text((bench / "meta.json").read_text())
    write_split(bad / "b_train.parquet", x, split.y, split.ids)
    with pytest.raises(DataError, match="b_train.parquet.*NaN or inf in 1 rows"):
        scan_labels(bad, "b", "train", chunk_rows=5)
    dup = split.ids.copy()
    dup[-1] = dup[0]  # the repeat sits in another chunk than the original
    write_split(bad / "b_train.parquet", split.x, split.y, dup)
    with pytest.raises(DataError, match="expected unique ids"):
        scan_labels(bad, "b", "train", chunk_rows=5)


@pytest.mark.ray
def test_ray_trial_streams_its_rows_from_a_read_parquet_shard(bench, tmp_path):
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from cmkd.trial import pack, train_dataset, worker_loop

    ray.init(num_cpus=2, logging_level="ERROR", log_to_driver=False)
    try:
        data_cfg = DataConfig(benchmark=str(bench), labels_per_class=2, loading="stream")
        data = train.load_run_data(data_cfg, seed=0, log=lambda *_: None)
        ds = train_dataset(data.x_train.numpy(), data.y_train.numpy(), data.train_stream)
        assert "ReadFilesParquet" in str(ds)  # lazy: nothing read before the trial iterates
        cfg = DistillConfig(algorithm="ucmkd_sum", epochs=2, batch_size=4, steps_per_epoch=None)
        trainer = TorchTrainer(
            worker_loop,
            train_loop_config={
                "distill": cfg.model_dump(),
                "data": data_cfg.model_dump(),
                "payload": [ray.put(pack(data))],
            },
            scaling_config=ray.train.ScalingConfig(
                num_workers=2, resources_per_worker={"CPU": 0.5}
            ),
            run_config=ray.train.RunConfig(name="stream", storage_path=str(tmp_path)),
            datasets={"train": ds},
        )
        result = trainer.fit()
    finally:
        ray.shutdown()
    assert result.error is None
    assert result.metrics["epoch"] == 2
    # Ray Train splits the 20 labelled rows equally between the ranks; the counts are summed.
    assert result.metrics["train_rows"] == 20
    assert result.metrics["val_acc"] > 0
