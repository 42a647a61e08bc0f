"""Media I/O: every audio format to 16 kHz mono, image modes, video round trips, fps resampling, atomic writes."""

from __future__ import annotations

import logging
import math
import os
import wave

import av
import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_cointeract.cointeract_core import media
from comfyui_cointeract.cointeract_core.media import (
    is_silent,
    load_audio,
    load_image,
    load_video,
    probe,
    rms_dbfs,
    write_audio,
    write_video,
    write_wav,
)
from comfyui_cointeract.cointeract_core.media import video as media_video

SR = 44100


def _tone(rate: int, seconds: float = 1.0, freq: float = 440.0) -> np.ndarray:
    """Stereo tone [2, T]: left amplitude 0.5, right 0.3 (their mean, the mono downmix, has amplitude 0.4)."""
    t = np.arange(int(round(rate * seconds))) / rate
    s = np.sin(2 * np.pi * freq * t)
    return np.stack([0.5 * s, 0.3 * s]).astype(np.float32)


def _peak_hz(wave_: torch.Tensor, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave_.numpy() * np.hanning(wave_.numel())))
    return float(np.fft.rfftfreq(wave_.numel(), 1 / rate)[spectrum.argmax()])


# (file name, encoder, decoder FFmpeg picks for it, source rate, amplitude tolerance). Opus takes 8..48 kHz only.
AUDIO_CASES = [
    ("int16.wav", "pcm_s16le", "pcm_s16le", SR, 1e-3),
    ("int24.wav", "pcm_s24le", "pcm_s24le", SR, 1e-3),
    ("int32.wav", "pcm_s32le", "pcm_s32le", SR, 1e-3),
    ("float32.wav", "pcm_f32le", "pcm_f32le", SR, 1e-3),
    ("uint8.wav", "pcm_u8", "pcm_u8", SR, 2e-2),
    ("tone.mp3", "libmp3lame", "mp3float", SR, 5e-2),
    ("tone.m4a", "aac", "aac", SR, 5e-2),
    ("tone.flac", "flac", "flac", SR, 1e-3),
    ("tone.ogg", "libopus", "opus", 48000, 5e-2),
]


@pytest.mark.parametrize(("name", "encoder", "decoder", "rate", "tol"), AUDIO_CASES, ids=[c[0] for c in AUDIO_CASES])
def test_every_audio_format_loads_as_16k_mono(tmp_path, caplog, name, encoder, decoder, rate, tol):
    path = tmp_path / name
    write_audio(path, _tone(rate), rate, codec=encoder)
    with av.open(str(path)) as container:  # the file really holds the asked encoding
        assert container.streams.audio[0].codec_context.name == decoder
    with caplog.at_level(logging.INFO, logger="comfyui_cointeract.cointeract_core.media.audio"):
        clip = load_audio(path)
    assert clip.waveform.dtype == torch.float32 and clip.waveform.ndim == 1
    assert clip.sample_rate == 16000 and abs(clip.waveform.numel() - 16000) <= 4
    assert (clip.source_rate, clip.source_channels) == (rate, 2)
    assert clip.source_duration == pytest.approx(1.0, abs=1e-3) and clip.duration == pytest.approx(1.0, abs=1e-3)
    assert _peak_hz(clip.waveform, 16000) == pytest.approx(440.0, abs=1.0)
    steady = clip.waveform[2000:14000]  # away from codec onsets
    assert float(steady.abs().max()) == pytest.approx(0.4, abs=tol)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("-> mono" in m for m in messages) == 1
    assert sum(f"{rate} Hz -> 16000 Hz (soxr HQ)" in m for m in messages) == 1


def test_int16_wav_decodes_exactly_as_librosa_scales_it(tmp_path):
    pcm = np.array([[0, 1, -1, 32767, -32768, 12345]], dtype="<i2")
    path = tmp_path / "exact.wav"
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(16000)
        f.writeframes(pcm.tobytes())
    clip = load_audio(path, sample_rate=16000)
    assert torch.equal(clip.waveform, torch.from_numpy(pcm[0] / 32768.0).float())


