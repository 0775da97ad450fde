"""Augmentation of the student modality: random views of a batch, in plain torch.

Two uses: every algorithm may augment its labelled batches the same way (so that what
augmentation alone gives is never credited to distillation), and the pool algorithms need a
weak and a strong view of each unlabelled row (FixMatch, Sohn et al. 2020). Three kinds of row:
log-mel spectrograms (time and band shifts, gain, SpecAugment masks, Park et al. 2019), images (shift,
cutout, DeVries & Taylor 2017) and feature vectors (noise, dropout). Every row gets its own
draw and everything is vectorised over the batch. ``magnitude`` scales every change (shift,
gain, masks, noise, dropout); 1 is the default strength.
"""

from __future__ import annotations

import torch
from torch import Tensor

KINDS = ("spectrogram", "image", "vector")
STRENGTHS = ("none", "weak", "strong")
_IMAGE_WORDS = ("image", "video", "frame", "face")


def augment_kind(modality: str, shape: tuple[int, ...]) -> str:
    """Which augmentation suits a modality, from its name and the shape of one row.

    "vector" for 1-D rows; "image" when the name contains 'image', 'video', 'frame' or 'face';
    "spectrogram" for other rows of 2 or more dims, read as (..., H, W) with H mel bands and
    W frames (log-mel (C, H, W)).
    """
    if len(shape) == 1:
        return "vector"
    if len(shape) == 0:
        raise ValueError(f"augment_kind: modality {modality!r} has scalar rows; nothing to augment")
    name = modality.lower()
    if any(word in name for word in _IMAGE_WORDS):
        return "image"
    return "spectrogram"


def augment(
    x: Tensor,
    kind: str,
    strength: str,
    *,
    generator: torch.Generator | None = None,
    magnitude: float = 1.0,
) -> Tensor:
    """A randomly augmented copy of a batch; every row gets its own draw. x is never modified.

    x: (B, *shape), floating point; spectrogram and image rows are (..., H, W). strength "none"
    returns x itself.

    spectrogram (log domain, H mel bands, W frames): weak = a time shift by up to
    ±round(m·0.1·W) frames (not circular: the vacated frames take the row's minimum) and a gain
    drawn in ±m·0.1·(row std), added. strong = weak, then gaussian noise of m·0.05·(row std), then
    2 time masks of up to round(m·0.15·W) frames and 2 frequency masks of up to round(m·0.15·H)
    bands (all channels), filled with the row's mean (masks last, so they hold that value).

    image: weak = a translation by up to ±round(m·2) px on each axis (zero padding, same size).
    strong = weak, then gaussian noise of m·0.05·(row std), then one cutout square of side
    round(m·0.3·H) set to 0.

    vector: weak = gaussian noise of m·0.1·(the batch's std of each feature). strong = twice that
    noise, then each feature zeroed with probability min(m·0.2, 1) (no rescaling).

    m = ``magnitude``. Returns a tensor of x's shape and dtype.
    """
    if kind not in KINDS:
        raise ValueError(f"augment: unknown kind {kind!r}; expected one of {KINDS}")
    if strength not in STRENGTHS:
        raise ValueError(f"augment: unknown strength {strength!r}; expected one of {STRENGTHS}")
    if strength == "none":
        return x
    if not x.is_floating_point():
        raise ValueError(f"augment: x must be floating point, got {x.dtype}")
    if kind != "vector" and x.dim() < 3:
        raise ValueError(
            f"augment: {kind} rows need (..., H, W), got a batch of shape {tuple(x.shape)}"
        )
    draw = _Draws(x, generator)
    strong = strength == "strong"
    if kind == "spectrogram":
        return _spectrogram(x, strong, magnitude, draw)
    if kind == "image":
        return _image(x, strong, magnitude, draw)
    return _vector(x, strong, magnitude, draw)


class _Draws:
    """Random numbers for a batch from one generator, made on the generator's device (a seeded
    CPU generator gives the same views on any device) and moved to x's device and dtype."""

    def __init__(self, x: Tensor, generator: torch.Generator | None):
        self.x, self.gen = x, generator
        self.where = generator.device if generator is not None else x.device

    def uniform(self, *shape: int) -> Tensor:
        return torch.rand(shape, generator=self.gen, device=self.where).to(self.x.device)

    def normal(self, *shape: int) -> Tensor:
        out = torch.randn(shape, generator=self.gen, device=self.where)
        return out.to(self.x.device, self.x.dtype)

    def integers(self, low: Tensor | int, high: Tensor | int, n: int) -> Tensor:
        """n integers, each uniform in [low, high] inclusive (per-row bounds allowed)."""
        span = torch.as_tensor(high, device=self.x.device) - low + 1
        return low + (self.uniform(n) * span).floor().long().clamp_max(span - 1)


