"""The toy world: rendering, truth, boxes and HOI alignment, evaluation, the codec on its clips, the dataset writer."""

from __future__ import annotations

import csv
import json
import time
import wave

import numpy as np
import pytest
import torch

from comfyui_cointeract.cointeract_core.model.config import PRESETS
from comfyui_cointeract.cointeract_core.model.dit import CoInteractDiT
from comfyui_cointeract.cointeract_core.toy import (
    TOY_VOCABULARY,
    ToyAudioFeatures,
    ToyCodec,
    ToyTextEncoder,
    fit_pca_codec,
)
from comfyui_cointeract.cointeract_core.toy.text import tokenize
from comfyui_cointeract.train.cache import CachedDataset, build_cache
from comfyui_cointeract.train.clip_media import iter_frames
from comfyui_cointeract.train.data import RawClipDataset, validate_csv
from comfyui_cointeract.train.prepare import prepare_dataset
from comfyui_cointeract.train.toyworld.dataset import (
    COLUMNS,
    clip_seed,
    official_boxes,
    read_truth,
    write_prepare_sources,
    write_world_dataset,
)
from comfyui_cointeract.train.toyworld.evaluation import (
    UNKNOWN,
    ClipTruth,
    box_labels,
    evaluate_clip,
    router_recall,
    segment,
)
from comfyui_cointeract.train.toyworld.files import frame_grid, write_png
from comfyui_cointeract.train.toyworld.render import BODY_COLOURS, CLASSES, LABEL_COLOUR, SILHOUETTE_COLOUR
from comfyui_cointeract.train.toyworld.world import (
    PRODUCT_COLOURS,
    PRODUCT_SIZES,
    WorldConfig,
    generate_sequence,
    make_clip,
    slice_sequence,
)

CFG = WorldConfig()
HEAD_PARTS = [CLASSES.index(n) for n in ("head", "hair", "eyes", "mouth")]


@pytest.fixture(scope="module")
def clip():
    return make_clip(CFG, 3)


@pytest.fixture(scope="module")
def pasted():
    """The same clip with the product drawn over the hands (the product passes through them)."""
    return make_clip(CFG, 3, product_over_hands=True)


def test_clip_has_the_official_layout(clip):
    c = clip.clip
    assert c.frames.shape == (81, 64, 64, 3) and c.frames.dtype == np.uint8
    assert clip.motion.shape == (73, 64, 64, 3) and c.hoi.shape == c.frames.shape
    assert c.audio.shape == (81 * 640,) and c.audio.dtype == np.float32 and np.abs(c.audio).max() <= 1.0
    assert clip.person_image.shape == clip.product_image.shape == (64, 64, 3)
    assert c.grip.shape == c.contact.shape == c.hand_hidden.shape == (81, 2)
    assert c.face_box.shape == (81, 4) and c.hand_box.shape == (81, 2, 4) and c.obj_box.shape == (81, 4)


def test_world_is_deterministic_and_varied():
    a, b = make_clip(CFG, 11), make_clip(CFG, 11)
    assert np.array_equal(a.clip.frames, b.clip.frames) and np.array_equal(a.clip.audio, b.clip.audio)
    assert a.prompt == b.prompt
    seqs = [generate_sequence(CFG, s, 4) for s in range(40)]
    assert {s.kind for s in seqs} == set(PRODUCT_SIZES) and {s.colour for s in seqs} == set(PRODUCT_COLOURS)


def test_a_clip_renders_fast():
    start = time.perf_counter()
    make_clip(CFG, 5)
    assert time.perf_counter() - start < 3.0  # ~0.25 s on an idle core; generous for loaded CI machines


def test_prompt_names_colour_kind_and_action_in_the_toy_vocabulary():
    for seed in range(8):
        c = make_clip(CFG, seed)
        assert f"a {c.clip.colour} {c.clip.kind}" in c.prompt and c.prompt.startswith("a person ")
        assert set(tokenize(c.prompt)) <= set(TOY_VOCABULARY)


def test_every_pixel_is_a_palette_colour(clip):
    classes = segment(clip.clip.frames, clip.clip.rgb, max_distance=0.0)
    assert (classes != UNKNOWN).all()
    for part in ("head", "mouth", "left_hand", "right_hand", "product", "torso", "arm", "table"):
        assert (classes == CLASSES.index(part)).any(axis=(1, 2)).all(), part


