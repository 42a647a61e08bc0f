"""PEFT LoRA on CoInteractDiT, as the official trainer injects it (reference §4.5).

Targets are PEFT suffix names: a module matches when its name equals the target or ends with `.target`. The
official targets `q, k, v, o, ffn.ffn_base.0, ffn.ffn_base.2` therefore hit every self- and cross-attention
projection, both base-FFN linears, AND the q/k/v/o of the audio injectors' cross-attentions
(`audio_injector.injector.J.{q,k,v,o}`) — official behaviour, kept so our checkpoints have the official keys.
Factors live at `X.lora_A.default.weight` [r, in] / `X.lora_B.default.weight` [out, r] (A kaiming, B zero) and
the forward adds (alpha/r)·B·A·x. peft is imported only inside these functions. `check_lora_targets` applies the
same suffix rule to a config before any model is built (`config_load` calls it).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping

import torch
from torch import nn

from ..cointeract_core.weights import lora as core_lora
from .config import OFFICIAL_LORA_TARGETS, LoRAConfig, check

log = logging.getLogger(__name__)

__all__ = [
    "ADAPTER",
    "inject_lora",
    "lora_modules",
    "lora_scaling",
    "load_lora_into_adapter",
    "base_param_name",
    "check_lora_targets",
]

ADAPTER = "default"  # the PEFT adapter name; it appears in the official keys (`lora_A.default.weight`)


def lora_scaling(cfg: LoRAConfig) -> float:
    """PEFT's scale on B·A: alpha / rank (the official run used alpha = rank, so 1)."""
    return cfg.alpha / cfg.rank


def inject_lora(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Wrap every targeted nn.Linear of `model` in a PEFT LoRA layer, in place; returns the wrapped module names."""
    from peft import LoraConfig, inject_adapter_in_model  # noqa: PLC0415 - heavy, training only

    if lora_modules(model):
        raise ValueError("the model already carries LoRA layers; build a fresh model before inject_lora")
    peft_cfg = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        target_modules=list(cfg.targets),
        lora_dropout=cfg.dropout,
        bias="none",
        init_lora_weights=True,  # A kaiming-uniform, B zero: the model starts equal to the base
    )
    try:
        inject_adapter_in_model(peft_cfg, model, adapter_name=ADAPTER)
    except ValueError as err:
        raise ValueError(f"lora.targets {list(cfg.targets)} do not fit this model: {err}") from err
    names = sorted(lora_modules(model))
    hit = {t: sum(_matches(n, t) for n in names) for t in cfg.targets}
    missing = [t for t, n in hit.items() if n == 0]
    if missing:
        raise ValueError(f"lora.targets {missing} match no nn.Linear of the model; module names look like {names[:3]}")
    injector = sum(n.startswith("audio_injector.") for n in names)
    log.info(
        "LoRA rank %d alpha %g on %d linears (%d in the audio injectors, as official)",
        cfg.rank,
        cfg.alpha,
        len(names),
        injector,
    )
    return names


def _matches(name: str, target: str) -> bool:
    """PEFT suffix matching: the module name equals the target or ends with `.target`."""
    return name == target or name.endswith("." + target)


def check_lora_targets(lora: LoRAConfig, preset: str) -> None:
    """Every lora.targets entry must name the end of some nn.Linear of the preset's DiT; ValueError otherwise."""
    names, choices = _linear_names(preset)
    bad = [t for t in lora.targets if not any(_matches(n, t) for n in names)]
    check(
        not bad,
        f"lora.targets {bad} match no linear layer of model.preset {preset!r}; a target is the end of a "
        f"layer name, e.g. one of {list(choices)} (official: {list(OFFICIAL_LORA_TARGETS)})",
    )


@functools.lru_cache(maxsize=8)
def _linear_names(preset: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(names of every nn.Linear of the preset's DiT, their short forms without block / injector indices)."""
    from ..cointeract_core.model.config import PRESETS  # noqa: PLC0415
    from ..cointeract_core.model.dit import CoInteractDiT  # noqa: PLC0415

    with torch.device("meta"):  # no memory, no weights
        model = CoInteractDiT(PRESETS[preset])
    names = tuple(n for n, m in model.named_modules() if isinstance(m, nn.Linear))

    def short(name: str) -> str:  # blocks.3.self_attn.q -> self_attn.q; injector.0.q -> q
        parts = name.split(".")
        cut = max((i for i, p in enumerate(parts[:-1]) if p.isdigit()), default=-1)
        return ".".join(parts[cut + 1 :])

    return names, tuple(sorted({short(n) for n in names}))


def lora_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Module name -> PEFT LoRA layer (anything holding `lora_A` / `lora_B` ModuleDicts)."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(getattr(m, "lora_A", None), nn.ModuleDict)
        and isinstance(getattr(m, "lora_B", None), nn.ModuleDict)
    }


def base_param_name(name: str) -> str:
    """`blocks.0.self_attn.q.base_layer.weight` -> `blocks.0.self_attn.q.weight` (the name without the wrapper)."""
    return name.replace(".base_layer.", ".")


@torch.no_grad()
def load_lora_into_adapter(model: nn.Module, lora_sd: Mapping[str, torch.Tensor], cfg: LoRAConfig) -> list[str]:
    """Start the adapter from official-layout factors (B holds the whole scale): A <- A, B <- B / (alpha/r).

    The file's rank must equal `lora.rank`; every LoRA layer of the model must get factors, and every factor a layer.
    """
    layers = lora_modules(model)
    pairs = core_lora.lora_pairs(list(lora_sd))
    by_layer = {
        core_lora.official_lora_key(f"{m}.lora_A.weight").removesuffix(".lora_A.default.weight"): ab
        for m, ab in pairs.items()
    }
    unknown = sorted(set(by_layer) - set(layers))
    missing = sorted(set(layers) - set(by_layer))
    if unknown or missing:
        raise ValueError(
            f"the CoInteract checkpoint's LoRA does not match lora.targets: {len(unknown)} factors without a layer "
            f"(e.g. {unknown[:2]}), {len(missing)} layers without factors (e.g. {missing[:2]})"
        )
    scale = lora_scaling(cfg)
    for name, (a_key, b_key) in by_layer.items():
        layer = layers[name]
        a, b = lora_sd[a_key], lora_sd[b_key]
        if a.shape[0] != cfg.rank:
            raise ValueError(f"{a_key} has rank {a.shape[0]} but lora.rank is {cfg.rank}; set lora.rank = {a.shape[0]}")
        layer.lora_A[ADAPTER].weight.copy_(a.reshape(layer.lora_A[ADAPTER].weight.shape))
        layer.lora_B[ADAPTER].weight.copy_(b.reshape(layer.lora_B[ADAPTER].weight.shape).float() / scale)
    return sorted(by_layer)
