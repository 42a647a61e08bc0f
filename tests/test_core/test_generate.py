"""`cointeract generate` / `batch` end to end on tiny models and the toy encoders (no downloads)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_cointeract.cointeract_core.media import probe, write_wav
from comfyui_cointeract.cointeract_core.model.config import PRESETS
from comfyui_cointeract.cointeract_core.model.dit import CoInteractDiT
from comfyui_cointeract.cointeract_core.pipeline import cli_options
from comfyui_cointeract.cointeract_core.pipeline import generate as gen
from comfyui_cointeract.cointeract_core.pipeline.cases import read_demo_csv
from comfyui_cointeract.cointeract_core.pipeline.engines import Engines
from comfyui_cointeract.cointeract_core.sampling.sampler import SamplerConfig
from comfyui_cointeract.cointeract_core.toy.audio import ToyAudioFeatures
from comfyui_cointeract.cointeract_core.toy.codec import ToyCodec
from comfyui_cointeract.cointeract_core.toy.text import ToyTextEncoder

RUN = ["--height", "16", "--width", "32", "--steps", "2"]


@pytest.fixture(scope="module")
def engines():
    cfg = dataclasses.replace(PRESETS["tiny_cointeract"], in_dim=48, out_dim=48, cond_dim=48, text_len=96, audio_dim=16)
    torch.manual_seed(0)
    return Engines(CoInteractDiT(cfg).eval(), ToyCodec(2), ToyTextEncoder(32, max_length=96), ToyAudioFeatures(16))


def _speech(path, seconds: float, rate: int = 44100, channels: int = 2) -> None:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * math.pi * 180 * t) * (np.sin(2 * math.pi * 3 * t) > 0)  # voiced syllables
    write_wav(path, np.stack([wave] * channels).astype(np.float32), rate)


@pytest.fixture
def inputs(tmp_path):
    Image.new("RGBA", (40, 60), (200, 120, 90, 255)).save(tmp_path / "person.png")
    Image.new("P", (30, 30)).save(tmp_path / "product.png")
    _speech(tmp_path / "talk.wav", 3.6)
    return tmp_path


def test_generate_writes_video_with_sound_and_sidecar(engines, inputs):
    out = inputs / "out" / "video.mp4"
    out.parent.mkdir()
    args = [
        "--person",
        str(inputs / "person.png"),
        "--product",
        str(inputs / "product.png"),
        "--prompt",
        "a person",
        "--prompt",
        "holds a red box",
        "--audio",
        str(inputs / "talk.wav"),
        "--out",
        str(out),
        "--hoi-preview",
        "--router-maps",
        *RUN,
    ]
    assert gen.main(args, engines=engines) == 0
    info = probe(out)
    assert info["audio"] is not None and abs(info["duration"] - 3.6) < 0.1  # trimmed to the audio
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["clips"] == 2 and side["frames"] == 160 and side["seeds"] == [0, 1] and side["audio_frames"] in (89, 90)
    assert side["video"]["audio_stride"] == 80 and side["sampler"]["steps"] == 2
    assert out.with_suffix(".hoi.mp4").exists() and out.with_suffix(".router.mp4").exists()


def test_batch_runs_the_official_demos_csv_and_skips_finished(engines, inputs):
    (inputs / "demos.csv").write_text(
        "audio,person_image,prompt,product_image,prompt2,prompt3,scale\n"
        "talk.wav,person.png,a person talks,product.png,,,0.8\n"
    )
    out_dir = inputs / "results"
    assert (
        gen.batch_main([str(inputs / "demos.csv"), "--out-dir", str(out_dir), "--clips", "1", *RUN], engines=engines)
        == 0
    )
    video = out_dir / "talk.mp4"
    assert abs(probe(video)["duration"] - 3.2) < 0.1  # one clip: 80 frames, audio trimmed to the video
    assert json.loads(video.with_suffix(".json").read_text())["case"]["scale"] == 0.8
    stamp = video.stat().st_mtime_ns
    gen.batch_main([str(inputs / "demos.csv"), "--out-dir", str(out_dir), *RUN], engines=engines)
    assert video.stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    "bad,match", [("empty_prompt", "prompt is empty"), ("silent", "silent"), ("missing", "talk2.wav")]
)
def test_bad_inputs_are_refused_before_writing(engines, inputs, bad, match):
    out = inputs / "never.mp4"
    audio, prompt = inputs / "talk.wav", "a person"
    if bad == "empty_prompt":
        prompt = "  "
    elif bad == "silent":
        audio = inputs / "quiet.wav"
        write_wav(audio, np.zeros(16000, dtype=np.float32), 16000)
    else:
        audio = inputs / "talk2.wav"
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        gen.main(
            [
                "--person",
                str(inputs / "person.png"),
                "--prompt",
                prompt,
                "--audio",
                str(audio),
                "--out",
                str(out),
                *RUN,
            ],
            engines=engines,
        )
    assert not out.exists() and not list(inputs.glob("*.tmp*"))


def test_demo_csv_missing_column_is_named(tmp_path):
    (tmp_path / "d.csv").write_text("audio,person_image,prompt\na.wav,,hello\n")
    with pytest.raises(ValueError, match="line 2: missing person_image"):
        read_demo_csv(tmp_path / "d.csv")


def test_step_cache_flags_reach_the_sampler_and_the_sidecar(engines, inputs):
    case = ["--person", str(inputs / "person.png"), "--prompt", "a person", "--audio", str(inputs / "talk.wav")]
    out = inputs / "cached.mp4"
    flags = ["--steps", "6", "--clips", "1", "--cache-threshold", "1e9", "--cache-start", "2", "--cache-end-full", "1"]
    assert gen.main([*case, "--out", str(out), *RUN[:4], *flags, "--cache-max-skips", "0"], engines=engines) == 0
    side = json.loads(out.with_suffix(".json").read_text())
    expected = {"threshold": 1e9, "start_step": 2, "end_steps_full": 1, "max_consecutive": None}
    assert side["sampler"]["cache"] == expected
    assert side["passes_skipped"] == [6] and side["passes_run"] == [6]  # steps 2-4 skipped in both branches
    with pytest.raises(SystemExit):  # a usage error: "... need --cache-threshold"
        gen.main([*case, "--out", str(inputs / "never.mp4"), *RUN, "--cache-start", "3"], engines=engines)
    with pytest.raises(SystemExit):
        gen.main([*case, "--out", str(inputs / "never.mp4"), *RUN, "--cache-threshold", "nan"], engines=engines)
    assert not (inputs / "never.mp4").exists()


def _sampler_args(argv: list[str]):
    """The SamplerConfig that `cointeract generate` builds from these run flags."""
    parser = argparse.ArgumentParser()
    cli_options.add_run_args(parser)
    return cli_options.sampler_config(parser.parse_args(argv))


def test_sampler_flags_reach_the_config():
    assert _sampler_args([]) == SamplerConfig()
    cfg = _sampler_args(["--sampler", "unipc", "--scheduler", "simple", "--steps", "20", "--cfg", "5", "--shift", "3"])
    assert (cfg.sampler, cfg.scheduler, cfg.steps, cfg.cfg, cfg.shift) == ("unipc", "simple", 20, 5.0, 3.0)
    distill = _sampler_args(["--preset", "distill", "--seed", "4", "--cfg-batch", "off"])
    assert (distill.sampler, distill.steps, distill.shift, distill.cfg, distill.seed) == ("lcm", 4, 5.0, 1.0, 4)
    assert distill.cfg_batch == "off" and _sampler_args(["--preset", "lightning", "--steps", "8"]).steps == 8
    listed = _sampler_args(["--preset", "distill", "--step-list", "1000,750,500,250"])
    assert (listed.scheduler, listed.steps, listed.step_list) == ("step_list", 4, (1000.0, 750.0, 500.0, 250.0))


@pytest.mark.parametrize(
    "flags,match",
    [
        (["--cfg", "nan"], "cfg must be a finite number"),
        (["--shift", "-1"], "shift must be a finite number > 0"),
        (["--steps", "0"], "steps must be an integer >= 1"),
        (["--step-list", "1000,750", "--steps", "3"], "steps == len"),
        (["--sampler", "ddim"], "invalid choice: 'ddim' .choose from 'euler', 'unipc', 'dpmpp_2m', 'lcm'"),
    ],
)
def test_bad_sampler_flags_are_usage_errors_before_loading(flags, match, capsys, inputs):
    args = ["--person", str(inputs / "person.png"), "--prompt", "a", "--audio", "x.wav", "--out", "o.mp4", *flags]
    with pytest.raises(SystemExit) as err:  # the bundle does not exist: the usage error must come before loading
        gen.main([*args, "--bundle", str(inputs / "missing.safetensors")], engines=None)
    assert err.value.code == 2 and re.search(match, capsys.readouterr().err)


def test_sidecar_records_the_sampler(engines, inputs):
    out = inputs / "distill.mp4"
    args = ["--person", str(inputs / "person.png"), "--prompt", "a person", "--audio", str(inputs / "talk.wav")]
    assert gen.main([*args, "--out", str(out), "--clips", "1", *RUN, "--preset", "distill"], engines=engines) == 0
    side = json.loads(out.with_suffix(".json").read_text())["sampler"]
    assert side["sampler"] == "lcm" and side["scheduler"] == "shifted" and side["cfg"] == 1.0 and side["steps"] == 2
