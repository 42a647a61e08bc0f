"""LoRA files in every common layout -> `Update`s per parameter of our model: plan from headers, then read.

Layouts (research notes): kohya / musubi-tuner (`lora_unet_blocks_0_self_attn_q.lora_down.weight` + `.alpha`),
ComfyUI / ai-toolkit (`diffusion_model.blocks.0.self_attn.q.lora_down.weight` or `.lora_A.weight`), PEFT and
diffusers (`transformer.blocks.0.attn1.to_q.lora_A.weight`, alpha in the `lora_adapter_metadata` JSON), lightx2v
(`lora_up` / `lora_down` + full `.diff` / `.diff_b` / `.diff_m`), LyCORIS LoHa / LoKr (`hada_*` / `lokr_*`), and the
official CoInteract layout (`X.lora_A.default.weight`, MoE / HOI tensors: `finetune.finetune_updates`, strict).
Keys that fit no parameter (an I2V LoRA's `k_img` / `img_emb` on S2V) are listed in one warning and the rest
loads; a file none of whose keys fits is refused with what it looks like (LoRAError).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import cointeract_parts, describe_family
from .finetune import finetune_updates
from .lora_delta import Update, delta_shape, flat_shape
from .lora_keys import ROLE_KIND, ModelNames, split_key, strip_prefix, uses_diffusers_names
from .safetensors_io import PathLike, open_checkpoint

log = logging.getLogger(__name__)

__all__ = ["LoRAError", "LoRAPlan", "Group", "plan_lora", "build_updates", "read_lora", "lora_format", "is_finetune"]

LoRASource = PathLike | Mapping[str, torch.Tensor]
_MODIFIERS = ("alpha", "dora_scale")
_FOREIGN = (  # what a file none of whose keys fits looks like, by its key names (first match wins)
    (r"(^|[._])(lora_te\d?|text_encoders?(_2)?|te\d)[._]", "a text-encoder LoRA (lora_te / text_encoder keys)"),
    (
        r"(^|[._])(down_blocks|up_blocks|mid_block|input_blocks|output_blocks)[._]",
        "SDXL / SD1.5 keys (down_blocks / up_blocks)",
    ),
    (r"\.(img|txt)_attn_qkv|individual_token_refiner", "HunyuanVideo keys (double_blocks with img_attn_qkv)"),
    (r"(^|[._])(double_blocks|single_blocks|single_transformer_blocks)[._]", "Flux (or HunyuanVideo) keys"),
    (r"(^|[._])joint_blocks[._]", "SD3 keys (joint_blocks)"),
    (r"(^|[._])vace_blocks[._]", "Wan VACE keys (vace_blocks)"),
    (r"(^|[._])transformer_blocks[._]", "another DiT's keys (transformer_blocks: LTX-Video, CogVideoX, Qwen-Image)"),
    (r"(^|[._])(k_img|v_img|norm_k_img|img_emb|add_[kv]_proj)[._]", "Wan2.1 I2V image keys (k_img / v_img / img_emb)"),
)


class LoRAError(ValueError):
    """A LoRA file that cannot be applied to this model; the message says what the file looks like."""


@dataclass(frozen=True)
class Group:
    """The file keys {role: key} that update one parameter `target`, from file module `module`."""

    target: str
    module: str
    kind: str
    keys: dict[str, str]


@dataclass(frozen=True)
class LoRAPlan:
    """How a LoRA file's keys map onto a model (from headers only): groups per parameter and what does not fit."""

    name: str
    format: dict
    groups: dict[str, Group]
    unfit: tuple[str, ...]
    mismatched: tuple[str, ...]
    shapes: dict[str, tuple[int, ...]] = field(repr=False)
    metadata: dict[str, str] = field(repr=False)

    @property
    def fitting_keys(self) -> int:
        """How many file keys are used."""
        return sum(len(g.keys) for g in self.groups.values())

    def refusal(self) -> str:
        """Why nothing of the file fits this model, and what the file looks like."""
        return _refusal(self)

    def warning(self) -> str | None:
        """The one warning listing the keys that fit no parameter (or not its shape), or None."""
        if not (self.unfit or self.mismatched):
            return None
        parts = [f"{self.name}: {len(self.unfit) + len(self.mismatched)} of {len(self.shapes)} keys are ignored"]
        if self.unfit:
            more = f", ... ({len(self.unfit) - 5} more)" if len(self.unfit) > 5 else ""
            parts.append(f"{len(self.unfit)} fit no module of this model ({', '.join(self.unfit[:5])}{more})")
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} do not fit in shape ({'; '.join(self.mismatched[:3])})")
        return "; ".join(parts)


