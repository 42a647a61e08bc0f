"""Checkpoint key names and model families: the one place that knows what the official files hold.

Loads Wan2.2-S2V (original shards or ComfyUI's single file) plus the official CoInteract checkpoint (PEFT
LoRA merged into the base weights, MoE router / experts, HOI `depth_*` weights), strictly: the model is built
on the meta device from the files' shapes and each tensor is cast and assigned as it is read, so peak host
memory is about one copy of the weights. Model attribute names equal the on-disk names; the one mapping is
the base FFN `ffn.{0,2}` -> `ffn.ffn_base.{0,2}` once the MoE wraps it (official `enable_moe_ffn`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from ..model.config import DiTConfig, config_to_json, from_state_dict
from . import fp8 as fp8_lib
from . import lora as lora_lib
from .safetensors_io import (
    PREFIXES,
    Checkpoint,
    LazyStateDict,
    PathLike,
    iter_state_dict,
    open_checkpoint,
    read_state_dict,
    write_safetensors,
)

log = logging.getLogger(__name__)

BUNDLE_KEY = "cointeract_bundle"  # metadata key marking a toy bundle (toy/bundle.py), refused by load_dit

__all__ = [
    "LoadPlan",
    "Checkpoint",
    "open_checkpoint",
    "read_state_dict",
    "iter_state_dict",
    "write_safetensors",
    "detect_family",
    "describe_family",
    "cointeract_parts",
    "is_cointeract_key",
    "to_model_key",
    "plan_load",
    "load_dit",
    "save_dit",
    "save_cointeract_checkpoint",
]

Shapes = Mapping[str, torch.Tensor | Sequence[int]]
_MOE = re.compile(r"^blocks\.\d+\.ffn\.(router|hand_expert|face_expert|base_expert)\.")
_HOI = re.compile(r"^(depth_patch_embedding|depth_head|depth_cond_mask)\.|^blocks\.\d+\.depth_modulation$")
_FFN = re.compile(r"^(blocks\.\d+\.ffn\.)(ffn_base\.)?([02]\.)")


# ---------------------------------------------------------------------------------------------- families


def _shape_of(value: torch.Tensor | Sequence[int]) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def is_cointeract_key(key: str) -> bool:
    """True for keys the official CoInteract file may hold: LoRA, MoE, HOI, and the pose `cond_encoder`."""
    return lora_lib.is_lora_key(key) or bool(_MOE.match(key) or _HOI.match(key)) or key.startswith("cond_encoder.")


def cointeract_parts(keys: Sequence[str]) -> dict[str, bool]:
    """Which CoInteract parts a key set carries: LoRA, MoE, HOI, pose (`cond_encoder`)."""
    return {
        "lora": any(lora_lib.is_lora_key(k) for k in keys),
        "moe": any(_MOE.match(k) for k in keys),
        "hoi": any(_HOI.match(k) for k in keys),
        "pose": any(k.startswith("cond_encoder.") for k in keys),
    }


def describe_family(shapes: Shapes) -> tuple[str, str]:
    """(family, what it looks like and why), e.g. ("wan_i2v", "Wan2.1 I2V (has img_emb.*)"), from keys and shapes."""
    keys = set(shapes)
    if keys and all(is_cointeract_key(k) for k in keys):
        return "cointeract", "a CoInteract add-on checkpoint (only LoRA / MoE / HOI / cond_encoder keys)"
    if "patch_embedding.weight" not in keys or "head.modulation" not in keys:
        return "unknown", "not a Wan DiT (no patch_embedding.weight / head.modulation)"
    markers = [  # ComfyUI's model_detection order
        ("wan_vace", "vace_patch_embedding.weight", "Wan VACE (has vace_patch_embedding.*)"),
        ("wan_camera", "control_adapter.conv.weight", "Wan Fun-Camera (has control_adapter.*)"),
        ("wan22_s2v", "casual_audio_encoder.encoder.final_linear.weight", "Wan2.2-S2V (has casual_audio_encoder.*)"),
        ("wan_humo", "audio_proj.audio_proj_glob_1.layer.bias", "Wan HuMo (has audio_proj.*)"),
        ("wan_animate", "face_adapter.fuser_blocks.0.k_norm.weight", "Wan2.2 Animate (has face_adapter.*)"),
        ("wan_animate", "pose_patch_embedding.weight", "Wan2.2 Animate (has pose_patch_embedding.*)"),
    ]
    for family, key, label in markers:
        if key in keys:
            return family, label
    dim, in_dim = _shape_of(shapes["patch_embedding.weight"])[:2]
    if any(k.startswith("img_emb.") for k in keys):
        return "wan_i2v", "Wan2.1 I2V (has img_emb.*)"
    if in_dim == 48 or dim == 3072:
        return "wan_ti2v", f"Wan2.2 TI2V-5B (dim {dim}, {in_dim} latent channels)"
    if in_dim == 36:
        return "wan_i2v", "Wan2.2 I2V (patch_embedding takes 36 channels: noise + image latents + mask)"
    return "wan_t2v", "Wan2.1/2.2 T2V (no audio, image or control keys)"


def detect_family(shapes: Shapes) -> str:
    """'wan22_s2v', 'cointeract', 'wan_t2v', 'wan_i2v', 'wan_ti2v', 'wan_vace', 'wan_animate', ... or 'unknown'."""
    return describe_family(shapes)[0]


# ---------------------------------------------------------------------------------------------- loading


def to_model_key(key: str, has_moe: bool) -> str:
    """Base FFN keys read `ffn.ffn_base.{0,2}` once the MoE wraps the FFN (official `enable_moe_ffn`)."""
    m = _FFN.match(key)
    if m is None:
        return key
    return m.group(1) + ("ffn_base." if has_moe else "") + m.group(3) + key[m.end() :]


@dataclass
class LoadPlan:
    """What `load_dit` will read: config, model key -> (checkpoint, file key), LoRA pairs, and problems."""

    cfg: DiTConfig
    base: Checkpoint
    extra: Checkpoint | None
    sources: dict[str, tuple[Checkpoint, str]]
    lora_keys: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    lora_error: str | None = None
    fp8_scales: dict[str, torch.Tensor] = field(default_factory=dict)  # ComfyUI scaled_fp8: base weight key -> scale

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched or self.lora_error)

    def problems(self) -> list[str]:
        out = [
            _listing(f"{len(v)} {what}", v)
            for what, v in (
                ("missing keys (the model has them, the files do not)", self.missing),
                ("unexpected keys (in the files, not in the model)", self.unexpected),
                ("shape mismatches", self.mismatched),
            )
            if v
        ]
        return out + ([self.lora_error] if self.lora_error else [])


def _listing(title: str, items: Sequence[str], limit: int = 10) -> str:
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return f"{title}: {', '.join(items[:limit])}{more}"


def _check_families(base: Checkpoint, extra: Checkpoint | None) -> None:
    for ckpt in (base, extra):
        if ckpt is not None and BUNDLE_KEY in ckpt.metadata:
            raise ValueError(
                f"{ckpt.name} is a toy bundle (from `cointeract demo`): the whole toy model with its codec and "
                "encoders. Load it alone: `cointeract generate --bundle FILE`, `toy.bundle.load_bundle`, or in "
                "ComfyUI the CoInteract Toy Bundle Loader (or CoInteract Model Loader with no CoInteract checkpoint)"
            )
    family, label = describe_family(base.shapes())
    if family == "cointeract":
        raise ValueError(
            f"{base.name} is {label}; pass it as the CoInteract checkpoint and give the "
            "Wan2.2-S2V-14B weights as the base"
        )
    if family != "wan22_s2v":
        raise ValueError(
            f"expected a Wan2.2-S2V checkpoint; {base.name} looks like {label}. "
            "Use Wan2.2-S2V-14B (the original shards or ComfyUI's wan2.2_s2v_14B_bf16.safetensors)"
        )
    if extra is not None and detect_family(extra.shapes()) != "cointeract":
        _, label = describe_family(extra.shapes())
        raise ValueError(
            f"expected a CoInteract checkpoint (LoRA / MoE / HOI keys); {extra.name} looks like "
            f"{label}. Pass base weights as the base, the CoInteract file second"
        )


def _fit_config(cfg: DiTConfig | None, inferred: DiTConfig) -> DiTConfig:
    """An explicit config keeps its options, but whether MoE / HOI exist is decided by the files' keys."""
    if cfg is None:
        return inferred
    for part in ("moe", "hoi"):
        if getattr(cfg, part) is not None and getattr(inferred, part) is None:
            log.warning("the config asks for %s but the checkpoints have no %s weights; building without", part, part)
    moe = (cfg.moe or inferred.moe) if inferred.moe else None
    hoi = (cfg.hoi or inferred.hoi) if inferred.hoi else None
    return replace(cfg, moe=moe, hoi=hoi)


