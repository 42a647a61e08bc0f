"""CoInteractDiT: Wan2.2-S2V-14B with CoInteract's Human-Aware MoE and HOI structure stream.

embed (target + pose, person, product, FramePack motion, HOI) -> blocks (+ audio injection) -> head -> unpatchify.
Attribute names equal the official checkpoint keys; `checkpoint.py` is the one place that reads files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import resolve_backend
from .audio import AudioInjector, CausalAudioEncoder
from .block import BlockContext, DiTBlock
from .config import DiTConfig
from .layers import cast_to, layer_norm, modulate, sinusoidal_embedding
from .layout import SequenceLayout
from .motion import FramePackMotioner
from .rope import rope_frequencies
from .shard import SequenceParallel
from .visibility import AttentionMode, attention_groups

__all__ = ["CoInteractDiT", "DiTOutput", "Head", "BlocksHook"]

# blocks_hook(tokens [B, N, D], run_blocks) -> what run_blocks(tokens) gives: (tokens [B, N, D], router logits or
# None). run_blocks is the block stack with audio injection; a hook may skip it (the step cache, sampling/cache.py).
BlocksHook = Callable[
    [torch.Tensor, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]],
    tuple[torch.Tensor, torch.Tensor | None],
]


@dataclass(frozen=True)
class DiTOutput:
    """RGB velocity [B, C, F, H, W]; HOI velocity (same shape) when HOI latents were given; router logits
    [num_layers, B, N_target, 3] (classes base, hand, face) when asked for or training."""

    velocity: torch.Tensor
    hoi_velocity: torch.Tensor | None = None
    router_logits: torch.Tensor | None = None


class Head(nn.Module):
    """Output head: Linear(LN(x)·(1+scale)+shift) with (shift, scale) = modulation + e(t)."""

    def __init__(self, dim: int, out_channels: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.head = nn.Linear(dim, out_channels)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x [B, N, D], e [B, D] (real-t time embedding) -> [B, N, C·pt·ph·pw]"""
        mod = self.modulation.float() + e.float()[:, None]  # [B, 2, D]: shift, scale
        y = modulate(layer_norm(x, self.eps), shift=mod[:, 0:1], scale=mod[:, 1:2])
        return self.head(cast_to(y, self.head))