def test_keep_rate_and_channels(tmp_path, caplog):
    write_audio(tmp_path / "a.flac", _tone(22050), 22050)
    with caplog.at_level(logging.INFO):
        clip = load_audio(tmp_path / "a.flac", sample_rate=None, mono=False)
    assert clip.waveform.shape == (2, 22050) and clip.sample_rate == 22050
    assert not any("->" in r.getMessage() for r in caplog.records if "media_audio" in r.name)


def test_write_wav_is_16_bit_pcm_and_round_trips(tmp_path):
    x = _tone(16000)[0] * 1.6  # peaks at 0.8
    write_wav(tmp_path / "w.wav", torch.from_numpy(x), 16000)
    with wave.open(str(tmp_path / "w.wav"), "rb") as f:
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()) == (1, 2, 16000, 16000)
    back = load_audio(tmp_path / "w.wav").waveform
    assert float((back - torch.from_numpy(x)).abs().max()) <= 0.5 / 32768 + 1e-9
    assert os.listdir(tmp_path) == ["w.wav"]


def test_audio_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.wav.*does not exist"):
        load_audio(tmp_path / "nope.wav")
    with pytest.raises(FileNotFoundError, match="is a folder"):
        load_audio(tmp_path)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not audio at all" * 50)
    with pytest.raises(ValueError, match="garbage.wav"):
        load_audio(garbage)
    picture = tmp_path / "picture.png"
    Image.new("RGB", (8, 8)).save(picture)
    with pytest.raises(ValueError, match="no audio stream"):
        load_audio(picture)
    empty = tmp_path / "empty.wav"
    with wave.open(str(empty), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(16000)
    with pytest.raises(ValueError, match="empty.wav.*no samples"):
        load_audio(empty)


def test_silence_detection(tmp_path):
    write_wav(tmp_path / "silent.wav", np.zeros(16000, np.float32), 16000)
    silent = load_audio(tmp_path / "silent.wav").waveform
    assert is_silent(silent) and rms_dbfs(silent) == -math.inf
    tone = torch.from_numpy(_tone(16000)[0] / 0.5)  # full-scale sine: RMS -3.01 dBFS
    assert rms_dbfs(tone) == pytest.approx(-3.0103, abs=1e-3) and not is_silent(tone)
    quiet = tone * 10 ** (-67 / 20)  # RMS -70 dBFS
    assert is_silent(quiet) and not is_silent(quiet, threshold_db=-80)
    assert is_silent(torch.zeros(0))


# --- images ---------------------------------------------------------------------------------------------------


def _log_messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.endswith("media.image")]


def test_rgb_image_is_exact(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "rgb.png")
    img = load_image(tmp_path / "rgb.png")
    assert img.shape == (5, 7, 3) and img.dtype == torch.float32
    assert torch.equal(img, torch.from_numpy(arr / 255.0).float())