def _build_meta_model(cfg: DiTConfig) -> nn.Module:
    from ..model.dit import CoInteractDiT

    with torch.device("meta"):
        return CoInteractDiT(cfg)


def plan_load(
    base_paths: PathLike | Sequence[PathLike], cointeract_path: PathLike | None = None, cfg: DiTConfig | None = None
) -> tuple[LoadPlan, nn.Module]:
    """Read headers, infer the config, build the meta model and check every key and shape (no weights read)."""
    base = open_checkpoint(base_paths)
    base, fp8_scales = fp8_lib.split_scaled_fp8(base)  # fp8 hook: ComfyUI marker + *.scale_weight keys (fp8.py)
    extra = open_checkpoint(cointeract_path) if cointeract_path is not None else None
    _check_families(base, extra)
    full_extra = {k: e for k, e in (extra.entries.items() if extra else ()) if not lora_lib.is_lora_key(k)}
    shapes = {**base.shapes(), **{k: e.shape for k, e in full_extra.items()}}
    metadata = {**base.metadata, **(extra.metadata if extra else {})}
    try:
        inferred = from_state_dict(shapes, metadata, hint=cfg)
    except (ValueError, TypeError, KeyError) as err:
        what = "the cfg passed does not fit it" if cfg is not None else "pass cfg=DiTConfig(...)"
        raise ValueError(f"{base.name}: cannot infer the model config ({err}); {what}") from err
    cfg = _fit_config(cfg, inferred)
    model = _build_meta_model(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    sources = {to_model_key(k, cfg.moe is not None): (base, k) for k in base.entries}
    replaced = [k for k in full_extra if to_model_key(k, cfg.moe is not None) in sources]
    if replaced:
        log.info("%s replaces %d base tensors, e.g. %s", extra.name, len(replaced), replaced[0])
    sources.update({to_model_key(k, cfg.moe is not None): (extra, k) for k in full_extra})
    plan = LoadPlan(cfg, base, extra, sources, fp8_scales=fp8_scales)
    plan.missing = sorted(set(expected) - set(sources))
    plan.unexpected = sorted(f"{k} ({src.name})" for k, (src, _) in sources.items() if k not in expected)
    plan.mismatched = sorted(
        f"{k}: file {list(src.entries[fk].shape)} vs model {list(expected[k])}"
        for k, (src, fk) in sources.items()
        if k in expected and src.entries[fk].shape != expected[k]
    )
    if extra is not None:
        plan.lora_keys = [k for k in extra.entries if lora_lib.is_lora_key(k)]
        try:
            lora_lib.match_lora({k: extra.entries[k].shape for k in plan.lora_keys}, expected)
        except ValueError as err:
            plan.lora_error = f"{extra.name}: {err}"
    return plan, model


def _assign(model: nn.Module, key: str, tensor: torch.Tensor) -> None:
    """Replace a (meta) parameter by `tensor` without copying it."""
    owner, _, name = key.rpartition(".")
    module = model.get_submodule(owner)
    old = module._parameters[name]
    module._parameters[name] = nn.Parameter(tensor, requires_grad=old.requires_grad)


def load_dit(
    base_paths: PathLike | Sequence[PathLike],
    cointeract_path: PathLike | None = None,
    lora_strength: float = 1.0,
    dtype: torch.dtype | None = torch.bfloat16,
    device: torch.device | str = "cpu",
    cfg: DiTConfig | None = None,
) -> nn.Module:
    """Build the DiT from Wan2.2-S2V weights (+ a CoInteract checkpoint: LoRA merged, MoE/HOI loaded), strictly.

    The config comes from the files' shapes and metadata (`cfg` overrides what shapes cannot tell).
    Peak host memory is about one copy of the weights in `dtype` (None keeps the stored dtypes).
    """
    plan, model = plan_load(base_paths, cointeract_path, cfg)
    if not plan.ok:
        raise ValueError(
            f"cannot load {plan.base.name}"
            + (f" + {plan.extra.name}" if plan.extra else "")
            + ":\n  "
            + "\n  ".join(plan.problems())
        )
    by_ckpt: dict[int, list[tuple[str, str]]] = {}
    for model_key, (ckpt, file_key) in plan.sources.items():
        by_ckpt.setdefault(id(ckpt), []).append((file_key, model_key))
    for ckpt in [c for c in (plan.base, plan.extra) if c is not None and id(c) in by_ckpt]:
        to_model = dict(by_ckpt[id(ckpt)])
        for file_key, tensor in ckpt.iter(list(to_model), dtype=dtype, device=device):
            if ckpt is plan.base and file_key in plan.fp8_scales:  # fp8 hook: W = w·scale as ComfyUI computes it
                tensor = fp8_lib.dequantize(tensor, plan.fp8_scales[file_key], dtype)
            _assign(model, to_model[file_key], tensor)
    if plan.lora_keys and lora_strength != 0:
        merged = lora_lib.merge_lora(model, LazyStateDict(plan.extra, plan.lora_keys), lora_strength)
        log.info("merged %d LoRA updates at strength %g", len(merged), lora_strength)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(_listing(f"{len(left)} tensors were not materialised", left))
    return model.eval()


def save_dit(model: nn.Module, path: PathLike, metadata: Mapping[str, str] | None = None) -> None:
    """The full model under the official key names, with its config as `cointeract_config` metadata."""
    if any(isinstance(m, lora_lib.LoRALinear) for m in model.modules()):
        raise ValueError("the model carries unmerged LoRA layers; merge_lora or remove_lora_unmerged first")
    meta = {"format": "pt", "cointeract_config": config_to_json(model.cfg), **(metadata or {})}
    write_safetensors(path, model.state_dict(), meta)


def save_cointeract_checkpoint(
    tensors: Mapping[str, torch.Tensor], path: PathLike, metadata: Mapping[str, str] | None = None
) -> None:
    """LoRA / MoE / HOI (/ cond_encoder) tensors in the official CoInteract layout (`X.lora_A.default.weight`)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        key = next((key[len(p) :] for p in PREFIXES if key.startswith(p)), key)
        key = lora_lib.official_lora_key(key) if lora_lib.is_lora_key(key) else key
        if not is_cointeract_key(key):
            raise ValueError(
                f"'{key}' is not a CoInteract key (LoRA, MoE, HOI, cond_encoder); base weights stay "
                "in the Wan2.2-S2V files"
            )
        if key in out:
            raise ValueError(f"two tensors map to '{key}'")
        out[key] = tensor
    write_safetensors(path, out, {"format": "pt", **(metadata or {})})
