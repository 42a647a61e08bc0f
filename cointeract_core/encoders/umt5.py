"""The umT5-XXL prompt encoder behind the `TextEncoder` protocol, on transformers' `UMT5EncoderModel`.

Weights, from local paths only:
- a transformers folder (config.json + model.safetensors / pytorch_model.bin, sharded or not; a full
  encoder-decoder umT5 loses its decoder);
- ComfyUI's `umt5_xxl_fp16.safetensors` / `umt5_xxl_fp8_e4m3fn_scaled.safetensors`: transformers key names
  without prefix (comfy/text_encoders/t5.py), plus `spiece_model` (the SentencePiece tokenizer as a uint8
  tensor, which comfy/sd.py hands to the tokenizer for CLIPType.WAN) and, for scaled fp8, a `scaled_fp8`
  marker with a float32 `<linear>.scale_weight` per fp8 weight (comfy/ops.py: weight = fp8 * scale_weight);
- Wan's `models_t5_umt5-xxl-enc-bf16.pth` (Wan's own T5Encoder names, wan/modules/t5.py), via `wan_t5_to_hf`.

The tokenizer comes from a local folder with the google/umt5-xxl tokenizer files, or from the `spiece_model`
inside a ComfyUI file. Prompts are cleaned as Wan does (ftfy.fix_text when ftfy is installed, else NFC and
straight quotes; HTML unescaped twice; whitespace collapsed and stripped), tokenized with </s> appended and
truncated to 512 tokens (as Wan's HuggingfaceTokenizer with padding/truncation at seq_len 512), encoded with
the attention mask, and trimmed to the real length.
"""

from __future__ import annotations

import html
import logging
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..weights.safetensors_io import PathLike
from .common import KeyView, assign_weights, describe_weights, read_weights, shapes_of

log = logging.getLogger(__name__)

__all__ = [
    "UMT5TextEncoder",
    "clean_prompt",
    "wan_t5_key",
    "wan_t5_to_hf",
    "comfy_umt5_to_hf",
    "umt5_config_from_state_dict",
    "TINY_UMT5_CONFIG",
]

MAX_TOKENS = 512
TINY_UMT5_CONFIG: dict[str, Any] = {"vocab_size": 64, "d_model": 32, "d_kv": 8, "d_ff": 48, "num_layers": 2,
                                    "num_heads": 4, "relative_attention_num_buckets": 8}  # fmt: skip
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})
_WAN_T5 = (  # Wan's T5Encoder block names -> transformers' UMT5 names (per block N)
    ("norm1.weight", "layer.0.layer_norm.weight"),
    ("attn.", "layer.0.SelfAttention."),
    ("pos_embedding.embedding.weight", "layer.0.SelfAttention.relative_attention_bias.weight"),
    ("norm2.weight", "layer.1.layer_norm.weight"),
    ("ffn.gate.0.weight", "layer.1.DenseReluDense.wi_0.weight"),  # gelu branch
    ("ffn.fc1.weight", "layer.1.DenseReluDense.wi_1.weight"),  # linear branch
    ("ffn.fc2.weight", "layer.1.DenseReluDense.wo.weight"),
)


def clean_prompt(text: str) -> str:
    """Wan's 'whitespace' cleaning: ftfy (if installed) or NFC + straight quotes, HTML unescape x2, collapse spaces."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        text = unicodedata.normalize("NFC", text).translate(_QUOTES)
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


def wan_t5_key(key: str) -> str:
    """One key of Wan's T5Encoder (models_t5_umt5-xxl-enc-bf16.pth) -> its UMT5EncoderModel key."""
    if key == "token_embedding.weight":
        return "shared.weight"
    if key == "norm.weight":
        return "encoder.final_layer_norm.weight"
    m = re.match(r"^blocks\.(\d+)\.(.*)$", key)
    for old, new in _WAN_T5 if m else ():
        if m.group(2).startswith(old):
            return f"encoder.block.{m.group(1)}.{new}{m.group(2)[len(old) :]}"
    raise ValueError(f"unexpected key '{key}' in a Wan T5 encoder state dict")


def wan_t5_to_hf(sd: Mapping[str, torch.Tensor]) -> KeyView:
    """Wan's T5Encoder state dict -> a lazy view with UMT5EncoderModel keys (same tensors)."""
    return KeyView(sd, {wan_t5_key(k): k for k in sd})


