"""Loader nodes: the CoInteract DiT (Wan2.2-S2V base + CoInteract checkpoint) and finetunes stacked on it."""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..cointeract_core.model.attention import resolve_backend
from ..cointeract_core.toy.bundle import is_bundle, load_bundle
from ..cointeract_core.weights.checkpoint import load_dit, open_checkpoint, read_state_dict
from ..cointeract_core.weights.finetune import finetune_updates
from ..cointeract_core.weights.lora_delta import Update
from ..cointeract_core.weights.lora_formats import is_finetune, read_lora
from . import services
from .types import COINTERACT_MODEL

log = logging.getLogger(__name__)

__all__ = ["CoInteractModelLoader", "CoInteractLoRA", "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]

NONE = "none"
WEIGHT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
ATTENTION = ["auto", "sdpa", "xformers", "flash_attn"]
BASE_FOLDER = "diffusion_models"
FINETUNE_FOLDER = "loras"


def _choices(folder: str, none_first: bool = False) -> list[str]:
    names = services.model_file_list(folder)
    return [NONE, *names] if none_first else (names or [NONE])


class CoInteractModelLoader:
    CATEGORY = "CoInteract/loaders"
    DESCRIPTION = (
        "Loads the CoInteract video DiT: the Wan2.2-S2V-14B weights from models/diffusion_models (ComfyUI's single "
        "file, or any shard of the original sharded set) plus the CoInteract checkpoint from models/cointeract "
        "(its LoRA is merged at `lora_strength`; MoE and HOI weights are loaded). ComfyUI's model management "
        "moves it to the GPU when sampling and offloads it when memory is needed. A toy bundle (from `cointeract "
        "demo`) put in models/diffusion_models loads here too, as a whole model; its codec and encoders come from "
        "CoInteract Toy Bundle Loader."
    )
    RETURN_TYPES = (COINTERACT_MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The CoInteract DiT, for CoInteract LoRA and CoInteract Sampler.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "base_model": (_choices(BASE_FOLDER), {"tooltip": "Wan2.2-S2V-14B weights in models/diffusion_models: "
                               "wan2.2_s2v_14B_bf16.safetensors, or any one shard of the original set (its "
                               "index.json must sit beside it)."}),  # fmt: skip
                "cointeract_checkpoint": (_choices(services.COINTERACT_FOLDER, none_first=True), {"default": NONE,
                                          "tooltip": "The CoInteract checkpoint in models/cointeract "
                                          "(checkpoint.safetensors or checkpoint_pose.safetensors). 'none' loads "
                                          "plain Wan2.2-S2V (no MoE, no HOI)."}),  # fmt: skip
                "lora_strength": ("FLOAT", {"default": 1.0, "min": -2.0, "max": 2.0, "step": 0.05,
                                  "tooltip": "Strength of the CoInteract checkpoint's LoRA (1.0 = as trained)."}),
                "weight_dtype": (list(WEIGHT_DTYPES), {"default": "bf16", "tooltip": "Storage dtype of the "
                                 "weights: bf16 (official, 33 GB for 14B), fp16, or fp32 (tests, CPU)."}),
                "attention": (ATTENTION, {"default": "auto", "tooltip": "Attention kernel: auto picks flash_attn, then "
                              "xformers, then PyTorch SDPA, by what is installed; a named one must be installed."}),
            }
        }  # fmt: skip

    def load(
        self, base_model: str, cointeract_checkpoint: str, lora_strength: float, weight_dtype: str, attention: str
    ) -> tuple[Any]:
        if base_model == NONE:
            raise ValueError("no base model: put Wan2.2-S2V-14B in models/diffusion_models and pick it")
        backend = resolve_backend(attention)  # fails now, not at sampling, if the kernel is missing
        base = services.model_file_path(BASE_FOLDER, base_model)
        if is_bundle(base):
            return (self._load_bundle(base, cointeract_checkpoint, WEIGHT_DTYPES[weight_dtype], backend),)
        extra = None
        if cointeract_checkpoint != NONE:
            extra = services.model_file_path(services.COINTERACT_FOLDER, cointeract_checkpoint)
        dit = load_dit(base, extra, lora_strength, WEIGHT_DTYPES[weight_dtype], services.unet_offload_device())
        dit.attention_backend = backend
        log.info(
            "CoInteract: loaded %s%s (%s, attention %s)",
            base_model,
            f" + {extra}" if extra else "",
            weight_dtype,
            backend,
        )
        return (services.wrap_model(dit),)

    @staticmethod
    def _load_bundle(path: str, cointeract_checkpoint: str, dtype: torch.dtype, backend: str) -> Any:
        """A toy bundle is a whole CoInteract model (its parts are inside); no checkpoint goes on top."""
        if cointeract_checkpoint != NONE:
            raise ValueError(
                f"{path} is a toy bundle: it already holds the whole CoInteract model (MoE and HOI included), so no "
                f"CoInteract checkpoint goes on top of it; set cointeract_checkpoint to '{NONE}'"
            )
        dit = load_bundle(path, services.unet_offload_device(), dtype)[0]
        dit.attention_backend = backend
        log.info("CoInteract: loaded the toy bundle %s as the model (%s, attention %s)", path, dtype, backend)
        return services.wrap_model(dit)


