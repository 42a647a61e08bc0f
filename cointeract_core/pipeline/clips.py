"""Long-video generation as the official batch_infer does it: 80-frame clips chained through motion latents.

Per clip r: noise from a CPU generator seeded seed + r (drawn as the official [1, C, 21, h, w] and with latent 0
replaced by the person, so seed 0 reproduces the official noise); CFG with the negative prompt and zeroed audio;
the motion latents are the last 73 output frames re-encoded (none for clip 0); decode [motion | new] jointly and
keep the last 80 frames. Fixed here: the audio window advances 80 columns per clip (the official code advances 81,
so lips drift one frame per clip); `VideoOptions(audio_stride=81)` reproduces it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from ..model.dit import CoInteractDiT
from ..model.layout import SequenceLayout
from ..runtime.offload import conditioning_to
from ..sampling.cache import BlocksHook, StepCache
from ..sampling.protocols import Solver
from ..sampling.sampler import SamplerConfig, StepCallback, cfg_combine, sample
from .conditioning import Conditioning, clip_count
from .guidance import split_branches, stack_branches, use_batched_cfg
from .heatmaps import router_probabilities
from .noise import clip_renoise
from .protocols import VideoVAE

__all__ = ["VideoOptions", "GenerationResult", "generate"]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoOptions:
    """How a long video is cut into clips and what is produced besides the RGB frames."""

    clip_frames: int = 80
    motion_frames: int = 73
    audio_stride: int = 80  # official: 81
    max_clips: int | None = None
    hoi_preview: bool = False
    router_maps: bool = False
    # "full": RGB and HOI tokens see each other (a model trained without the asymmetric mask; needs hoi_preview)
    attention: str = "asymmetric"


@dataclass
class GenerationResult:
    """frames [T, H, W, 3] in [0, 1] with T = clips × 80 (trim to `audio_frames` for the final video)."""

    frames: torch.Tensor
    audio_frames: int
    seeds: list[int]
    latents: list[torch.Tensor] = field(default_factory=list)  # per clip [1, C, F, h, w]
    motion_latents: list[torch.Tensor | None] = field(default_factory=list)  # what each clip was conditioned on
    hoi_frames: torch.Tensor | None = None  # [T, H, W, 3] in [0, 1]
    router_maps: torch.Tensor | None = None  # [T, h', w', 2] mean (hand, face) probability while routing is on
    fps: float = 25.0
    passes_run: list[int] = field(default_factory=list)  # per clip: DiT forwards that ran the blocks
    passes_skipped: list[int] = field(default_factory=list)  # per clip: forwards that reused a cached residual


def _to_unit(video: torch.Tensor) -> torch.Tensor:
    """[1, 3, T, H, W] in [-1, 1] -> [T, H, W, 3] in [0, 1] on the CPU."""
    return ((video[0].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0).cpu()


def _decode_clip(vae: VideoVAE, prefix: torch.Tensor, latents: torch.Tensor, frames: int) -> torch.Tensor:
    """Decode [prefix | latents] jointly and keep the last `frames` frames: [1, 3, frames, H, W]."""
    video = vae.decode(torch.cat([prefix.to(latents), latents], dim=2))
    return video[:, :, -frames:]


class _ClipSampler:
    """Guided velocity for one clip; records router probabilities while routing is on."""

    def __init__(self, model, cond: Conditioning, clip: int, motion, cfg: SamplerConfig, opts: VideoOptions) -> None:
        self.model, self.cfg, self.opts, self.frames = model, cfg, opts, opts.clip_frames // 4
        dev = next(model.parameters()).device
        audio = cond.audio_window(clip, opts.clip_frames, opts.audio_stride).to(dev)
        common = dict(
            person=cond.person.to(dev),
            product=None if cond.product is None else cond.product.to(dev),
            product_scale=cond.product_scale,
            motion=None if motion is None else motion.to(dev),
            attention=opts.attention,
        )
        pose = cond.pose_for(clip)
        common["pose"] = None if pose is None else pose.to(dev)
        self.pos = dict(common, context=cond.prompt(clip).to(dev), audio=audio)
        self.neg = dict(common, context=cond.negative.to(dev), audio=audio * 0)
        if opts.hoi_preview:
            self.pos["hoi_context"] = cond.hoi_prompt(clip).to(dev)
            self.neg["hoi_context"] = cond.hoi_negative.to(dev)
        self.router_sum, self.router_steps = None, 0
        self.cache = None if cfg.cache is None else StepCache(cfg.cache, cfg.steps)  # state of this clip only
        self.forwards = 0
        self.both = None  # the two CFG branches as one batch of 2, when batched
        if cfg.cfg != 1.0 and use_batched_cfg(cfg.cfg_batch, model, self._layout(cond, motion), dev):
            self.both = stack_branches(self.pos, self.neg)

    def _layout(self, cond: Conditioning, motion) -> SequenceLayout:
        """The clip's token layout, for the memory planner."""
        return SequenceLayout(
            frames=self.frames,
            latent_hw=tuple(cond.person.shape[-2:]),
            patch_hw=self.model.cfg.patch_size[1:],
            product=cond.product is not None,
            motion=motion is not None,
            hoi=self.opts.hoi_preview,
        )

    def _branches(self, x, t, hoi, routing):
        """(positive, negative or None at cfg 1) DiT outputs: two calls, or one call on a batch of 2."""
        if self.both is not None:
            hoi2 = None if hoi is None else torch.cat([hoi, hoi])
            hook = self._hook("cfg", passes=2)
            out = self.model(torch.cat([x, x]), t, hoi=hoi2, return_router=routing, blocks_hook=hook, **self.both)
            self.forwards += 2
            return split_branches(out)
        pos = self.model(x, t, hoi=hoi, return_router=routing, blocks_hook=self._hook("cond"), **self.pos)
        self.forwards += 1
        if self.cfg.cfg == 1.0:
            return pos, None
        self.forwards += 1
        return pos, self.model(x, t, hoi=hoi, blocks_hook=self._hook("uncond"), **self.neg)

    def __call__(self, state: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """state [1, C, F(+F), h, w] (RGB then HOI latents along time) -> guided velocity of the same shape."""
        x, hoi = state[:, :, : self.frames], state[:, :, self.frames :] if self.opts.hoi_preview else None
        routing = (
            self.opts.router_maps and self.model.cfg.moe is not None and bool(t < self.model.cfg.moe.off_from_timestep)
        )
        if self.cache is not None:
            self.cache.begin_step(x)  # one decision per step, for both branches
        with torch.no_grad():
            pos, neg = self._branches(x, t, hoi, routing)
            if self.cache is not None:
                self.cache.observe(pos.velocity)
            if routing and pos.router_logits is not None:  # None on a cached step
                probs = router_probabilities(pos.router_logits)
                self.router_sum = probs if self.router_sum is None else self.router_sum + probs
                self.router_steps += 1
        if neg is None:
            return torch.cat([pos.velocity] + ([pos.hoi_velocity] if hoi is not None else []), dim=2)
        parts = [cfg_combine(pos.velocity, neg.velocity, self.cfg.cfg)]
        if hoi is not None:
            parts.append(cfg_combine(pos.hoi_velocity, neg.hoi_velocity, self.cfg.cfg))
        return torch.cat(parts, dim=2)

    def _hook(self, branch: str, passes: int = 1) -> BlocksHook | None:
        """The step cache's blocks hook for a CFG branch (or both as a batch of 2), or None (run the blocks)."""
        return None if self.cache is None else self.cache.hook(branch, passes)

    @property
    def passes(self) -> tuple[int, int]:
        """(DiT forwards that ran the blocks, forwards that reused the cached residual) in this clip."""
        skipped = 0 if self.cache is None else self.cache.passes_skipped
        return self.forwards - skipped, skipped


def generate(
    model: CoInteractDiT,
    vae: VideoVAE,
    cond: Conditioning,
    cfg: SamplerConfig | None = None,
    opts: VideoOptions | None = None,
    callback: StepCallback | None = None,
    solver: Solver | None = None,
) -> GenerationResult:
    """Person + product + prompts + audio features -> a long video of clips × 80 frames (see module docstring).

    solver: replaces cfg.sampler's core solver (the ComfyUI node passes ComfyUI's own samplers)."""
    cfg, opts = cfg or SamplerConfig(), opts or VideoOptions()
    if opts.hoi_preview and model.cfg.hoi is None:
        raise ValueError("HOI preview asked of a checkpoint without HOI weights (no depth_* keys); turn it off")
    if opts.attention not in ("asymmetric", "full") or (opts.attention == "full" and not opts.hoi_preview):
        raise ValueError(f"attention {opts.attention!r}: use 'asymmetric', or 'full' with hoi_preview on")
    n_clips = clip_count(cond.audio_frames, opts.clip_frames, opts.max_clips)
    cond = conditioning_to(cond, "cpu")  # memory: only each clip's window goes to the model's device
    result = GenerationResult(frames=torch.empty(0), audio_frames=cond.audio_frames, seeds=[])
    frames, hoi_frames, maps, history = [], [], [], None
    for r in range(n_clips):
        motion = None if history is None else vae.encode(history[:, :, -opts.motion_frames :])
        latents, hoi, sampler = _sample_clip(model, cond, r, motion, cfg, opts, callback, solver)
        prefix = cond.person if motion is None else motion
        clip = _decode_clip(vae, prefix, latents, opts.clip_frames).clamp(-1, 1)
        history = clip if history is None else torch.cat([history, clip], dim=2)[:, :, -opts.motion_frames :]
        frames.append(_to_unit(clip))
        if hoi is not None:
            black = vae.encode(torch.full_like(clip[:, :, :1], -1.0))
            hoi_frames.append(_to_unit(_decode_clip(vae, black, hoi, opts.clip_frames)))
        if sampler.router_steps:
            maps.append(_frame_maps(sampler, model.cfg.patch_size, cond, opts))
        result.seeds.append(cfg.seed + r)
        result.latents.append(latents.cpu())  # memory: results of past clips do not stay on the GPU
        result.motion_latents.append(None if motion is None else motion.cpu())
        _record_passes(result, sampler, r)
    result.frames = torch.cat(frames)
    result.hoi_frames = torch.cat(hoi_frames) if hoi_frames else None
    result.router_maps = torch.cat(maps) if maps else None
    return result


def _sample_clip(model, cond, r, motion, cfg, opts, callback, solver=None):
    """Noise for clip r (seed + r, fp32 on a CPU generator; lcm's fresh noise from streams of seed + r too)
    -> (latents, HOI latents or None, the clip sampler)."""
    c, (h, w), frames = cond.person.shape[1], cond.person.shape[-2:], opts.clip_frames // 4
    gen = torch.Generator("cpu").manual_seed(cfg.seed + r)
    noise = torch.randn(1, c, frames + 1, h, w, generator=gen)[:, :, 1:]  # latent 0 is the person's slot
    if opts.hoi_preview:
        noise = torch.cat([noise, torch.randn(1, c, frames, h, w, generator=gen)], dim=2)
    sampler = _ClipSampler(model, cond, r, motion, cfg, opts)
    dev = next(model.parameters()).device
    state = sample(sampler, noise.to(dev), cfg, callback, clip_renoise(cfg.seed + r, frames), solver)
    hoi = state[:, :, frames:] if opts.hoi_preview else None
    return state[:, :, :frames], hoi, sampler


def _record_passes(result: GenerationResult, sampler: _ClipSampler, clip: int) -> None:
    """Append the clip's DiT passes run / skipped to the result, and log them when the step cache is on."""
    run, skipped = sampler.passes
    result.passes_run.append(run)
    result.passes_skipped.append(skipped)
    if sampler.cache is not None:
        log.info("clip %d: step cache skipped %d of %d DiT passes", clip, skipped, run + skipped)


def _frame_maps(sampler: _ClipSampler, patch, cond: Conditioning, opts: VideoOptions) -> torch.Tensor:
    """Mean router probabilities of a clip -> per output frame [clip_frames, h', w', 2] (hand, face)."""
    (h, w), frames = cond.person.shape[-2:], opts.clip_frames // 4
    grid = (frames, h // patch[1], w // patch[2], 3)
    probs = (sampler.router_sum / sampler.router_steps).view(grid)[..., 1:]
    return probs.repeat_interleave(4, dim=0).cpu()