def is_finetune(keys: Sequence[str]) -> bool:
    """True for the official CoInteract layout with fully trained parts (MoE / HOI / cond_encoder tensors)."""
    parts = cointeract_parts([strip_prefix(k)[0] for k in keys])
    return parts["moe"] or parts["hoi"] or parts["pose"]


def plan_lora(
    shapes: Mapping[str, Sequence[int]],
    params: Mapping[str, Sequence[int]],
    name: str = "LoRA",
    metadata: Mapping[str, str] | None = None,
    refuse: bool = True,
) -> LoRAPlan:
    """Match a LoRA file's keys {key: shape} to the model's parameters {key: shape}; LoRAError if none fits
    (`refuse=False`: return the plan with no groups instead)."""
    shapes = {k: tuple(v) for k, v in shapes.items()}
    names, found, unfit = ModelNames(params), {}, []
    parsed = {k: (split_key(rest), underscore) for k in shapes for rest, underscore in [strip_prefix(k)]}
    diffusers = uses_diffusers_names(s[0] for s, _ in parsed.values() if s is not None)
    for key, (split, underscore) in parsed.items():
        module, role = split or ("", "")
        weight_role = "lora_down.weight" if role in _MODIFIERS else role
        target = names.target(module, weight_role, underscore, diffusers) if split else None
        if role.startswith("unsupported:") and target is not None:
            raise LoRAError(f"{name} uses {role.split(':', 1)[1]} (e.g. {key}), which CoInteract cannot apply")
        if target is None or role.startswith("unsupported:"):
            unfit.append(key)
            continue
        roles = found.setdefault(target, (module, {}))[1]
        if role in roles or found[target][0] != module:
            other = roles.get(role) or next(iter(roles.values()))
            raise LoRAError(f"{name}: {key} and {other} both update {target}; the file is malformed")
        roles[role] = key
    groups, mismatched = {}, []
    for target, (module, roles) in found.items():
        kind = _kind(name, module, roles)
        if kind is None:  # only an alpha / dora_scale: nothing to apply
            unfit.extend(roles.values())
            continue
        problem = _shape_problem(kind, roles, shapes, tuple(params[target]))
        if problem:
            mismatched.append(f"{module} {problem} vs {target} {list(params[target])}")
            continue
        groups[target] = Group(target, module, kind, roles)
    plan = LoRAPlan(name, lora_format(shapes), groups, tuple(unfit), tuple(mismatched), shapes, dict(metadata or {}))
    if not groups and refuse:
        raise LoRAError(plan.refusal())
    return plan


def _kind(name: str, module: str, roles: Mapping[str, str]) -> str | None:
    """The update kind of one parameter's roles; LoRAError when they mix kinds or lack a factor."""
    kinds = {ROLE_KIND[r] for r in roles} - {"modifier"}
    if not kinds:
        return None
    if len(kinds) > 1 or sum(ROLE_KIND[r] == "diff" for r in roles) > 1:
        raise LoRAError(f"{name}: {module} carries two kinds of update ({', '.join(sorted(roles))}); not applied")
    kind = kinds.pop()
    has = set(roles)
    need = {
        "lora": [{"lora_up.weight", "lora_down.weight"}],
        "loha": [{"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"}],
        "lokr": [{"lokr_w1"} if "lokr_w1" in has else {"lokr_w1_a", "lokr_w1_b"}]
        + [{"lokr_w2"} if "lokr_w2" in has else {"lokr_w2_a", "lokr_w2_b"}],
    }.get(kind, [])
    missing = sorted(set().union(*need) - has) if need else []
    if missing or ("hada_t1" in has) != ("hada_t2" in has) or ("dora_scale" in has and kind in ("diff", "set")):
        raise LoRAError(f"{name}: {module} has {', '.join(sorted(has))} but lacks {', '.join(missing) or 'a partner'}")
    return kind


def _canonical(role: str) -> str:
    return "diff" if ROLE_KIND.get(role) == "diff" else role


def _shape_problem(kind: str, roles: Mapping[str, str], shapes: Mapping, target: tuple[int, ...]) -> str | None:
    """None when the update fits the target's shape, else the update's shape as text."""
    factors = {_canonical(r): shapes[k] for r, k in roles.items() if r not in _MODIFIERS}
    if kind in ("diff", "set"):
        (shape,) = factors.values()
        return None if tuple(shape) == target else str(list(shape))
    try:
        rows, cols = delta_shape(kind, factors)
    except (IndexError, KeyError):
        return f"with factors {', '.join(f'{r} {list(s)}' for r, s in factors.items())}"
    return None if (rows, cols) == flat_shape(target) else f"[{rows}, {cols}]"


