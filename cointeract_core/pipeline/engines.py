"""The models `cointeract generate` / `batch` run: the DiT and the three encoders, loaded from local files or a toy
bundle, with any --lora files merged in."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import torch

from .cli_options import DTYPES

__all__ = ["Engines", "load_engines"]


@dataclass
class Engines:
    """The loaded models: DiT plus the VideoVAE / TextEncoder / AudioEncoder protocol objects."""

    model: Any
    vae: Any
    text: Any
    audio: Any
    loras: tuple[tuple[str, float], ...] = ()  # (file, strength) merged into the model, for the sidecar


def load_engines(args: argparse.Namespace) -> Engines:
    """Load the DiT (+ CoInteract checkpoint) and the three encoders from local files, or a toy bundle."""
    if getattr(args, "bundle", None):
        from ..model.attention import resolve_backend
        from ..toy.bundle import load_bundle

        model, codec, text, audio = load_bundle(args.bundle, args.device, torch.float32)
        model.attention_backend = resolve_backend(args.attention)
        return Engines(model, codec, text, audio, _apply_loras(model, args.lora))
    from ..encoders import UMT5TextEncoder, WanVAE, Wav2Vec2Features
    from ..model.attention import resolve_backend
    from ..weights.checkpoint import load_dit

    model = load_dit(args.dit, args.cointeract, args.lora_strength, DTYPES[args.dtype], args.device)
    model.attention_backend = resolve_backend(args.attention)
    loras = _apply_loras(model, args.lora)
    vae = WanVAE.from_file(args.vae, device=args.device)
    text = UMT5TextEncoder.from_file(args.text_encoder, args.tokenizer, device=args.device)
    audio = Wav2Vec2Features.from_file(args.audio_encoder, device=args.device)
    return Engines(model, vae, text, audio, loras)


def _apply_loras(model: torch.nn.Module, loras: list[tuple[str, float]]) -> tuple[tuple[str, float], ...]:
    """Merge the --lora files into the freshly loaded DiT (the files are only read); LoRAError if one does not fit."""
    if loras:
        from ..weights.lora_stack import apply_loras

        apply_loras(model, loras)
    return tuple(loras)