def test_image_modes_convert_with_a_log_line(tmp_path, caplog):
    rgba = Image.new("RGBA", (4, 3), (200, 100, 50, 0))  # fully transparent: alpha must be dropped, not composited
    rgba.save(tmp_path / "rgba.png")
    Image.new("L", (4, 3), 77).save(tmp_path / "gray.png")
    pal = Image.new("P", (4, 3), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.save(tmp_path / "pal.png")
    Image.fromarray(np.array([[0, 1000, 30000, 65535]], dtype=np.uint16)).save(tmp_path / "deep.png")
    with caplog.at_level(logging.INFO):
        assert torch.equal(load_image(tmp_path / "rgba.png")[0, 0], torch.tensor([200, 100, 50]) / 255.0)
        assert "alpha dropped" in _log_messages(caplog)[-1]
        assert torch.equal(load_image(tmp_path / "gray.png")[2, 3], torch.full((3,), 77 / 255.0))
        assert "mode L -> RGB" in _log_messages(caplog)[-1]
        assert torch.equal(load_image(tmp_path / "pal.png")[1, 1], torch.tensor([10, 20, 30]) / 255.0)
        assert "mode P -> RGB" in _log_messages(caplog)[-1]
        deep = load_image(tmp_path / "deep.png")
        assert "I;16" in _log_messages(caplog)[-1]
    # Pillow's own convert("RGB") would clip 1000 and 30000 to 255 (white); we scale by 1/65535.
    assert torch.allclose(deep[0, :, 1], torch.tensor([0, 1000, 30000, 65535]) / 65535.0, rtol=0, atol=1e-7)
    assert len(_log_messages(caplog)) == 4


def test_exif_orientation_is_applied(tmp_path, caplog):
    arr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(arr).save(tmp_path / "phone.png", exif=exif)
    with caplog.at_level(logging.INFO):
        img = load_image(tmp_path / "phone.png")
    assert img.shape == (3, 2, 3)
    assert torch.equal(img, torch.from_numpy(np.rot90(arr, k=-1).copy() / 255.0).float())
    assert "EXIF orientation 6" in _log_messages(caplog)[0]


def test_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "fake.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="fake.png"):
        load_image(tmp_path / "fake.png")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "whole.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:60])
    with pytest.raises(ValueError, match="cut.png"):
        load_image(tmp_path / "cut.png")


# --- video ----------------------------------------------------------------------------------------------------


def _indexed_frames(n: int, h: int = 48, w: int = 64) -> np.ndarray:
    """Solid gray frames whose level 8·i encodes the frame index (survives H.264 at CRF 18)."""
    return np.repeat((np.arange(n, dtype=np.uint8) * 8)[:, None, None, None], h * w * 3).reshape(n, h, w, 3)


def _indices(frames: torch.Tensor) -> list[int]:
    return [round(v / 8) for v in frames[:, frames.shape[1] // 2, frames.shape[2] // 2, 0].float().tolist()]


def _speech(seconds: float, rate: int = 16000) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * 220 * np.arange(round(seconds * rate)) / rate)).astype(np.float32)


def test_video_trimmed_to_the_audio(tmp_path):
    write_video(tmp_path / "v.mp4", _indexed_frames(30), fps=25, audio=_speech(1.1), sample_rate=16000)
    info = probe(tmp_path / "v.mp4")
    assert os.listdir(tmp_path) == ["v.mp4"]
    v, a = info["video"], info["audio"]
    assert (v["codec"], v["pix_fmt"], v["width"], v["height"], v["fps"]) == ("h264", "yuv420p", 64, 48, 25.0)
    assert v["frames"] == 28  # ceil(1.1 s x 25): every audio sample has a picture
    assert (a["sample_rate"], a["channels"], a["samples"]) == (16000, 1, 17600)  # the whole track, AAC padding trimmed
    assert v["duration"] == pytest.approx(1.1, abs=1e-3) and info["duration"] == pytest.approx(1.1, abs=1e-3)
    frames, fps = load_video(tmp_path / "v.mp4", fps=None)
    assert fps == 25.0 and _indices(frames) == list(range(28))


def test_video_audio_length_rules(tmp_path):
    write_video(tmp_path / "keep.mp4", _indexed_frames(30), 25, _speech(1.1), 16000, trim_to_audio=False)
    info = probe(tmp_path / "keep.mp4")
    assert info["video"]["frames"] == 30 and info["audio"]["samples"] == 17600
    assert info["duration"] == pytest.approx(1.2, abs=1e-3)
    write_video(tmp_path / "long.mp4", _indexed_frames(30), 25, np.stack([_speech(2.0)] * 2), 16000)
    info = probe(tmp_path / "long.mp4")  # a longer track is cut at the last frame's end (-shortest)
    assert info["video"]["frames"] == 30 and info["audio"]["samples"] == 19200 and info["audio"]["channels"] == 2
    assert info["duration"] == pytest.approx(1.2, abs=1e-3)
    write_video(tmp_path / "mute.mp4", _indexed_frames(5), 25)
    info = probe(tmp_path / "mute.mp4")
    assert info["audio"] is None and info["video"]["frames"] == 5


def test_video_float_frames_and_odd_size(tmp_path, caplog):
    frames = torch.from_numpy(_indexed_frames(4, h=47, w=63)).float() / 255.0
    with caplog.at_level(logging.INFO):
        write_video(tmp_path / "odd.mp4", frames, fps=25)
    assert "padded to 64x48" in caplog.text
    back, _ = load_video(tmp_path / "odd.mp4", fps=None)
    assert back.shape == (4, 48, 64, 3) and back.dtype == torch.uint8
    assert _indices(back) == [0, 1, 2, 3]
    assert (back[:, 47].int() - back[:, 46].int()).abs().max() <= 3  # the padded row repeats the last one
    with pytest.raises(ValueError, match="cannot write video as '.avi'"):
        write_video(tmp_path / "x.avi", frames, fps=25)
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        write_video(tmp_path / "x.mp4", frames[..., :2], fps=25)


def test_load_video_resamples_by_nearest_timestamp(tmp_path):
    write_video(tmp_path / "30.mp4", _indexed_frames(30), fps=30)  # 1 s at 30 fps
    frames, fps = load_video(tmp_path / "30.mp4", fps=25)
    expected = [round(k * 30 / 25) for k in range(25)]  # no exact ties occur for 30 -> 25
    assert fps == 25.0 and frames.shape == (25, 48, 64, 3) and _indices(frames) == expected
    assert expected[:6] == [0, 1, 2, 4, 5, 6]  # one source frame in six is skipped
    assert _indices(load_video(tmp_path / "30.mp4", fps=25, max_frames=10)[0]) == expected[:10]
    assert _indices(load_video(tmp_path / "30.mp4", fps=30)[0]) == list(range(30))
    write_video(tmp_path / "15.mp4", _indexed_frames(15), fps=15)
    up, _ = load_video(tmp_path / "15.mp4", fps=25)
    assert _indices(up) == [round(k * 15 / 25) for k in range(25)]  # frames repeat, order kept


def test_video_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="gone.mp4"):
        load_video(tmp_path / "gone.mp4")
    write_wav(tmp_path / "speech.wav", _speech(0.5), 16000)
    with pytest.raises(ValueError, match="no video stream"):
        load_video(tmp_path / "speech.wav")
    (tmp_path / "junk.mp4").write_bytes(b"\x00junk" * 100)
    with pytest.raises(ValueError, match="junk.mp4"):
        load_video(tmp_path / "junk.mp4")
    with av.open(str(tmp_path / "empty.avi"), "w", format="avi") as container:  # a video stream with no frames
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
    with pytest.raises(ValueError, match="empty.avi.*no frames"):
        load_video(tmp_path / "empty.avi")


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    target = tmp_path / "out.mp4"
    real = media_video._video_frame
    calls = {"n": 0}

    def failing_frame(image):
        calls["n"] += 1
        if calls["n"] == 10:
            raise OSError(28, "No space left on device")
        return real(image)

    monkeypatch.setattr(media_video, "_video_frame", failing_frame)
    with pytest.raises(OSError, match="No space left"):
        write_video(target, _indexed_frames(30), fps=25, audio=_speech(1.2))
    assert calls["n"] == 10 and os.listdir(tmp_path) == []
    # An existing complete file survives a failed overwrite untouched.
    monkeypatch.setattr(media_video, "_video_frame", real)
    write_video(target, _indexed_frames(5), fps=25)
    before = target.read_bytes()
    calls["n"] = 0
    monkeypatch.setattr(media_video, "_video_frame", failing_frame)
    with pytest.raises(OSError):
        write_video(target, _indexed_frames(30), fps=25)
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["out.mp4"]


def test_media_facade_reexports_the_public_api():
    for name in media.__all__:
        assert callable(getattr(media, name)), name