def build_updates(plan: LoRAPlan, read: Callable[[str], torch.Tensor]) -> dict[str, Update]:
    """The planned updates with their tensors (read by `read(file key)`) and scales (alpha / rank)."""
    peft = _peft_alpha(plan.metadata)
    scales = {g.target: _scale(g, plan, read, peft) for g in plan.groups.values() if g.kind != "diff"}
    out = {}
    for g in plan.groups.values():
        tensors = {_canonical(r): read(k) for r, k in g.keys.items() if r != "alpha"}
        scale = scales.get(g.target, 1.0)
        if "lora_B.bias" in g.keys:  # PEFT scales the bias like the rest of lora_B
            weight = next((w for w in plan.groups.values() if w.module == g.module and w.kind == "lora"), None)
            scale = 1.0 if weight is None else scales[weight.target]
        out[g.target] = Update(g.target, g.kind, tensors, scale)
    return out


def _scale(g: Group, plan: LoRAPlan, read: Callable[[str], torch.Tensor], peft: _PeftAlpha | None) -> float:
    """alpha / rank by ComfyUI's rules; a LoRA without alpha takes the PEFT metadata's, else 1."""
    shape = {r: plan.shapes[k] for r, k in g.keys.items()}
    alpha = float(read(g.keys["alpha"]).item()) if "alpha" in g.keys else None
    if g.kind == "lora":
        rank = shape["lora_down.weight"][0]
        if alpha is None and peft is not None:
            return peft.scale(g.module, rank)
        return 1.0 if alpha is None else alpha / rank
    if g.kind == "loha":
        return 1.0 if alpha is None else alpha / shape["hada_w1_b"][0]
    if g.kind == "lokr":
        factorised = [r for r in ("lokr_w2_b", "lokr_w1_b") if r in shape]
        return alpha / shape[factorised[0]][0] if alpha is not None and factorised else 1.0
    return 1.0


@dataclass(frozen=True)
class _PeftAlpha:
    """The LoraConfig of a PEFT / diffusers file (`lora_adapter_metadata`): lora_alpha, alpha_pattern, rsLoRA."""

    alpha: float
    patterns: dict[str, float]
    rslora: bool

    def scale(self, module: str, rank: int) -> float:
        alpha = next((a for p, a in self.patterns.items() if re.match(rf"(.*\.)?({p})$", module)), self.alpha)
        return alpha / math.sqrt(rank) if self.rslora else alpha / rank


def _peft_alpha(metadata: Mapping[str, str]) -> _PeftAlpha | None:
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return None
    try:
        cfg = json.loads(raw)
    except ValueError:
        log.warning("lora_adapter_metadata is not JSON; its alpha is ignored (scale 1)")
        return None
    if "lora_alpha" not in cfg:  # pipeline files: {"transformer.lora_alpha": ...}
        comps = sorted({k.split(".", 1)[0] for k in cfg if k.endswith(".lora_alpha")}, key=lambda c: c != "transformer")
        cfg = {k.split(".", 1)[1]: v for k, v in cfg.items() if comps and k.startswith(comps[0] + ".")}
    if "lora_alpha" not in cfg:
        return None
    patterns = {str(k): float(v) for k, v in (cfg.get("alpha_pattern") or {}).items()}
    return _PeftAlpha(float(cfg["lora_alpha"]), patterns, bool(cfg.get("use_rslora")))


