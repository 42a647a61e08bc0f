"""CoInteractSampler: references + prompts + speech -> video frames, the sound trimmed to them, and previews."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from ..cointeract_core.pipeline.checks import check_conditioning
from ..cointeract_core.pipeline.clips import GenerationResult, VideoOptions, generate
from ..cointeract_core.pipeline.conditioning import Conditioning, clip_count
from ..cointeract_core.pipeline.heatmaps import overlay_heatmaps
from ..cointeract_core.sampling.sampler import SAMPLERS, SamplerConfig
from . import services
from .adapters import ComfyVAE
from .step_cache import step_cache_options
from .types import (
    COINTERACT_AUDIO,
    COINTERACT_MODEL,
    COINTERACT_PROMPTS,
    COINTERACT_REFS,
    AudioFeatures,
    Prompts,
    References,
)

log = logging.getLogger(__name__)

__all__ = ["CoInteractSampler", "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "StepProgress"]

MAX_SEED = 2**53 - 1  # the editor's numbers are doubles
NODE_SCHEDULERS = ("shifted", "simple")  # step_list needs a list of timesteps: CLI / core only


class StepProgress:
    """The core's step callback over all clips: interrupt check, progress bar and latent preview per step."""

    def __init__(self, clips: int, steps: int, wan21_latents: bool) -> None:
        self.steps, self.clip, self.last = steps, 0, 0
        self.update = services.latent_preview_callback(clips * steps, wan21_latents)

    def __call__(self, step: int, total: int, x: torch.Tensor) -> None:
        if step <= self.last:  # a new clip started
            self.clip += 1
        self.last = step
        services.check_interrupt()  # raises on cancel; the sampler node then unloads the model
        self.update(self.clip * self.steps + step, x)


def _memory_estimate(dit: torch.nn.Module, refs: References, opts: VideoOptions) -> int:
    """Bytes of activations for one guided step, ComfyUI's rule for Wan (area x 0.01 MB x dim / 2222)."""
    h, w = refs.person.shape[-2:]
    frames = opts.clip_frames // 4 * (2 if opts.hoi_preview else 1) + 1 + 19  # target (+HOI), refs, motion
    return int(2 * frames * h * w * 2 * 0.01 * (dit.cfg.dim / 2222) * 1024 * 1024)


def _fit_audio(audio: AudioFeatures, frames: int) -> dict:
    """AUDIO of exactly `frames` video frames at 25 fps: the speech cut, or padded with silence."""
    samples = round(frames / audio.fps * audio.sample_rate)
    wave = audio.waveform[:, :samples]
    wave = F.pad(wave, (0, samples - wave.shape[-1]))
    return {"waveform": wave[None].contiguous(), "sample_rate": audio.sample_rate}


def _placeholder(like: torch.Tensor) -> torch.Tensor:
    """One black frame [1, H, W, 3], for an output that was not asked for."""
    return torch.zeros(1, *like.shape[1:3], 3)


