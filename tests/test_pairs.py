"""The paired setting: pairs declared in the layout and checked, each row meeting its partner's
bank row (labelled and pool rows, on every worker's shard), the instance-level terms, and the
errors that say what to change."""

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from cmkd import losses, methods, train
from cmkd.config import ConfigError, DataConfig, DistillConfig
from cmkd.data import DataError, pool_path, split_path, validate_benchmark
from cmkd.data.schema import write_meta, write_pool, write_split
from cmkd.data.synth import build_synth
from cmkd.trial import pack, unpack

CLASSES, DIM = 3, 6
QUIET = dict(log=lambda *_: None)


def write_paired(out, seed=0, per_class=(12, 6, 6, 6)):
    """Two vector modalities seeing the same instances: a = u·A + noise, b = u·B + noise with
    u near its class centre. a_train holds the partners of b_train and of b's pool."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (CLASSES, 4))
    mix = {m: rng.normal(0, 1, (4, DIM)) for m in "ab"}
    n_train, n_pool, n_val, n_test = per_class
    rows = {}
    for split, n in (("train", n_train), ("unlabelled", n_pool), ("val", n_val), ("test", n_test)):
        y = np.repeat(np.arange(CLASSES), n)
        u = centres[y] + rng.normal(0, 1, (len(y), 4))
        pairs = [f"{split}-{i}" for i in range(len(y))]
        rows[split] = (u, y, pairs)
    for m in "ab":
        x_of = lambda u, m=m: u @ mix[m] + rng.normal(0, 0.1, (len(u), DIM))
        for split in ("val", "test"):
            u, y, pairs = rows[split]
            ids = [f"{m}-{p}" for p in pairs]
            write_split(split_path(out, m, split), x_of(u), y, ids, pair_ids=pairs)
        (ut, yt, pt), (up, yp, pp) = rows["train"], rows["unlabelled"]
        if m == "a":  # the teacher's train table: partners of b's train rows and of its pool
            u, y, pairs = np.concatenate([ut, up]), np.concatenate([yt, yp]), pt + pp
            write_split(
                split_path(out, "a", "train"), x_of(u), y, [f"a-{p}" for p in pairs], pair_ids=pairs
            )
        else:
            write_split(
                split_path(out, "b", "train"), x_of(ut), yt, [f"b-{p}" for p in pt], pair_ids=pt
            )
            write_pool(pool_path(out, "b"), x_of(up), [f"b-{p}" for p in pp], pair_ids=pp)
    write_meta(out, "tiny-paired", CLASSES, {"a": (DIM,), "b": (DIM,)}, seed=seed)
    return out


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return write_paired(tmp_path_factory.mktemp("paired"))


def data_cfg(bench, **kw):
    return DataConfig(benchmark=str(bench), labels_per_class=4, val_per_class=3, **kw)


@pytest.fixture(scope="module")
def data(bench):
    return train.load_run_data(data_cfg(bench), **QUIET)


def copy_bench(bench, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(bench, out, ignore=shutil.ignore_patterns("teacher-*"))
    return out


def rewrite(path, change):
    """Rewrite a parquet table with ``change(dict of columns) -> dict of columns``."""
    table = pq.read_table(path)
    cols = change({n: table.column(n) for n in table.column_names})
    fields = [table.schema.field(n) for n in cols]
    pq.write_table(pa.Table.from_arrays(list(cols.values()), schema=pa.schema(fields)), path)


def pair_of(path):
    t = pq.read_table(path, columns=["id", "pair_id"])
    return dict(zip(t.column("id").to_pylist(), t.column("pair_id").to_pylist(), strict=True))


# ----------------------------------------------------------------------------- the layout's pairs


def test_a_paired_benchmark_validates_and_every_row_finds_its_partner(bench, data):
    validate_benchmark(bench)
    assert data.pair_train is not None and data.pair_pool is not None
    assert (data.pair_train >= 0).all() and (data.pair_pool >= 0).all()
    # a partner is the same instance: the same class, and the bank row whose pair id is ours
    assert torch.equal(torch.tensor(data.bank.y)[data.pair_train], data.y_train)
    teacher_pairs = pair_of(split_path(bench, "a", "train"))
    partner_pairs = [teacher_pairs[data.bank.ids[k]] for k in data.pair_pool.tolist()]
    assert sorted(partner_pairs) == sorted(pair_of(pool_path(bench, "b")).values())


def test_a_pair_id_without_a_partner_is_an_error_naming_the_file(bench, tmp_path):
    b = copy_bench(bench, tmp_path)
    rewrite(
        split_path(b, "a", "val"),
        lambda c: {**c, "pair_id": pa.array(["val-lonely"] + c["pair_id"].to_pylist()[1:])},
    )
    with pytest.raises(
        DataError, match=r"a_val\.parquet: column 'pair_id': pair id 'val-lonely' has no partner"
    ):
        validate_benchmark(b)


def test_a_duplicate_pair_id_is_an_error(bench, tmp_path):
    b = copy_bench(bench, tmp_path)
    # a pool row that claims a labelled row's instance: the train table and the pool are one
    rewrite(
        pool_path(b, "b"),
        lambda c: {**c, "pair_id": pa.array(["train-0"] + c["pair_id"].to_pylist()[1:])},
    )
    with pytest.raises(
        DataError, match=r"b_unlabelled\.parquet: column 'pair_id'.*'train-0' twice"
    ):
        validate_benchmark(b)


def test_partners_with_different_labels_are_an_error(bench, tmp_path):
    b = copy_bench(bench, tmp_path)
    rewrite(
        split_path(b, "b", "test"),
        lambda c: {
            **c,
            "label": pa.array(
                [(c["label"].to_pylist()[0] + 1) % CLASSES] + c["label"].to_pylist()[1:], pa.int64()
            ),
        },
    )
    with pytest.raises(
        DataError,
        match=r"pair id 'test-0' has label \d here but label \d in its partner's table .*b_test\.parquet",
    ):
        validate_benchmark(b)


def test_pairs_declared_by_one_modality_only_are_an_error(bench, tmp_path):
    b = copy_bench(bench, tmp_path)
    for split in ("train", "val", "test"):
        rewrite(split_path(b, "b", split), lambda c: {k: v for k, v in c.items() if k != "pair_id"})
    with pytest.raises(
        DataError,
        match=r"a_train\.parquet: column 'pair_id': declares pairs, but no table of modality 'b'",
    ):
        validate_benchmark(b)


def test_a_paired_modality_needs_pair_ids_in_every_labelled_table(bench, tmp_path):
    b = copy_bench(bench, tmp_path)
    rewrite(split_path(b, "b", "val"), lambda c: {k: v for k, v in c.items() if k != "pair_id"})
    with pytest.raises(DataError, match=r"b_val\.parquet: column 'pair_id': missing"):
        validate_benchmark(b)


# ----------------------------------------------------------------------------- configuration


def test_pairing_on_a_benchmark_without_pairs_names_the_key(tmp_path):
    out = tmp_path / "synth"
    build_synth(out, "synth", seed=0, train_per_class=12, val_per_class=3, test_per_class=3)
    data = train.load_run_data(data_cfg(out), **QUIET)
    with pytest.raises(
        ConfigError,
        match=r"distill\.pairing 'paired': benchmark 'synth' cannot pair its rows: it declares no pairs",
    ):
        train.Run(DistillConfig(pairing="paired", epochs=1), data, data_cfg(out))


@pytest.mark.parametrize(
    "config, key",
    [
        ({"algorithm": "kd"}, "distill.algorithm"),
        ({"algorithm": "ucmkd_sum", "w_kd": 1.0}, "distill.w_kd"),
        ({"algorithm": "ucmkd_pool", "w_fm": 0.5}, "distill.w_fm"),
        (
            {"algorithm": "ucmkd_bilevel", "pairing": "paired", "w_fm": 0.5},
            "distill.w_kd'/'distill.w_fm",
        ),
    ],
)
def test_instance_terms_without_pairs_name_the_key(config, key):
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        DistillConfig.from_dict(config, source="x.yaml")


# ----------------------------------------------------------------------------- training


def _record_batches(run):
    seen = []
    step = run.step

    def spy(student, h_t, opt, batch):
        seen.append(batch)
        return step(student, h_t, opt, batch)

    run.step = spy
    return seen


@pytest.mark.parametrize("algorithm", ["kd", "ucmkd_pool"])
def test_paired_rows_meet_their_partners_labelled_and_pool(bench, data, algorithm):
    cfg = DistillConfig(
        algorithm=algorithm,
        pairing="paired",
        epochs=1,
        steps_per_epoch=3,
        batch_size=6,
        pool_batch=8,
        w_fm=0.5,
    )  # no augmentation: a batch's rows are found in x_train as they are
    run = train.Run(cfg, data, data_cfg(bench))
    assert run.uses_pool
    seen = _record_batches(run)
    out = run.train_epoch()
    assert "train_fm" in out
    bank_z = torch.tensor(data.bank.z)
    for batch in seen:
        assert torch.equal(batch.y_t, batch.y_s)
        rows = [int(torch.nonzero((bank_z == z).all(1))[0]) for z in batch.z_t]
        mine = [int(torch.nonzero((data.x_train == x).all(1))[0]) for x in batch.x_s]
        assert rows == data.pair_train[mine].tolist()
        assert batch.pool.z_p is not None and torch.equal(batch.pool.z_p, batch.pool.z_b)


def test_pool_batch_takes_the_drawn_rows_partners(bench, data):
    cfg = DistillConfig(algorithm="kd", pairing="paired", epochs=1, pool_batch=8)
    run = train.Run(cfg, data, data_cfg(bench))
    copy = np.random.default_rng()
    copy.bit_generator.state = run.rng.bit_generator.state
    pool = run._pool_batch()
    drawn = copy.integers(0, len(data.x_pool), size=8)
    expected = torch.tensor(data.bank.z)[data.pair_pool[drawn]]
    assert torch.equal(pool.z_p, expected)
    assert torch.equal(pool.logits_p, torch.tensor(data.bank.logits)[data.pair_pool[drawn]])
    # class-matched: an independent bank sample, no partners
    run = train.Run(
        DistillConfig(algorithm="ucmkd_pool", epochs=1, pool_batch=8), data, data_cfg(bench)
    )
    assert run._pool_batch().z_p is None


def test_paired_kd_teaches_the_pool_rows_their_partners_logits(bench, data):
    torch.manual_seed(0)
    cfg = DistillConfig(algorithm="kd", pairing="paired", epochs=1, pool_batch=16, kd_alpha=1.0)
    run = train.Run(cfg, data, data_cfg(bench))
    pool = run._pool_batch()
    z_t, logits_t, y = (torch.tensor(a) for a in (data.bank.z, data.bank.logits, data.bank.y))
    rows = data.pair_train[:6]
    batch = methods.Batch(
        data.x_train[:6], data.y_train[:6], z_t[rows], y[rows], logits_t[rows], pool
    )

    def kl_to_partners():
        run.student.eval()
        with torch.no_grad():
            logits = run.student(pool.x_weak)
        run.student.train()
        return losses.la_kl(logits, pool.logits_p, None, temperature=cfg.kd_temperature).item()

    before = kl_to_partners()
    for _ in range(30):
        out = run.step(run.student, run.h_t, run.opt, batch)
    assert "pair_kd" in out and out["ce"] > 0
    assert kl_to_partners() < 0.5 * before


def test_unpaired_runs_draw_the_same_rows_as_before(bench, data):
    """class_matched is the default, and its numbers do not depend on whether pairs exist."""
    cfg = DistillConfig(algorithm="ucmkd_sum", epochs=2, steps_per_epoch=3, batch_size=6)
    a = train.fit(cfg, data, data_cfg(bench), **QUIET)["best"]
    no_pairs = train.RunData(**{**data.__dict__, "pair_train": None, "pair_pool": None})
    b = train.fit(cfg, no_pairs, data_cfg(bench), **QUIET)["best"]
    assert a["val_acc"] == b["val_acc"] and a["train_loss"] == b["train_loss"]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_each_workers_shard_keeps_its_rows_partners(data, world):
    payload = pack(data)
    x, y = data.x_train.numpy(), data.y_train.numpy()
    for rank in range(world):
        keep = slice(rank, len(y) // world * world, world)
        shard = unpack(payload, x[keep], y[keep], rank, world)
        assert len(shard.pair_train) == len(shard.y_train)
        assert torch.equal(torch.tensor(data.bank.y)[shard.pair_train], shard.y_train)
        assert torch.equal(shard.pair_train, data.pair_train[keep])


# ----------------------------------------------------------------------------- the sweep's checks


def test_auto_space_pairs_when_the_rows_have_partners(bench, tmp_path):
    from types import SimpleNamespace

    from cmkd.tune import auto_space

    args = lambda b: SimpleNamespace(space="auto", unlabelled="all", benchmark=str(b), student=None)
    assert auto_space(args(bench)) == "paired"
    assert (
        auto_space(SimpleNamespace(**{**vars(args(bench)), "benchmark": "sonified-paired"}))
        == "paired"
    )
    out = tmp_path / "synth"
    build_synth(out, "synth", seed=0, train_per_class=4, val_per_class=2, test_per_class=2)
    assert auto_space(args(out)) == "pool"


def test_a_space_that_cannot_pair_is_refused_before_any_trial(bench, data, tmp_path):
    from cmkd.space import load_space
    from cmkd.tune import check_pairing

    check_pairing(load_space("paired"), data)  # pairs: fine
    unpaired = train.RunData(**{**data.__dict__, "pair_train": None, "pair_pool": None})
    with pytest.raises(ConfigError, match=r"paired\.yaml: pairing 'paired': .* declares no pairs"):
        check_pairing(load_space("paired"), unpaired)
    kd = tmp_path / "kd.yaml"
    kd.write_text("params:\n  algorithm: {choice: [ce, kd]}\n")
    with pytest.raises(
        ConfigError, match=r"kd\.yaml: params\.algorithm can be 'kd'.*pairing: paired"
    ):
        check_pairing(load_space(kd), data)


@pytest.mark.ray
def test_a_two_worker_ray_train_run_gives_each_rank_its_rows_partners(
    bench, data, tmp_path, ray_tmp
):
    """kd_unpaired checks row by row that the bank rows a batch meets have its labels: paired,
    a rank whose partners were cut differently from its rows would fail at its first step."""
    import ray

    from cmkd.trial import Resources, retrain_distributed

    config = DistillConfig(
        algorithm="kd_unpaired", pairing="paired", epochs=2, steps_per_epoch=3, batch_size=4
    ).model_dump()
    ray.init(num_cpus=2, logging_level="ERROR", log_to_driver=False, _temp_dir=ray_tmp)
    try:
        out = retrain_distributed(
            config,
            name="paired-ddp",
            metric="val_acc",
            payload_ref=[ray.put(pack(data))],
            train_ref=[ray.put((data.x_train.numpy(), data.y_train.numpy()))],
            data_cfg=data_cfg(bench).model_dump(),
            resources=Resources(workers=2, cpus_per_worker=1.0),
            storage=str(tmp_path),
        )
    finally:
        ray.shutdown()
    assert out["epoch"] == 2 and 0.0 <= out["test_acc"] <= 1.0


def test_pairing_is_searchable(tmp_path):
    from cmkd.space import load_space

    path = tmp_path / "both.yaml"
    path.write_text(
        "params:\n  pairing: {choice: [class_matched, paired]}\n"
        "  w_fm: {choice: [0.0, 1.0], when: {pairing: paired}}\n"
        "fixed: {algorithm: ucmkd_sum}\n"
    )
    space = load_space(path)
    assert space.trial_config({"pairing": "paired", "w_fm": 1.0})["w_fm"] == 1.0
    assert space.trial_config({"pairing": "class_matched"})["pairing"] == "class_matched"
