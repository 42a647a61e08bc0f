"""Standalone encoders from well-kept libraries behind the core's protocols (heavy libraries imported lazily).

- `WanVAE` (wan_vae.py): the Wan 2.1 VAE on diffusers' AutoencoderKLWan — `VideoVAE`.
- `UMT5TextEncoder` (umt5.py): umT5-XXL on transformers' UMT5EncoderModel — `TextEncoder`.
- `Wav2Vec2Features` (wav2vec.py): wav2vec2 on transformers' Wav2Vec2Model — `AudioEncoder`; plus
  `features_to_fps` (50 Hz hidden states -> video frame rate, as the official pipeline).

Each loads from local paths only (`from_file`) and builds a tiny random model for tests (`from_config`).
"""

from .umt5 import UMT5TextEncoder
from .wan_vae import Tiling, WanVAE
from .wav2vec import Wav2Vec2Features, features_to_fps

__all__ = ["WanVAE", "Tiling", "UMT5TextEncoder", "Wav2Vec2Features", "features_to_fps"]
