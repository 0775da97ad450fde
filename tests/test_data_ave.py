"""AVE converter and the PyAV helpers, on a tiny fabricated release of the real layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from cmkd.data import SPLITS, DataError, load_split, validate_benchmark
from cmkd.data.__main__ import main
from cmkd.data.audio import frame_params, mel_filterbank
from cmkd.data.ave import convert_ave, find_ave, read_events
from cmkd.data.video import duration, read_audio, read_frame, square_thumbnail

CATEGORIES = ("Church bell", "Dog", "Male speech, man speaking")  # sorted, one with a comma
COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255))  # frame colour during an event, by category
TONES = (500.0, 1000.0, 2000.0)  # Hz during an event, by category
OUTSIDE_TONE = 6000.0  # Hz outside the event, on a black frame
RATE, FPS, SECONDS = 16000, 10, 2.0
HEADER = "Category&VideoID&Quality&StartTime&EndTime"


def write_clip(path: Path, category: int, start: float, end: float) -> None:
    """A SECONDS-long mp4 (mpeg4 48x32 video, AAC mono audio): the category's colour and tone
    during [start, end), black and OUTSIDE_TONE elsewhere."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=FPS)
        video.width, video.height, video.pix_fmt = 48, 32, "yuv420p"
        audio = container.add_stream("aac", rate=RATE)
        audio.layout = "mono"
        for i in range(int(SECONDS * FPS)):
            rgb = np.zeros((32, 48, 3), np.uint8)
            if start <= i / FPS < end:
                rgb[:] = COLOURS[category]
            container.mux(video.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(video.encode())
        t = np.arange(int(SECONDS * RATE)) / RATE
        hz = np.where((start <= t) & (t < end), TONES[category], OUTSIDE_TONE)
        wave = (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)[None]  # (1, T)
        frame = av.AudioFrame.from_ndarray(wave, format="flt", layout="mono")
        frame.sample_rate = RATE
        container.mux(audio.encode(frame))
        container.mux(audio.encode())


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """raw/AVE_Dataset/: 9 videos (3 per split, one per category), each with a 1 s event; one
    video with a second event; one zero-length event; headers and CRLF in some files."""
    raw = tmp_path_factory.mktemp("ave_raw")
    root = raw / "AVE_Dataset"
    (root / "AVE").mkdir(parents=True)
    lines: dict[str, list[str]] = {s: [] for s in SPLITS}
    for i in range(9):
        video, category, start = f"yt-{i}_Ab", i % 3, float(i % 2)
        write_clip(root / "AVE" / f"{video}.mp4", category, start, start + 1)
        lines[SPLITS[i // 3]].append(f"{CATEGORIES[category]}&{video}&good&{start:g}&{start + 1:g}")
    lines["train"].append(f"{CATEGORIES[2]}&yt-0_Ab&good&1&2")  # a second event, off screen
    lines["val"].append(f"{CATEGORIES[0]}&yt-4_Ab&bad&1&1")  # zero length: skipped
    every = [HEADER] + [line for s in SPLITS for line in lines[s]]
    (root / "Annotations.txt").write_text("\n".join(every) + "\n")
    (root / "trainSet.txt").write_text("\n".join(lines["train"]) + "\n")
    (root / "valSet.txt").write_text("\n".join([HEADER] + lines["val"]) + "\n")
    (root / "testSet.txt").write_bytes(("\r\n".join(lines["test"]) + "\r\n").encode())
    return raw


@pytest.fixture(scope="module")
def converted(release: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ave")
    convert_ave(release, out, frames=40, n_mels=32, image_size=8)
    return out


def _copy(release: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(release, tmp_path / "raw")) / "AVE_Dataset"


def _band(hz: float, n_mels: int = 32) -> int:
    """The mel band whose filter peaks nearest hz, as log_mel builds them at RATE."""
    _, _, n_fft = frame_params(RATE, 25.0, 10.0)
    bank = mel_filterbank(RATE, n_fft, n_mels, 20.0, RATE / 2)
    return int(bank[:, round(hz * n_fft / RATE)].argmax())


def test_converts_to_a_valid_benchmark(converted: Path) -> None:
    meta = validate_benchmark(converted)
    assert meta.name == "ave" and meta.class_names == CATEGORIES and meta.num_classes == 3
    assert meta.shapes == {"audio": (1, 32, 40), "image": (3, 8, 8)}
    assert meta.params["sample_rates"] == [RATE]
    assert meta.params["skipped_zero_length"] == ["valSet.txt line 5"]
    assert meta.params["videos_in_two_splits"] == []


def test_labels_groups_and_splits_follow_the_split_files(converted: Path) -> None:
    for s, videos in zip(SPLITS, ((0, 1, 2), (3, 4, 5), (6, 7, 8)), strict=True):
        audio, image = load_split(converted, "audio", s), load_split(converted, "image", s)
        expected = [f"yt-{i}_Ab:{CATEGORIES[i % 3]}" for i in videos]
        expected += ["yt-0_Ab:Male speech, man speaking"] if s == "train" else []
        assert audio.ids.tolist() == image.ids.tolist() == expected
        # an event's sound and frame are one instance: paired by pair_id (the paired setting)
        assert audio.pair_ids.tolist() == image.pair_ids.tolist() == expected
        assert audio.y.tolist() == [CATEGORIES.index(i.split(":")[1]) for i in expected]
        assert audio.groups.tolist() == [i.split(":")[0] for i in expected]
        assert np.array_equal(audio.y, image.y)


def test_image_is_the_frame_at_the_events_middle(converted: Path) -> None:
    for s in SPLITS:
        split = load_split(converted, "image", s)
        for x, y, id_ in zip(split.x, split.y, split.ids, strict=True):
            # The second event of yt-0 lies where the frame is black; the others are coloured.
            colour = (0, 0, 0) if id_ == "yt-0_Ab:Male speech, man speaking" else COLOURS[y]
            assert np.allclose(x, np.array(colour)[:, None, None] / 255.0, atol=0.05), id_
            assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0


def test_audio_is_the_events_tone(converted: Path) -> None:
    for s in SPLITS:
        split = load_split(converted, "audio", s)
        loudest = split.x[:, 0].mean(axis=2).argmax(axis=1)  # (N,) band per clip
        for band, y, id_ in zip(loudest, split.y, split.ids, strict=True):
            hz = OUTSIDE_TONE if id_ == "yt-0_Ab:Male speech, man speaking" else TONES[y]
            assert band == _band(hz), id_


def test_whole_clip_segment(release: Path, tmp_path: Path) -> None:
    meta = convert_ave(release, tmp_path, frames=190, n_mels=32, image_size=8, segment="clip")
    assert meta.params["options"]["segment"] == "clip"
    x = load_split(tmp_path, "audio", "train").x[0, 0]  # yt-0: event in [0, 1) s
    assert x[:, :50].mean(axis=1).argmax() == _band(TONES[0])
    assert x[:, -50:].mean(axis=1).argmax() == _band(OUTSIDE_TONE)


def test_read_events_header_and_line_numbers(release: Path) -> None:
    root = release / "AVE_Dataset"
    events = read_events(root / "valSet.txt")
    assert [e.line for e in events] == [2, 3, 4, 5]
    assert events[0].category == "Church bell" and events[0].video == "yt-3_Ab"
    assert (events[0].start, events[0].end) == (1.0, 2.0)
    categories, splits = find_ave(release)
    assert categories == CATEGORIES
    assert [len(splits[s]) for s in SPLITS] == [4, 4, 3]


def test_video_helpers(release: Path) -> None:
    path = release / "AVE_Dataset" / "AVE" / "yt-1_Ab.mp4"  # Dog, [1, 2) s
    wave, rate = read_audio(path)
    assert rate == RATE and wave.dtype == np.float32 and len(wave) >= SECONDS * RATE
    assert duration(path) == pytest.approx(SECONDS, abs=0.1)
    assert read_frame(path, 0.5).shape == (32, 48, 3)
    assert read_frame(path, 0.5).max() < 20 and read_frame(path, 1.5)[..., 1].min() > 230
    assert read_frame(path, 99.0)[..., 1].min() > 230  # past the end: the last frame
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[:, 1:5] = 255  # the centre square is white, the side columns black
    assert np.allclose(square_thumbnail(rgb, 2), 1.0)
    assert square_thumbnail(rgb, 2, grey=True).shape == (1, 2, 2)


def test_missing_annotations(release: Path, tmp_path: Path) -> None:
    root = _copy(release, tmp_path)
    (root / "Annotations.txt").unlink()
    with pytest.raises(DataError, match="missing") as info:
        convert_ave(root, tmp_path / "out")
    assert info.value.path == str(root / "Annotations.txt")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("Dog&yt-1_Ab&good&1", "line 5: expected Category&VideoID&Quality&StartTime&EndTime"),
        ("Dog&yt-1_Ab&good&one&2", "line 5: expected numbers of seconds"),
        ("Dog&yt-1_Ab&good&2&1", "line 5: expected 0 <= StartTime <= EndTime"),
        ("Cat&yt-1_Ab&good&0&1", "line 5: category 'Cat' is not in Annotations.txt"),
        ("Dog&yt-1_Ab&good&0&1", r"line 5: yt-1_Ab:Dog is already listed \(trainSet.txt line 2\)"),
    ],
)
def test_malformed_split_line(release: Path, tmp_path: Path, line: str, problem: str) -> None:
    root = _copy(release, tmp_path)
    with (root / "trainSet.txt").open("a") as f:
        f.write(line + "\n")
    with pytest.raises(DataError, match=problem) as info:
        find_ave(root)
    assert info.value.path == str(root / "trainSet.txt")


def test_listed_video_missing(release: Path, tmp_path: Path) -> None:
    root = _copy(release, tmp_path)
    (root / "AVE" / "yt-7_Ab.mp4").unlink()
    with pytest.raises(DataError, match="missing: listed in .*testSet.txt line 2") as info:
        convert_ave(root, tmp_path / "out")
    assert info.value.path == str(root / "AVE" / "yt-7_Ab.mp4")


def test_unreadable_video(release: Path, tmp_path: Path) -> None:
    root = _copy(release, tmp_path)
    bad = root / "AVE" / "yt-5_Ab.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    with pytest.raises(DataError, match=r"unreadable video .*\(listed in valSet.txt line 4\)") as e:
        convert_ave(root, tmp_path / "out", frames=40, image_size=8)
    assert str(e.value).startswith(f"{bad}: unreadable video")


def test_convert_command(release: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["convert", "ave", str(release), "--out", str(tmp_path / "a"), "--frames", "40"]
    assert main(args + ["--image-size", "8"]) == 0
    assert "image_train.parquet" in capsys.readouterr().out
    assert main(args + ["--image-size", "8"]) == 0
    assert "already built" in capsys.readouterr().out
    assert main(args + ["--image-size", "16"]) == 2  # other options need --force
    root = _copy(release, tmp_path)
    (root / "AVE" / "yt-0_Ab.mp4").unlink()
    assert main(["convert", "ave", str(root), "--out", str(tmp_path / "b")]) == 1
    assert f"error: {root / 'AVE' / 'yt-0_Ab.mp4'}: missing: listed in" in capsys.readouterr().err
