"""The Wan 2.1 video VAE behind the `VideoVAE` protocol, on diffusers' `AutoencoderKLWan`.

Loads, from local paths only: the original `Wan2.1_VAE.pth` (torch.load with weights_only=True), ComfyUI's
`wan_2.1_vae.safetensors` (same key names as the .pth: ComfyUI's comfy/ldm/wan/vae.py keeps Wan's module
tree and comfy/sd.py detects it by `decoder.middle.0.residual.0.gamma`), a file already in diffusers key
names, or a diffusers folder (config.json + diffusion_pytorch_model.safetensors). Original names are mapped
to diffusers names by `wan_vae_to_diffusers`, derived from the module trees (Wan's vae2_1.py Encoder3d /
Decoder3d, diffusers' WanEncoder3d / WanDecoder3d), so it also serves the tiny test configs.

Latents are Wan's normalised posterior mean, (mu - mean) / std with the fixed per-channel statistics in the
diffusers config (`latents_mean` / `latents_std`); decoding inverts that and clamps to [-1, 1].
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..weights.safetensors_io import PathLike
from .common import KeyView, assign_weights, describe_weights, read_weights, shapes_of, strip_prefix

log = logging.getLogger(__name__)

__all__ = [
    "WanVAE",
    "Tiling",
    "wan_vae_key",
    "wan_vae_to_diffusers",
    "wan_vae_config_from_state_dict",
    "TINY_VAE_CONFIG",
]

# Prefixes under which full checkpoints store the VAE (ComfyUI `first_stage_model.`, some repacks `vae.`).
VAE_PREFIXES = ("first_stage_model.", "vae.")
# A Wan-2.1-shaped VAE small enough for CPU tests (16 latent channels, 8x spatial and 4x temporal factors).
TINY_VAE_CONFIG: dict[str, Any] = {"base_dim": 8, "z_dim": 16, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1}
_RESIDUAL = {"residual.0.gamma": "norm1.gamma", "residual.3.gamma": "norm2.gamma", "residual.2.": "conv1."}
_RESIDUAL.update({"residual.6.": "conv2.", "shortcut.": "conv_shortcut."})


@dataclass(frozen=True)
class Tiling:
    """Spatial tiles for decoding (and encoding) large frames, in pixels: tile size and the stride between tiles."""

    height: int = 256
    width: int = 256
    stride_height: int = 192
    stride_width: int = 192

    @classmethod
    def official(cls) -> Tiling:
        """The official pipeline's tiles: (30, 52) latents with stride (15, 26), i.e. 240x416 px every 120x208."""
        return cls(240, 416, 120, 208)


def _rename_block(rest: str) -> str:
    """Inside one residual block / resample / attention: Wan's Sequential indices -> diffusers' names."""
    for old, new in _RESIDUAL.items():
        if rest.startswith(old):
            return new + rest[len(old) :]
    return rest  # resample.1.*, time_conv.*, norm.gamma, to_qkv.*, proj.*: same names


def _decoder_slot(index: int, num_res_blocks: int) -> str:
    """Flat `decoder.upsamples.i` -> `up_blocks.s.resnets.j` / `up_blocks.s.upsamplers.0` (r+1 blocks + resample)."""
    stage, j = divmod(index, num_res_blocks + 2)
    return f"up_blocks.{stage}.resnets.{j}" if j <= num_res_blocks else f"up_blocks.{stage}.upsamplers.0"


def wan_vae_key(key: str, num_res_blocks: int = 2) -> str:
    """One original Wan 2.1 VAE key (Wan2.1_VAE.pth, ComfyUI) -> its diffusers `AutoencoderKLWan` key."""
    m = re.match(r"^(encoder|decoder)\.(conv1|head\.0|head\.2|middle\.(\d+)|(down|up)samples\.(\d+))\.(.*)$", key)
    if m is None:
        for old, new in (("conv1.", "quant_conv."), ("conv2.", "post_quant_conv.")):
            if key.startswith(old):
                return new + key[len(old) :]
        raise ValueError(f"unexpected key '{key}' in a Wan 2.1 VAE state dict")
    part, slot, mid, _, flat, rest = m.groups()
    if slot == "conv1":
        new = "conv_in"
    elif slot.startswith("head"):
        new = "norm_out" if slot == "head.0" else "conv_out"
    elif mid is not None:  # middle = [resblock, attention, resblock]
        new = "mid_block.attentions.0" if mid == "1" else f"mid_block.resnets.{int(mid) // 2}"
    elif part == "encoder":
        new = f"down_blocks.{flat}"  # both trees keep the encoder flat
    else:
        new = _decoder_slot(int(flat), num_res_blocks)
    return f"{part}.{new}.{_rename_block(rest)}"


def wan_vae_to_diffusers(sd: Mapping[str, torch.Tensor], num_res_blocks: int = 2) -> KeyView:
    """Original Wan 2.1 VAE state dict -> a lazy view with diffusers `AutoencoderKLWan` keys (same tensors)."""
    return KeyView(sd, {wan_vae_key(k, num_res_blocks): k for k in sd})


def _encoder_layout(shapes: Mapping[str, tuple[int, ...]]) -> list[tuple[str, int]]:
    """The flat encoder list as (kind, out channels): ('res', c) / ('down2d', c) / ('down3d', c)."""
    layout, i = [], 0
    while True:
        base = f"encoder.downsamples.{i}."
        if base + "residual.2.weight" in shapes:
            layout.append(("res", shapes[base + "residual.2.weight"][0]))
        elif base + "resample.1.weight" in shapes:
            kind = "down3d" if base + "time_conv.weight" in shapes else "down2d"
            layout.append((kind, shapes[base + "resample.1.weight"][0]))
        elif any(k.startswith(base) for k in shapes):
            raise ValueError(f"unsupported Wan VAE layout at {base}* (attention inside the down path?)")
        else:
            return layout
        i += 1