def test_palette_colours_are_far_apart():
    body = np.array(list(BODY_COLOURS.values()) + [LABEL_COLOUR], float)
    d = np.linalg.norm(body[:, None] - body[None], axis=-1) + np.eye(len(body)) * 1e9
    assert d.min() >= 60
    for rgb in PRODUCT_COLOURS.values():
        assert np.linalg.norm(body - np.array(rgb, float), axis=-1).min() >= 60


def test_person_and_product_references(clip):
    person = segment(clip.person_image[None], clip.clip.rgb, 0.0)[0]
    assert not (person == CLASSES.index("product")).any() and (person == CLASSES.index("head")).any()
    product = clip.product_image.reshape(-1, 3)
    colours = {tuple(c) for c in product}
    assert colours == {(0, 0, 0), clip.clip.rgb, LABEL_COLOUR}  # the product alone on black


def test_boxes_enclose_their_parts(clip):
    """Draw each frame_k box on frame k: the part's colour lies inside it and touches all four sides."""
    face, hands = official_boxes(clip.clip)
    assert list(face) == [f"frame_{k}" for k in range(2, 81, 4)] == list(hands)
    classes = segment(clip.clip.frames, clip.clip.rgb, 0.0)
    for key, box in face.items():
        _check_tight(np.isin(classes[int(key[6:])], HEAD_PARTS), box)
    for key, entry in hands.items():
        k = int(key[6:])
        _check_tight(classes[k] == CLASSES.index("left_hand"), entry["l_h"], visible_only=False)
        _check_tight(classes[k] == CLASSES.index("right_hand"), entry["r_h"], visible_only=False)
        _check_tight(classes[k] == CLASSES.index("product"), entry["obj"], visible_only=True, occluded_ok=True)


def _check_tight(mask: np.ndarray, box: list[int], visible_only: bool = True, occluded_ok: bool = False) -> None:
    x1, y1, x2, y2 = box
    assert 0 <= x1 <= x2 < 64 and 0 <= y1 <= y2 < 64
    ys, xs = np.nonzero(mask)
    assert len(xs) and xs.min() >= x1 and xs.max() <= x2 and ys.min() >= y1 and ys.max() <= y2
    if not occluded_ok:  # hands and head are never hidden, so the box is tight on the visible part
        assert (xs.min(), ys.min(), xs.max(), ys.max()) == (x1, y1, x2, y2)


def test_hoi_stream_aligns_with_the_frames(clip):
    rgb, hoi = clip.clip.frames, clip.clip.hoi
    classes = segment(rgb, clip.clip.rgb, 0.0)
    product = classes == CLASSES.index("product")
    assert np.array_equal(hoi[product], rgb[product])  # the object in its RGB, at the same pixels
    body = np.isin(classes, [CLASSES.index(n) for n in ("torso", "arm", "head", "left_hand", "right_hand")])
    assert (hoi[body] == SILHOUETTE_COLOUR).all()  # the body in one flat colour
    empty = np.isin(classes, [CLASSES.index("background")])
    assert (hoi[empty] == 0).all()  # on black
    assert {tuple(c) for c in hoi.reshape(-1, 3)} <= {(0, 0, 0), SILHOUETTE_COLOUR, clip.clip.rgb, LABEL_COLOUR}


def test_held_product_is_between_the_hands(clip):
    c = clip.clip
    assert c.grip.any() and (c.contact | ~c.grip).all()  # gripping hands touch the product
    assert (c.hand_hidden == 0).all()  # hands are drawn in front of it


def test_mouth_follows_the_speech_envelope(clip):
    mouth = (segment(clip.clip.frames, clip.clip.rgb, 0.0) == CLASSES.index("mouth")).sum((1, 2))
    assert np.corrcoef(mouth, clip.clip.envelope)[0, 1] > 0.95


def test_evaluation_scores_ground_truth_as_perfect(clip):
    truth = ClipTruth.from_sequence(clip.clip)
    report = evaluate_clip(clip.clip.frames, 25, clip.clip.audio, 16000, truth)
    assert report.contact_error_px == 0.0 and report.contact_rate == 1.0 and report.missing_rate == 0.0
    assert report.penetration_rate == 0.0
    assert report.lip_audio_r > 0.9
    assert report.centroid_jerk_px < 0.5


def test_product_pasted_through_the_hands_is_penetrating(clip, pasted):
    truth = ClipTruth.from_sequence(clip.clip)
    report = evaluate_clip(pasted.clip.frames, 25, pasted.clip.audio, 16000, truth)
    assert report.penetration_rate > 0.9
    assert np.array(ClipTruth.from_sequence(pasted.clip).penetration)[pasted.clip.grip].all()


