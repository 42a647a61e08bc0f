"""`cointeract prepare`: clips, motion, audio span, HOI composite, re-keyed boxes, and every drop reported."""

from __future__ import annotations

import csv
import json
import wave

import numpy as np
import pytest
import torch

from comfyui_cointeract.cli import main as cli_main
from comfyui_cointeract.train.data import RawClipDataset
from comfyui_cointeract.train.prepare import prepare_dataset, read_sources, rekey

N = 234  # frames of the source: clips at 73 and 153 (stride 80), each with 73 frames of motion before it
SIZE = 32


def source_frames() -> np.ndarray:
    """Gray frames [N, 32, 32, 3]: value = frame index + a small spatial ramp (order is visible, YUV-safe)."""
    ramp = (np.arange(SIZE)[:, None] // 4 + np.arange(SIZE)[None, :] // 4) % 16
    frames = np.arange(N)[:, None, None] + ramp[None]
    return np.repeat(frames[..., None], 3, axis=3).astype(np.uint8)


def wav_samples(path) -> np.ndarray:
    with wave.open(str(path)) as f:
        return np.frombuffer(f.readframes(f.getnframes()), "<i2")


@pytest.fixture
def sources(kit):
    video = kit.video("raw/talk.mkv", source_frames())
    kit.video("raw/fast.mkv", source_frames(), fps=30)
    kit.wav("raw/talk.wav", N / 25)
    body = np.full((N, SIZE, SIZE, 3), 40, np.uint8)
    body[:, 4:28, 10:22] = 200  # the body silhouette
    kit.video("raw/body.mkv", body)
    mask = np.zeros((SIZE, SIZE, 3), np.uint8)
    mask[8:16, 16:24] = 255  # the object, overlapping the body on its right
    for i in range(N):
        if i != 160:  # frame 160 (inside clip 153) has no mask
            kit.image(f"raw/masks/mask_{i:05d}.png", mask)
    kit.video("raw/pose.mkv", np.full((N, SIZE, SIZE, 3), 90, np.uint8))
    kit.image("raw/product.png", np.full((16, 32, 3), 123, np.uint8))
    det = {
        "face": {"75": [8, 0, 15, 7], "frame_80": [16, 0, 23, 7], "155": [0, 0, 7, 7], "10": [0, 0, 4, 4]},
        "hand_object": {"78": {"l_h": [0, 16, 7, 23], "r_h": None, "obj": [0, 0, 31, 31]}},
    }
    (kit.root / "raw/det.json").write_text(json.dumps(det))
    (kit.root / "raw/bad.json").write_text("{oops")
    (kit.root / "raw/outside.json").write_text(json.dumps({"face": {"75": [100, 100, 120, 120]}}))
    common = {"video": video, "prompt": "a person shows a bottle", "detections": "raw/det.json"}
    manifest = {
        "sources": [
            {**common, "id": "a", "audio": "raw/talk.wav", "product_image": "raw/product.png", "scale": 0.5,
             "body_video": "raw/body.mkv", "object_mask": "raw/masks", "pose_video": "raw/pose.mkv"},
            {**common, "id": "b", "audio": "raw/talk.wav", "starts": [0, 200]},
            {**common, "id": "c", "video": "raw/fast.mkv", "audio": "raw/talk.wav"},
            {**common, "id": "d", "audio": "raw/talk.wav", "detections": "raw/bad.json"},
            {**common, "id": "e", "audio": "raw/talk.wav", "detections": "raw/outside.json"},
            {**common, "id": "f"},  # the video has no audio track and no audio file is given
        ]
    }  # fmt: skip
    path = kit.root / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path


def test_rekey_official_convention():
    entries = {75: "a", 80: "b", 77: "c", 81: "x", 150: "z", 72: "early"}
    # latent 0 <- s+2 = 75; latent 1 <- s+6 = 79 absent, s+7 = 80; latent 19 <- s+78 = 151 absent, 152 absent, 150
    assert rekey(entries, 73) == {"frame_2": "a", "frame_6": "b", "frame_78": "z"}


def test_prepare_dataset(sources, tmp_path):
    out = tmp_path / "out"
    report = prepare_dataset(sources, out, crf=0)
    dropped = {(d["source"], d["start"]): d["reason"] for d in report.dropped}
    assert dropped == {
        ("a", 153): "bad_hoi",  # no mask for frame 160
        ("b", 200): "clip_out_of_range",
        ("c", None): "wrong_fps",
        ("d", None): "malformed_detections",
        ("f", None): "unreadable_media",
    }
    assert report.clips == 4  # a@73, b@0, e@73, e@153
    assert [(r, c) for r, c, _ in report.validation.dropped] == [(2, "box_outside_frame")]  # e@73
    rows = list(csv.DictReader(open(out / "data.csv")))
    assert [r["input_video"].split("/")[1] for r in rows] == ["a_000073", "b_000000", "e_000153"]
    saved = json.loads((out / "prepare_report.json").read_text())
    assert saved["clips"] == 4 and len(saved["dropped"]) == 5 and saved["validation"]["kept"] == 3

    a, b = rows[0], rows[1]
    assert json.loads(a["face"]) == {"frame_2": [8, 0, 15, 7], "frame_6": [16, 0, 23, 7]}
    assert json.loads(a["hand_object"]) == {"frame_6": {"l_h": [0, 16, 7, 23], "r_h": None, "obj": [0, 0, 31, 31]}}
    assert (a["height"], a["width"], a["scale"]) == ("32", "32", "0.5")
    assert b["motion_video"] == "" and b["hoi_video"] == "" and b["product_image"] == ""
    # b@0: source frame 10 is latent 2's frame_10; frame 75 = 4·18+3 (no 74) is latent 18's frame_74
    assert json.loads(b["face"]) == {"frame_10": [0, 0, 4, 4], "frame_74": [8, 0, 15, 7]}

    ds = RawClipDataset(out / "data.csv", None, SIZE, SIZE, patch=8, loudness_lufs=None)
    clip, src = ds[0], torch.from_numpy(source_frames()).int()
    assert (clip.video.int() - src[73:154]).abs().max() <= 2  # H.264 at crf 0 keeps gray frames within 2
    assert (clip.motion.int() - src[:73]).abs().max() <= 2
    assert torch.equal(clip.person, src[73].to(torch.uint8))  # the clip's first frame, written as PNG
    hoi = clip.hoi.int()
    assert (hoi[:, 8:16, 16:24] - src[73:154, 8:16, 16:24]).abs().max() <= 2  # object pixels from the source
    assert (hoi[:, 20:28, 10:16] - 200).abs().max() <= 2 and (hoi[:, :, :8] - 40).abs().max() <= 2  # body, black
    assert (clip.pose.int() - 90).abs().max() <= 2 and clip.product_scale == 0.5
    audio = wav_samples(out / a["audio"])
    assert np.array_equal(audio, wav_samples(sources.parent / "raw/talk.wav")[46720 : 46720 + 51840])
    assert clip.router_targets[1].tolist() == [0, 0, 1]  # face frame_2 [8,0,15,7] -> latent 0, token (0, 1)


def test_cli_prepare_and_manifest_errors(sources, tmp_path):
    manifest = json.loads(sources.read_text())
    manifest["sources"] = manifest["sources"][1:2]
    small = sources.parent / "one.json"
    small.write_text(json.dumps(manifest))
    assert cli_main(["prepare", str(small), str(tmp_path / "cli")]) == 0
    assert len(list(csv.DictReader(open(tmp_path / "cli/data.csv")))) == 1
    bad = sources.parent / "bad_manifest.json"
    bad.write_text(json.dumps({"sources": [{"video": "x.mp4", "prompt": "p", "colour": 1}]}))
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\] / lacks \['detections'\]"):
        read_sources(bad)
    same = sources.parent / "same.json"
    same.write_text(json.dumps({"sources": [{"video": "v.mp4", "prompt": "p", "detections": "d.json"}] * 2}))
    assert [s.id for s in read_sources(same)] == ["v", "v_1"]
    assert read_sources(same)[0].video == sources.parent / "v.mp4"