class CoInteractLoRA:
    CATEGORY = "CoInteract/loaders"
    DESCRIPTION = (
        "Applies a LoRA from models/loras to a copy of the model, at `strength`. Takes Wan2.1 / Wan2.2 14B and "
        "Wan2.2-S2V LoRAs in any common layout (kohya / musubi-tuner, PEFT, diffusers, lightx2v with diff / diff_b / "
        "diff_m, LyCORIS LoHa / LoKr) and finetunes made by `cointeract train` (official CoInteract layout: their "
        "fully trained MoE / HOI parts replace the model's). Keys that fit no module of the model (e.g. an I2V "
        "LoRA's image layers) are listed in one warning; a LoRA none of whose keys fits is refused. The loaded "
        "weights are never changed, so other nodes using the same model are unaffected. Chain several to stack them."
    )
    RETURN_TYPES = (COINTERACT_MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with this finetune added (a patched copy).",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": (COINTERACT_MODEL, {"tooltip": "From CoInteract Model Loader (or another CoInteract LoRA: "
                          "chain several nodes to stack LoRAs, each at its own strength)."}),  # fmt: skip
                "lora_name": (_choices(FINETUNE_FOLDER), {"tooltip": "A LoRA in models/loras: Wan / Wan2.2-S2V "
                              "(kohya, PEFT, diffusers, lightx2v, LoHa, LoKr) or a finetune exported by "
                              "`cointeract train`."}),  # fmt: skip
                "strength": ("FLOAT", {"default": 1.0, "min": -2.0, "max": 2.0, "step": 0.05,
                             "tooltip": "LoRA strength (1.0 = as trained; 0 leaves the model as it is)."}),
            }
        }  # fmt: skip

    def apply(self, model: Any, lora_name: str, strength: float) -> tuple[Any]:
        if strength == 0:
            return (model,)
        path = services.model_file_path(FINETUNE_FOLDER, lora_name)
        dit = model.model
        params = {k: tuple(v.shape) for k, v in dit.named_parameters()}
        if not is_finetune(list(open_checkpoint(path, strip_prefix=False).entries)):
            patched = model.clone()
            count = services.add_update_patches(patched, read_lora(path, params, name=lora_name), strength)
            log.info("CoInteract: %s patches %d weights at strength %g", lora_name, count, strength)
            return (patched,)
        updates = finetune_updates(read_state_dict(path)[0], params, dit.cfg.moe is not None, name=lora_name)
        patched = model.clone()
        patches = {key: services.lora_patch(up, down) for key, (up, down) in updates.lora.items()}
        patched.add_patches(patches, strength)
        full = {key: Update(key, "set", {"set_weight": t}) for key, t in updates.full.items()}
        services.add_update_patches(patched, full, 1.0)  # parameters ComfyUI does not patch become object patches
        log.info("CoInteract: %s adds %d LoRA and %d full tensors", lora_name, len(updates.lora), len(updates.full))
        return (patched,)


NODE_CLASS_MAPPINGS = {"CoInteractModelLoader": CoInteractModelLoader, "CoInteractLoRA": CoInteractLoRA}
NODE_DISPLAY_NAME_MAPPINGS = {
    "CoInteractModelLoader": "CoInteract Model Loader",
    "CoInteractLoRA": "CoInteract LoRA",
}
