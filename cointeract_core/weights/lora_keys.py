"""LoRA file keys -> parameters of our model: prefixes, role suffixes, kohya underscore names, diffusers names.

A key is `<prefix><module><suffix>`. The prefix (`diffusion_model.`, `transformer.`, `lora_unet_`, ...) is dropped;
the suffix (`.lora_down.weight`, `.lora_A.default.weight`, `.alpha`, `.diff_b`, `.hada_w1_a`, ...) names the role
of the tensor, under the LyCORIS / kohya name ComfyUI's loader reads; the module is a Wan module name, a diffusers
Wan name (`attn1.to_q`; the table below, diffusers `convert_wan_transformer_to_diffusers`), or for kohya / LyCORIS
files an underscore name, looked up in a table built from the model's own parameter names (never split at
underscores: `self_attn` has one). Wan names land on our parameters, where the MoE wraps the base FFN:
`blocks.N.ffn.{0,2}` <-> `blocks.N.ffn.ffn_base.{0,2}` (both directions, like `lora._target`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "ModelNames",
    "split_key",
    "strip_prefix",
    "uses_diffusers_names",
    "from_diffusers",
    "to_diffusers",
    "wan_name",
    "ROLE_KIND",
]

DOTTED_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "base_model.model.", "pipe.dit.")
UNDERSCORE_PREFIXES = ("lora_unet__", "lora_unet_", "lycoris_", "lora_transformer_")

# role -> kind of update it belongs to; "alpha" / "dora_scale" modify a low-rank update, "unsupported" is refused
ROLE_KIND: dict[str, str] = {
    "lora_up.weight": "lora",
    "lora_down.weight": "lora",
    "lora_mid.weight": "lora",
    **{f"hada_{n}": "loha" for n in ("w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2")},
    **{f"lokr_{n}": "lokr" for n in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2")},
    "diff": "diff",
    "diff_b": "diff",
    "diff_m": "diff",
    "lora_B.bias": "diff",  # PEFT lora_bias: added to the layer's bias, scaled like the LoRA (§5)
    "set_weight": "set",
    "alpha": "modifier",
    "dora_scale": "modifier",
}
# file suffix -> role (PEFT lora_A / lora_B forms are matched by _PEFT first)
_SUFFIXES: dict[str, str] = {
    ".lora_down.weight": "lora_down.weight",
    ".lora_up.weight": "lora_up.weight",
    ".lora_mid.weight": "lora_mid.weight",
    "_lora.down.weight": "lora_down.weight",
    "_lora.up.weight": "lora_up.weight",
    ".lora.down.weight": "lora_down.weight",
    ".lora.up.weight": "lora_up.weight",
    ".lora_linear_layer.down.weight": "lora_down.weight",
    ".lora_linear_layer.up.weight": "lora_up.weight",
    ".alpha": "alpha",
    ".dora_scale": "dora_scale",
    ".diff": "diff",
    ".diff_b": "diff_b",
    ".diff_m": "diff_m",
    ".w_norm": "diff",
    ".b_norm": "diff_b",
    ".set_weight": "set_weight",
    **{f".hada_{n}": f"hada_{n}" for n in ("w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2")},
    **{f".lokr_{n}": f"lokr_{n}" for n in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2")},
    # recognised so that the refusal can name them; no update is built from these
    ".reshape_weight": "unsupported:reshape_weight (padded targets)",
    ".lora_magnitude_vector": "unsupported:PEFT DoRA (lora_magnitude_vector)",
    ".oft_blocks": "unsupported:OFT / BOFT (oft_blocks)",
    ".rescale": "unsupported:OFT / BOFT (rescale)",
    **{f".{n}.weight": "unsupported:GLoRA (a1 / a2 / b1 / b2)" for n in ("a1", "a2", "b1", "b2")},
}
_PEFT = re.compile(r"\.lora_([AB])(?:\.[A-Za-z_][\w-]*)?\.(weight|bias)$|\.lora_([AB])$")

# Wan <-> diffusers module names (research notes §1): inside blocks.N, and at the top level.
_BLOCK = {
    **{f"self_attn.{n}": f"attn1.to_{n}" for n in "qkv"},
    **{f"cross_attn.{n}": f"attn2.to_{n}" for n in "qkv"},
    "self_attn.o": "attn1.to_out.0",
    "cross_attn.o": "attn2.to_out.0",
    **{f"{w}.norm_{n}": f"{d}.norm_{n}" for w, d in (("self_attn", "attn1"), ("cross_attn", "attn2")) for n in "qk"},
    "cross_attn.k_img": "attn2.add_k_proj",
    "cross_attn.v_img": "attn2.add_v_proj",
    "cross_attn.norm_k_img": "attn2.norm_added_k",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
    "norm3": "norm2",  # the affine norm before cross-attention: the two names are swapped in diffusers
    "norm2": "norm3",
    "modulation": "scale_shift_table",
}
_TOP = {
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "img_emb.proj.0": "condition_embedder.image_embedder.norm1",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
    "img_emb.proj.4": "condition_embedder.image_embedder.norm2",
    "head.head": "proj_out",
    "head.modulation": "scale_shift_table",
}
_FROM_BLOCK, _FROM_TOP = {d: w for w, d in _BLOCK.items()}, {d: w for w, d in _TOP.items()}
_IN_BLOCK = re.compile(r"^(blocks\.\d+\.)(.+)$")
_DIFFUSERS_WORDS = re.compile(r"(^|[._])(attn1|attn2|condition_embedder|proj_out|scale_shift_table)([._]|$)|ffn[._]net")
_FFN = re.compile(r"^(blocks\.\d+\.ffn\.)(ffn_base\.)?([02])$")
_ROLE_ATTR = {"diff_b": ".bias", "lora_B.bias": ".bias", "diff_m": ".modulation"}


def strip_prefix(key: str) -> tuple[str, bool]:
    """(key without its prefix, whether the prefix was a kohya / LyCORIS underscore one)."""
    for prefix in UNDERSCORE_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :], True
    while prefix := next((p for p in DOTTED_PREFIXES if key.startswith(p)), None):
        key = key[len(prefix) :]
    return key, False


def split_key(key: str) -> tuple[str, str] | None:
    """(module, role) of an un-prefixed key, e.g. `blocks.0.self_attn.q.lora_A.weight` -> (`blocks.0.self_attn.q`,
    `lora_down.weight`); None when the key has no LoRA suffix (a plain model weight, for example)."""
    if m := _PEFT.search(key):
        side, what = m.group(1) or m.group(3), m.group(2) or "weight"
        role = {"Aweight": "lora_down.weight", "Bweight": "lora_up.weight", "Bbias": "lora_B.bias"}.get(side + what)
        return key[: m.start()], role or "unsupported:lora_A.bias"
    suffix = next((s for s in _SUFFIXES if key.endswith(s) and len(key) > len(s)), None)
    return (key[: -len(suffix)], _SUFFIXES[suffix]) if suffix else None


def uses_diffusers_names(modules: Iterable[str]) -> bool:
    """True when module names use the diffusers Wan vocabulary (attn1 / attn2 / ffn.net / condition_embedder ...)."""
    return any(_DIFFUSERS_WORDS.search(m) for m in modules)


def from_diffusers(module: str) -> str:
    """A diffusers Wan module name -> the Wan name (`blocks.0.attn1.to_out.0` -> `blocks.0.self_attn.o`)."""
    if m := _IN_BLOCK.match(module):
        return m.group(1) + _FROM_BLOCK.get(m.group(2), m.group(2))
    return _FROM_TOP.get(module, module)


def to_diffusers(module: str) -> str:
    """A Wan module name -> its diffusers name (unchanged where diffusers has none, e.g. S2V's audio_injector)."""
    if m := _IN_BLOCK.match(module):
        return m.group(1) + _BLOCK.get(m.group(2), m.group(2))
    return _TOP.get(module, module)


def wan_name(name: str) -> str:
    """Our parameter / module name -> the Wan name (`blocks.0.ffn.ffn_base.0.weight` -> `blocks.0.ffn.0.weight`)."""
    return name.replace(".ffn.ffn_base.", ".ffn.")


def _owner(param: str) -> str:
    """The module a parameter belongs to as LoRA files name it: `x.weight` / `x.bias` -> `x`, `x.modulation` -> `x`
    for a diff_m, else the parameter itself (a `.diff` of `blocks.0.modulation`)."""
    return param.rsplit(".", 1)[0] if param.endswith((".weight", ".bias")) else param


class ModelNames:
    """The model's parameters {key: shape} seen as LoRA targets: resolves (module, role) to a parameter key."""

    def __init__(self, params: Mapping[str, Sequence[int]]) -> None:
        self.shapes = {k: tuple(v) for k, v in params.items()}
        self._underscore: dict[str, str] = {}
        self._underscore_diffusers: dict[str, str] = {}
        for module in sorted({_owner(k) for k in self.shapes}):
            for name in (module, wan_name(module)):
                self._underscore.setdefault(name.replace(".", "_"), name)
                self._underscore_diffusers.setdefault(to_diffusers(wan_name(name)).replace(".", "_"), name)

    def target(self, module: str, role: str, underscore: bool = False, diffusers: bool = False) -> str | None:
        """The parameter key that `role` of file module `module` updates, or None when the model has none."""
        if underscore or "." not in module:
            table = self._underscore_diffusers if diffusers else self._underscore
            module = table.get(module, module if not underscore else "")
            if not module:
                return None
        elif diffusers:
            module = from_diffusers(module)
        attrs = (
            (_ROLE_ATTR[role],)
            if role in _ROLE_ATTR
            else (".weight", "")
            if role in ("diff", "set_weight")
            else (".weight",)
        )
        for name in _ffn_variants(module):
            for attr in attrs:
                if name + attr in self.shapes:
                    return name + attr
        return None


def _ffn_variants(module: str) -> tuple[str, ...]:
    """`blocks.N.ffn.0` and `blocks.N.ffn.ffn_base.0` stand for each other (the MoE wraps the base FFN)."""
    if not _FFN.match(module):
        return (module,)
    return module, _FFN.sub(r"\1ffn_base.\3", module), _FFN.sub(r"\1\3", module)
