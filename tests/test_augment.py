"""Student-modality augmentation: shapes, per-row draws, what each kind actually changes."""

import pytest
import torch
import torch.nn.functional as F

from cmkd.augment import KINDS, augment, augment_kind


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


SHAPES = {"spectrogram": (2, 32, 43), "image": (3, 28, 28), "vector": (20,)}


def batch(kind, b=16, dtype=torch.float32, seed=1):
    return torch.randn(b, *SHAPES[kind], generator=gen(seed), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("strength", ["weak", "strong"])
@pytest.mark.parametrize("kind", KINDS)
def test_shape_dtype_kept_input_untouched_and_output_changed(kind, strength, dtype):
    x = batch(kind, dtype=dtype)
    before = x.clone()
    out = augment(x, kind, strength, generator=gen())
    assert out.shape == x.shape and out.dtype == dtype
    assert torch.equal(x, before)
    assert not torch.equal(out, x)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kind", KINDS)
def test_none_is_the_input_itself(kind):
    x = batch(kind)
    assert augment(x, kind, "none", generator=gen()) is x


@pytest.mark.parametrize("strength", ["weak", "strong"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_row_gets_its_own_draw(kind, strength):
    if kind == "vector":  # its noise scales with the batch's spread, so rows must differ
        x = batch(kind)
    else:  # 16 copies of one row
        x = batch(kind, b=1).expand(16, *SHAPES[kind]).clone()
    change = augment(x, kind, strength, generator=gen()) - x
    distinct = {tuple(row.flatten().tolist()) for row in change}
    assert len(distinct) >= 8


@pytest.mark.parametrize("kind", KINDS)
def test_a_seeded_generator_reproduces_the_views(kind):
    x = batch(kind)
    one = augment(x, kind, "strong", generator=gen(7))
    two = augment(x, kind, "strong", generator=gen(7))
    other = augment(x, kind, "strong", generator=gen(8))
    assert torch.equal(one, two)
    assert not torch.equal(one, other)


def test_spectrogram_weak_is_a_non_circular_time_shift_plus_a_gain():
    w = 43
    ramp = torch.arange(w, dtype=torch.float64).expand(32, 1, 8, w).clone()  # (B, C, H, W)
    out = augment(ramp, "spectrogram", "weak", generator=gen(2))
    std = ramp[0].std(correction=0).item()
    shifts = []
    for row in out:
        for s in range(-4, 5):  # round(0.1 · 43) = 4
            cand = torch.full((w,), 0.0, dtype=torch.float64)  # the row's minimum is 0
            src = torch.arange(w) - s
            ok = (src >= 0) & (src < w)
            cand[ok] = src[ok].double()
            gain = (row - cand).mean()
            if (row - cand - gain).abs().max() < 1e-9:
                assert abs(gain) <= 0.1 * std + 1e-9
                shifts.append(s)
                break
        else:
            pytest.fail("a row is not a shift of the ramp plus a constant")
    assert len(set(shifts)) >= 4  # and the shifts vary from row to row


def test_spectrogram_strong_masks_fill_whole_frames_and_bands_with_one_value():
    x = batch("spectrogram", b=64) * 2.0 + 3.0  # (B, 2, 32, 43)
    out = augment(x, "spectrogram", "strong", generator=gen(3))
    rows_with_frames = rows_with_bands = 0
    for xi, row in zip(x, out, strict=True):
        # a masked frame is constant over both channels and all bands
        frames = (row == row[:1, :1, :]).all(dim=1).all(dim=0)  # (W,)
        bands = (row == row[:1, :, :1]).all(dim=2).all(dim=0)  # (H,)
        assert frames.sum() <= 2 * round(0.15 * 43)
        assert bands.sum() <= 2 * round(0.15 * 32)
        values = torch.cat([row[:, :, frames].flatten(), row[:, bands, :].flatten()])
        if len(values):
            assert (values == values[0]).all()  # one fill value for every mask of the row
            assert abs(values[0] - xi.mean()) < 0.5 * xi.std()  # near the row's mean
        rows_with_frames += bool(frames.any())
        rows_with_bands += bool(bands.any())
    assert rows_with_frames >= 48 and rows_with_bands >= 48


def blob(b=32, size=28):
    """Images with a bright square in the middle, far from the border."""
    x = torch.zeros(b, 1, size, size)
    x[:, :, 10:18, 11:17] = 1.0
    return x


def centre_of_mass(x):
    h = torch.arange(x.shape[-2], dtype=x.dtype)
    w = torch.arange(x.shape[-1], dtype=x.dtype)
    mass = x.sum(dim=(-1, -2, -3))
    return (
        (x.sum(dim=(-3, -1)) * h).sum(-1) / mass,
        (x.sum(dim=(-3, -2)) * w).sum(-1) / mass,
    )


def test_image_weak_shift_moves_content_and_keeps_its_mass():
    x = blob()
    out = augment(x, "image", "weak", generator=gen(4))
    assert torch.allclose(out.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)))
    (h0, w0), (h1, w1) = centre_of_mass(x), centre_of_mass(out)
    dh, dw = h1 - h0, w1 - w0
    assert dh.abs().max() <= 2 and dw.abs().max() <= 2  # round(2 · magnitude) px
    assert torch.allclose(dh, dh.round()) and torch.allclose(dw, dw.round())
    moved = (dh != 0) | (dw != 0)
    assert moved.sum() >= 24
    assert len(set(zip(dh.tolist(), dw.tolist(), strict=True))) >= 8
    # magnitude scales the shift
    big = augment(x, "image", "weak", generator=gen(4), magnitude=3.0)
    hb, wb = centre_of_mass(big)
    assert max((hb - h0).abs().max(), (wb - w0).abs().max()) > 2


def test_image_strong_cuts_out_a_zero_square():
    x = batch("image", b=16) + 10.0  # no zero anywhere
    out = augment(x, "image", "strong", generator=gen(5))
    side = round(0.3 * 28)
    zero = (out == 0).all(dim=1, keepdim=True).double()  # (B, 1, H, W), zero in every channel
    windows = F.avg_pool2d(zero, side, stride=1)
    assert (windows.flatten(1).max(1).values == 1.0).all()  # a full side×side square each
    # a zero-padding strip (≤ 2 px) cannot hold such a square; the rest is noisy
    assert ((out != 0) & (out != x)).any()


def test_vector_noise_scale_and_strong_dropout():
    scale = torch.tensor([0.1, 1.0, 10.0]).repeat(8)  # features of different spread
    x = torch.randn(512, 24, generator=gen(6)) * scale
    std = x.std(dim=0, correction=0)
    weak = augment(x, "vector", "weak", generator=gen(7))
    rel = ((weak - x) / std).std(dim=0)
    assert torch.allclose(rel, torch.full_like(rel, 0.1), rtol=0.15)
    strong = augment(x, "vector", "strong", generator=gen(8))
    dropped = strong == 0
    assert dropped.double().mean().item() == pytest.approx(0.2, abs=0.02)
    kept = ((strong - x) / std)[~dropped]
    assert kept.std().item() == pytest.approx(0.2, rel=0.1)
    half = augment(x, "vector", "strong", generator=gen(8), magnitude=0.5)
    assert (half == 0).double().mean().item() == pytest.approx(0.1, abs=0.02)


def test_augment_kind():
    assert augment_kind("audio", (1, 32, 43)) == "spectrogram"
    assert augment_kind("audio", (32, 43)) == "spectrogram"
    assert augment_kind("image", (1, 28, 28)) == "image"
    assert augment_kind("video_frame", (3, 64, 64)) == "image"
    assert augment_kind("Face", (3, 64, 64)) == "image"
    assert augment_kind("image", (128,)) == "vector"
    assert augment_kind("a", (16,)) == "vector"


def test_errors_name_the_value_and_the_choices():
    x = batch("vector")
    with pytest.raises(ValueError, match="'audio'.*spectrogram.*image.*vector"):
        augment(x, "audio", "weak")
    with pytest.raises(ValueError, match="'heavy'.*none.*weak.*strong"):
        augment(x, "vector", "heavy")
    with pytest.raises(ValueError, match="floating point"):
        augment(torch.zeros(2, 3, dtype=torch.long), "vector", "weak")
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W\)"):
        augment(x, "image", "weak")
