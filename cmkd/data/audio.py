"""Audio features in numpy: log-mel spectrograms, and 16-bit PCM wav files through `wave`.

Window and hop are given in milliseconds so that clips at different sample rates (22,050 Hz
speech synthesis, 48 kHz RAVDESS, 16 kHz CREMA-D) give frames of the same duration without
resampling.
"""

from __future__ import annotations

import wave as wavfile
from pathlib import Path

import numpy as np


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """Triangular filters equally spaced on the HTK mel scale, mel = 2595 log10(1 + f / 700).

    Returns (n_mels, n_fft // 2 + 1): row m is 1 at its centre frequency, 0 outside its
    neighbours' centres.
    """
    fmax = sample_rate / 2 if fmax is None else fmax
    if not 0 <= fmin < fmax <= sample_rate / 2:
        raise ValueError(f"need 0 <= fmin < fmax <= {sample_rate / 2}, got {fmin}, {fmax}")
    mel = lambda f: 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)
    hz = lambda m: 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)
    edges = hz(np.linspace(mel(fmin), mel(fmax), n_mels + 2))  # (n_mels + 2,)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)  # (n_fft // 2 + 1,)
    lo, centre, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs - lo) / (centre - lo)
    falling = (hi - freqs) / (hi - centre)
    return np.clip(np.minimum(rising, falling), 0.0, None)


def frame_params(sample_rate: int, win_ms: float, hop_ms: float) -> tuple[int, int, int]:
    """(window, hop, n_fft) in samples; n_fft is the next power of two >= window."""
    win = int(round(sample_rate * win_ms / 1000))
    hop = int(round(sample_rate * hop_ms / 1000))
    return win, hop, 1 << (win - 1).bit_length()


def num_samples(frames: int, sample_rate: int, win_ms: float = 25.0, hop_ms: float = 10.0) -> int:
    """The number of samples that log_mel turns into exactly `frames` frames."""
    win, hop, _ = frame_params(sample_rate, win_ms, hop_ms)
    return win + (frames - 1) * hop


def log_mel(
    wave: np.ndarray,
    sample_rate: int,
    n_mels: int = 40,
    win_ms: float = 25.0,
    hop_ms: float = 10.0,
    fmin: float = 20.0,
    fmax: float | None = None,
    eps: float = 1e-10,
) -> np.ndarray:
    """Log mel power spectrogram, no padding: frames = 1 + (T - window) // hop.

    wave: (..., T) float in [-1, 1]. Returns (..., n_mels, frames) float32, natural log of
    mel-filtered power plus eps (eps floors silence at log(eps)).
    """
    wave = np.asarray(wave, dtype=np.float64)
    win, hop, n_fft = frame_params(sample_rate, win_ms, hop_ms)
    if wave.shape[-1] < win:
        raise ValueError(f"need at least {win} samples for one frame, got {wave.shape[-1]}")
    frames = np.lib.stride_tricks.sliding_window_view(wave, win, axis=-1)[..., ::hop, :]
    window = np.hanning(win + 1)[:-1]  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, n=n_fft, axis=-1)) ** 2  # (..., F, n_fft/2+1)
    mel = power @ mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax).T  # (..., F, n_mels)
    return np.log(mel + eps).swapaxes(-1, -2).astype(np.float32)


def fit_length(wave: np.ndarray, n: int) -> np.ndarray:
    """Centre-crop or zero-pad (both ends evenly) a (T,) clip to (n,)."""
    extra = len(wave) - n
    if extra >= 0:
        return wave[extra // 2 : extra // 2 + n]
    return np.pad(wave, (-extra // 2, -extra - (-extra // 2)))


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a PCM wav file (8, 16, 24 or 32 bit); returns (mono float32 (T,) in [-1, 1], rate)."""
    try:
        with wavfile.open(str(path), "rb") as f:
            width, channels, rate = f.getsampwidth(), f.getnchannels(), f.getframerate()
            raw = f.readframes(f.getnframes())
    except (wavfile.Error, EOFError) as err:  # wave.Error is no OSError
        raise ValueError(f"{path}: not a PCM wav file ({err})") from None
    if width == 1:  # 8-bit wav is unsigned
        x = np.frombuffer(raw, np.uint8).astype(np.float32) / 128.0 - 1.0
    elif width == 3:  # 24-bit: widen each little-endian triple to int32
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        x = ((b[:, 0] << 8 | b[:, 1] << 16 | b[:, 2] << 24) >> 8) / float(1 << 23)
    elif width in (2, 4):
        x = np.frombuffer(raw, f"<i{width}").astype(np.float32) / float(1 << (8 * width - 1))
    else:
        raise ValueError(f"{path}: unsupported sample width {width} bytes")
    x = np.asarray(x, np.float32).reshape(-1, channels).mean(axis=1)
    return x, rate


def write_wav(path: str | Path, wave: np.ndarray, sample_rate: int) -> None:
    """Write a mono float (T,) clip in [-1, 1] as 16-bit PCM."""
    pcm = np.round(np.clip(wave, -1.0, 1.0) * 32767).astype("<i2")
    with wavfile.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())
