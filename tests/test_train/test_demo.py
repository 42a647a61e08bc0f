"""`cointeract demo` shortened to seconds: report structure, files, the HOI-preview invariance, bad input, Ctrl-C,
deterministic training for a seed, and (slow) the router beating the class prior after a short training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from comfyui_cointeract.cointeract_core.model.dit import CoInteractDiT
from comfyui_cointeract.cointeract_core.toy.bundle import load_bundle
from comfyui_cointeract.train.cache import CachedDataset
from comfyui_cointeract.train.config import LOSS_PRESETS
from comfyui_cointeract.train.demo import run as demo
from comfyui_cointeract.train.demo.data import toy_config
from comfyui_cointeract.train.demo.training import toy_model, toy_stages, train_stages

TINY = ["--train-clips", "2", "--eval-clips", "1", "--steps", "2", "1", "--sample-steps", "2", "--minutes", "10"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[Path, dict, int]:
    out = tmp_path_factory.mktemp("demo") / "out"
    code = demo.main(["--out", str(out), *TINY])
    return out, json.loads((out / "report.json").read_text()), code


def test_demo_writes_every_output_and_a_complete_report(demo_run):
    out, report, code = demo_run
    assert code == 0 and report["finished"] and not report["interrupted"]
    for name in ("demo.mp4", "hoi_preview.mp4", "router_heatmaps.mp4", "curves.png", "frame_grid.png",
                 "report.txt", "toy_bundle.safetensors", "metrics.jsonl", "inputs/speech.wav"):  # fmt: skip
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert [s["name"] for s in report["stages"]] == ["stage1", "stage2"]
    assert [s["steps"] for s in report["stages"]] == [2, 1] and report["deterministic"]
    for stage in report["stages"]:
        assert stage["final"]["flow"] > 0 and stage["final"]["hoi"] > 0
        assert {"router_recall_hand", "router_prior_hand", "router_recall_face", "flow", "hoi"} <= stage[
            "held_out"
        ].keys()
    gen = report["generation"]
    assert gen["clips"] == 2 and gen["frames"] == 160
    assert gen["rgb_equal_with_hoi_preview"] is True  # asymmetric attention: RGB never sees the HOI stream
    keys = {"contact_error_px", "penetration_rate", "lip_audio_r", "frame_difference", "centroid_jerk_px"}
    assert keys <= report["world_eval"]["generated"].keys()
    assert report["world_eval"]["ground_truth"]["lip_audio_r"] > 0.9  # the scorer works on the world itself
    assert {"data_s", "train_s", "generate_s", "total_s"} <= report["timings"].keys()
    text = (out / "report.txt").read_text()
    assert "router recall on held-out hand tokens" in text and "torch.equal" in text
    assert load_bundle(out / "toy_bundle.safetensors")[0].cfg == toy_config()


@pytest.mark.parametrize("minutes", ["0", "-1", str(24 * 60 + 1), "nan"])
def test_bad_minutes_are_refused(minutes, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        demo.parse_args(["--out", str(tmp_path / "o"), "--minutes", minutes])
    assert exc.value.code == 2 and "--minutes must be in (0, 1440]" in capsys.readouterr().err


def test_non_empty_out_needs_force_and_unwritable_out_is_refused(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(SystemExit):
        demo.parse_args(["--out", str(tmp_path)])
    assert "exists and is not empty" in capsys.readouterr().err
    assert demo.parse_args(["--out", str(tmp_path), "--force"]).force
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit):
        demo.parse_args(["--out", str(blocker / "sub")])
    assert "not writable" in capsys.readouterr().err


def test_ctrl_c_leaves_a_partial_report(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "train_stages", interrupted)
    out = tmp_path / "out"
    assert demo.main(["--out", str(out), *TINY]) == 130
    report = json.loads((out / "report.json").read_text())
    assert report["interrupted"] and not report["finished"] and report["data"]["train_clips"] == 2
    assert "INCOMPLETE" in (out / "report.txt").read_text()


def _train(cache: Path, steps: tuple[int, int], seed: int = 0) -> tuple[CoInteractDiT, list]:
    model = toy_model(toy_config(), seed)
    data = CachedDataset(cache / "train")
    results = train_stages(
        model, data, toy_stages(steps, lr=2e-3), (600, 600), loss=LOSS_PRESETS["paper"], seed=seed,
        held_out=CachedDataset(cache / "held_out"),
    )  # fmt: skip
    return model, results


def test_toy_model_starts_from_the_wan_training_init() -> None:
    """Zero head (the untrained toy predicts zero velocity), zero FramePack far projections, same seed = same init."""
    a, b = toy_model(toy_config(), 3), toy_model(toy_config(), 3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    for name in ("head.head.weight", "frame_packer.proj_2x.weight", "frame_packer.proj_4x.weight"):
        assert not a.state_dict()[name].any(), name
    assert a.state_dict()["blocks.0.self_attn.q.weight"].std() > 0


def test_training_is_deterministic_for_a_seed(demo_run):
    torch.set_num_threads(1)
    cache = demo_run[0] / "cache"
    (a, ra), (b, rb) = _train(cache, (2, 1)), _train(cache, (2, 1))
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert [r.held_out for r in ra] == [r.held_out for r in rb] and [r.final for r in ra] == [r.final for r in rb]


@pytest.mark.slow
def test_router_recall_beats_the_class_prior_after_a_short_training(demo_run):
    torch.set_num_threads(2)
    _, results = _train(demo_run[0] / "cache", (80, 20))
    held = results[-1].held_out
    for name in ("hand", "face"):
        assert held[f"router_recall_{name}"] > 1.5 * held[f"router_prior_{name}"], (name, held)


@pytest.mark.slow
def test_ablation_trains_four_variants_with_the_same_budget(tmp_path):
    out = tmp_path / "out"
    assert demo.main(["--out", str(out), *TINY, "--ablation"]) == 0
    rows = json.loads((out / "report.json").read_text())["ablation"]["rows"]
    assert [r["variant"] for r in rows] == ["full", "w/o MoE", "w/o co-generation", "w/o asymmetric mask"]
    assert all(r["steps"] == [2, 1] for r in rows)
    no_moe, no_cogen = rows[1], rows[2]
    assert no_moe["recall_hand"] is None and rows[0]["recall_hand"] is not None
    assert no_cogen["hoi_loss"] == [None, None] and rows[3]["hoi_loss"][0] is not None
    text = (out / "report.txt").read_text()
    assert "w/o asymmetric mask" in text and "1.00x" in text  # cost relative to w/o MoE


@pytest.mark.parametrize("flag", ["--face-weight", "--hand-weight"])
def test_negative_region_weights_are_refused(flag, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        demo.parse_args(["--out", str(tmp_path / "o"), flag, "-1"])
    assert exc.value.code == 2 and "--face-weight and --hand-weight must be >= 0" in capsys.readouterr().err


def test_the_demo_trains_with_the_region_weighted_loss(tmp_path):
    args = demo.parse_args(["--out", str(tmp_path / "o")])
    loss = demo.toy_loss(args.shift, args.face_weight, args.hand_weight)
    assert loss.face_weight == args.face_weight > 0 and loss.hand_weight == args.hand_weight > 0