def wan_vae_config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The `AutoencoderKLWan` config (base_dim, z_dim, dim_mult, num_res_blocks, temporal flags) of original keys."""
    shapes = shapes_of(sd)
    base_dim, z_dim = shapes["encoder.conv1.weight"][0], shapes["conv2.weight"][0]
    stages: list[int] = [0]
    mults, temporal = [], []
    for kind, channels in _encoder_layout(shapes):
        if kind == "res":
            stages[-1] += 1
            mult = channels // base_dim
        else:
            mults.append(mult)
            temporal.append(kind == "down3d")
            stages.append(0)
    mults.append(mult)
    if len(set(stages)) != 1:
        raise ValueError(f"unsupported Wan VAE layout: stages hold {stages} residual blocks")
    return {"base_dim": base_dim, "z_dim": z_dim, "dim_mult": mults, "num_res_blocks": stages[0],
            "temperal_downsample": temporal}  # fmt: skip


def _vae_state_dict(path: Path) -> tuple[Mapping[str, torch.Tensor], dict[str, Any] | None]:
    """(diffusers-named lazy state dict, config or None for the Wan 2.1 default) of a VAE file or folder."""
    config = None
    if path.is_dir() and (path / "config.json").is_file():
        config = {k: v for k, v in json.loads((path / "config.json").read_text()).items() if not k.startswith("_")}
    sd = strip_prefix(read_weights(path), VAE_PREFIXES)
    if "decoder.mid_block.resnets.0.norm1.gamma" in sd:
        return sd, config
    if "decoder.middle.0.residual.0.gamma" not in sd or "decoder.upsamples.0.upsamples.0.residual.2.weight" in sd:
        raise ValueError(
            f"{path.name} is not the Wan 2.1 VAE: it looks like {describe_weights(sd)}. Pass Wan2.1_VAE.pth, "
            "ComfyUI's wan_2.1_vae.safetensors or a diffusers AutoencoderKLWan folder"
        )
    config = wan_vae_config_from_state_dict(sd)
    return wan_vae_to_diffusers(sd, config["num_res_blocks"]), config


class WanVAE:
    """`VideoVAE` over diffusers' AutoencoderKLWan: [B,3,T,H,W] in [-1,1] <-> normalised latents [B,16,T',H/8,W/8]."""

    spatial_factor = 8
    temporal_factor = 4

    def __init__(self, model: Any, tiling: Tiling | None = None) -> None:
        self.model = model.eval().requires_grad_(False)
        cfg = model.config
        self.latent_channels = int(cfg.z_dim)
        self.mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)  # [1, C, 1, 1, 1]
        self.std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        if self.mean.shape[1] != self.latent_channels or self.std.shape[1] != self.latent_channels:
            raise ValueError(f"latents_mean/std have {self.mean.shape[1]} values for {self.latent_channels} channels")
        self.set_tiling(tiling)

    @classmethod
    def from_file(
        cls, path: PathLike, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
        tiling: Tiling | None = None,
    ) -> WanVAE:  # fmt: skip
        """Load Wan2.1_VAE.pth, ComfyUI's wan_2.1_vae.safetensors, a diffusers-named file or a diffusers folder."""
        from diffusers import AutoencoderKLWan

        path = Path(path).expanduser()
        sd, config = _vae_state_dict(path)
        model = assign_weights(
            lambda: AutoencoderKLWan.from_config(config or {}), sd, dtype, device, f"Wan VAE {path.name}"
        )
        log.info("loaded the Wan VAE from %s (%s, %s)", path, dtype, device)
        return cls(model, tiling)

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any] | None = None, dtype: torch.dtype = torch.float32, seed: int = 0
    ) -> WanVAE:
        """A randomly initialised VAE (default: TINY_VAE_CONFIG), for tests."""
        from diffusers import AutoencoderKLWan

        torch.manual_seed(seed)
        model = AutoencoderKLWan(**dict(TINY_VAE_CONFIG if config is None else config))
        return cls(torch.nn.Module.to(model, dtype))  # plain cast: diffusers' .to() warns about fp32 modules

    def set_tiling(self, tiling: Tiling | None) -> None:
        """Decode (and encode) in spatial tiles when frames exceed `tiling`'s tile; None turns tiling off."""
        self.tiling = tiling
        if tiling is None:
            self.model.disable_tiling()
        else:
            self.model.enable_tiling(tiling.height, tiling.width, tiling.stride_height, tiling.stride_width)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] in [-1, 1] -> normalised posterior mean [B, 16, 1 + (T-1)/4, H/8, W/8], float32."""
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"expected video [B, 3, T, H, W]; got {list(video.shape)}")
        t, h, w = video.shape[2:]
        if (t - 1) % self.temporal_factor or h % self.spatial_factor or w % self.spatial_factor:
            raise ValueError(f"the Wan VAE needs T = 1 + 4k frames and H, W divisible by 8; got T={t}, {h}x{w}")
        mu = self.model.encode(video.to(self.device, self.dtype)).latent_dist.mean.float()  # [B, C, T', h, w]
        return (mu - self.mean.to(mu.device)) / self.std.to(mu.device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, 16, T', h, w] -> video [B, 3, 1 + 4(T'-1), 8h, 8w] in [-1, 1], float32."""
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"expected latents [B, {self.latent_channels}, T', h, w]; got {list(latents.shape)}")
        z = latents.to(self.device, torch.float32) * self.std.to(self.device) + self.mean.to(self.device)
        video = self.model.decode(z.to(self.dtype)).sample  # diffusers clamps to [-1, 1]
        return video.float().clamp_(-1.0, 1.0)
