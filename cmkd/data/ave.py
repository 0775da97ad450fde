"""AVE (Audio-Visual Event localisation, Tian et al. 2018) raw release -> the parquet layout.

The release, as unzipped::

    AVE_Dataset/Annotations.txt   Category&VideoID&Quality&StartTime&EndTime, one event a line
    AVE_Dataset/trainSet.txt      the official splits, same line format (header line optional)
    AVE_Dataset/valSet.txt
    AVE_Dataset/testSet.txt
    AVE_Dataset/AVE/<VideoID>.mp4 10 s YouTube clips

One event (line) is one sample of each modality: `audio`, the log-mel (1, n_mels, frames) of the
clip's sound over the event's [StartTime, EndTime) seconds, centre-cropped or zero-padded to
`frames` 10 ms frames (or of the whole clip with segment="clip"); `image`, the frame on screen at
the middle of the event, centre-cropped to a square and shrunk to (3, size, size) in [0, 1].
The label is the category's index in sorted order (28 categories), the group the video id. A
video with two events gives two samples, ids "<VideoID>:<Category>", which are also their pair
ids (an event's sound and frame are one instance: ``pairing: paired`` can use it). Events of zero length (a
handful of lines have StartTime == EndTime) are skipped and listed in meta.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmkd.data.audio import fit_length, log_mel, num_samples
from cmkd.data.schema import SPLITS, DataError, Meta, read_meta, split_path, write_meta, write_split

ANNOTATIONS = "Annotations.txt"
SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
SEGMENTS = ("event", "clip")


@dataclass(frozen=True)
class Event:
    """One annotated line: an event of `category` in video `video` from `start` to `end` s."""

    category: str
    video: str
    start: float
    end: float
    line: int  # 1-based, in its file

    @property
    def id(self) -> str:
        return f"{self.video}:{self.category}"


def read_events(path: str | Path) -> list[Event]:
    """The events of an AVE annotation or split file; a first line `Category&VideoID&...` is
    skipped as a header. Raises DataError naming the file and line on a malformed line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "missing: expected it in the AVE release folder")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(path, f"not UTF-8 text ({err})") from None
    events = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("&")]
        if number == 1 and [f.lower() for f in fields[:2]] == ["category", "videoid"]:
            continue
        where = f"line {number}: "
        if len(fields) != 5:
            raise DataError(
                path,
                f"{where}expected Category&VideoID&Quality&StartTime&EndTime, found {line!r}",
            )
        category, video, _, start, end = fields
        try:
            start_s, end_s = float(start), float(end)
        except ValueError:
            raise DataError(
                path, f"{where}expected numbers of seconds, found {start!r} and {end!r}"
            ) from None
        if not category or not video:
            raise DataError(path, f"{where}expected a category and a video id, found {line!r}")
        if not 0 <= start_s <= end_s:
            raise DataError(path, f"{where}expected 0 <= StartTime <= EndTime, found {line!r}")
        events.append(Event(category, video, start_s, end_s, number))
    if not events:
        raise DataError(path, "expected annotation lines, found none")
    return events


def release_root(raw: str | Path) -> Path:
    """raw/AVE_Dataset if the release was unzipped into raw/, else raw itself."""
    raw = Path(raw)
    return raw / "AVE_Dataset" if (raw / "AVE_Dataset").is_dir() else raw


def find_ave(raw: str | Path) -> tuple[tuple[str, ...], dict[str, list[Event]]]:
    """(sorted categories, {split: events}) of the release in raw/ or raw/AVE_Dataset/.

    Checks what can be checked without decoding: every split line is a known category, no
    (video, category) twice, every listed video present as AVE/<VideoID>.mp4.
    """
    root = release_root(raw)
    categories = tuple(sorted({e.category for e in read_events(root / ANNOTATIONS)}))
    splits, seen = {}, {}
    for s, name in SPLIT_FILES.items():
        path = root / name
        splits[s] = read_events(path)
        for e in splits[s]:
            if e.category not in categories:
                raise DataError(
                    path, f"line {e.line}: category {e.category!r} is not in {ANNOTATIONS}"
                )
            if e.id in seen:
                raise DataError(path, f"line {e.line}: {e.id} is already listed ({seen[e.id]})")
            seen[e.id] = f"{name} line {e.line}"
            video = root / "AVE" / f"{e.video}.mp4"
            if not video.is_file():
                raise DataError(video, f"missing: listed in {path} line {e.line}")
    return categories, splits


