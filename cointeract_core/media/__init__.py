"""Media I/O in one import: audio, image and video files (PyAV, soxr, Pillow) and BS.1770 loudness.

The code lives in one module per medium; this module only re-exports their public functions.
"""

from __future__ import annotations

from .audio import AudioClip, is_silent, load_audio, rms_dbfs, write_audio, write_wav
from .fileio import atomic_output
from .image import image_to_tensor, load_image
from .loudness import integrated_loudness, loudness_normalize
from .video import load_video, probe, write_video

__all__ = [
    "AudioClip",
    "atomic_output",
    "image_to_tensor",
    "integrated_loudness",
    "is_silent",
    "load_audio",
    "load_image",
    "load_video",
    "loudness_normalize",
    "probe",
    "rms_dbfs",
    "write_audio",
    "write_video",
    "write_wav",
]
