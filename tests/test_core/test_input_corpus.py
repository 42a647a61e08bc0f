"""A corpus of bad and odd input files through `cointeract generate --bundle <toy bundle>` (1 step, 1 clip).

Converted inputs give a video and an INFO line saying what became what; refused inputs exit 1 with one line on
stderr (no traceback) and leave nothing at the output path.
"""

from __future__ import annotations

import logging
import math
import re
import wave
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from comfyui_cointeract.cli import main as cli_main
from comfyui_cointeract.cointeract_core.media import write_audio, write_wav

BUNDLE = Path(__file__).parents[2] / "cointeract_core" / "toy" / "assets" / "toy_bundle.safetensors"
RATE = 16000


def _tone(seconds: float, rate: int = RATE, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([0.3 * np.sin(2 * math.pi * 180 * t)] * channels).astype(np.float32)


def _pcm_wav(path: Path, width: int) -> None:
    """A mono 16 kHz WAV with `width`-byte integer samples (1: unsigned 8-bit, 3: 24-bit)."""
    x = _tone(0.5)[0]
    if width == 1:
        data = np.round(x * 127 + 128).astype(np.uint8).tobytes()
    else:
        ints = np.round(x * (2 ** (8 * width - 1) - 1)).astype("<i4")
        data = b"".join(int(v).to_bytes(width, "little", signed=True) for v in ints)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(width)
        f.setframerate(RATE)
        f.writeframes(data)


def _float_wav(path: Path) -> None:
    with av.open(str(path), "w", format="wav") as c:
        s = c.add_stream("pcm_f32le", rate=RATE)
        s.layout = "mono"
        frame = av.AudioFrame.from_ndarray(_tone(0.5), format="fltp", layout="mono")
        frame.sample_rate = RATE
        c.mux(s.encode(frame) + s.encode(None))


def _exif_rotated(path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    Image.new("RGB", (96, 64), (10, 200, 30)).save(path, exif=exif.tobytes())


# name -> (maker, log pattern of the conversion or None, refusal pattern or None)
IMAGES = {
    "ok.png": (lambda p: Image.new("RGB", (64, 96), (200, 120, 90)).save(p), None, None),
    "one.png": (lambda p: Image.new("RGB", (1, 1)).save(p), None, r"person image is 1x1 .*at least 16x16"),
    "tall.png": (lambda p: Image.new("RGB", (200, 3000)).save(p), r"person image 200x3000 \(WxH\) -> 64x64", None),
    "rgba.png": (lambda p: Image.new("RGBA", (64, 64)).save(p), r"mode RGBA -> RGB", None),
    "gray.png": (lambda p: Image.new("L", (64, 64), 90).save(p), r"mode L -> RGB", None),
    "cmyk.jpg": (lambda p: Image.new("CMYK", (64, 64)).save(p), r"mode CMYK -> RGB", None),
    "deep.png": (lambda p: Image.new("I;16", (64, 64), 30000).save(p), r"I;16 grayscale -> RGB", None),
    "exif.jpg": (_exif_rotated, r"EXIF orientation 6 applied", None),
    "text.png": (lambda p: p.write_text("not an image"), None, r"could not read image .*text.png"),
    "empty.png": (lambda p: p.write_bytes(b""), None, r"image file .*empty.png' is empty \(0 bytes\)"),
    "cut.png": (lambda p: p.write_bytes(_png_bytes()[:60]), None, r"could not read image .*cut.png"),
}
AUDIO = {
    "silent.wav": (lambda p: write_wav(p, np.zeros(8000, np.float32), RATE), None, r"silent .*--allow-silence"),
    "stereo44.wav": (
        lambda p: write_wav(p, _tone(0.5, 44100, 2), 44100),
        r"2 channels -> mono.*|resampled 44100 Hz -> 16000 Hz",
        None,
    ),
    "40ms.wav": (lambda p: write_wav(p, _tone(0.04), RATE), None, r"the speech is 0.04 s; at least 0.10 s is needed"),
    "cut.wav": (lambda p: p.write_bytes(_wav_bytes(p)[:5000]), None, r"is truncated: it holds 0.15 s of the 0.50 s"),
    "header.wav": (lambda p: p.write_bytes(b"RIFF" + b"\xff" * 40), None, r"is not a valid WAV file"),
    "u8.wav": (lambda p: _pcm_wav(p, 1), None, None),
    "s24.wav": (lambda p: _pcm_wav(p, 3), None, None),
    "f32.wav": (_float_wav, None, None),
    "speech.mp3": (lambda p: write_audio(p, _tone(0.5, 44100), 44100), r"resampled 44100 Hz -> 16000 Hz", None),
    "speech.flac": (lambda p: write_audio(p, _tone(0.5, 22050), 22050), r"resampled 22050 Hz -> 16000 Hz", None),
    "speech.ogg": (lambda p: write_audio(p, _tone(0.5, 48000), 48000), r"resampled 48000 Hz -> 16000 Hz", None),
    "empty.wav": (lambda p: p.write_bytes(b""), None, r"audio file .*empty.wav' is empty"),
}


def _png_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


def _wav_bytes(path: Path) -> bytes:
    write_wav(path, _tone(0.5), RATE)
    return path.read_bytes()


CASES = [("image", n, *v) for n, v in IMAGES.items()] + [("audio", n, *v) for n, v in AUDIO.items()]


@pytest.mark.parametrize("kind,name,make,logged,refused", CASES, ids=[c[1] for c in CASES])
def test_input_corpus(tmp_path, capsys, caplog, kind, name, make, logged, refused):
    person, audio = tmp_path / "person.png", tmp_path / "talk.wav"
    Image.new("RGB", (64, 96), (200, 120, 90)).save(person)
    write_wav(audio, _tone(0.5), RATE)
    target = tmp_path / name
    make(target)
    if kind == "image":
        person = target
    else:
        audio = target
    out = tmp_path / "out" / "video.mp4"
    out.parent.mkdir()
    args = ["generate", "--bundle", str(BUNDLE), "--person", str(person), "--prompt", "a person talks",
            "--audio", str(audio), "--out", str(out), "--steps", "1", "--clips", "1"]  # fmt: skip
    with caplog.at_level(logging.INFO):
        code = cli_main(args)
    err = capsys.readouterr().err
    if refused:
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
        assert re.search(refused, lines[0]), lines[0]
        assert list(out.parent.iterdir()) == []  # no video, no sidecar, no temporary file
    else:
        assert code == 0, err
        assert out.is_file() and out.with_suffix(".json").is_file()
        if logged:
            messages = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
            assert any(re.search(logged, m) for m in messages), messages
