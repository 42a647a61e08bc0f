"""Checks that a Conditioning fits a model, run before sampling so that bad input fails in seconds, not after a
clip has been sampled. Messages name the input to change (they reach ComfyUI users as they are)."""

from __future__ import annotations

from ..errors import UserError
from ..model.config import DiTConfig
from .conditioning import Conditioning, clip_count

__all__ = [
    "check_conditioning",
    "check_reference_image",
    "check_speech_duration",
    "MAX_SIDE",
    "MIN_REFERENCE_SIDE",
    "MIN_SPEECH_SECONDS",
]

MAX_SIDE = 4096  # the largest frame side the nodes and the CLI accept (the model was trained at 832 x 480, 1280 x 720)
MIN_REFERENCE_SIDE = 16  # a person or product image smaller than this on a side holds nothing to recognise
MIN_SPEECH_SECONDS = 0.1  # wav2vec2 needs 2 feature frames (~45 ms) for one 25 fps video frame; 0.1 s with margin


def check_reference_image(height: int, width: int, what: str) -> None:
    """Refuse a person / product image [height, width] with a side under MIN_REFERENCE_SIDE pixels."""
    if min(height, width) < MIN_REFERENCE_SIDE:
        raise UserError(
            f"the {what} image is {width}x{height} (WxH); it must be at least {MIN_REFERENCE_SIDE}x"
            f"{MIN_REFERENCE_SIDE} pixels: give a larger image"
        )


def check_speech_duration(samples: int, sample_rate: int) -> None:
    """Refuse speech shorter than MIN_SPEECH_SECONDS (too short for one video frame)."""
    seconds = samples / sample_rate
    if seconds < MIN_SPEECH_SECONDS:
        raise UserError(
            f"the speech is {seconds:.2f} s; at least {MIN_SPEECH_SECONDS:.2f} s is needed for one video frame "
            "(a clip is 3.2 s): give a longer recording"
        )


def _text_problems(cfg: DiTConfig, cond: Conditioning) -> list[str]:
    texts = [
        *cond.prompts,
        cond.negative,
        *(cond.hoi_prompts or ()),
        *(() if cond.hoi_negative is None else (cond.hoi_negative,)),
    ]
    problems = []
    widths = sorted({t.shape[-1] for t in texts})
    if widths != [cfg.text_dim]:
        problems.append(
            f"the text encoder gives {widths} features per token but the model takes {cfg.text_dim}; "
            "use the umT5-XXL text encoder (CLIPLoader, type wan)"
        )
    longest = max(t.shape[-2] for t in texts)
    if longest > cfg.text_len:
        problems.append(f"a prompt encodes to {longest} tokens; the model takes at most {cfg.text_len}: shorten it")
    return problems


def _audio_problems(cfg: DiTConfig, cond: Conditioning) -> list[str]:
    audio = cond.audio
    if audio.ndim != 4 or audio.shape[0] != 1:
        return [f"audio features must be [1, layers, width, frames]; got {tuple(audio.shape)}"]
    _, layers, width, frames = audio.shape
    if (layers, width) != (cfg.audio_layers, cfg.audio_dim):
        return [
            f"the audio encoder gives {layers} hidden states of width {width}; the model takes {cfg.audio_layers} "
            f"of width {cfg.audio_dim} (wav2vec2-large: 25 x 1024); load the matching audio encoder"
        ]
    return [] if frames > 0 else ["the audio gives no video frame at 25 fps; use longer audio"]


def _latent_problems(cfg: DiTConfig, cond: Conditioning, clips: int) -> list[str]:
    person, (_, ph, pw) = cond.person, cfg.patch_size
    if person.ndim != 5 or person.shape[1] != cfg.in_dim:
        return [
            f"reference latents have shape {tuple(person.shape)} but the model takes {cfg.in_dim} latent channels; "
            "encode the references with the Wan 2.1 VAE"
        ]
    h, w = person.shape[-2:]
    problems = []
    if h % ph or w % pw:
        problems.append(
            f"latents {h}x{w} are not divisible by the patch {ph}x{pw}: use sides that are multiples of 16 px"
        )
    if clips > 1 and (h < 4 * ph or w < 4 * pw):
        problems.append(f"latents {h}x{w} are too small for the motion frames of clip 2 on (need >= {4 * ph}x{4 * pw})")
    if cond.product is not None and cond.product.shape != person.shape:
        problems.append(f"product latent {tuple(cond.product.shape)} differs from the person's {tuple(person.shape)}")
    return problems


def check_conditioning(
    cfg: DiTConfig, cond: Conditioning, *, hoi_preview: bool = False, router_maps: bool = False,
    clip_frames: int = 80, max_clips: int | None = None,
) -> None:  # fmt: skip
    """Raise one ValueError listing everything in `cond` (and the asked-for outputs) that `cfg` cannot take."""
    clips = clip_count(cond.audio_frames, clip_frames, max_clips) if cond.audio.ndim == 4 else 1
    problems = _latent_problems(cfg, cond, clips) + _text_problems(cfg, cond) + _audio_problems(cfg, cond)
    if hoi_preview and cfg.hoi is None:
        problems.append("HOI preview asked of a checkpoint without HOI weights (no depth_* keys); turn it off")
    elif hoi_preview and cond.hoi_prompts is None:
        problems.append("HOI preview needs the HOI prompts (HOI_PREFIX + prompt); encode them")
    if router_maps and cfg.moe is None:
        problems.append("router heatmaps need the Human-Aware MoE: load a CoInteract checkpoint, or turn them off")
    if problems:
        raise ValueError("; ".join(problems))
