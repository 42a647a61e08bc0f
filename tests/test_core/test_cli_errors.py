"""`cointeract generate` / `batch` / `inspect` refusals: one line on stderr, exit non-zero, nothing written, a
traceback only with -v; checks of the output path, device, model paths, option values and memory before sampling."""

from __future__ import annotations

import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_cointeract.cli import main as cli_main
from comfyui_cointeract.cointeract_core.errors import UserError, user_errors
from comfyui_cointeract.cointeract_core.media import atomic_output, write_wav
from comfyui_cointeract.cointeract_core.pipeline import generate as gen
from comfyui_cointeract.cointeract_core.pipeline import preflight

BUNDLE = Path(gen.__file__).parents[1] / "toy" / "assets" / "toy_bundle.safetensors"


@pytest.fixture
def files(tmp_path: Path) -> Path:
    Image.new("RGB", (48, 64), (200, 120, 90)).save(tmp_path / "person.png")
    t = np.arange(8000) / 16000
    write_wav(tmp_path / "talk.wav", (0.3 * np.sin(2 * math.pi * 180 * t)).astype(np.float32), 16000)
    return tmp_path


def _generate(files: Path, *extra: str, out: str = "out.mp4") -> int:
    args = ["--person", str(files / "person.png"), "--prompt", "a person", "--audio", str(files / "talk.wav")]
    return cli_main(["generate", "--bundle", str(BUNDLE), *args, "--out", str(files / out), "--steps", "1", *extra])


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize(
    "extra,out,message",
    [
        ((), "missing/out.mp4", r"folder of --out, '.*missing', does not exist; create it first \(mkdir -p"),
        ((), ".", r"--out '.*' is a folder; give a file name inside it"),
        ((), "out.avi", r"--out '.*out.avi' must end in .mp4"),
        (("--device", "foo"), "out.mp4", r"--device 'foo' is not a torch device; use cpu, cuda, cuda:N or mps"),
        (("--device", "cpu:0", "--person", "/nonexistent.png"), "out.mp4", r"image file '/nonexistent.png' does not"),
    ],
)
def test_user_errors_are_one_line_exit_1_and_write_nothing(files, capsys, extra, out, message):
    before = set(files.iterdir())
    assert _generate(files, *extra, out=out) == 1
    line = _one_line(capsys)
    assert line.startswith("cointeract generate: ") and re.search(message, line), line
    assert set(files.iterdir()) == before  # no video, no sidecar, no temporary file


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_blames_the_device_not_the_bundle(files, capsys):
    assert _generate(files, "--device", "cuda") == 1
    line = _one_line(capsys)
    assert "CUDA is not available here" in line and "use --device cpu" in line and "bundle" not in line


def test_a_folder_as_bundle_or_dit_is_called_a_folder(files, capsys):
    assert cli_main(["generate", "--bundle", str(files), "--person", "p.png", "--prompt", "a", "--audio", "a.wav",
                     "--out", str(files / "o.mp4")]) == 1  # fmt: skip
    assert _one_line(capsys).endswith("is a folder; give the bundle file (.safetensors)")
    (files / "wan").mkdir()
    models = ["--dit", str(files / "wan"), "--vae", str(files / "talk.wav"), "--text-encoder", str(files),
              "--audio-encoder", str(files)]  # fmt: skip
    assert cli_main(["generate", *models, "--person", "p.png", "--prompt", "a", "--audio", "a.wav",
                     "--out", str(files / "o.mp4"), "--device", "cpu"]) == 1  # fmt: skip
    line = _one_line(capsys)
    assert "--dit" in line and "is a folder; it holds no .safetensors" in line and "index.json" in line


@pytest.mark.parametrize(
    "flag,value,match",
    [
        ("--width", "100000", "--width: expected an integer from 1 to 4096, got 100000"),
        ("--height", "20000", "--height: expected an integer from 1 to 4096"),
        ("--scale", "nan", "--scale: expected a finite number > 0, got nan"),
        ("--scale", "-1", "--scale: expected a finite number > 0"),
        ("--seed", "-3", "--seed: expected an integer from 0 to"),
        ("--clips", "0", "--clips: expected an integer >= 1"),
        ("--audio-stride", "-80", "--audio-stride: expected an integer >= 1"),
        ("--lora-strength", "inf", "--lora-strength: expected a finite number, got inf"),
        ("--product-margin", "0.5", "--product-margin: expected a finite number >= 1"),
        ("--loudness", "nan", "--loudness: expected a finite number from -70 to 0"),
        ("--lora", "{lora}:1e999", "the strength of .*lora.safetensors must be a finite number, got inf"),
        ("--lora", "{lora}:nan", "the strength of .*lora.safetensors must be a number, got 'nan'"),
        ("--cfg", "inf", "cfg must be a finite number"),
        ("--steps", "-2", "steps must be an integer >= 1"),
    ],
)
def test_bad_values_are_usage_errors_before_loading(files, capsys, flag, value, match):
    (files / "lora.safetensors").write_bytes(b"x")
    value = value.format(lora=files / "lora.safetensors")
    with pytest.raises(SystemExit) as err:  # argparse's usage error; the bundle does not exist: no loading
        cli_main(["generate", "--bundle", str(files / "missing.safetensors"), "--person", "p.png", "--prompt",
                  "a", "--audio", "a.wav", "--out", str(files / "o.mp4"), flag, value])  # fmt: skip
    assert err.value.code == 2
    assert re.search(match, capsys.readouterr().err)