def convert_ave(
    raw: str | Path,
    out: str | Path,
    seed: int = 0,
    n_mels: int = 40,
    frames: int = 300,
    image_size: int = 32,
    segment: str = "event",
    progress: bool = False,
) -> Meta:
    """AVE -> out/: `audio` (1, n_mels, frames) and `image` (3, image_size, image_size), 28
    categories, the official train/val/test splits. seed is recorded only (the splits are fixed).
    """
    from tqdm import tqdm

    from cmkd.data.video import read_audio, read_frame, square_thumbnail

    if segment not in SEGMENTS:
        raise ValueError(f"segment must be one of {SEGMENTS}, found {segment!r}")
    root = release_root(raw)
    categories, splits = find_ave(root)
    rates, skipped = set(), []
    for s in SPLITS:
        events = [e for e in splits[s] if e.end > e.start]
        skipped += [f"{SPLIT_FILES[s]} line {e.line}" for e in splits[s] if e.end <= e.start]
        audio = np.zeros((len(events), 1, n_mels, frames), np.float32)
        image = np.zeros((len(events), 3, image_size, image_size), np.float32)
        for i, e in enumerate(tqdm(events, desc=f"ave {s}", unit="clip", disable=not progress)):
            path = root / "AVE" / f"{e.video}.mp4"
            try:
                wave, rate = read_audio(path)
                image[i] = square_thumbnail(read_frame(path, (e.start + e.end) / 2), image_size)
            except ValueError as err:
                raise DataError(
                    path, f"{_cause(err, path)} (listed in {SPLIT_FILES[s]} line {e.line})"
                ) from None
            rates.add(rate)
            if segment == "event":
                wave = wave[int(e.start * rate) : int(e.end * rate)]
            audio[i, 0] = log_mel(
                fit_length(wave, num_samples(frames, rate)),
                rate,
                n_mels,
                fmax=min(8000.0, rate / 2),
            )
        labels = np.array([categories.index(e.category) for e in events], np.int64)
        ids, groups = [e.id for e in events], [e.video for e in events]
        # the audio and the frame of one event are one instance: the paired setting can use it
        for modality, x in (("audio", audio), ("image", image)):
            write_split(split_path(out, modality, s), x, labels, ids, groups, pair_ids=ids)
    videos = {s: {e.video for e in splits[s]} for s in SPLITS}
    write_meta(
        out,
        "ave",
        len(categories),
        {"audio": (1, n_mels, frames), "image": (3, image_size, image_size)},
        seed=seed,
        class_names=categories,
        params={
            "options": {
                "n_mels": n_mels,
                "frames": frames,
                "image_size": image_size,
                "segment": segment,
            },
            "splits": "official (trainSet.txt, valSet.txt, testSet.txt)",
            "sample_rates": sorted(rates),
            "features": f"audio: log-mel, 25 ms window, 10 ms hop, 20 Hz..8 kHz, of the {segment}"
            ", centre crop/pad; image: frame at the event's middle, centre square, area-shrunk",
            "skipped_zero_length": skipped,
            "videos_in_two_splits": sorted(
                (videos["train"] & videos["val"])
                | (videos["train"] & videos["test"])
                | (videos["val"] & videos["test"])
            ),
        },
    )
    return read_meta(out)


def _cause(err: ValueError, path: Path) -> str:
    """The message of a cmkd.data.video error without the path it starts with."""
    return str(err).removeprefix(f"{path}: ")
