"""RawClipDataset: loading at the training size, and every kind of bad row refused with a counted reason."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from comfyui_cointeract.cointeract_core.media.audio import load_audio
from comfyui_cointeract.cointeract_core.media.loudness import integrated_loudness
from comfyui_cointeract.train.clip_media import load_frames, load_person, load_product
from comfyui_cointeract.train.data import ClipSpec, RawClipDataset, validate_csv
from comfyui_cointeract.train.labels import BoxKeyConventionError


def test_loads_a_valid_clip(kit, frame_pattern):
    rows = [kit.row("a", seed=1, pose=True, hoi=True), kit.row("b", seed=2, motion=False, product=False)]
    ds = RawClipDataset(kit.csv(rows), None, 32, 32, patch=8)
    assert len(ds) == 2 and ds.report().kept == 2 and not ds.report().dropped
    a, b = ds[0], ds[1]
    video = frame_pattern(73 + 81, 32, 32, 1)
    assert a.video.dtype == torch.uint8 and torch.equal(a.video, torch.from_numpy(video[73:]))
    assert torch.equal(a.motion, torch.from_numpy(video[:73]))
    assert torch.equal(a.person, torch.from_numpy(frame_pattern(1, 32, 32, 101)[0]))
    assert torch.equal(a.pose, torch.from_numpy(frame_pattern(81, 32, 32, 301)))
    assert torch.equal(a.hoi, torch.from_numpy(frame_pattern(81, 32, 32, 401)))
    # product 16x32 -> fits 32x32 at scale 1 -> 8 black rows above and below
    assert a.product.shape == (32, 32, 3) and int(a.product[:8].max()) == 0 and int(a.product[24:].max()) == 0
    assert torch.equal(a.product[8:24], torch.from_numpy(frame_pattern(1, 16, 32, 201)[0]))
    assert a.product_scale == 1.0 and a.prompt.endswith("(a)")
    assert b.motion is None and b.product is None and b.pose is None and b.hoi is None
    assert a.audio.dtype == torch.float32 and a.audio.shape == (51840,)
    assert integrated_loudness(a.audio, 16000) == pytest.approx(-23.0, abs=0.05)
    # labels: 4x4 tokens of 8 px, 20 latent frames; face frame_2 [8,0,15,7] -> t0 (0,1); hand frame_6 -> t1 (2,0)
    assert a.router_targets.shape == (320, 3) and a.router_weights.shape == (320,)
    assert a.router_targets[1].tolist() == [0, 0, 1] and a.router_targets[16 + 8].tolist() == [0, 1, 0]
    assert float(a.router_weights.sum()) == 318 + 20
    assert a.key != b.key and a.index == 0 and b.index == 1


def test_no_loudness_normalisation(kit):
    ds = RawClipDataset(kit.csv([kit.row("a")]), kit.root, 32, 32, patch=8, loudness_lufs=None)
    assert torch.equal(ds[0].audio, load_audio(kit.root / "a/audio.wav").waveform)


def test_person_cover_crop_and_product_pad(kit, tmp_path):
    wide = np.zeros((32, 128, 3), np.uint8)
    wide[:, :64, 0] = 255  # left half red, right half blue
    wide[:, 64:, 2] = 255
    out = load_person(kit.root / kit.image("wide.png", wide), (32, 32)).numpy()  # s = 1, crop offset 48
    assert (out[:, :16, 0] == 255).all() and (out[:, 16:, 2] == 255).all() and (out[:, :16, 2] == 0).all()
    product = load_product(kit.root / kit.image("p.png", np.full((10, 40, 3), 200, np.uint8)), (32, 32)).numpy()
    assert (product[12:20] == 200).all() and product[:12].max() == 0 and product[20:].max() == 0  # 8x32, no /1.25
    big = np.broadcast_to((np.arange(90) * 2)[:, None, None, None], (90, 64, 48, 3)).astype(np.uint8)
    frames = load_frames(kit.root / kit.video("big.mkv", big), 81, (32, 32))  # cover 64x48 -> 43x32, crop
    assert frames.shape == (81, 32, 32, 3) and frames.dtype == torch.uint8
    assert (frames.int() - torch.arange(81)[:, None, None, None] * 2).abs().max() <= 1  # first 81, in order


def _bad_rows(kit, tmp_path):
    good = kit.row("good")
    outside = tmp_path / "outside.mkv"
    outside.write_bytes((kit.root / good["input_video"]).read_bytes())
    os.symlink(outside, kit.root / "link.mkv")
    (kit.root / "junk.png").write_bytes(b"not an image")
    short = kit.row("short", frames=60)
    short_motion = kit.row("shortm")
    short_motion["motion_video"] = kit.video("shortm/m.mkv", np.zeros((50, 32, 32, 3), np.uint8))
    cases = {
        "missing_file": {**good, "audio": "nope.wav"},
        "path_escapes_root": {**good, "input_video": "../outside.mkv"},
        "abs_escape": {**good, "input_video": str(outside)},
        "symlink_escape": {**good, "input_video": "link.mkv"},
        "short_video": short,
        "short_motion": short_motion,
        "wrong_fps": kit.row("fps", fps=30),
        "malformed_boxes": {**good, "face": "{not json"},
        "bad_box": {**good, "hand_object": json.dumps({"frame_2": {"l_h": [5, 5, 1]}})},
        "box_outside_frame": {**good, "face": json.dumps({"frame_2": [40, 40, 50, 50]})},
        "boxes_outside_clip": {**good, "face": json.dumps({"frame_1200": [0, 0, 8, 8]}), "hand_object": "{}"},
        "missing_field": {**good, "person_image": ""},
        "bad_value": {**good, "height": "abc"},
        "bad_scale": {**good, "scale": "-1"},
        "short_audio": kit.row("sa", audio_seconds=2.0),
        "size_mismatch": {**good, "height": "32", "width": "64"},
        "pose_aspect": {**good, "pose_video": kit.video("pa/pose.mkv", np.zeros((81, 32, 48, 3), np.uint8))},
        "unreadable_media": {**good, "person_image": "junk.png"},
    }
    partly_past = json.dumps({"frame_2": [-4, 0, 8, 8], "frame_90": [0, 0, 8, 8]})
    kept = [good, {**good, "face": partly_past, "scale": "nan"}]
    return cases, kept


def test_bad_rows_are_counted_skips(kit, tmp_path, caplog):
    cases, kept = _bad_rows(kit, tmp_path)
    csv_path = kit.csv([*kept, *cases.values()])
    rows, report = validate_csv(csv_path, None, ClipSpec())
    assert [r.index for r in rows] == [0, 1] and report.kept == 2 and report.total == 2 + len(cases)
    got = {list(cases)[row - 2]: category for row, category, _ in report.dropped}
    expected = {name: name for name in cases} | {
        "abs_escape": "path_escapes_root",
        "symlink_escape": "path_escapes_root",
        "short_motion": "short_video",
        "bad_box": "malformed_boxes",
        "bad_scale": "bad_value",
        "pose_aspect": "size_mismatch",
    }
    assert got == expected
    assert report.counts()["path_escapes_root"] == 3 and report.counts()["short_video"] == 2
    assert report.warnings == [
        (1, "1 box(es) extend past the 32x32 frame and are clipped"),
        (1, "box keys [90] lie past the clip's latent frames and are ignored"),
    ]
    assert rows[1].scale == 1.0
    assert "kept 2/20 rows" in report.summary()
    assert sum("skipped" in r.message for r in caplog.records) == len(cases)
    messages = {list(cases)[row - 2]: msg for row, _, msg in report.dropped}
    assert "60 frames; it needs at least 81" in messages["short_video"]
    assert "30.000 fps" in messages["wrong_fps"] and "outside the dataset root" in messages["symlink_escape"]
    assert json.loads(json.dumps(report.to_json()))["kept"] == 2


def test_key_convention_contradiction_stops_the_dataset(kit):
    rows = [kit.row("a"), kit.row("b", face={"frame_0": [0, 0, 8, 8], "frame_1": [0, 0, 8, 8]})]
    with pytest.raises(BoxKeyConventionError, match=r"row 1: .*box_keys='official'"):
        RawClipDataset(kit.csv(rows), None, 32, 32, patch=8)
    latent = RawClipDataset(kit.csv([rows[1]]), None, 32, 32, patch=8, spec=ClipSpec(box_keys="latent"))
    assert latent[0].router_targets[0].tolist() == [0, 0, 1]  # frame_0 -> latent 0 under box_keys='latent'
    with pytest.raises(BoxKeyConventionError, match="box_keys='latent'"):
        official = kit.row("c", face={"frame_2": [0, 0, 8, 8], "frame_78": [0, 0, 8, 8]})
        RawClipDataset(kit.csv([official], "c.csv"), None, 32, 32, patch=8, spec=ClipSpec(box_keys="latent"))


def test_header_and_size_errors(kit):
    rows = [kit.row("a")]
    with pytest.raises(ValueError, match="lacks the columns"):
        RawClipDataset(kit.csv(rows, columns=("prompt", "input_video")), None, 32, 32, patch=8)
    no_optional = [c for c in rows[0] if c not in ("scale", "hoi_video", "pose_video")]
    assert len(RawClipDataset(kit.csv(rows, "x.csv", columns=no_optional), None, 32, 32, patch=8)) == 1
    with pytest.raises(ValueError, match="multiple of 16"):
        RawClipDataset(kit.csv(rows), None, 40, 32)


def test_keys_are_stable_and_duplicates_distinct(kit):
    row = kit.row("a")
    first, _ = validate_csv(kit.csv([row, row, kit.row("b")]), None)
    again, _ = validate_csv(kit.csv([kit.row("b"), row, row], "other.csv"), None)
    assert len({r.key for r in first}) == 3
    assert {r.key for r in first} == {r.key for r in again}
