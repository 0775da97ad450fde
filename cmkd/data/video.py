"""Audio tracks and still frames of video files, decoded with PyAV (ffmpeg bundled in its wheels).

Errors from ffmpeg (unreadable, truncated, no such stream) come out as ValueError naming the
file, so the converters can turn them into a DataError.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """The whole audio track of a video file, mixed to mono: (wave (T,) float32, sample rate).

    Sample 0 is at the track's first decoded frame (time 0 in the files we meet; the few ms of
    encoder priming an AAC track may carry are left in).
    """
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise ValueError(f"{path}: no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono")  # keeps the rate
            chunks, rate = [], stream.codec_context.sample_rate
            for frame in container.decode(stream):
                chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    except av.FFmpegError as err:
        raise ValueError(f"{path}: unreadable video ({err})") from None
    if not chunks:
        raise ValueError(f"{path}: the audio stream holds no samples")
    return np.concatenate(chunks).astype(np.float32, copy=False), int(rate)


def read_frame(path: str | Path, seconds: float) -> np.ndarray:
    """The frame on screen at `seconds` (the last one starting at or before it): (H, W, 3) uint8.

    A time past the end gives the last frame, one before the first frame the first.
    """
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path}: no video stream")
            stream = container.streams.video[0]
            # Seeking lands on the keyframe at or before the time; decode forward from there.
            container.seek(max(0, int(seconds / stream.time_base)), stream=stream, backward=True)
            shown = None
            for frame in container.decode(stream):
                if shown is not None and frame.time is not None and frame.time > seconds:
                    break
                shown = frame
    except av.FFmpegError as err:
        raise ValueError(f"{path}: unreadable video ({err})") from None
    if shown is None:
        raise ValueError(f"{path}: the video stream holds no frames")
    return shown.to_ndarray(format="rgb24")


def square_thumbnail(rgb: np.ndarray, size: int, grey: bool = False) -> np.ndarray:
    """Centre-crop an (H, W, 3) uint8 image to a square, shrink it to (C, size, size) in [0, 1].

    C is 3 (RGB) or 1 (grey, ITU-R BT.601 luma). Area interpolation, as for any downscale.
    """
    h, w, _ = rgb.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = np.ascontiguousarray(rgb[top : top + side, left : left + side])
    frame = av.VideoFrame.from_ndarray(square, format="rgb24")
    small = frame.reformat(size, size, "gray" if grey else "rgb24", interpolation="AREA")
    pixels = small.to_ndarray().reshape(size, size, -1)  # (size, size, C)
    return (pixels.transpose(2, 0, 1) / 255.0).astype(np.float32)


def duration(path: str | Path) -> float:
    """The length of a video file in seconds (the container's, else its first video stream's)."""
    try:
        with av.open(str(path)) as container:
            if container.duration is not None:
                return container.duration / av.time_base
            stream = container.streams.video[0] if container.streams.video else None
            if stream is None or stream.duration is None:
                raise ValueError(f"{path}: no duration in the container or its video stream")
            return float(stream.duration * stream.time_base)
    except av.FFmpegError as err:
        raise ValueError(f"{path}: unreadable video ({err})") from None