def comfy_umt5_to_hf(sd: Mapping[str, torch.Tensor]) -> KeyView:
    """ComfyUI / transformers umT5 keys -> a lazy UMT5EncoderModel view: scaled fp8 dequantised, extras dropped."""
    names, dropped = {}, 0
    for key in sd:
        if key in ("scaled_fp8", "spiece_model") or key.endswith((".scale_weight", ".scale_input")):
            continue
        if key.startswith(("decoder.", "lm_head.")):
            dropped += 1
        else:
            names[key] = key
    if dropped:
        log.info("umT5: ignored %d decoder / lm_head tensors (only the encoder is used)", dropped)
    if "shared.weight" not in names and "encoder.embed_tokens.weight" in names:
        names["shared.weight"] = names.pop("encoder.embed_tokens.weight")

    def dequantise(key: str, value: torch.Tensor) -> torch.Tensor:
        scale = key.removesuffix("weight") + "scale_weight"
        if value.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) and key.endswith(".weight") and scale in sd:
            return value.float() * sd[scale].float()  # comfy/ops.py scaled_fp8_ops: weight * scale_weight
        return value

    return KeyView(sd, names, dequantise)


def umt5_config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """UMT5Config fields read off transformers-named encoder weights (vocab, widths, layers, heads, buckets)."""
    shapes, block = shapes_of(sd), "encoder.block.0.layer."
    vocab, d_model = shapes["shared.weight"]
    buckets, heads = shapes[block + "0.SelfAttention.relative_attention_bias.weight"]
    return {
        "vocab_size": vocab,
        "d_model": d_model,
        "d_kv": shapes[block + "0.SelfAttention.q.weight"][0] // heads,
        "d_ff": shapes[block + "1.DenseReluDense.wi_0.weight"][0],
        "num_layers": len({k.split(".")[2] for k in shapes if k.startswith("encoder.block.")}),
        "num_heads": heads,
        "relative_attention_num_buckets": buckets,
    }


def _build(config: Mapping[str, Any]) -> Any:
    from transformers import UMT5Config, UMT5EncoderModel

    fields = {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False, "dropout_rate": 0.0, **config}
    return UMT5EncoderModel(UMT5Config(**fields))


def _hf_state_dict(path: Path) -> tuple[Mapping[str, torch.Tensor], dict[str, Any] | None, bytes | None]:
    """(UMT5EncoderModel state dict, config.json fields or None, embedded SentencePiece model or None)."""
    import json

    config = None
    if path.is_dir() and (path / "config.json").is_file():
        config = {k: v for k, v in json.loads((path / "config.json").read_text()).items() if not k.startswith("_")}
    raw = read_weights(path)
    spiece = raw["spiece_model"].numpy().tobytes() if "spiece_model" in raw else None
    if "blocks.0.attn.q.weight" in raw and "token_embedding.weight" in raw:
        return wan_t5_to_hf(raw), config, spiece
    if "encoder.block.0.layer.0.SelfAttention.q.weight" not in raw:
        raise ValueError(
            f"{path.name} is not a umT5 text encoder: it looks like {describe_weights(raw)}. Pass a transformers "
            "umT5 folder, ComfyUI's umt5_xxl_*.safetensors or Wan's models_t5_umt5-xxl-enc-bf16.pth"
        )
    sd = comfy_umt5_to_hf(raw)
    if "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight" not in sd or (
        "encoder.block.1.layer.0.SelfAttention.q.weight" in sd
        and "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" not in sd
    ):
        raise ValueError(f"{path.name} is a T5 encoder but not umT5 (umT5 has a position bias in every block)")
    return sd, config, spiece


class _SentencePiece:
    """A SentencePiece model as a tokenizer: ids + </s>, truncated to keep </s> (as transformers' T5 tokenizer)."""

    def __init__(self, proto: bytes) -> None:
        import sentencepiece

        self.sp = sentencepiece.SentencePieceProcessor(model_proto=proto)
        self.eos, self.pad = self.sp.eos_id(), max(self.sp.pad_id(), 0)
        if self.eos < 0:
            raise ValueError("the SentencePiece model has no </s> token; it is not a T5 tokenizer")

    def __call__(self, text: str, max_length: int) -> list[int]:
        return self.sp.encode(text)[: max_length - 1] + [self.eos]


