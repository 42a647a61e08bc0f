"""Reference preprocessing: official stretch / training cover, product fit geometry, resolution rules, value ranges."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_cointeract.cointeract_core.media.preprocess import (
    check_resolution,
    cover_crop,
    fit_product,
    frames_to_uint8,
    resize_person,
    round_resolution,
    to_model_range,
)


def _random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _as_float(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr.astype(np.float32) / 255.0)


def _as_uint8(img: torch.Tensor) -> np.ndarray:
    return (img * 255.0).round().to(torch.uint8).numpy()


def test_stretch_is_batch_infers_pil_resize_with_the_default_filter():
    arr = _random_image(37, 53)
    out = resize_person(_as_float(arr), 64, 48)
    assert out.shape == (64, 48, 3) and out.dtype == torch.float32
    # batch_infer: Image.open(p).convert("RGB").resize((W, H)), Pillow's default filter.
    official = np.asarray(Image.fromarray(arr).resize((48, 64)))
    assert np.array_equal(_as_uint8(out), official)
    assert np.array_equal(official, np.asarray(Image.fromarray(arr).resize((48, 64), Image.Resampling.BICUBIC)))
    assert torch.equal(resize_person(torch.from_numpy(arr), 64, 48), out)  # uint8 input gives the same


@pytest.mark.parametrize(
    ("size", "target", "filt"), [((100, 200), (64, 64), "LANCZOS"), ((10, 20), (40, 48), "BILINEAR")]
)
def test_cover_scales_to_cover_and_center_crops(size, target, filt):
    (h0, w0), (h, w) = size, target
    arr = _random_image(h0, w0, seed=1)
    out = resize_person(_as_float(arr), h, w, mode="cover")
    assert out.shape == (h, w, 3)
    scale = max(w / w0, h / h0)
    rh, rw = round(h0 * scale), round(w0 * scale)
    resized = Image.fromarray(arr).resize((rw, rh), getattr(Image.Resampling, filt))
    top, left = round((rh - h) / 2), round((rw - w) / 2)
    expected = np.asarray(resized)[top : top + h, left : left + w]
    assert np.array_equal(_as_uint8(out), expected)
    assert torch.equal(cover_crop(_as_float(arr), h, w), out)


def test_cover_keeps_the_aspect_ratio():
    arr = np.zeros((100, 300, 3), np.uint8)
    arr[30:70, 130:170] = 255  # a 40x40 white square in the middle of a wide image
    out = resize_person(_as_float(arr), 80, 80, mode="cover")  # scale 0.8: the square becomes 32x32
    rows, cols = np.nonzero(out[..., 0].numpy() > 0.5)
    assert rows.max() - rows.min() + 1 == cols.max() - cols.min() + 1 == 32
    stretched = resize_person(_as_float(arr), 80, 80)  # stretch squeezes it horizontally
    rows, cols = np.nonzero(stretched[..., 0].numpy() > 0.5)
    assert cols.max() - cols.min() + 1 < rows.max() - rows.min() + 1
    with pytest.raises(ValueError, match="'stretch' or 'cover'"):
        resize_person(_as_float(arr), 80, 80, mode="fill")


@pytest.mark.parametrize(
    ("margin", "box"),  # white 100x50 (HxW) product on a 160x160 frame -> (top, left, height, width) of the box
    [(1.25, (16, 48, 128, 64)), (1.0, (0, 40, 160, 80))],
)
def test_product_fit_margin_geometry(margin, box):
    out = fit_product(torch.ones(100, 50, 3), 160, 160, margin=margin)
    assert out.shape == (160, 160, 3)
    top, left, bh, bw = box
    inside = torch.zeros(160, 160, dtype=torch.bool)
    inside[top : top + bh, left : left + bw] = True
    assert torch.equal(out[inside], torch.ones_like(out[inside]))  # BILINEAR enlarging keeps white exactly
    assert torch.equal(out[~inside], torch.zeros_like(out[~inside]))  # black padding


def test_product_fit_matches_batch_infer_when_shrinking():
    arr = _random_image(300, 200, seed=2)
    out = fit_product(_as_float(arr), 96, 128)  # scale = min(128/200, 96/300) / 1.25 = 0.256 -> 77x51
    small = Image.fromarray(arr).resize((51, 77), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (128, 96))
    canvas.paste(small, ((128 - 51) // 2, (96 - 77) // 2))
    assert np.array_equal(_as_uint8(out), np.asarray(canvas))
    with pytest.raises(ValueError, match="margin must be >= 1"):
        fit_product(_as_float(arr), 96, 128, margin=0.9)


def test_round_resolution_rounds_up_with_a_notice(caplog):
    assert round_resolution(832, 480) == (832, 480, False)
    with caplog.at_level(logging.INFO):
        assert round_resolution(830, 470) == (832, 480, True)
    assert "830x470 (HxW) rounded up to 832x480" in caplog.text
    assert round_resolution(720, 1280) == (720, 1280, False)


def test_check_resolution():
    check_resolution(832, 480)
    check_resolution(64, 64)
    with pytest.raises(ValueError, match="not a multiple of 16.*832x480"):
        check_resolution(830, 470)
    with pytest.raises(ValueError, match="too small.*>= 64"):
        check_resolution(48, 832)


def test_model_range_and_back():
    img = torch.zeros(2, 3, 3)
    img[0, 0] = torch.tensor([1.0, 0.5, 0.0])
    x = to_model_range(img)
    assert x.shape == (1, 3, 1, 2, 3) and x.dtype == torch.float32
    assert x[0, :, 0, 0, 0].tolist() == [1.0, 0.0, -1.0] and x[0, :, 0, 1, 2].tolist() == [-1.0, -1.0, -1.0]
    assert torch.equal(to_model_range(torch.full((2, 2, 3), 255, dtype=torch.uint8)), torch.ones(1, 3, 1, 2, 2))
    arr = torch.from_numpy(_random_image(4, 5)[None].repeat(3, 0))  # [T=3, H, W, 3] uint8
    video = torch.cat([to_model_range(f.float() / 255.0) for f in arr], dim=2)  # [1, 3, T, H, W]
    assert torch.equal(frames_to_uint8(video, rounding="round"), arr)


def test_frames_to_uint8_truncates_like_the_official_code():
    video = torch.tensor([-1.5, -1.0, 0.0, 0.999, 1.0, 2.0]).view(1, 1, 1, 6).expand(3, 1, 1, 6)  # [3, T, H, W]
    assert frames_to_uint8(video)[0, 0, :, 0].tolist() == [0, 0, 127, 254, 255, 255]
    assert frames_to_uint8(video, rounding="round")[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255, 255]
    rgb = torch.stack([torch.full((2, 1, 1), v) for v in (-1.0, 0.0, 1.0)])  # [3, T=2, 1, 1]
    assert frames_to_uint8(rgb[None]).shape == (2, 1, 1, 3) and frames_to_uint8(rgb)[1, 0, 0].tolist() == [0, 127, 255]
    with pytest.raises(ValueError, match="one video"):
        frames_to_uint8(torch.zeros(2, 3, 1, 4, 4))
