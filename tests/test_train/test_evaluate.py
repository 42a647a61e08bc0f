"""`cointeract evaluate`: the report's fields, a near-perfect ground truth, the shipped story is the world's seed 0,
the audio probe tells a model that moves the lips with the speech from one that ignores it, bad args in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_cointeract import cli
from comfyui_cointeract.cointeract_core.media.audio import load_audio
from comfyui_cointeract.cointeract_core.media.image import load_image
from comfyui_cointeract.train.demo import evaluate as ev
from comfyui_cointeract.train.demo.data import demo_world, held_out_inputs

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def truth():
    return ev.truth_story(1)


def test_command_writes_every_field_and_prints_the_table(tmp_path, capsys):
    assert cli.run_command("evaluate", ["--out", str(tmp_path / "o"), "--clips", "1", "--sample-steps", "1"]) == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["frames"] == 80 and report["sampler"] == {
        "steps": 1,
        "cfg": 3.0,
        "shift": 1.0,
        "sampler": "euler",
        "cache": None,
    }
    for side in ("generated", "ground_truth"):
        assert set(report[side]) == set(ev.FIELDS) and all(np.isfinite(v) for v in report[side].values())
    gt = report["ground_truth"]
    assert gt["lip_audio_r"] > 0.95 and gt["contact_error_px"] == 0 and gt["contact_rate"] == 1.0
    assert gt["missing_rate"] == 0 and gt["penetration_rate"] == 0
    assert report["audio_probe"]["other_speech"] == "reversed" and report["audio_probe"]["elsewhere"] >= 0
    out = capsys.readouterr().out
    assert "lip_audio_r" in out and "mouth / elsewhere" in out
    # 80 frames, every 16th: 5 columns, generated over truth, 2x
    strip = np.asarray(Image.open(tmp_path / "o" / "strip.png").convert("RGB"))
    assert strip.shape == (2 * 64 * 2, 5 * 64 * 2, 3)
    truth = ev.truth_story(1).frames
    assert np.array_equal(strip[128:, :128], truth[0].repeat(2, 0).repeat(2, 1))  # bottom row: the ground truth
    assert np.array_equal(strip[128:, 128:256], truth[16].repeat(2, 0).repeat(2, 1))


def test_the_shipped_story_is_world_seed_0():
    held = held_out_inputs(demo_world(), 0, ev.STORY_CLIPS)
    speech = load_audio(ev.ASSETS / "speech.wav", sample_rate=16000).waveform.numpy()
    assert speech.shape == held.sequence.audio.shape
    assert np.abs(speech - held.sequence.audio).max() < 1 / 32767  # 16-bit WAV
    assert (ev.ASSETS / "prompts.txt").read_text().splitlines() == list(held.prompts)
    person = (load_image(ev.ASSETS / "person.png") * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(person, held.person)


def test_mouth_region_is_the_mouth(truth):
    mask = ev.mouth_region(truth)
    ys, xs = np.nonzero(mask)
    assert 10 < mask.sum() < 160  # under a hundred of the 4096 pixels
    assert 18 <= ys.min() and ys.max() <= 32 and 25 <= xs.min() and xs.max() <= 38  # below the eyes, centred


def _rms(speech: np.ndarray, frames: int) -> np.ndarray:
    return np.sqrt((speech[: frames * 640].reshape(frames, 640) ** 2).mean(1))


def test_probe_tells_a_lip_syncing_model_from_one_that_ignores_audio(truth):
    mask = ev.mouth_region(truth)
    speech, base = truth.audio, truth.frames

    def lips(s: np.ndarray) -> np.ndarray:  # darkens the mouth with the frame's loudness
        out = base.copy()
        level = _rms(s, len(base)) / _rms(speech, len(base)).max()
        out[:, mask] = (out[:, mask] * (1 - 0.8 * level[:, None, None])).astype(np.uint8)
        return out

    def deaf(s: np.ndarray) -> np.ndarray:
        return base.copy()

    synced = ev.audio_probe(lips(speech), lips(ev.other_speech(speech)), mask)
    ignored = ev.audio_probe(deaf(speech), deaf(ev.other_speech(speech)), mask)
    assert synced["mouth"] > 0.05 and synced["elsewhere"] == 0 and synced["ratio"] > 100
    assert ignored["mouth"] == 0 and ignored["elsewhere"] == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["--out", "X", "--clips", "3"],
        ["--out", "X", "--clips", "two"],
        ["--out", "X", "--sample-steps", "0"],
        ["--clips", "1"],
        ["--out", "X", "--bundle", "missing.safetensors"],
        ["--out", "X", "--bundle", "NOT_A_BUNDLE"],
        ["--out", "X", "--cache-threshold", "-1"],
        ["--out", "X", "--sampler", "ddim"],
    ],
)
def test_bad_arguments_are_refused_in_one_line(argv, tmp_path, capsys):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a bundle")
    argv = [str(tmp_path / "o") if a == "X" else str(junk) if a == "NOT_A_BUNDLE" else a for a in argv]
    assert cli.run_command("evaluate", argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cointeract evaluate: ")
    assert not (tmp_path / "o" / "report.json").exists()


def test_a_fast_setting_is_scored_with_its_sampler_and_step_cache(tmp_path):
    argv = ["--out", str(tmp_path / "o"), "--clips", "1", "--sample-steps", "6", "--sampler", "unipc"]
    assert cli.run_command("evaluate", [*argv, "--cache-threshold", "0.5", "--cache-start", "2"]) == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["sampler"]["sampler"] == "unipc"
    assert report["sampler"]["cache"]["threshold"] == 0.5 and report["sampler"]["cache"]["start_step"] == 2
    assert all(np.isfinite(v) for v in report["generated"].values())
