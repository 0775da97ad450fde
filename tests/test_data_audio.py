"""Log-mel features and wav files."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from cmkd.data.audio import (
    fit_length,
    frame_params,
    log_mel,
    mel_filterbank,
    num_samples,
    read_wav,
    write_wav,
)


def _hz_to_mel(f: float) -> float:
    return 2595.0 * np.log10(1.0 + f / 700.0)


def test_filterbank_shape_range_and_centres() -> None:
    fb = mel_filterbank(16000, 512, 20, fmin=0.0, fmax=8000.0)
    assert fb.shape == (20, 257)
    assert fb.min() >= 0.0 and fb.max() <= 1.0
    freqs = np.fft.rfftfreq(512, 1 / 16000)
    peaks = freqs[fb.argmax(axis=1)]
    assert np.all(np.diff(peaks) > 0)
    # centres equally spaced in mel: the 10th of 20 filters peaks near the mel midpoint
    centre = 700.0 * (10 ** (_hz_to_mel(8000.0) * 10 / 21 / 2595.0) - 1)
    assert abs(peaks[9] - centre) < 16000 / 512
    assert np.all(fb[:, freqs > 8000.0] == 0)


def test_frames_and_num_samples() -> None:
    sr = 22050
    win, hop, n_fft = frame_params(sr, 25.0, 10.0)
    assert (win, hop, n_fft) == (551, 220, 1024)
    n = num_samples(80, sr)
    assert n == 551 + 79 * 220
    assert log_mel(np.zeros(n), sr).shape == (40, 80)
    assert log_mel(np.zeros(n + hop - 1), sr).shape == (40, 80)
    assert log_mel(np.zeros((3, 2, n)), sr, n_mels=16).shape == (3, 2, 16, 80)
    with pytest.raises(ValueError, match="at least 551 samples"):
        log_mel(np.zeros(100), sr)


def test_tone_lands_in_its_mel_band() -> None:
    sr, f0 = 16000, 1000.0
    t = np.arange(sr) / sr
    feats = log_mel(0.5 * np.sin(2 * np.pi * f0 * t), sr, n_mels=40, fmin=0.0, fmax=8000.0)
    band = feats.mean(axis=1).argmax()
    fb = mel_filterbank(sr, 512, 40, 0.0, 8000.0)
    assert abs(np.fft.rfftfreq(512, 1 / sr)[fb[band].argmax()] - f0) < 100
    assert feats.dtype == np.float32


def test_power_scaling_and_silence_floor() -> None:
    sr = 16000
    x = np.random.default_rng(0).normal(0, 0.1, sr // 2)
    # doubling the amplitude multiplies power by 4 in every band: + log 4 (eps aside)
    np.testing.assert_allclose(log_mel(2 * x, sr) - log_mel(x, sr), np.log(4), atol=1e-3)
    np.testing.assert_allclose(log_mel(np.zeros(sr // 2), sr), np.log(1e-10), rtol=1e-6)


def test_fit_length() -> None:
    x = np.arange(10.0)
    np.testing.assert_array_equal(fit_length(x, 4), [3, 4, 5, 6])
    np.testing.assert_array_equal(fit_length(x[:3], 6), [0, 0, 1, 2, 0, 0])  # 1 left, 2 right
    assert len(fit_length(x, 10)) == 10


def test_wav_round_trip(tmp_path: Path) -> None:
    x = 0.5 * np.sin(np.linspace(0, 20, 1000))
    write_wav(tmp_path / "a.wav", x, 16000)
    y, sr = read_wav(tmp_path / "a.wav")
    assert sr == 16000 and y.dtype == np.float32
    np.testing.assert_allclose(y, x, atol=1 / 32767)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_read_wav_widths_and_stereo_mixdown(tmp_path: Path, width: int) -> None:
    left = np.array([0.5, -0.25, 0.0, 0.75])
    right = np.array([-0.5, 0.25, 0.5, 0.25])
    scale = float(1 << (8 * width - 1))
    frames = np.stack([left, right], axis=1).reshape(-1)
    ints = np.round(frames * scale).astype(np.int64)
    if width == 1:
        raw = (ints + 128).astype(np.uint8).tobytes()
    else:
        raw = b"".join(int(v).to_bytes(width, "little", signed=True) for v in ints)
    with wave.open(str(tmp_path / "s.wav"), "wb") as f:
        f.setnchannels(2)
        f.setsampwidth(width)
        f.setframerate(48000)
        f.writeframes(raw)
    y, sr = read_wav(tmp_path / "s.wav")
    assert sr == 48000
    np.testing.assert_allclose(y, (left + right) / 2, atol=2 / scale)