def test_batch_refuses_a_nan_scale_row_and_an_out_dir_that_is_a_file(files, capsys):
    (files / "d.csv").write_text("audio,person_image,prompt,scale\ntalk.wav,person.png,hi,nan\n")
    base = ["batch", str(files / "d.csv"), "--bundle", str(BUNDLE), "--steps", "1"]
    assert cli_main([*base, "--out-dir", str(files / "res")]) == 1
    assert _one_line(capsys) == "cointeract batch: d.csv line 2: scale must be a number > 0, got 'nan'"
    assert cli_main([*base, "--out-dir", str(files / "talk.wav")]) == 1
    assert _one_line(capsys).endswith("talk.wav' is a file; give a folder")
    assert not (files / "res").exists()


def test_inspect_of_a_damaged_file_is_one_line(files, capsys):
    (files / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert cli_main(["inspect", str(files / "bad.safetensors")]) != 0
    assert "Traceback" not in capsys.readouterr().err


def test_memory_estimate_is_checked_before_sampling(files, capsys, monkeypatch):
    from comfyui_cointeract.cointeract_core.toy.bundle import load_bundle

    cfg = load_bundle(BUNDLE)[0].cfg
    free = (preflight._need(cfg, 128, 128, 8, False) + preflight._need(cfg, 512, 512, 8, False)) // 2
    monkeypatch.setattr(preflight, "available_bytes", lambda device: free)
    assert _generate(files, "--width", "512", "--height", "512") == 1
    line = _one_line(capsys)
    assert re.search(r"512x512 \(HxW\) needs about \d+ MiB .* MiB of RAM available; about --height \d+ --width", line)
    assert not (files / "out.mp4").exists() and not (files / "out.json").exists()


def test_the_suggested_size_fits(monkeypatch):
    from comfyui_cointeract.cointeract_core.model.config import PRESETS

    cfg = PRESETS["14B"]
    free = preflight._need(cfg, 480, 832, 8, False) + 1
    monkeypatch.setattr(preflight, "available_bytes", lambda device: free)
    preflight.check_memory(cfg, 480, 832, 8, torch.device("cpu"), False)
    with pytest.raises(
        UserError, match=r"1280x720 \(HxW\) needs about .* GiB of RAM available; about --height \d+ --width"
    ) as e:
        preflight.check_memory(cfg, 1280, 720, 8, torch.device("cpu"), False)
    h, w = (int(x) for x in re.search(r"--height (\d+) --width (\d+)", str(e.value)).groups())
    assert preflight._need(cfg, h, w, 8, False) <= free and h % 16 == 0 and w % 16 == 0


def test_a_bug_keeps_its_traceback(monkeypatch):
    @user_errors("cointeract x")
    def broken(argv):
        raise TypeError("a bug")

    with pytest.raises(TypeError):
        broken([])


def test_verbose_gives_the_traceback(files, capsys):
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.DEBUG)  # what `cointeract -v` does in a fresh process
    try:
        assert _generate(files, "--device", "foo") == 1
    finally:
        root.setLevel(before)
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith("cointeract gen")


def test_cointeract_v_in_a_real_process(files):
    command = [sys.executable, "-m", "comfyui_cointeract.cli", "-v", "generate", "--bundle", str(BUNDLE),
               "--person", "p.png", "--prompt", "a", "--audio", "a.wav", "--out", str(files / "o.mp4"),
               "--device", "foo"]  # fmt: skip
    verbose = subprocess.run(command, capture_output=True, text=True, timeout=120)
    plain = subprocess.run([c for c in command if c != "-v"], capture_output=True, text=True, timeout=120)
    assert verbose.returncode == plain.returncode == 1
    assert "Traceback" in verbose.stderr and "Traceback" not in plain.stderr
    assert plain.stderr.strip() == (
        "cointeract generate: --device 'foo' is not a torch device; use cpu, cuda, cuda:N or mps"
    )


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_output_honours_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        with atomic_output(tmp_path / "a.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == mode


def test_generated_files_get_the_usual_mode(files):
    old = os.umask(0o022)
    try:
        assert _generate(files, "--clips", "1") == 0
    finally:
        os.umask(old)
    assert {(files / n).stat().st_mode & 0o777 for n in ("out.mp4", "out.json")} == {0o644}