def _row_stat(x: Tensor, stat: str) -> Tensor:
    """Per-row statistic of (B, ...) shaped to broadcast against x: (B, 1, ..., 1)."""
    flat = x.flatten(1)
    if stat == "std":
        value = flat.std(dim=1, correction=0)
    elif stat == "mean":
        value = flat.mean(dim=1)
    else:
        value = flat.amin(dim=1)
    return value.view(-1, *([1] * (x.dim() - 1)))


def _shift_last(x: Tensor, shift: Tensor, dim: int, fill: Tensor | float) -> Tensor:
    """Shift each row along ``dim`` (a trailing dim) by its own integer amount, (B,), without
    wrapping around; vacated positions take ``fill``."""
    size = x.shape[dim]
    src = torch.arange(size, device=x.device) - shift[:, None]  # (B, size) source index
    valid = (src >= 0) & (src < size)
    view = [x.shape[0]] + [1] * (x.dim() - 1)
    view[dim] = size
    index = src.clamp(0, size - 1).view(view).expand_as(x)
    return torch.where(valid.view(view), x.gather(dim, index), fill)


def _band_masks(b: int, size: int, longest: int, count: int, draw: _Draws) -> Tensor:
    """``count`` random bands per row, each up to ``longest`` wide -> (B, size) bool."""
    pos = torch.arange(size, device=draw.x.device)
    masked = torch.zeros(b, size, dtype=torch.bool, device=draw.x.device)
    longest = min(longest, size)
    for _ in range(count):
        width = draw.integers(0, longest, b)  # (B,)
        start = draw.integers(0, size - width, b)
        masked |= (pos >= start[:, None]) & (pos < (start + width)[:, None])
    return masked


def _spectrogram(x: Tensor, strong: bool, m: float, draw: _Draws) -> Tensor:
    b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    std = _row_stat(x, "std")
    low = _row_stat(x, "min")
    reach = round(m * 0.1 * w)
    out = _shift_last(x, draw.integers(-reach, reach, b), x.dim() - 1, low)
    # a shift across the bands: another speaker's pitch (2 of 32 log-mel bands: ~3 semitones)
    reach = round(m * 0.06 * h)
    out = _shift_last(out, draw.integers(-reach, reach, b), x.dim() - 2, low)
    gain = (2.0 * draw.uniform(b) - 1.0).to(x.dtype).view_as(std) * (m * 0.1) * std
    out = out + gain
    if not strong:
        return out
    out = out + m * 0.05 * std * draw.normal(*x.shape)
    fill = _row_stat(x, "mean") + gain  # the row's own level, not the shifts' fill
    frames = _band_masks(b, w, round(m * 0.15 * w), 2, draw)  # (B, W)
    bands = _band_masks(b, h, round(m * 0.15 * h), 2, draw)  # (B, H)
    lead = [1] * (x.dim() - 3)
    masked = frames.view(b, *lead, 1, w) | bands.view(b, *lead, h, 1)
    return torch.where(masked, fill, out)


def _image(x: Tensor, strong: bool, m: float, draw: _Draws) -> Tensor:
    b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    reach = round(m * 2)
    out = _shift_last(x, draw.integers(-reach, reach, b), x.dim() - 2, 0.0)
    out = _shift_last(out, draw.integers(-reach, reach, b), x.dim() - 1, 0.0)
    if not strong:
        return out
    out = out + m * 0.05 * _row_stat(x, "std") * draw.normal(*x.shape)
    side = min(round(m * 0.3 * h), h, w)
    top, left = draw.integers(0, h - side, b), draw.integers(0, w - side, b)
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    in_rows = (rows >= top[:, None]) & (rows < (top + side)[:, None])  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + side)[:, None])  # (B, W)
    lead = [1] * (x.dim() - 3)
    square = in_rows.view(b, *lead, h, 1) & in_cols.view(b, *lead, 1, w)
    return out.masked_fill(square, 0.0)


def _vector(x: Tensor, strong: bool, m: float, draw: _Draws) -> Tensor:
    scale = m * 0.1 * (2.0 if strong else 1.0)
    std = x.std(dim=0, correction=0, keepdim=True)  # (1, *shape) per feature, over the batch
    out = x + scale * std * draw.normal(*x.shape)
    if not strong:
        return out
    drop = draw.uniform(*x.shape) < min(m * 0.2, 1.0)
    return out.masked_fill(drop, 0.0)
