"""CoInteract core: the DiT, its weights, the sampler and the pipeline in plain torch (no comfy, no accelerate).

Subpackages, one concept each (ARCHITECTURE.md has the data flow):
  model/     the DiT: config, layout, RoPE, visibility, attention, MoE, audio, motion, blocks, `dit.CoInteractDiT`
  weights/   files: safetensors I/O, checkpoint key mapping + strict loading, fp8 storage, LoRA, finetunes, inspect
  sampling/  sigma schedules and solvers (flow-matching Euler as the official code, and the fast path)
  pipeline/  inputs -> Conditioning -> clips -> frames: build, checks, clip chaining, `cointeract generate`
  media/     images, audio, video through Pillow / PyAV, loudness, the official preprocessing
  runtime/   where the weights live while sampling: block swap, memory plan, torch.compile
  encoders/  umT5, wav2vec2, Wan VAE from transformers / diffusers (lazy imports)
  toy/       the toy world's codec, text and audio encoders and bundle

The short names below are imported lazily (``from comfyui_cointeract.cointeract_core import load_dit``), so
loading one part never pulls in the rest.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# short name -> (submodule, attribute); None as attribute: the submodule itself
_PUBLIC: dict[str, tuple[str, str | None]] = {
    "DiTConfig": ("model.config", "DiTConfig"),
    "MoEConfig": ("model.config", "MoEConfig"),
    "HOIConfig": ("model.config", "HOIConfig"),
    "PRESETS": ("model.config", "PRESETS"),
    "CoInteractDiT": ("model.dit", "CoInteractDiT"),
    "load_dit": ("weights.checkpoint", "load_dit"),
    "save_dit": ("weights.checkpoint", "save_dit"),
    "load_dit_fp8": ("weights.fp8_load", "load_dit_fp8"),
    "merge_lora": ("weights.lora", "merge_lora"),
    "apply_loras": ("weights.lora_stack", "apply_loras"),
    "SamplerConfig": ("sampling.sampler", "SamplerConfig"),
    "Conditioning": ("pipeline.conditioning", "Conditioning"),
    "VideoOptions": ("pipeline.clips", "VideoOptions"),
    "GenerationResult": ("pipeline.clips", "GenerationResult"),
    "generate": ("pipeline.clips", "generate"),
    "InputOptions": ("pipeline.build", "InputOptions"),
    "build_conditioning": ("pipeline.build", "build_conditioning"),
    "load_image": ("media", "load_image"),
    "load_audio": ("media", "load_audio"),
    "write_video": ("media", "write_video"),
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    """Import a short public name on first use."""
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _PUBLIC[name]
    value = importlib.import_module(f".{module}", __name__)
    return value if attr is None else getattr(value, attr)
