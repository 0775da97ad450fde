"""RAVDESS and CREMA-D converters, on tiny fabricated folders of the real layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cmkd.data import SPLITS, DataError, load_split, validate_benchmark
from cmkd.data.__main__ import main
from cmkd.data.audio import write_wav
from cmkd.data.convert import (
    CREMAD_EMOTIONS,
    RAVDESS_EMOTIONS,
    convert_cremad,
    convert_ravdess,
    find_ravdess,
    find_ravdess_video,
    split_groups,
)


def _tone(rate: int, hz: float, seconds: float = 0.3) -> np.ndarray:
    return 0.3 * np.sin(2 * np.pi * hz * np.arange(int(rate * seconds)) / rate)


@pytest.fixture
def ravdess(tmp_path: Path) -> Path:
    """3 actors x 8 emotions of speech at 48 kHz, plus a song file and a video to be skipped."""
    raw = tmp_path / "ravdess_raw"
    for actor in (1, 2, 3):
        folder = raw / f"Actor_{actor:02d}"
        folder.mkdir(parents=True)
        for emotion in range(1, 9):
            name = f"03-01-{emotion:02d}-01-01-01-{actor:02d}.wav"
            write_wav(folder / name, _tone(48000, 200.0 * emotion), 48000)
        write_wav(folder / f"03-02-03-01-01-01-{actor:02d}.wav", _tone(48000, 440.0), 48000)
        (folder / f"01-01-03-01-01-01-{actor:02d}.mp4").write_bytes(b"not decoded")
    return raw


def _colour(emotion: int) -> tuple[int, int, int]:
    return (30 * emotion, 255 - 30 * emotion, 128)


@pytest.fixture
def ravdess_video(tmp_path: Path) -> Path:
    """The video release of the 24 speech clips: 1 s at 5 fps, the emotion's colour only on the
    frame at the middle (0.4..0.6 s), black elsewhere. Actors 1, 2 video-only (02-), 3 full AV."""
    import av

    root = tmp_path / "ravdess_video"
    for actor in (1, 2, 3):
        folder = root / f"Video_Speech_Actor_{actor:02d}" / f"Actor_{actor:02d}"
        folder.mkdir(parents=True)
        for emotion in range(1, 9):
            name = f"{'01' if actor == 3 else '02'}-01-{emotion:02d}-01-01-01-{actor:02d}.mp4"
            with av.open(str(folder / name), "w") as container:
                stream = container.add_stream("mpeg4", rate=5)
                stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
                for i in range(5):
                    rgb = np.zeros((32, 48, 3), np.uint8)
                    rgb[:] = _colour(emotion) if i == 2 else 0
                    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                    container.mux(stream.encode(frame))
                container.mux(stream.encode())
    return root


@pytest.fixture
def cremad(tmp_path: Path) -> Path:
    """4 speakers x 6 emotions at 16 kHz, in AudioWAV/ as released."""
    folder = tmp_path / "CREMA-D" / "AudioWAV"
    folder.mkdir(parents=True)
    for speaker in (1001, 1002, 1003, 1004):
        for i, emotion in enumerate(CREMAD_EMOTIONS):
            write_wav(
                folder / f"{speaker}_DFA_{emotion}_XX.wav", _tone(16000, 300.0 + 100 * i), 16000
            )
    return tmp_path / "CREMA-D"


def test_ravdess(ravdess: Path, tmp_path: Path) -> None:
    out = tmp_path / "ravdess"
    meta = convert_ravdess(ravdess, out, seed=0, frames=40)
    assert validate_benchmark(out) == meta
    assert meta.num_classes == 8 and meta.class_names == RAVDESS_EMOTIONS
    assert meta.shapes == {"audio": (1, 40, 40)}
    assert meta.params["sample_rates"] == [48000] and meta.params["video"] == "not converted"
    actors = {}
    for s in SPLITS:
        split = load_split(out, "audio", s)
        assert len(split) == 8  # one actor per split, song skipped
        (actors[s],) = set(split.groups.tolist())
        assert [int(i.split("-")[2]) - 1 for i in split.ids] == split.y.tolist()
        assert all(i.endswith(actors[s].removeprefix("actor_")) for i in split.ids)
    assert sorted(actors.values()) == ["actor_01", "actor_02", "actor_03"]
    assert meta.params["groups"] == {s: [a] for s, a in actors.items()}


def test_ravdess_tones_land_in_rising_mel_bands(ravdess: Path, tmp_path: Path) -> None:
    convert_ravdess(ravdess, tmp_path / "r", frames=40)
    split = load_split(tmp_path / "r", "audio", "train")
    order = np.argsort(split.y)
    bands = split.x[order, 0].mean(axis=2).argmax(axis=1)  # loudest band per clip
    assert np.all(np.diff(bands) > 0)  # 200 Hz * emotion: higher emotion code, higher band


def test_ravdess_with_video(ravdess: Path, ravdess_video: Path, tmp_path: Path) -> None:
    out = tmp_path / "ravdess"
    meta = convert_ravdess(ravdess, out, frames=40, video=ravdess_video, image_size=8)
    assert validate_benchmark(out) == meta
    assert meta.shapes == {"audio": (1, 40, 40), "image": (3, 8, 8)}
    assert meta.params["options"]["video"] == str(ravdess_video)
    for s in SPLITS:
        audio, image = load_split(out, "audio", s), load_split(out, "image", s)
        assert [i[2:] for i in image.ids] == [i[2:] for i in audio.ids]  # the same recordings
        assert {i[:2] for i in image.ids} == ({"01"} if audio.groups[0] == "actor_03" else {"02"})
        assert np.array_equal(image.y, audio.y) and np.array_equal(image.groups, audio.groups)
        for x, y in zip(image.x, image.y, strict=True):
            assert np.allclose(x, np.array(_colour(y + 1))[:, None, None] / 255, atol=0.05)


def test_ravdess_clip_without_video(ravdess: Path, ravdess_video: Path, tmp_path: Path) -> None:
    video = ravdess_video / "Video_Speech_Actor_02" / "Actor_02" / "02-01-04-01-01-01-02.mp4"
    video.unlink()
    with pytest.raises(DataError, match="02-01-04-01-01-01-02.mp4 or 01-01-04") as info:
        find_ravdess_video(ravdess_video, find_ravdess(ravdess))
    assert info.value.path == str(ravdess / "Actor_02" / "03-01-04-01-01-01-02.wav")
    with pytest.raises(ValueError, match="image_size needs video"):
        convert_ravdess(ravdess, tmp_path / "out", image_size=8)


def test_ravdess_song_channel(ravdess: Path) -> None:
    assert len(find_ravdess(ravdess)) == 24
    assert len(find_ravdess(ravdess, channels=("speech", "song"))) == 27
    with pytest.raises(ValueError, match="speech and/or song"):
        find_ravdess(ravdess, channels=("opera",))


def test_ravdess_bad_name_names_the_file(ravdess: Path, tmp_path: Path) -> None:
    bad = ravdess / "Actor_02" / "03-01-05-01.wav"
    write_wav(bad, _tone(48000, 100.0), 48000)
    with pytest.raises(DataError, match="MM-VV-EE-II-SS-RR-AA") as info:
        convert_ravdess(ravdess, tmp_path / "out")
    assert info.value.path == str(bad)


def test_ravdess_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="found none"):
        find_ravdess(tmp_path)


def test_cremad(cremad: Path, tmp_path: Path) -> None:
    out = tmp_path / "cremad"
    meta = convert_cremad(cremad, out, seed=1, frames=20, n_mels=16)
    assert validate_benchmark(out) == meta
    assert meta.num_classes == 6 and meta.class_names[0] == "anger"
    assert meta.shapes == {"audio": (1, 16, 20)}
    sizes = {s: len(load_split(out, "audio", s)) for s in SPLITS}
    assert sizes == {"train": 12, "val": 6, "test": 6}  # 2 / 1 / 1 speakers
    test = load_split(out, "audio", "test")
    assert test.ids[0].startswith(test.groups[0] + "_DFA_")
    assert [CREMAD_EMOTIONS[y] for y in test.y] == [i.split("_")[2] for i in test.ids]


def test_unreadable_wav_names_the_file(cremad: Path, tmp_path: Path) -> None:
    bad = cremad / "AudioWAV" / "1002_DFA_SAD_XX.wav"
    bad.write_bytes(b"RIFF....not a wav")
    with pytest.raises(DataError, match="unreadable wav") as info:
        convert_cremad(cremad, tmp_path / "out")
    assert info.value.path == str(bad)


def test_split_groups() -> None:
    split = split_groups([f"s{i}" for i in range(24)] * 2, seed=0)
    assert [len(split[s]) for s in SPLITS] == [17, 2, 5]
    assert sorted(sum(split.values(), [])) == sorted(f"s{i}" for i in range(24))
    with pytest.raises(ValueError, match="at least 3 speakers"):
        split_groups(["a", "b", "a"], seed=0)


def test_convert_command(cremad: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "c"
    args = ["convert", "cremad", str(cremad), "--out", str(out), "--frames", "20"]
    assert main(args) == 0
    assert "audio_train.parquet" in capsys.readouterr().out
    assert main(args) == 0
    assert "already built" in capsys.readouterr().out


def test_convert_command_reports_a_bad_file(
    ravdess: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = ravdess / "Actor_01" / "notes.wav"
    write_wav(bad, _tone(48000, 100.0), 48000)
    assert main(["convert", "ravdess", str(ravdess), "--out", str(tmp_path / "r")]) == 1
    assert f"error: {bad}: expected a name MM-VV-EE-II-SS-RR-AA.wav" in capsys.readouterr().err


def test_convert_command_with_video(
    ravdess: Path, ravdess_video: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["convert", "ravdess", str(ravdess), "--out", str(tmp_path / "r"), "--frames", "20"]
    args += ["--video", str(ravdess_video), "--image-size", "8"]
    assert main(args) == 0
    assert "image_train.parquet" in capsys.readouterr().out
    assert main(args) == 0
    assert "already built" in capsys.readouterr().out