def test_evaluation_sees_broken_timing_and_lips(clip):
    truth = ClipTruth.from_sequence(clip.clip)
    shuffled = clip.clip.frames[np.random.default_rng(0).permutation(81)]
    report = evaluate_clip(shuffled, 25, clip.clip.audio, 16000, truth)
    good = evaluate_clip(clip.clip.frames, 25, clip.clip.audio, 16000, truth)
    assert report.centroid_jerk_px > 10 * good.centroid_jerk_px and report.frame_difference > good.frame_difference
    assert abs(report.lip_audio_r) < 0.5


def test_evaluation_refuses_what_it_cannot_score(clip):
    truth = ClipTruth.from_sequence(clip.clip)
    frames, audio = clip.clip.frames, clip.clip.audio
    with pytest.raises(ValueError, match="world's size"):
        evaluate_clip(np.zeros((81, 32, 32, 3), np.uint8), 25, audio, 16000, truth)
    with pytest.raises(ValueError, match="fps"):
        evaluate_clip(frames, 30, audio, 16000, truth)
    with pytest.raises(ValueError, match="uint8"):
        evaluate_clip(frames.astype(np.float32), 25, audio, 16000, truth)
    with pytest.raises(ValueError, match="truth covers"):
        evaluate_clip(frames[:40], 25, audio, 16000, truth)


def test_router_recall_on_box_labels(clip):
    face, hands = official_boxes(clip.clip)
    labels = box_labels(face, hands, (64, 64), token_px=16)
    assert labels.shape == (20 * 4 * 4,) and (labels == 1).any() and (labels == 2).any()
    perfect = torch.nn.functional.one_hot(torch.from_numpy(labels), 3).float()[None, None].repeat(2, 1, 1, 1)
    assert router_recall(perfect, labels) == {"hand": 1.0, "face": 1.0}
    base_only = torch.zeros(len(labels), 3)
    base_only[:, 0] = 1
    assert router_recall(base_only, labels) == {"hand": 0.0, "face": 0.0}


def test_codec_round_trips_world_clips(clip):
    codec = ToyCodec(8)
    for frames, latent_frames in ((clip.clip.frames, 21), (clip.motion, 19)):
        video = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1  # [1, 3, T, H, W]
        lat = codec.encode(video)
        assert lat.shape == (1, 768, latent_frames, 8, 8)
        assert torch.equal(codec.decode(lat), video)
    joint = torch.from_numpy(np.concatenate([clip.motion, clip.clip.frames[:80]])).permute(3, 0, 1, 2)[None]
    assert codec.encode(joint.float() / 127.5 - 1).shape[2] == 39  # 153 frames -> 19 motion + 20 target


def test_long_sequences_for_inference():
    seq = generate_sequence(CFG, 7, 250)  # 10 s
    assert seq.frames.shape[0] == 250 and seq.audio.shape == (250 * 640,)
    assert seq.actions[0][1] == 0 and seq.actions[-1][2] == 250
    assert all(f"{seq.colour} {seq.kind}" in seq.prompt(s, s + 81) for s in (0, 80, 160))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"height": 0}, "too small"),
        ({"clip_frames": 0}, "clip_frames"),
        ({"clip_frames": 80}, "1 \\+ 4k"),
        ({"motion_frames": -1}, "motion_frames"),
        ({"product_size": 4.0}, "product_size"),
        ({"product_size": -1.0}, "product_size"),
        ({"fps": 0}, "fps"),
    ],
)
def test_impossible_world_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WorldConfig(**kwargs)


def test_impossible_requests_are_refused(tmp_path):
    with pytest.raises(ValueError, match="num_frames"):
        generate_sequence(CFG, 0, 0)
    with pytest.raises(ValueError, match="count"):
        write_world_dataset(tmp_path, -1)


@pytest.fixture(scope="module")
def world_csv(tmp_path_factory):
    return write_world_dataset(tmp_path_factory.mktemp("world") / "ds", 2, seed=3)


