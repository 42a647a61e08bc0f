"""The toy world's inference-time parts: a lossless codec and small deterministic text and audio encoders.

They stand behind the same protocols as the real Wan VAE, umT5 and wav2vec2 (`cointeract_core.pipeline.protocols`), so
the whole system runs on a CPU with no downloads. The world generator and its evaluation live in `train/`.
"""

from .audio import ToyAudioFeatures
from .codec import ToyCodec
from .pca_codec import PCAToyCodec, fit_pca_codec
from .text import TOY_VOCABULARY, ToyTextEncoder

__all__ = ["ToyAudioFeatures", "ToyCodec", "PCAToyCodec", "fit_pca_codec", "ToyTextEncoder", "TOY_VOCABULARY"]
