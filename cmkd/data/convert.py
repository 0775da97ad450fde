"""Converters from the raw public releases of real benchmarks to the parquet layout.

The user downloads the data; nothing here reaches the network. Audio becomes log-mel features
(1, n_mels, frames), centre-cropped or zero-padded to a fixed duration. RAVDESS can add an
`image` modality from its video release (decoded with PyAV): the frame at the middle of each
clip, centre-cropped to a square and shrunk to (3, size, size) in [0, 1]. The CREMA-D videos
(VideoFlash/*.flv) are not converted. Splits are speaker-disjoint: whole speakers go to train,
val or test, by seed, the same in every modality. AVE is in cmkd.data.ave.

RAVDESS (Livingstone & Russo 2018), Audio_Speech_Actors_01-24:
    Actor_01/03-01-05-01-02-01-01.wav   modality-channel-emotion-intensity-statement-repetition-
                                        actor; emotion 01..08 is the label, the actor the group.
    Video_Speech_Actor_01/Actor_01/01-01-05-01-02-01-01.mp4 (full AV) or 02-01-... (video only):
                                        the same recording filmed; either gives its image.
CREMA-D (Cao et al. 2014):
    AudioWAV/1001_DFA_ANG_XX.wav        speaker_sentence_emotion_level; the emotion is the label,
                                        the speaker the group.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmkd.data.audio import fit_length, log_mel, num_samples, read_wav
from cmkd.data.schema import DataError, Meta, read_meta, split_path, write_meta, write_split

RAVDESS_EMOTIONS = (
    "neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"
)  # fmt: skip
CREMAD_EMOTIONS = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
_RAVDESS_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)\.wav$")
_CREMAD_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})\.wav$")
VIDEO_NOTE = "not converted"
VAL_SHARE, TEST_SHARE = 0.1, 0.2


@dataclass(frozen=True)
class Clip:
    """One labelled recording found in a raw folder."""

    path: Path
    label: int
    group: str


def find_ravdess(raw: str | Path, channels: Sequence[str] = ("speech",)) -> list[Clip]:
    """The audio-only wav files under raw/Actor_*/, labelled by emotion (0..7), grouped by actor.

    channels: "speech" (vocal channel 01) and/or "song" (02). Raises DataError on a wav file
    whose name does not follow the RAVDESS pattern, or when none is found.
    """
    codes = {"speech": "01", "song": "02"}
    unknown = set(channels) - set(codes)
    if unknown:
        raise ValueError(f"channels must be speech and/or song, found {sorted(unknown)}")
    wanted = {codes[c] for c in channels}
    clips = []
    for path in sorted(Path(raw).glob("Actor_*/*.wav")):
        match = _RAVDESS_NAME.match(path.name)
        if match is None:
            raise DataError(path, "expected a name MM-VV-EE-II-SS-RR-AA.wav (RAVDESS)")
        _, channel, emotion, _, _, _, actor = match.groups()
        if not 1 <= int(emotion) <= len(RAVDESS_EMOTIONS):
            raise DataError(path, f"expected emotion 01..08 in the 3rd field, found {emotion}")
        if channel in wanted:
            clips.append(Clip(path, int(emotion) - 1, f"actor_{actor}"))
    if not clips:
        raise DataError(
            raw, f"expected Actor_*/*.wav files of channels {list(channels)}, found none"
        )
    return clips


def find_ravdess_video(video: str | Path, clips: Sequence[Clip]) -> list[Clip]:
    """The video of each audio clip, found anywhere under video/ (Video_Speech_Actor_XX/...).

    The video of 03-01-05-01-02-01-01.wav is 02-01-05-01-02-01-01.mp4 (video only) or, failing
    that, 01-01-05-01-02-01-01.mp4 (full AV). Raises DataError naming the first clip without one.
    """
    found = {p.name: p for p in sorted(Path(video).rglob("*.mp4"))}
    videos = []
    for clip in clips:
        names = [f"{m}{clip.path.stem[2:]}.mp4" for m in ("02", "01")]
        path = next((found[n] for n in names if n in found), None)
        if path is None:
            raise DataError(clip.path, f"expected its video {' or '.join(names)} under {video}")
        videos.append(Clip(path, clip.label, clip.group))
    return videos


def find_cremad(raw: str | Path) -> list[Clip]:
    """The wav files under raw/AudioWAV/ (or raw/), labelled by emotion, grouped by speaker."""
    raw = Path(raw)
    folder = raw / "AudioWAV" if (raw / "AudioWAV").is_dir() else raw
    clips = []
    for path in sorted(folder.glob("*.wav")):
        match = _CREMAD_NAME.match(path.name)
        if match is None:
            raise DataError(path, "expected a name SSSS_SEN_EMO_LV.wav (CREMA-D)")
        speaker, _, emotion, _ = match.groups()
        if emotion not in CREMAD_EMOTIONS:
            raise DataError(path, f"expected an emotion in {CREMAD_EMOTIONS}, found {emotion}")
        clips.append(Clip(path, CREMAD_EMOTIONS.index(emotion), speaker))
    if not clips:
        raise DataError(folder, "expected CREMA-D wav files (1001_DFA_ANG_XX.wav), found none")
    return clips


def split_groups(groups: Sequence[str], seed: int) -> dict[str, list[str]]:
    """Assign whole groups (speakers) to train/val/test, at least one each, by seed."""
    unique = sorted(set(groups))
    if len(unique) < 3:
        raise ValueError(f"need at least 3 speakers for train/val/test, found {unique}")
    order = [unique[i] for i in np.random.default_rng([seed, 5]).permutation(len(unique))]
    n_test = max(1, round(TEST_SHARE * len(unique)))
    n_val = max(1, round(VAL_SHARE * len(unique)))
    return {
        "train": sorted(order[n_test + n_val :]),
        "val": sorted(order[n_test : n_test + n_val]),
        "test": sorted(order[:n_test]),
    }


def convert_audio(
    clips: list[Clip],
    out: str | Path,
    name: str,
    class_names: Sequence[str],
    seed: int = 0,
    n_mels: int = 40,
    frames: int = 300,
    progress: bool = False,
    images: list[Clip] | None = None,
    image_size: int | None = None,
    video: str | None = None,
) -> Meta:
    """Write clips as the `audio` modality of a benchmark: x (1, n_mels, frames) per clip.

    Each clip is read, cropped or zero-padded around its centre to `frames` 10 ms frames, and
    log-mel'd (25 ms window, 20 Hz..8 kHz, the same at every sample rate). images (videos, one
    per clip, same labels and groups) add the `image` modality: x (3, image_size, image_size),
    the frame at each video's middle (image_size default 32); video is recorded only.
    """
    from tqdm import tqdm

    assignment = split_groups([c.group for c in clips], seed)
    split_of = {g: s for s, gs in assignment.items() for g in gs}
    x = np.zeros((len(clips), 1, n_mels, frames), np.float32)
    rates = set()
    for i, clip in enumerate(tqdm(clips, desc=name, unit="clip", disable=not progress)):
        try:
            wave, rate = read_wav(clip.path)
        except (OSError, ValueError) as err:
            raise DataError(clip.path, f"unreadable wav ({err})") from None
        rates.add(rate)
        wave = fit_length(wave, num_samples(frames, rate))
        x[i, 0] = log_mel(wave, rate, n_mels, fmax=min(8000.0, rate / 2))
    modalities = {"audio": (clips, x)}
    options: dict[str, object] = {"n_mels": n_mels, "frames": frames}
    if images is not None:
        size = 32 if image_size is None else image_size
        modalities["image"] = (images, middle_frames(images, size, f"{name} video", progress))
        if video is not None:
            options["video"] = video
        if image_size is not None:
            options["image_size"] = image_size
    for modality, (rows_of, xs) in modalities.items():
        for s in ("train", "val", "test"):
            rows = [i for i, c in enumerate(rows_of) if split_of[c.group] == s]
            write_split(
                split_path(out, modality, s),
                xs[rows],
                np.array([rows_of[i].label for i in rows]),
                [rows_of[i].path.stem for i in rows],
                [rows_of[i].group for i in rows],
            )
    write_meta(
        out,
        name,
        len(class_names),
        {m: xs.shape[1:] for m, (_, xs) in modalities.items()},
        seed=seed,
        class_names=class_names,
        params={
            "options": options,
            "groups": assignment,
            "sample_rates": sorted(rates),
            "features": "log-mel, 25 ms window, 10 ms hop, 20 Hz..8 kHz, centre crop/pad",
            "video": VIDEO_NOTE
            if images is None
            else "image: frame at the clip's middle, centre square, area-shrunk, RGB in [0, 1]",
        },
    )
    return read_meta(out)


def middle_frames(videos: Sequence[Clip], size: int, desc: str, progress: bool) -> np.ndarray:
    """The frame at the middle of each video, as (N, 3, size, size) float32 in [0, 1]."""
    from tqdm import tqdm

    from cmkd.data.video import duration, read_frame, square_thumbnail

    x = np.zeros((len(videos), 3, size, size), np.float32)
    for i, clip in enumerate(tqdm(videos, desc=desc, unit="clip", disable=not progress)):
        try:
            x[i] = square_thumbnail(read_frame(clip.path, duration(clip.path) / 2), size)
        except ValueError as err:
            raise DataError(clip.path, str(err).removeprefix(f"{clip.path}: ")) from None
    return x


def convert_ravdess(
    raw: str | Path,
    out: str | Path,
    seed: int = 0,
    video: str | Path | None = None,
    image_size: int | None = None,
    **features,
) -> Meta:
    """RAVDESS speech (Actor_XX/*.wav) -> out/, 8 emotions, actor-disjoint splits; with video
    (the folder holding Video_Speech_Actor_XX/) also the `image` modality of the same clips."""
    if video is None and image_size is not None:
        raise ValueError("image_size needs video, the folder of the RAVDESS video release")
    clips = find_ravdess(raw)
    if video is None:
        return convert_audio(clips, out, "ravdess", RAVDESS_EMOTIONS, seed, **features)
    images = find_ravdess_video(video, clips)
    return convert_audio(
        clips,
        out,
        "ravdess",
        RAVDESS_EMOTIONS,
        seed,
        images=images,
        image_size=image_size,
        video=str(video),
        **features,
    )


def convert_cremad(raw: str | Path, out: str | Path, seed: int = 0, **features) -> Meta:
    """CREMA-D (AudioWAV/*.wav) -> out/, 6 emotions, speaker-disjoint splits."""
    names = ("anger", "disgust", "fear", "happy", "neutral", "sad")  # CREMAD_EMOTIONS, spelt out
    return convert_audio(find_cremad(raw), out, "cremad", names, seed, **features)