def test_dataset_in_the_official_layout(world_csv):
    csv_path = world_csv
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == COLUMNS and len(rows) == 2
    root = csv_path.parent
    for row in rows:
        for col in ("input_video", "motion_video", "audio", "person_image", "product_image", "hoi_video"):
            assert not row[col].startswith("/") and (root / row[col]).is_file(), col
        assert row["pose_video"] == "" and (row["height"], row["width"]) == ("64", "64")
        face, hands = json.loads(row["face"]), json.loads(row["hand_object"])
        keys = [int(k.split("_")[1]) for k in face]
        assert sorted((k - 2) // 4 for k in keys) == list(range(20)) and list(hands) == list(face)
        boxes = list(face.values()) + [b for v in hands.values() for b in v.values()]
        assert all(0 <= x1 <= x2 < 64 and 0 <= y1 <= y2 < 64 for x1, y1, x2, y2 in boxes)
        frames = np.stack(list(iter_frames(root / row["input_video"])))
        truth = read_truth(csv_path, row)
        assert frames.shape == (81, 64, 64, 3) and truth.prompt == row["prompt"]
        assert len(list(iter_frames(root / row["motion_video"]))) == 73
        with wave.open(str(root / row["audio"])) as w:
            assert (w.getframerate(), w.getnchannels(), w.getnframes()) == (16000, 1, 51840)
        report = evaluate_clip(frames, 25, np.zeros(51840, np.float32), 16000, truth)
        assert report.contact_error_px == 0.0 and report.penetration_rate == 0.0  # lossless video
    kept, report = validate_csv(csv_path, None)
    assert len(kept) == 2 and not report.dropped and not report.warnings


def test_frame_grid_png(tmp_path, clip):
    """The grid the demo and the docs show: every 8th frame, 10 per row (written as a PNG artefact)."""
    grid = frame_grid(clip.clip.frames, columns=10, step=8, scale=2)
    assert grid.shape == (2 * 64 * 2, 10 * 64 * 2, 3)
    assert np.array_equal(grid[: 2 * 64 : 2, 64 * 2 * 3 : 64 * 2 * 4 : 2], clip.clip.frames[24])
    assert not grid[2 * 64 * 2 - 1, -1].any()  # padding tiles are black
    write_png(tmp_path / "grid.png", grid)
    assert (tmp_path / "grid.png").stat().st_size > 1000


def test_cointeract_prepare_consumes_world_sources(tmp_path):
    """Long sequences as raw sources (video, speech, boxes by absolute frame, body video + object mask)."""
    manifest = write_prepare_sources(tmp_path / "src", 1, seconds=10, seed=4)
    report = prepare_dataset(manifest, tmp_path / "out")
    assert report.clips == 2 and report.validation.kept == 2 and not report.dropped
    with open(tmp_path / "out" / "data.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    seq = generate_sequence(CFG, clip_seed(4, 0), 250)
    for row, start in zip(rows, (73, 153)):
        part = slice_sequence(seq, start, start + 81)
        face, hands = official_boxes(part)
        assert json.loads(row["face"]) == face and json.loads(row["hand_object"]) == hands
        hoi = np.stack(list(iter_frames(tmp_path / "out" / row["hoi_video"]))).astype(np.int16)
        assert np.abs(hoi - part.hoi).mean() < 4  # body + object recomposed by prepare (H.264 CRF 18)


@pytest.mark.slow
def test_trainer_cache_and_toy_model_consume_the_dataset(world_csv, tmp_path):
    """World CSV -> RawClipDataset -> latent cache with the toy codec and encoders -> the toy preset's forward."""
    cfg = PRESETS["toy"]
    ds = RawClipDataset(world_csv, None, 64, 64, patch=16)
    codec = fit_pca_codec([torch.rand(1, 3, 9, 64, 64) * 2 - 1], cfg.in_dim)  # the preset's 32 PCA channels
    encoders = (codec, ToyTextEncoder(cfg.text_dim, cfg.text_len), ToyAudioFeatures(cfg.audio_dim))
    build_cache(ds, *encoders, tmp_path / "cache", dtype=torch.float32)
    s = CachedDataset(tmp_path / "cache")[0]
    assert s.target_with_motion.shape == (32, 20, 8, 8) and s.motion.shape == (32, 19, 8, 8)
    assert s.audio.shape == (25, 16, 80) and s.router_targets.shape == (320, 3)
    assert s.router_targets[:, 1].sum() > 0 and s.router_targets[:, 2].sum() > 0  # hand and face tokens
    model = CoInteractDiT(cfg).train()
    out = model(
        s.target_with_motion[None], 500.0, s.prompt[None], s.audio[None], s.person[None], product=s.product[None],
        motion=s.motion[None], hoi=s.hoi[None], hoi_context=s.hoi_prompt[None], attention="full",
    )  # fmt: skip
    assert out.velocity.shape == out.hoi_velocity.shape == (1, 32, 20, 8, 8)
    assert out.router_logits.shape == (cfg.num_layers, 1, 320, 3)
