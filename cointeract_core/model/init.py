"""Weight initialisation: Wan's from-scratch init and the official init of the CoInteract parts on a trained base."""

from __future__ import annotations

import math

import torch
from torch import nn

from .dit import CoInteractDiT
from .moe import MoEFFN

__all__ = ["init_wan_weights", "init_cointeract_parts", "init_random"]


@torch.no_grad()
def init_wan_weights(model: CoInteractDiT) -> None:
    """Wan2.2-S2V training init (zero_init=True): xavier linears, zero biases, zeroed residual paths."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    for conv in (model.patch_embedding, model.cond_encoder):
        if conv is not None:
            nn.init.xavier_uniform_(conv.weight.flatten(1))
    for seq in (model.text_embedding, model.time_embedding):
        for layer in seq:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.02)
    nn.init.zeros_(model.head.head.weight)  # the head starts by predicting zero velocity
    nn.init.zeros_(model.trainable_cond_mask.weight)  # token types start indistinguishable
    if model.cond_encoder is not None:  # pose starts as a no-op
        nn.init.zeros_(model.cond_encoder.weight)
        nn.init.zeros_(model.cond_encoder.bias)
    for attn, ada in zip(model.audio_injector.injector, model.audio_injector.injector_adain_layers):
        nn.init.zeros_(attn.o.weight)  # audio injection starts as a no-op
        nn.init.zeros_(attn.o.bias)
        nn.init.zeros_(ada.linear.weight)
        nn.init.zeros_(ada.linear.bias)
    model.casual_audio_encoder.weights.fill_(0.01)
    nn.init.zeros_(model.casual_audio_encoder.encoder.padding_tokens)
    init_cointeract_parts(model)


@torch.no_grad()
def init_cointeract_parts(model: CoInteractDiT) -> None:
    """Official init of the parts CoInteract adds, so a trained Wan base keeps its output exactly.

    Experts: fc1 kaiming-uniform(a=√5), bias 0; fc2 weight and bias 0 (experts start at zero). Router: PyTorch
    default. HOI: patch embedding, head and every block's modulation copied from the RGB stream; type embedding 0.
    """
    for block in model.blocks:
        if isinstance(block.ffn, MoEFFN):
            for name in block.ffn.cfg.expert_names:
                expert = block.ffn.expert(name)
                nn.init.kaiming_uniform_(expert.fc1.weight, a=math.sqrt(5))
                nn.init.zeros_(expert.fc1.bias)
                nn.init.zeros_(expert.fc2.weight)
                nn.init.zeros_(expert.fc2.bias)
            for layer in block.ffn.router:
                if hasattr(layer, "reset_parameters"):
                    layer.reset_parameters()
        if model.cfg.hoi:
            block.depth_modulation.copy_(block.modulation)
    if model.cfg.hoi:
        model.depth_patch_embedding.load_state_dict(model.patch_embedding.state_dict())
        model.depth_head.load_state_dict(model.head.state_dict())
        nn.init.zeros_(model.depth_cond_mask.weight)


@torch.no_grad()
def init_random(model: nn.Module, seed: int = 1234) -> nn.Module:
    """Every parameter random, zero-initialised paths included (the recipe of the reference fixtures).

    Sorted keys, one randn per key from a seeded generator, then: `*modulation` ×dim^-0.5; audio layer weights
    0.5+0.5r; padding token and type embeddings 0.5r; norm weights 1+0.1r; other 1-D 0.05r; ≥2-D r/√fan_in.
    """
    gen = torch.Generator().manual_seed(seed)
    dim = getattr(getattr(model, "cfg", None), "dim", 64)
    for name, p in sorted(model.named_parameters()):
        r = torch.randn(p.shape, generator=gen)
        if name.endswith("modulation"):
            r = r * dim**-0.5
        elif name == "casual_audio_encoder.weights":
            r = 0.5 + 0.5 * r
        elif name.endswith(("padding_tokens", "cond_mask.weight")):
            r = 0.5 * r
        elif "norm" in name and p.ndim == 1:
            r = 1 + 0.1 * r
        elif p.ndim == 1:
            r = 0.05 * r
        else:
            r = r / (p[0].numel() ** 0.5)
        p.copy_(r)
    return model
