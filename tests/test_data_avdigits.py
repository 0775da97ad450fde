"""avdigits: espeak-ng through ctypes, the voice split, and a tiny real build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cmkd.data import (
    SPLITS,
    espeak,
    has_pool,
    load_pool,
    load_split,
    pool_path,
    validate_benchmark,
)
from cmkd.data.avdigits import CLASS_NAMES, VARIANTS, build_avdigits, mnist, split_variants

LANGUAGES, TINY_VARIANTS, REPEATS, IMAGES = ("en", "fr"), ("m1", "f2", "m3"), 2, 10
POOL_CLIPS = 30


def test_speak_gives_a_word_at_22050_hz() -> None:
    clip = espeak.speak("seven", "en-us+f2", rate=175, pitch=50)
    assert espeak.sample_rate() == 22050
    assert clip.dtype == np.int16
    assert 0.2 < len(clip) / 22050 < 1.5
    assert np.abs(clip).max() > 3000
    assert espeak.version().startswith("1.")


def test_unknown_voice_is_an_error() -> None:
    with pytest.raises(ValueError, match="no voice 'xx-nope'"):
        espeak.speak("one", "xx-nope")


def test_speak_fresh_is_reproducible_whatever_ran_before() -> None:
    # f2 breathes: random noise seeded per batch; all voices carry state across calls
    batch = [espeak.Utterance(w, "en+f2", 160, 40, 50) for w in ("one", "two", "one")]
    first = next(espeak.speak_fresh([batch], seeds=[7]))
    for w in ("three", "four"):
        espeak.speak(w, "de+m3", rate=300)
    again, reseeded = espeak.speak_fresh([batch, batch], seeds=[7, 8])
    assert len(first) == 3
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(first, reseeded, strict=True))


def test_speak_fresh_reports_the_child_error() -> None:
    batches = [[espeak.Utterance("one", "en")], [espeak.Utterance("one", "xx-nope")]]
    results = espeak.speak_fresh(batches, seeds=[0, 0], workers=2)
    assert len(next(results)) == 1
    with pytest.raises(RuntimeError, match="batch 1 failed(.|\n)*no voice 'xx-nope'"):
        next(results)


def test_split_variants() -> None:
    split = split_variants(VARIANTS, seed=0)
    assert [len(split[s]) for s in SPLITS] == [7, 1, 2]
    assert sorted(sum(split.values(), [])) == sorted(VARIANTS)
    assert split == split_variants(VARIANTS, seed=0)
    assert split != split_variants(VARIANTS, seed=1)
    assert [len(v) for v in split_variants(("a", "b", "c"), 0).values()] == [1, 1, 1]
    with pytest.raises(ValueError, match="at least 3 variants"):
        split_variants(("m1", "f1"), 0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("avdigits")
    build_avdigits(
        out,
        seed=0,
        languages=LANGUAGES,
        variants=TINY_VARIANTS,
        repeats=REPEATS,
        images_per_class=IMAGES,
        pool_clips=POOL_CLIPS,
    )
    return out


def test_tiny_build_is_valid_with_both_modalities(tiny: Path) -> None:
    meta = validate_benchmark(tiny)
    assert meta.name == "avdigits" and meta.num_classes == 10
    assert meta.class_names == CLASS_NAMES
    assert meta.shapes == {"image": (1, 28, 28), "audio": (1, 40, 80)}
    assert meta.params["languages"]["fr"][7] == "sept"
    assert meta.params["repeats"] == REPEATS and meta.params["sample_rate"] == 22050


def test_tiny_images(tiny: Path) -> None:
    images, labels = mnist()
    seen = set()
    for s, n in zip(SPLITS, (7, 1, 2), strict=True):
        split = load_split(tiny, "image", s)
        assert split.x.shape == (10 * n, 1, 28, 28) and split.groups is None
        assert np.bincount(split.y).tolist() == [n] * 10
        assert 0.0 <= split.x.min() and split.x.max() <= 1.0
        index = np.array([int(i.removeprefix("mnist-")) for i in split.ids])
        np.testing.assert_array_equal(split.y, labels[index])
        np.testing.assert_allclose(split.x.reshape(len(index), -1), images[index] / 255, atol=1e-7)
        seen |= set(index.tolist())
    assert len(seen) == 100  # no image in two splits


def test_tiny_audio_holds_out_voices(tiny: Path) -> None:
    variants = validate_benchmark(tiny).params["variants"]
    groups = {}
    for s in SPLITS:
        split = load_split(tiny, "audio", s)
        (variant,) = variants[s]
        assert set(split.groups.tolist()) == {f"{lang}+{variant}" for lang in LANGUAGES}
        assert split.x.shape == (len(LANGUAGES) * 10 * REPEATS, 1, 40, 80)
        assert np.bincount(split.y).tolist() == [len(LANGUAGES) * REPEATS] * 10
        assert split.ids[0] == f"{split.groups[0]}-{split.y[0]}-0"
        groups[s] = set(split.groups.tolist())
    assert not groups["train"] & groups["test"] and not groups["train"] & groups["val"]


def test_tiny_audio_holds_a_word_above_the_noise(tiny: Path) -> None:
    split = load_split(tiny, "audio", "train")
    loudness = split.x[:, 0].mean(axis=1)  # (N, frames): mean log-mel per frame
    # the word stands at least 20 dB (4.6 nats of power) above the noise floor
    assert (loudness.max(axis=1) - loudness.min(axis=1) > 3.0).all()
    same_voice = split.groups == split.groups[0]
    words = [split.x[same_voice & (split.y == d)][0] for d in range(10)]
    assert all(not np.allclose(words[0], w, atol=0.5) for w in words[1:])


def test_tiny_audio_pool_speaks_training_voices(tiny: Path, tmp_path: Path) -> None:
    pool = load_pool(tiny, "audio")
    assert pool.x.shape == (POOL_CLIPS, 1, 40, 80) and np.isfinite(pool.x).all()
    table = pq.read_table(pool_path(tiny, "audio"))
    assert "label" not in table.column_names
    assert all(i.startswith("unlabelled-") for i in pool.ids)  # nothing of the digit in the id
    (train_variant,) = validate_benchmark(tiny).params["variants"]["train"]
    assert set(table.column("group").to_pylist()) <= {
        f"{lang}+{train_variant}" for lang in LANGUAGES
    }
    train = load_split(tiny, "audio", "train")
    # new random draws: no pool clip is one of the labelled clips
    assert (
        not (pool.x.reshape(len(pool), 1, -1) == train.x.reshape(1, len(train), -1)).all(-1).any()
    )
    # and the labelled splits do not depend on the pool
    build_avdigits(
        tmp_path,
        seed=0,
        languages=LANGUAGES,
        variants=TINY_VARIANTS,
        repeats=REPEATS,
        images_per_class=IMAGES,
        pool_clips=0,
    )
    assert not has_pool(tmp_path, "audio")
    for s in SPLITS:
        for m in ("image", "audio"):
            name = f"{m}_{s}.parquet"
            assert (tmp_path / name).read_bytes() == (tiny / name).read_bytes()


def test_mnist_is_cached_and_read_only() -> None:
    images, labels = mnist()
    assert mnist()[0] is images
    assert images.shape == (5000, 784) and np.bincount(labels).tolist() == [500] * 10
    with pytest.raises(ValueError, match="read-only"):
        images[0, 0] = 1.0


def test_bad_variants(tmp_path: Path) -> None:
    for bad in (("m1", "f1", "zz9"), ("m1", "m1", "f1")):
        with pytest.raises(ValueError, match="distinct espeak-ng variants"):
            build_avdigits(tmp_path, variants=bad, images_per_class=10)


def test_unknown_language(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no digit words for languages \\['xx'\\]"):
        build_avdigits(tmp_path, languages=("en", "xx"))
