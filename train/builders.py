"""What a run trains on: the DiT (Wan2.2-S2V base files + fresh or loaded CoInteract parts, or a random preset)
and the dataset (the latent cache, or generated samples).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Sequence

import torch
from torch import nn

from ..cointeract_core.model.config import PRESETS, DiTConfig, from_state_dict
from ..cointeract_core.model.dit import CoInteractDiT
from ..cointeract_core.model.init import init_cointeract_parts
from ..cointeract_core.weights import lora as core_lora
from ..cointeract_core.weights.checkpoint import detect_family, is_cointeract_key, open_checkpoint, to_model_key
from .config import DataConfig, LoRAConfig, ModelConfig
from .lora_peft import load_lora_into_adapter
from .sample import TrainSample
from .synthetic import random_base_init, synthetic_dataset

log = logging.getLogger(__name__)

__all__ = ["DTYPES", "build_model", "load_start_checkpoint", "build_dataset", "DATA_SOURCES"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# data.kind -> (module of this package, callable(path) -> a sequence of TrainSample)
DATA_SOURCES = {"cache": ("cache", "CachedDataset")}


def _preset(name: str) -> DiTConfig:
    if name not in PRESETS:
        raise ValueError(f"model.preset = {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def build_model(cfg: ModelConfig) -> CoInteractDiT:
    """The DiT before LoRA: base weights from `cfg.base` (CoInteract parts initialised officially), or random.

    Every random init draws from `cfg.init_seed` (the caller's RNG state is left untouched).
    """
    preset = _preset(cfg.preset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        if not cfg.base:
            log.info("model: random init of preset %r (seed %d); no base weights given", cfg.preset, cfg.init_seed)
            return random_base_init(CoInteractDiT(preset, cfg.attention_backend), cfg.init_seed)
        return _model_from_base(cfg, preset)


def _model_from_base(cfg: ModelConfig, preset: DiTConfig) -> CoInteractDiT:
    """Wan2.2-S2V weights read into a model with the preset's MoE / HOI parts, which get the official init."""
    ckpt = open_checkpoint(list(cfg.base))
    family = detect_family(ckpt.shapes())
    if family != "wan22_s2v":
        raise ValueError(f"model.base must be Wan2.2-S2V weights; {ckpt.name} looks like '{family}'")
    base_cfg = dataclasses.replace(from_state_dict(ckpt.shapes(), ckpt.metadata), moe=preset.moe, hoi=preset.hoi)
    dtype = DTYPES[cfg.base_dtype]
    previous = torch.get_default_dtype()
    try:  # built on the meta device in the base dtype, then allocated once (no fp32 copy of 14B weights)
        torch.set_default_dtype(dtype)
        with torch.device("meta"):
            model = CoInteractDiT(base_cfg, cfg.attention_backend)
    finally:
        torch.set_default_dtype(previous)
    model = model.to_empty(device="cpu")
    wanted = {to_model_key(k, base_cfg.moe is not None): k for k in ckpt.entries if _is_base_key(k)}
    _check_keys(model, set(wanted), ckpt.name)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for file_key, tensor in ckpt.iter(list(wanted.values()), dtype=dtype):
            params[to_model_key(file_key, base_cfg.moe is not None)].copy_(tensor)
        init_cointeract_parts(model)
    return model


def _is_base_key(key: str) -> bool:
    """Wan2.2-S2V weights (the pose `cond_encoder` included); not LoRA / MoE / HOI."""
    return not is_cointeract_key(key) or key.startswith("cond_encoder.")


def _check_keys(model: nn.Module, found: set[str], name: str) -> None:
    """Every base parameter must come from the file; the CoInteract parts (MoE, HOI) are initialised."""
    base = {k for k in model.state_dict() if _is_base_key(k)}
    missing, unexpected = sorted(base - found), sorted(found - set(model.state_dict()))
    if missing or unexpected:
        raise ValueError(f"{name} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


@torch.no_grad()
def load_start_checkpoint(model: nn.Module, path: str, lora: LoRAConfig) -> None:
    """Start from a CoInteract checkpoint: LoRA factors into the adapter, MoE / HOI / pose weights loaded in full.

    HOI weights absent from the file keep their official init (the released checkpoint may not carry them).
    """
    ckpt = open_checkpoint(path)
    lora_keys = [k for k in ckpt.entries if core_lora.is_lora_key(k)]
    full_keys = [k for k in ckpt.entries if k not in lora_keys]
    params = {k.replace(".base_layer.", "."): p for k, p in model.named_parameters()}
    unknown = [k for k in full_keys if k not in params]
    if unknown:
        raise ValueError(f"{ckpt.name}: {len(unknown)} tensors are not parameters of the model, e.g. {unknown[:3]}")
    for key, tensor in ckpt.iter(full_keys):
        if tuple(tensor.shape) != tuple(params[key].shape):
            raise ValueError(f"{ckpt.name}: {key} is {list(tensor.shape)}, the model has {list(params[key].shape)}")
        params[key].copy_(tensor)
    if lora_keys:
        load_lora_into_adapter(model, dict(ckpt.iter(lora_keys)), lora)
    log.info("started from %s: %d LoRA factors, %d full tensors", ckpt.name, len(lora_keys), len(full_keys))


def build_dataset(cfg: DataConfig, dit_cfg: DiTConfig) -> Sequence[TrainSample]:
    """A sequence of TrainSample (len + getitem) for `data.kind`."""
    if cfg.kind == "synthetic":
        return synthetic_dataset(dit_cfg, cfg.synthetic)
    module_name, attr = DATA_SOURCES[cfg.kind]
    module = importlib.import_module(f"{__package__}.{module_name}")
    factory = getattr(module, attr, None)
    if factory is None:
        raise ValueError(f"data.kind = {cfg.kind!r} needs {module.__name__}.{attr}, which does not exist")
    dataset = factory(cfg.path)
    if len(dataset) == 0:
        raise ValueError(f"the dataset at {cfg.path} has no samples")
    if cfg.kind == "cache":
        module.check_model_fit(dataset.config, dit_cfg)
    return dataset
