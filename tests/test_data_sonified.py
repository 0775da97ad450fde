"""sonified and sonified-lt: the vOICe mapping, the splits, the voices, the pool, the prior."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cmkd.data import SPLITS, load_pool, load_split, pool_path, validate_benchmark
from cmkd.data.__main__ import main, parse_args
from cmkd.data.avdigits import mnist
from cmkd.data.sonified import (
    LONG_TAIL,
    TABLES,
    SonifiedParams,
    build_sonified,
    plan,
    sonify,
    voice_styles,
)

SMALL = SonifiedParams(
    image_train_per_class=8,
    image_val_per_class=2,
    image_test_per_class=2,
    audio_train_per_class=30,
    audio_val_per_class=3,
    audio_test_per_class=20,
    pool_per_class=10,
)
SMALL_LT = replace(
    SMALL,
    imbalance=10.0,
    image_train_per_class=20,
    audio_train_per_class=10,
    audio_test_per_class=30,
    pool_per_class=40,
)
TINY = replace(
    SMALL, audio_train_per_class=2, audio_val_per_class=1, audio_test_per_class=2, pool_per_class=2
)
TRAIN_VOICES, HELD_OUT = {f"v{i}" for i in range(8)}, {"v8", "v9"}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sonified(tmp_path_factory.mktemp("sonified"), params=SMALL)


@pytest.fixture(scope="module")
def small_lt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sonified-lt")
    return build_sonified(out, "sonified-lt", long_tail=True, seed=1, params=SMALL_LT)


def test_small_build_is_valid(small: Path) -> None:
    meta = validate_benchmark(small)
    assert meta.name == "sonified" and meta.num_classes == 10 and meta.seed == 0
    assert meta.shapes == {"image": (1, 28, 28), "audio": (1, 32, 43)}
    assert meta.params["held_out_voices"] == ["v8", "v9"]
    assert meta.params["rows"]["audio_unlabelled"] == 100
    images, labels = mnist()
    for s, n in zip(SPLITS, (8, 2, 2), strict=True):
        split = load_split(small, "image", s)
        assert split.x.shape == (10 * n, 1, 28, 28) and np.bincount(split.y).tolist() == [n] * 10
        index = np.array([int(i.removeprefix("mnist-")) for i in split.ids])
        np.testing.assert_array_equal(split.y, labels[index])
        np.testing.assert_allclose(split.x.reshape(len(index), -1), images[index] / 255, atol=1e-7)
    for s, n in zip(SPLITS, (30, 3, 20), strict=True):
        split = load_split(small, "audio", s)
        assert split.x.shape == (10 * n, 1, 32, 43) and np.bincount(split.y).tolist() == [n] * 10
        index = np.array([int(i.split("-")[1]) for i in split.ids])
        np.testing.assert_array_equal(split.y, labels[index])  # a clip sonifies its own image


def test_test_split_speaks_only_held_out_voices(small: Path) -> None:
    groups = {s: load_split(small, "audio", s).groups for s in SPLITS}
    assert set(groups["test"].tolist()) == HELD_OUT
    assert set(groups["train"].tolist()) == TRAIN_VOICES  # every training voice is heard
    assert set(groups["val"].tolist()) <= TRAIN_VOICES
    pool_groups = pq.read_table(pool_path(small, "audio"), columns=["group"]).column("group")
    assert set(pool_groups.to_pylist()) <= TRAIN_VOICES
    # Within a class the training voices take turns: each renders 3 or 4 of its 30 clips.
    train = load_split(small, "audio", "train")
    per_voice = [np.sum((train.y == 0) & (train.groups == v)) for v in sorted(TRAIN_VOICES)]
    assert sorted(per_voice) == [3, 3, 4, 4, 4, 4, 4, 4]


def test_pool_is_unlabelled_and_disjoint(small: Path) -> None:
    pool = load_pool(small, "audio")
    assert pool.x.shape == (100, 1, 32, 43)
    assert "label" not in pq.read_schema(pool_path(small, "audio")).names
    assert all(i.startswith("unlabelled-") for i in pool.ids)  # nothing of the class in the id
    labelled = {i for s in SPLITS for m in ("image", "audio") for i in load_split(small, m, s).ids}
    assert not labelled & set(pool.ids.tolist())
    assert len(load_pool(small, "audio", limit=30, seed=1)) == 30
    # No image is sonified twice or both shown to the teacher and sonified.
    tables = plan(mnist()[1], SMALL, seed=0)
    every = np.concatenate(list(tables.values()))
    assert len(np.unique(every)) == len(every) == 10 * (12 + 30 + 3 + 20 + 10)


def test_class_survives_the_sonification(small: Path) -> None:
    from sklearn.neighbors import NearestCentroid

    train, test = load_split(small, "audio", "train"), load_split(small, "audio", "test")
    centroids = NearestCentroid().fit(_aligned(train.x), train.y)
    # Held-out voices, 10 classes: chance is 0.1 (nearest centroid scores 0.66 to 0.75 over
    # seeds 0..5).
    assert centroids.score(_aligned(test.x), test.y) > 0.5


def _aligned(x: np.ndarray) -> np.ndarray:
    """Log-mels (N, 1, F, T) rolled so that each clip's energy is centred in time and in
    frequency (undoing the random onset and most of the voice's pitch shift), flattened and
    standardised per clip: (N, F * T)."""
    x = x[:, 0]
    for axis in (2, 1):  # time, then frequency
        power = np.exp(x).sum(axis=3 - axis)  # (N, T) or (N, F)
        power = np.clip(power - np.median(power, axis=1, keepdims=True), 0, None)
        centre = (power * np.arange(power.shape[1])).sum(1) / power.sum(1)
        shifts = np.round(x.shape[axis] // 2 - centre).astype(int)
        x = np.stack([np.roll(xi, k, axis=axis - 1) for xi, k in zip(x, shifts, strict=True)])
    x = x.reshape(len(x), -1)
    return (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)


def test_long_tail_shares_one_prior(small_lt: Path) -> None:
    meta = validate_benchmark(small_lt)
    assert meta.name == "sonified-lt" and meta.params["imbalance"] == 10.0
    expected = np.round(40 * 10 ** (-np.arange(10) / 9)).astype(int)
    assert expected.tolist() == [40, 31, 24, 19, 14, 11, 9, 7, 5, 4]
    for y in (
        load_split(small_lt, "audio", "test").y,
        load_split(small_lt, "image", "train").y,
        mnist()[1][plan(mnist()[1], SMALL_LT, seed=1)["audio_unlabelled"]],  # the pool's
    ):
        counts = np.bincount(y)
        assert (np.diff(counts) <= 0).all() and counts[-1] < counts[0]
        assert 9 <= counts[0] / counts[-1] <= 11
    assert meta.params["class_counts"]["audio_unlabelled"] == expected.tolist()
    assert len(load_pool(small_lt, "audio")) == expected.sum()
    for s, n in (("train", 10), ("val", 3)):  # the labels a user draws from stay balanced
        assert np.bincount(load_split(small_lt, "audio", s).y).tolist() == [n] * 10


def test_default_sizes_fit_the_images() -> None:
    labels = mnist()[1]
    balanced = {t: len(v) for t, v in plan(labels, SonifiedParams(), 0).items()}
    assert balanced == dict(zip(TABLES, (2000, 250, 250, 1000, 100, 400, 1000), strict=True))
    long_tail = {t: len(v) for t, v in plan(labels, LONG_TAIL, 0).items()}
    assert long_tail == dict(zip(TABLES, (655, 81, 81, 300, 100, 409, 655), strict=True))
    with pytest.raises(ValueError, match="class 0 has 500 images, the tables ask for 501"):
        plan(labels, replace(SonifiedParams(), pool_per_class=101), 0)


def test_deterministic_by_seed(tmp_path: Path) -> None:
    for name, seed in (("one", 3), ("two", 3), ("other", 4)):
        build_sonified(tmp_path / name, seed=seed, params=TINY)
    one, two, other = (
        {p.name: p.read_bytes() for p in sorted((tmp_path / n).iterdir())}
        for n in ("one", "two", "other")
    )
    assert one == two and len(one) == 8
    assert all(one[f] != other[f] for f in one if f.endswith(".parquet"))


def _render(images: np.ndarray, harmonic: float = 0.0, p: SonifiedParams = SMALL) -> np.ndarray:
    n = len(images)
    ones = np.ones(n)
    rng = np.random.default_rng(0)
    return sonify(images, 0 * ones, ones, harmonic * ones, 60 * ones, rng, p)[:, 0]


def test_vOICe_mapping_top_is_high_and_left_is_early() -> None:
    image = np.zeros((1, 28, 28))
    image[0, :4, :6] = 1.0  # top left
    image[0, -4:, -6:] = 1.0  # bottom right
    x = _render(image)[0]  # (32, 43)
    high, low = x[-8:].mean(0), x[:8].mean(0)  # (43,) loudness of the top and bottom bands
    assert high.argmax() < low.argmax()
    # A single row sounds in the mel band of its frequency: 3,200 Hz top, 400 Hz bottom.
    rows = np.zeros((2, 28, 28))
    rows[0, 0], rows[1, 27] = 1.0, 1.0
    bands = _render(rows).mean(2).argmax(1)  # (2,)
    mel = lambda f: 2595 * np.log10(1 + np.asarray(f) / 700)
    centres = np.linspace(mel(300), mel(4000), 34)[1:-1]
    assert np.abs(bands - np.abs(centres[:, None] - mel([3200, 400])).argmin(0)).max() <= 1


def test_second_harmonic_is_band_limited() -> None:
    low, high = np.zeros((1, 28, 28)), np.zeros((1, 28, 28))
    low[0, 27], high[0, 0] = 1.0, 1.0  # 400 Hz and 3,200 Hz rows
    # Below the Nyquist frequency the harmonic (800 Hz) is heard ...
    assert np.abs(_render(low, 0.6) - _render(low, 0.0)).max() > 3.0
    # ... above it (6,400 Hz) it is left out, not aliased down to 1,600 Hz.
    np.testing.assert_array_equal(_render(high, 0.6), _render(high, 0.0))


def test_held_out_voices_lie_inside_the_training_range() -> None:
    for seed in range(5):
        styles = voice_styles(SonifiedParams(), seed)
        for name, levels in styles.items():
            train, held = levels[:8], levels[8:]
            assert train.min() < held.min() and held.max() < train.max(), (seed, name)
            assert len(np.unique(levels)) == 10
        assert abs(styles["semitones"]).max() == pytest.approx(3.0)
    assert not np.array_equal(voice_styles(SMALL, 0)["tempo"], voice_styles(SMALL, 1)["tempo"])


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"pitch_semitones": 6.0}, "below the Nyquist frequency"),
        ({"tempo": 0.3}, "the slowest scan"),
        ({"held_out_voices": 9}, "held_out_voices must be in 1..voices-2=8"),
        ({"pool_per_class": 0}, "pool_per_class must be integers >= 1"),
        ({"imbalance": 0.5}, "imbalance must be >= 1"),
        ({"frames": 40}, "frames=40 cover"),
    ],
)
def test_bad_params(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SonifiedParams(**bad)


def test_long_tail_flag_must_agree_with_params(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="long_tail=True needs params.imbalance > 1"):
        build_sonified(tmp_path, "sonified-lt", long_tail=True, params=SMALL)
    with pytest.raises(ValueError, match="long_tail=False needs params.imbalance == 1"):
        build_sonified(tmp_path, params=SMALL_LT)
    assert not (tmp_path / "meta.json").exists()


def test_command_line_knows_both(capsys: pytest.CaptureFixture) -> None:
    assert main(["build", "--help"]) == 0
    out = capsys.readouterr().out
    assert "sonified" in out and "sonified-lt" in out
    args = parse_args(["build", "sonified-lt", "--out", "somewhere", "--seed", "2"])
    assert (args.name, args.seed) == ("sonified-lt", 2)