class CoInteractSampler:
    CATEGORY = "CoInteract"
    DESCRIPTION = (
        "Generates the video clip by clip (80 frames at 25 fps each, chained through the last 73 frames) as the "
        "official inference does: flow matching with shift, classifier-free guidance against the negative prompt "
        "and silenced speech, a seed per clip (seed + clip index). Returns the frames and the speech trimmed to "
        "them (for CreateVideo / SaveVideo at 25 fps), the latents, and optionally the HOI-stream preview and the "
        "MoE router heatmaps (hand red, face blue)."
    )
    RETURN_TYPES = ("IMAGE", "AUDIO", "LATENT", "IMAGE", "IMAGE")
    RETURN_NAMES = ("frames", "audio", "latent", "hoi_preview", "heatmaps")
    OUTPUT_TOOLTIPS = (
        "Video frames [T, H, W, 3] at 25 fps.",
        "The speech, cut (or padded with silence) to the frames.",
        "Latents of every clip, concatenated in time (Wan 2.1 VAE space; each clip was decoded after its motion "
        "frames, so VAEDecode of this only approximates the frames).",
        "The HOI-stream video (rendered body + object), when hoi_preview is on; else one black frame.",
        "Frames with the router's hand (red) and face (blue) probabilities, when router_heatmaps is on; else one "
        "black frame.",
    )
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": (COINTERACT_MODEL, {"tooltip": "From CoInteract Model Loader (or CoInteract LoRA)."}),
                "vae": ("VAE", {"tooltip": "The Wan 2.1 VAE (decodes each clip, encodes its motion frames)."}),
                "references": (COINTERACT_REFS, {"tooltip": "From CoInteract References."}),
                "prompts": (COINTERACT_PROMPTS, {"tooltip": "From CoInteract Prompts."}),
                "audio": (COINTERACT_AUDIO, {"tooltip": "From CoInteract Audio."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                         "tooltip": "Noise seed; clip r uses seed + r (the official code uses 0)."}),
                "steps": ("INT", {"default": 40, "min": 1, "max": 200, "tooltip": "Flow-matching steps per clip "
                          "(official 40)."}),
                "cfg": ("FLOAT", {"default": 7.0, "min": 1.0, "max": 20.0, "step": 0.1, "tooltip": "Classifier-free "
                        "guidance scale (official 7; 1 skips the negative pass, twice as fast)."}),
                "shift": ("FLOAT", {"default": 7.0, "min": 0.1, "max": 20.0, "step": 0.1, "tooltip": "Sigma shift "
                          "of the flow-matching schedule (official 7)."}),
                "max_clips": ("INT", {"default": 0, "min": 0, "max": 1000, "tooltip": "Generate at most this many "
                              "80-frame clips (0 = as many as the speech needs)."}),
                "trim_to_audio": ("BOOLEAN", {"default": True, "tooltip": "Cut the frames to the speech's length "
                                  "(the last clip is usually longer than the speech that is left)."}),
                "hoi_preview": ("BOOLEAN", {"default": False, "tooltip": "Also generate the HOI structure stream "
                                "(needs HOI weights; about doubles the time; the RGB frames stay the same)."}),
                "router_heatmaps": ("BOOLEAN", {"default": False, "tooltip": "Also output the MoE router's hand and "
                                    "face probabilities over the frames (needs the MoE)."}),
                "sampler_name": (list(SAMPLERS), {"default": "euler", "tooltip": "euler: the official sampler. "
                                 "unipc / dpmpp_2m: second order, for fewer steps (e.g. 20). lcm: for step-distill "
                                 "LoRAs (lightx2v: lcm, 4 steps, shift 5, cfg 1); Wan2.2-Lightning LoRAs use euler. "
                                 "Except euler, ComfyUI's own samplers run (uni_pc_bh2, dpmpp_2m, lcm)."}),
                "scheduler": (list(NODE_SCHEDULERS), {"default": "shifted", "tooltip": "shifted: the official "
                              "sigma table (at 4 steps, shift 5 it is the step-distill table). simple: ComfyUI's "
                              "simple (the same whenever steps divides 1000)."}),
            }
        }  # fmt: skip

    def sample(
        self, model: Any, vae: Any, references: References, prompts: Prompts, audio: AudioFeatures, seed: int,
        steps: int, cfg: float, shift: float, max_clips: int, trim_to_audio: bool, hoi_preview: bool,
        router_heatmaps: bool, sampler_name: str = "euler", scheduler: str = "shifted",
    ) -> tuple:  # fmt: skip
        dit = model.model
        cond = Conditioning(
            person=references.person, product=references.product, product_scale=references.product_scale,
            prompts=prompts.prompts, negative=prompts.negative, hoi_prompts=prompts.hoi_prompts,
            hoi_negative=prompts.hoi_negative, audio=audio.features,
        )  # fmt: skip
        opts = VideoOptions(max_clips=max_clips or None, hoi_preview=hoi_preview, router_maps=router_heatmaps)
        check_conditioning(
            dit.cfg, cond, hoi_preview=hoi_preview, router_maps=router_heatmaps, max_clips=opts.max_clips
        )
        sampler = SamplerConfig(
            steps=steps,
            shift=shift,
            cfg=cfg,
            seed=seed,
            sampler=sampler_name,
            scheduler=scheduler,
            cache=step_cache_options(model),  # from CoInteract Step Cache
        )
        memory = _memory_estimate(dit, references, opts)
        cvae = ComfyVAE(vae, after_call=lambda: services.load_model(model, memory))
        if cvae.latent_channels != dit.cfg.in_dim:
            raise ValueError(f"the VAE gives {cvae.latent_channels} latent channels; the model takes {dit.cfg.in_dim}")
        clips = clip_count(audio.frames, opts.clip_frames, opts.max_clips)
        progress = StepProgress(clips, steps, wan21_latents=cvae.latent_channels == 16)
        log.info(
            "CoInteract: sampling %d clip(s) x %d steps (%s, %s) at %dx%d", clips, steps, sampler_name, scheduler,
            references.width, references.height,
        )  # fmt: skip
        solver = services.comfy_solver(sampler_name, shift)
        try:
            result = generate(services.load_model(model, memory), cvae, cond, sampler, opts, progress, solver)
        except BaseException:
            services.unload_model(model)  # cancelled or failed: hold no model memory
            raise
        services.release_model(model)
        return self._outputs(result, audio, cvae, trim_to_audio)

    @staticmethod
    def _outputs(result: GenerationResult, audio: AudioFeatures, vae: ComfyVAE, trim: bool) -> tuple:
        frames = result.frames
        n = min(len(frames), result.audio_frames) if trim else len(frames)
        hoi = _placeholder(frames) if result.hoi_frames is None else result.hoi_frames[:n]
        heat = _placeholder(frames)
        if result.router_maps is not None:
            m = min(n, len(result.router_maps))
            heat = overlay_heatmaps(frames[:m], result.router_maps[:m])
        latent = {"samples": vae.to_comfy_latent(torch.cat(result.latents, dim=2))}
        device = services.intermediate_device()
        return (frames[:n].to(device), _fit_audio(audio, n), latent, hoi.to(device), heat.to(device))


NODE_CLASS_MAPPINGS = {"CoInteractSampler": CoInteractSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"CoInteractSampler": "CoInteract Sampler"}
