"""Router labels against hand-computed token grids (reference §1.11): resize/crop, edges, overlaps, key conventions."""

from __future__ import annotations

import json

import pytest
import torch

from comfyui_cointeract.train.labels import (
    BoxKeyConventionError,
    MalformedBoxes,
    box_to_token_rect,
    boxes_outside_frame,
    parse_boxes,
    router_labels,
)

# A 1280x720 (W x H) source trained at H x W = 720 x 480 (train.sh): s = max(480/1280, 720/720) = 1,
# no resize, crop offset x = (1280 - 480) / 2 = 400, y = 0; token grid 45 x 30.
SRC = (720, 1280)
TRAIN = (720, 480)


def grid(frames: int, rects: dict[int, list[tuple[int, int, int, int]]], hw=(45, 30)) -> torch.Tensor:
    """Expected bool mask [frames·h·w] from inclusive (row0, row1, col0, col1) rectangles per latent frame."""
    m = torch.zeros(frames, *hw, dtype=torch.bool)
    for t, rs in rects.items():
        for r0, r1, c0, c1 in rs:
            m[t, r0 : r1 + 1, c0 : c1 + 1] = True
    return m.flatten()


def masks(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return targets[:, 0] == 1, targets[:, 1] == 1, targets[:, 2] == 1


def test_crop_offset_and_inclusive_rectangle():
    # x 500..600 -> 100..200 after the crop: cols 6..12 (200/16 = 12.5); y 100..200: rows 6..12.
    face = {"frame_2": [500, 100, 600, 200]}
    targets, weights = router_labels(json.dumps(face), "{}", SRC, TRAIN)
    assert targets.shape == (20 * 45 * 30, 3) and weights.shape == (20 * 45 * 30,)
    base, hand, fc = masks(targets)
    assert torch.equal(fc, grid(20, {0: [(6, 12, 6, 12)]}))
    assert not hand.any() and torch.equal(base, ~fc)
    assert torch.equal(targets.sum(1), torch.ones(len(targets)))
    assert torch.equal(weights, torch.where(fc, 10.0, 1.0))


def test_frame_edges_clip_and_clamp():
    face = {
        "frame_2": [300, 0, 420, 50],  # x -100..20 -> clipped 0..20: cols 0..1, rows 0..3
        "frame_6": [860, 700, 900, 720],  # x 460..500 -> 460..480: cols 28..30 -> clamped 29; rows 43..45 -> 44
        "frame_10": [380, 0, 400, 10],  # right edge lands exactly on x = 0: kept (official skips only x2 < 0)
        "frame_14": [0, 0, 390, 100],  # x2 -> -10: fully cropped away, skipped
        "frame_18": [879, 0, 1000, 16],  # x1 -> 479, x1 > 480 is false: kept, col 29; y 0..16 -> rows 0..1
    }
    targets, _ = router_labels(face, {}, SRC, TRAIN)
    expected = {0: [(0, 3, 0, 1)], 1: [(43, 44, 28, 29)], 2: [(0, 0, 0, 0)], 4: [(0, 1, 29, 29)]}
    assert torch.equal(masks(targets)[2], grid(20, expected))


def test_resize_and_fractional_crop():
    # 1280x720 source at H x W = 480 x 720: s = max(720/1280, 480/720) = 2/3, resized 853 x 480 (round(853.33)),
    # x offset (853 - 720) / 2 = 66.5 (float, not rounded). Box x 300..450 -> 133.5..233.5: cols 8..14;
    # y 150..300 -> 100..200: rows 6..12. Grid 30 x 45.
    targets, _ = router_labels({"frame_2": [300, 150, 450, 300]}, {}, SRC, (480, 720))
    assert torch.equal(masks(targets)[2], grid(20, {0: [(6, 12, 8, 14)]}, hw=(30, 45)))
    assert box_to_token_rect((300, 150, 450, 300), SRC, (480, 720)) == (6, 12, 8, 14)
    # A box that the crop cuts away on the left (x2 -> 60 - 66.5 < 0) is skipped.
    assert box_to_token_rect((0, 0, 90, 90), SRC, (480, 720)) is None


def test_hand_overrides_face_and_weights():
    face = {"frame_2": [500, 100, 600, 200]}  # rows 6..12, cols 6..12
    hand = {"frame_2": {"l_h": [560, 160, 640, 240], "r_h": None, "obj": [0, 0, 1280, 720]}}  # rows 10..15, cols 10..15
    targets, weights = router_labels(face, hand, SRC, TRAIN)
    base, hnd, fc = masks(targets)
    face_only = grid(20, {0: [(6, 12, 6, 12)]}) & ~grid(20, {0: [(10, 15, 10, 15)]})
    assert torch.equal(hnd, grid(20, {0: [(10, 15, 10, 15)]}))
    assert torch.equal(fc, face_only)
    assert torch.equal(base, ~(hnd | fc))
    assert torch.equal(weights, torch.where(hnd | fc, 10.0, 1.0))
    assert int(hnd.sum()) == 36 and int(fc.sum()) == 49 - 9
    custom = router_labels(face, hand, SRC, TRAIN, weights=(1.0, 3.0, 2.0))[1]
    assert torch.equal(custom, torch.where(hnd, 3.0, torch.where(fc, 2.0, 1.0)))


def test_obj_ignored_and_bare_hand_box():
    only_obj = {"frame_2": {"obj": [400, 0, 880, 720]}}
    targets, weights = router_labels({}, only_obj, SRC, TRAIN)
    assert bool(masks(targets)[0].all()) and torch.equal(weights, torch.ones(len(weights)))
    bare = router_labels({}, {"frame_2": [400, 0, 415, 15]}, SRC, TRAIN)[0]  # a bare box counts, as official
    assert torch.equal(masks(bare)[1], grid(20, {0: [(0, 0, 0, 0)]}))


def test_official_key_mapping():
    box = [400, 0, 415, 15]  # token (0, 0)
    face = {f"frame_{k}": box for k in (2, 5, 6, 78, 81, 82, 200)}
    targets, _ = router_labels(face, {}, SRC, TRAIN)
    # 2, 5 -> 0; 6 -> 1; 78, 81 -> 19; 82 -> 20 and 200 -> 49 are out of range and ignored.
    assert torch.equal(masks(targets)[2], grid(20, {t: [(0, 0, 0, 0)] for t in (0, 1, 19)}))


def test_latent_key_mapping():
    box = [400, 0, 415, 15]
    targets, _ = router_labels({"frame_0": box, "frame_7": box, "frame_19": box}, {}, SRC, TRAIN, box_keys="latent")
    assert torch.equal(masks(targets)[2], grid(20, {t: [(0, 0, 0, 0)] for t in (0, 7, 19)}))


@pytest.mark.parametrize(
    ("face", "hand", "box_keys"),
    [
        ({"frame_0": [0, 0, 1, 1]}, {}, "official"),
        ({}, {"frame_1": {"l_h": [0, 0, 1, 1]}}, "official"),
        ({"frame_20": [0, 0, 1, 1]}, {}, "latent"),
        ({}, {"frame_78": {"r_h": [0, 0, 1, 1]}}, "latent"),
    ],
)
def test_key_convention_contradiction_names_setting(face, hand, box_keys):
    with pytest.raises(BoxKeyConventionError, match="box_keys='(official|latent)'"):
        router_labels(face, hand, SRC, TRAIN, box_keys=box_keys)


@pytest.mark.parametrize(
    "cell",
    [
        "",
        "{not json",
        "[1, 2, 3, 4]",
        '{"frame_2": [1, 2, 3]}',
        '{"frame_2": [5, 5, 1, 1]}',
        '{"frame_2": ["a", 1, 2, 3]}',
        '{"frame_2": [NaN, 1, 2, 3]}',
        '{"frame_2": {"l_h": [0, 0, 1, 1]}}',  # a hand dict in the face column
        '{"f2": [0, 0, 1, 1]}',
        '{"frame_x": [0, 0, 1, 1]}',
    ],
)
def test_malformed_face_cell_refused(cell):
    with pytest.raises(MalformedBoxes):
        router_labels(cell, "{}", SRC, TRAIN)


def test_malformed_hand_cell_refused():
    with pytest.raises(MalformedBoxes, match="l_h"):
        parse_boxes('{"frame_2": {"l_h": [0, 0, 1]}}', "hand")
    with pytest.raises(MalformedBoxes, match="hand"):
        router_labels("{}", '{"frame_2": {"l_h": [0, 0, 1]}}', SRC, TRAIN)


def test_null_and_empty_boxes_mean_no_box():
    assert parse_boxes('{"frame_2": null, "frame_6": []}', "face") == {}
    assert parse_boxes('{"frame_2": {"l_h": [], "r_h": null}}', "hand") == {}


def test_boxes_outside_source_frame():
    boxes = parse_boxes({"frame_2": [-10, 0, 50, 50], "frame_6": [1300, 0, 1400, 50], "frame_10": [0, 0, 5, 5]}, "face")
    assert boxes_outside_frame(boxes, SRC) == (1, 1)