class CoInteractDiT(nn.Module):
    """The speech-to-video DiT. Build with a DiTConfig (presets in config.PRESETS); call with named tensors."""

    def __init__(self, cfg: DiTConfig, attention_backend: str = "sdpa") -> None:
        super().__init__()
        self.cfg = cfg
        self.attention_backend = resolve_backend(attention_backend)
        self.gradient_checkpointing = False
        self.sequence_parallel: SequenceParallel | None = None  # runtime/sequence_parallel.py; None: one process
        d, p = cfg.dim, cfg.patch_size
        self.patch_embedding = nn.Conv3d(cfg.in_dim, d, kernel_size=p, stride=p)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.num_layers))
        self.head = Head(d, cfg.patch_channels, cfg.eps)
        self.cond_encoder = nn.Conv3d(cfg.cond_dim, d, kernel_size=p, stride=p) if cfg.cond_dim else None
        self.casual_audio_encoder = CausalAudioEncoder(
            cfg.audio_dim, d, cfg.num_audio_tokens, cfg.audio_layers, cfg.eps
        )
        self.audio_injector = AudioInjector(d, cfg.num_heads, len(cfg.audio_inject_layers), cfg.eps)
        self.trainable_cond_mask = nn.Embedding(3, d)
        self.frame_packer = FramePackMotioner(cfg.in_dim, d, cfg.zip_frame_buckets)
        if cfg.hoi:
            self.depth_patch_embedding = nn.Conv3d(cfg.in_dim, d, kernel_size=p, stride=p)
            self.depth_head = Head(d, cfg.patch_channels, cfg.eps)
            self.depth_cond_mask = nn.Embedding(1, d)

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor | float,
        context: torch.Tensor,
        audio: torch.Tensor,
        person: torch.Tensor,
        *,
        product: torch.Tensor | None = None,
        product_scale: float = 1.0,
        motion: torch.Tensor | None = None,
        pose: torch.Tensor | None = None,
        hoi: torch.Tensor | None = None,
        hoi_context: torch.Tensor | None = None,
        attention: AttentionMode = "asymmetric",
        return_router: bool = False,
        blocks_hook: BlocksHook | None = None,
    ) -> DiTOutput:
        """Velocity for noisy target latents x [B, C, F, H, W] at float timesteps [B] in [0, 1000].

        context [B, L, text_dim] (L ≤ text_len, zero-padded inside); audio [B, 25, A, 4F] wav2vec2 features;
        person/product [B, C, 1, H, W]; motion [B, C, T≤19, H, W]; pose [B, cond_dim, F, H, W];
        hoi [B, C, F, H, W] with hoi_context [B, L, text_dim]; attention "full" (stage 1) or "asymmetric";
        blocks_hook (None: run the blocks) wraps the block stack, e.g. to reuse a cached residual.
        """
        layout = self._layout(x, product, product_scale, motion, hoi, hoi_context)
        t = torch.as_tensor(timestep, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])
        e, e0 = self._time(t)
        tokens = self._embed_main(x, person, product, motion, pose, layout)
        if hoi is not None:
            tokens = torch.cat([tokens, self._embed_hoi(hoi)], dim=1)
        experts_on = t < self.cfg.moe.off_from_timestep if self.cfg.moe else torch.zeros_like(t, dtype=torch.bool)
        freqs = rope_frequencies(layout.positions().to(x.device), self.cfg.head_dim, self.cfg.rope_theta)
        shard = None if self.sequence_parallel is None else self.sequence_parallel.shard(layout.total)
        if shard is not None:  # sequence parallel: this process keeps its tokens [start, stop) from here on
            tokens, freqs = tokens[:, shard.start : shard.stop], freqs[shard.start : shard.stop]
        ctx = BlockContext(
            e0=e0,
            layout=layout,
            groups=attention_groups(layout, attention),
            freqs=freqs,
            text=self._text(context),
            hoi_text=self._text(hoi_context) if hoi is not None else None,
            experts_on=experts_on,
            run_router=return_router or self.training,
            any_experts=bool(experts_on.any()),  # one host sync per forward, not one per block
            backend=self.attention_backend,
            shard=shard,
        )

        def run_blocks(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            return self._run_blocks(h, ctx, *self.encode_audio(audio, layout.frames))

        tokens, logits = run_blocks(tokens) if blocks_hook is None else blocks_hook(tokens, run_blocks)
        out, hoi_out, logits = self._heads(tokens, e, ctx, logits)
        velocity = self._unpatchify(out, layout)
        hoi_velocity = None if hoi_out is None else self._unpatchify(hoi_out, layout)
        return DiTOutput(velocity, hoi_velocity, logits if (return_router or self.training) else None)

    def _heads(
        self, tokens, e, ctx: BlockContext, logits
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Head outputs of the target tokens [B, N_target, C·p] and HOI tokens (or None), and the router logits,
        gathered from every process under sequence parallel (the heads are token-wise, so each runs on its shard)."""
        lay, n, shard = ctx.layout, ctx.counts, ctx.shard
        out = self.head(tokens[:, : n.n_target], e)
        hoi = self.depth_head(tokens[:, n.n_main :], e) if lay.hoi else None
        if shard is not None:
            out = shard.gather(out, 0, lay.n_target)
            hoi = None if hoi is None else shard.gather(hoi, lay.n_main, lay.total)
            logits = None if logits is None else shard.gather(logits, 0, lay.n_target, dim=2)
        return out, hoi, logits

    def _layout(self, x, product, product_scale, motion, hoi, hoi_context) -> SequenceLayout:
        """Validate shapes and describe the token sequence."""
        from .validation import check_inputs  # noqa: PLC0415 - keeps this file about the forward

        check_inputs(self.cfg, x, product, motion, hoi, hoi_context)
        return SequenceLayout(
            frames=x.shape[2],
            latent_hw=(x.shape[3], x.shape[4]),
            patch_hw=self.cfg.patch_size[1:],
            product=product is not None,
            product_scale=float(product_scale),
            motion=motion is not None,
            motion_buckets=self.cfg.zip_frame_buckets,
            hoi=hoi is not None,
            hoi_width=self.cfg.hoi.width_positions if self.cfg.hoi else "wrap",
        )

    def _time(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """t [B] -> e [B, D] (real t, for the heads) and e0 [B, 6, 2, D] (rows: real t, t=0), fp32."""
        both = torch.stack([t, torch.zeros_like(t)], dim=1).reshape(-1)  # [2B]
        sin = sinusoidal_embedding(both, self.cfg.freq_dim).float()
        emb = self.time_embedding(cast_to(sin, self.time_embedding)).float()  # [2B, D]
        e0 = self.time_projection(cast_to(emb, self.time_projection)).float()  # [2B, 6D]
        e0 = e0.view(t.shape[0], 2, 6, self.cfg.dim).transpose(1, 2)
        return emb.view(t.shape[0], 2, -1)[:, 0], e0

    def _text(self, context: torch.Tensor) -> torch.Tensor:
        """[B, L, text_dim] -> [B, text_len, D]: zero-pad to text_len first; the padding rows are attended to."""
        if context.shape[1] > self.cfg.text_len:
            raise ValueError(f"text context has {context.shape[1]} rows; this model takes at most {self.cfg.text_len}")
        context = F.pad(context, (0, 0, 0, self.cfg.text_len - context.shape[1]))
        return self.text_embedding(cast_to(context, self.text_embedding))

    def encode_audio(self, audio: torch.Tensor, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """audio [B, L, A, T≈4F] -> per-latent-frame tokens [B, F, n+1, D] and global tokens [B, F, 1, D]."""
        prefix, drop = self.cfg.motion_frames
        audio = torch.cat([audio[..., :1].expand(-1, -1, -1, prefix), audio], dim=-1)
        local, glob = self.casual_audio_encoder(audio)
        local, glob = local[:, drop:], glob[:, drop:]
        if local.shape[1] != frames:
            raise ValueError(
                f"audio gives {local.shape[1]} latent frames but the target has {frames}; "
                f"pass 4·F = {4 * frames} audio columns per clip (25 fps features)"
            )
        return local, glob

    def _embed_main(self, x, person, product, motion, pose, layout: SequenceLayout) -> torch.Tensor:
        """Target (+ pose), person, product and motion tokens with the token-type embedding: [B, n_main, D] fp32."""
        pe = self.patch_embedding
        target = pe(cast_to(x, pe))
        if self.cond_encoder is not None:  # the cond_encoder bias is added even without a pose video
            bias = self.cond_encoder.bias[None, :, None, None, None]
            target = target + (self.cond_encoder(cast_to(pose, pe)) if pose is not None else bias)
        images = [person] + ([product] if product is not None else [])
        parts = [target] + [pe(cast_to(img, pe)) for img in images]
        tokens = [p.flatten(2).transpose(1, 2) for p in parts]
        if motion is not None:
            tokens.append(self.frame_packer(motion))
        type_emb = self.trainable_cond_mask(layout.type_ids().to(x.device))
        return torch.cat(tokens, dim=1).float() + type_emb.float()

    def _embed_hoi(self, hoi: torch.Tensor) -> torch.Tensor:
        """HOI latents [B, C, F, H, W] -> [B, N_target, D] with the HOI type embedding, fp32."""
        tokens = self.depth_patch_embedding(cast_to(hoi, self.depth_patch_embedding)).flatten(2).transpose(1, 2)
        return tokens.float() + self.depth_cond_mask.weight[0].float()

    def _run_blocks(self, x, ctx: BlockContext, audio_tokens, audio_global) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Blocks, with the audio residual added to target tokens after the listed blocks."""
        inject = {layer: j for j, layer in enumerate(self.cfg.audio_inject_layers)}
        n, all_logits = ctx.counts.n_target, []
        for i, block in enumerate(self.blocks):
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x, logits = checkpoint(block, x, ctx, use_reentrant=False)
            else:
                x, logits = block(x, ctx)
            all_logits.append(logits)
            if i in inject:
                res = self._inject(x[:, :n], inject[i], ctx, audio_tokens, audio_global)
                x = torch.cat([x[:, :n] + res.float(), x[:, n:]], dim=1)
        if any(lg is None for lg in all_logits):
            return x, None
        return x, torch.stack([lg.float() for lg in all_logits])

    def _inject(self, x, j: int, ctx: BlockContext, audio_tokens, audio_global) -> torch.Tensor:
        """Audio residual [B, n, D] of the target tokens held here (all of them without a shard)."""
        if ctx.shard is None:
            return self.audio_injector(x, j, ctx.layout.frames, audio_tokens, audio_global, ctx.backend)
        start = min(ctx.shard.start, ctx.layout.n_target)
        return self.audio_injector.forward_span(
            x, j, start, ctx.layout.n_image, audio_tokens, audio_global, ctx.backend
        )

    def _unpatchify(self, out: torch.Tensor, layout: SequenceLayout) -> torch.Tensor:
        """[B, F·h'·w', C·pt·ph·pw] (c fastest) -> [B, C, F·pt, h'·ph, w'·pw] fp32."""
        (pt, ph, pw), (h, w) = self.cfg.patch_size, layout.grid
        b, c = out.shape[0], self.cfg.out_dim
        out = out.float().view(b, layout.frames, h, w, pt, ph, pw, c)
        return torch.einsum("bfhwpqrc->bcfphqwr", out).reshape(b, c, layout.frames * pt, h * ph, w * pw)