def read_lora(
    source: LoRASource,
    params: Mapping[str, Sequence[int]],
    name: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> dict[str, Update]:
    """A LoRA file (or state dict) -> {parameter: Update}; one warning lists ignored keys, LoRAError if none fits."""
    if isinstance(source, Mapping):
        shapes, read, meta = {k: tuple(v.shape) for k, v in source.items()}, source.__getitem__, dict(metadata or {})
        name = name or "LoRA state dict"
    else:
        ckpt = open_checkpoint(source, strip_prefix=False)
        shapes, read, meta, name = ckpt.shapes(), ckpt.read, ckpt.metadata, name or Path(source).name
    if is_finetune(list(shapes)):
        return _finetune(shapes, read, params, name)
    plan = plan_lora(shapes, params, name, meta)
    if warning := plan.warning():
        log.warning(warning)
    return build_updates(plan, read)


def _finetune(shapes: Mapping, read: Callable, params: Mapping, name: str) -> dict[str, Update]:
    """The official CoInteract layout (LoRA + MoE / HOI): strict, as the model loader and trainer define it."""
    sd = {strip_prefix(k)[0]: read(k) for k in shapes}
    has_moe = any(".ffn.ffn_base." in k for k in params)
    try:
        found = finetune_updates(sd, params, has_moe, name=name)
    except ValueError as err:
        raise LoRAError(str(err)) from err
    out = {
        k: Update(k, "lora", {"lora_up.weight": up, "lora_down.weight": down}) for k, (up, down) in found.lora.items()
    }
    return out | {k: Update(k, "set", {"set_weight": t}) for k, t in found.full.items()}


def lora_format(shapes: Mapping[str, Sequence[int]], metadata: Mapping[str, str] | None = None) -> dict:
    """What layout a LoRA file uses, from its keys: {format, description, algorithms, ranks, modules}."""
    split = {k: (split_key(strip_prefix(k)[0]), strip_prefix(k)[1]) for k in shapes}
    roles = {k: s[1] for k, (s, _) in split.items() if s is not None}
    algos = sorted({ROLE_KIND.get(r, r.split(":")[-1]) for r in roles.values()} - {"modifier"})
    modules = {s[0] for s, _ in split.values() if s is not None}
    ranks = sorted({tuple(shapes[k])[0] for k, r in roles.items() if r in ("lora_down.weight", "hada_w1_b")})
    has = set(roles.values())
    peft = any(re.search(r"\.lora_[AB](\.|$)", k) for k in roles)
    alpha = (
        "alpha keys"
        if "alpha" in has
        else "lora_adapter_metadata"
        if (metadata or {}).get("lora_adapter_metadata")
        else "none (scale 1)"
    )
    if is_finetune(list(shapes)) or (
        peft and all(".default." in k for k in roles) and not any(strip_prefix(k)[0] != k for k in shapes)
    ):
        fmt, text = "official", "official CoInteract (PEFT lora_A / lora_B .default, alpha folded into B)"
    elif has & {r for r, k in ROLE_KIND.items() if k == "loha"}:
        fmt, text = "loha", "LyCORIS LoHa (hada_w1 / hada_w2)"
    elif has & {r for r, k in ROLE_KIND.items() if k == "lokr"}:
        fmt, text = "lokr", "LyCORIS LoKr (lokr_w1 / lokr_w2)"
    elif any(underscore for _, underscore in split.values()):
        fmt, text = "kohya", "kohya / musubi-tuner (lora_unet_ underscore names, lora_down / lora_up)"
    elif uses_diffusers_names(modules):
        fmt, text = "diffusers", "diffusers (attn1.to_q / ffn.net names, PEFT lora_A / lora_B)"
    elif has & {"diff", "diff_b", "diff_m"}:
        fmt, text = "lightx2v", "lightx2v-style (lora_up / lora_down plus full diff / diff_b / diff_m deltas)"
    elif peft:
        fmt, text = "peft", "PEFT (lora_A / lora_B under Wan module names)"
    elif "lora_down.weight" in has:
        fmt, text = "kohya", "kohya-style lora_down / lora_up under Wan module names (ComfyUI, ai-toolkit)"
    else:
        fmt, text = "unknown", "no LoRA keys"
    if fmt not in ("lightx2v", "official") and has & {"diff", "diff_b", "diff_m"}:
        text += ", plus full diff deltas"
    return {
        "format": fmt,
        "description": text,
        "algorithms": algos,
        "ranks": ranks,
        "modules": len(modules),
        "alpha": alpha,
    }


def _refusal(plan: LoRAPlan) -> str:
    """Why nothing of the file fits, and what the file looks like."""
    keys = list(plan.shapes)
    what = next((label for pattern, label in _FOREIGN if any(re.search(pattern, k) for k in plan.unfit)), None)
    try:
        family, label = describe_family({strip_prefix(k)[0]: s for k, s in plan.shapes.items()})
    except (ValueError, IndexError):  # patch_embedding.weight of an odd rank: not a model either
        family, label = "unknown", ""
    if plan.mismatched:
        what = f"a Wan LoRA for another model size ({plan.mismatched[0]})"
    elif family not in ("unknown", "cointeract"):
        return (
            f"{plan.name} is not a CoInteract finetune or LoRA but a full model ({label}); base models go in the "
            "model loader (--dit / CoInteract Model Loader)"
        )
    what = what or f"none of the known LoRA layouts (e.g. {keys[0] if keys else 'no keys at all'})"
    return (
        f"{plan.name} does not fit this model: none of its {len(keys)} keys matches a module. It looks like {what}. "
        "CoInteract takes Wan2.1 / Wan2.2 14B and Wan2.2-S2V LoRAs (kohya, PEFT, diffusers, lightx2v, LoHa, LoKr)"
    )