def test_source_ids_cannot_write_outside_the_output_folder(sources, tmp_path):
    manifest = json.loads(sources.read_text())
    b = {**manifest["sources"][1], "starts": [0]}  # b: one clip at frame 0
    unsafe = ["../../escaped", str(tmp_path / "absolute"), "a/b", "..", ".hidden", "c:evil", "x\\y"]
    manifest["sources"] = [{**b, "id": sid} for sid in unsafe] + [{**b, "id": "fine name_1"}]
    path = sources.parent / "unsafe.json"
    path.write_text(json.dumps(manifest))
    out = tmp_path / "deep" / "er" / "out"
    report = prepare_dataset(path, out, crf=0)
    assert [(d["source"], d["reason"]) for d in report.dropped] == [(sid, "unsafe_id") for sid in unsafe]
    assert report.clips == 1 and report.validation.kept == 1  # the plain name is kept
    assert sorted(p.name for p in (out / "clips").iterdir()) == ["fine name_1_000000"]
    written = {p for p in tmp_path.rglob("*") if p.is_file() and sources.parent not in p.parents}  # not the inputs
    assert written and all(out in p.parents for p in written), sorted(map(str, written))
    saved = json.loads((out / "prepare_report.json").read_text())
    assert sum(d["reason"] == "unsafe_id" for d in saved["dropped"]) == len(unsafe)


def test_no_clip_made_is_an_error_with_one_line(sources, tmp_path, capsys):
    manifest = json.loads(sources.read_text())
    manifest["sources"] = manifest["sources"][2:4] + [{**manifest["sources"][1], "id": "../x"}]  # c, d, ../x
    path = sources.parent / "none.json"
    path.write_text(json.dumps(manifest))
    assert cli_main(["prepare", str(path), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cointeract prepare: no clip was made (")
    assert "1 wrong_fps" in err[0] and "1 malformed_detections" in err[0] and "1 unsafe_id" in err[0]
    assert "prepare_report.json" in err[0]
    assert cli_main(["prepare", str(sources.parent / "missing.json"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "FileNotFoundError" in err[0] and "missing.json" in err[0]