class _Transformers:
    """A transformers tokenizer loaded from a local folder."""

    def __init__(self, folder: Path) -> None:
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.pad = self.tok.pad_token_id or 0

    def __call__(self, text: str, max_length: int) -> list[int]:
        return list(self.tok(text, add_special_tokens=True, truncation=True, max_length=max_length).input_ids)


def _from_folder(folder: Path) -> _SentencePiece | _Transformers | None:
    """tokenizer.json through transformers, else spiece.model through sentencepiece (no protobuf needed)."""
    if (folder / "tokenizer.json").is_file():
        return _Transformers(folder)
    if (folder / "spiece.model").is_file():
        return _SentencePiece((folder / "spiece.model").read_bytes())
    return None


def _tokenizer(tokenizer: PathLike | None, weights: Path, spiece: bytes | None) -> _SentencePiece | _Transformers:
    if tokenizer is not None:
        tokenizer = Path(tokenizer).expanduser()
        if not tokenizer.exists():
            raise FileNotFoundError(f"tokenizer {tokenizer}: no such file or folder")
        found = _SentencePiece(tokenizer.read_bytes()) if tokenizer.is_file() else _from_folder(tokenizer)
        if found is None:
            raise FileNotFoundError(f"tokenizer folder {tokenizer} holds neither tokenizer.json nor spiece.model")
        return found
    found = _from_folder(weights) if weights.is_dir() else None
    if found is None and spiece is not None:
        found = _SentencePiece(spiece)
    if found is None:
        raise ValueError(
            f"no tokenizer for {weights.name}: pass tokenizer=<folder with the google/umt5-xxl tokenizer files "
            "(tokenizer.json or spiece.model)> or a spiece.model file. ComfyUI's umt5 files carry their own"
        )
    return found


class UMT5TextEncoder:
    """`TextEncoder` over transformers' UMT5EncoderModel: prompts -> [L_i, d_model] embeddings, trimmed."""

    def __init__(self, model: Any, tokenizer: Callable[[str, int], list[int]], max_length: int = MAX_TOKENS) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.text_dim = int(model.config.d_model)

    @classmethod
    def from_file(
        cls, path: PathLike, tokenizer: PathLike | None = None, dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str = "cpu",
    ) -> UMT5TextEncoder:  # fmt: skip
        """Load a transformers folder, a ComfyUI umt5_xxl file (fp16 / scaled fp8) or Wan's .pth, and a tokenizer."""
        path = Path(path).expanduser()
        sd, config, spiece = _hf_state_dict(path)  # shared.weight also fills the tied encoder.embed_tokens
        fields = dict(config or umt5_config_from_state_dict(sd))
        model = assign_weights(lambda: _build(fields), sd, dtype, device, f"umT5 {path.name}")
        log.info("loaded umT5 (%d layers, d_model %d) from %s", model.config.num_layers, model.config.d_model, path)
        return cls(model, _tokenizer(tokenizer, path, spiece))

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any] | None, tokenizer: Callable[[str, int], list[int]] | PathLike, seed: int = 0
    ) -> UMT5TextEncoder:
        """A randomly initialised encoder (default: TINY_UMT5_CONFIG) with a tokenizer folder / file, for tests."""
        torch.manual_seed(seed)
        model = _build(TINY_UMT5_CONFIG if config is None else config)
        tok = tokenizer if callable(tokenizer) else _tokenizer(tokenizer, Path(tokenizer), None)
        return cls(model, tok)

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    def tokenize(self, prompts: Sequence[str]) -> list[list[int]]:
        """Cleaned prompts -> token ids with </s>, at most `max_length` each."""
        return [self.tokenizer(clean_prompt(p), self.max_length) for p in prompts]

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> list[torch.Tensor]:
        """Prompts -> embeddings [L_i, d_model] (L_i = tokens incl. </s>), float32 on the model's device."""
        if isinstance(prompts, str):
            raise TypeError("encode takes a list of prompts; wrap a single prompt as [prompt]")
        if not prompts:
            return []
        ids = self.tokenize(prompts)
        longest = max(len(i) for i in ids)
        pad = getattr(self.tokenizer, "pad", 0)
        batch = torch.tensor([i + [pad] * (longest - len(i)) for i in ids], device=self.device)  # [B, L]
        mask = torch.tensor([[1] * len(i) + [0] * (longest - len(i)) for i in ids], device=self.device)
        hidden = self.model(input_ids=batch, attention_mask=mask).last_hidden_state.float()  # [B, L, D]
        return [h[: len(i)] for h, i in zip(hidden, ids)]
