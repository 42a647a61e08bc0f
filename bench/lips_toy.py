"""Whether and why a toy bundle's lips follow the speech: each explanation measured on the shipped story (issue 16).

Prints (a) the mouth's size against the DiT's 16-px tokens and what the codec keeps of it (and of the hands: the
ground truth through PCA codecs of 16-64 channels, scored like a generated video), (b) how the audio
features the DiT gets per clip track the true mouth opening, at which lag, and which audio columns feed one latent
frame, (c) how much the audio injector adds to the residual stream and how much of that changes with the speech,
(d) the share of the flow-loss target that the mouth carries. One thread, about a minute of CPU.
`python bench/lips_toy.py [--bundle FILE]` from the repository root, with the pack installed.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from comfyui_cointeract.cointeract_core.media.audio import load_audio, write_wav
from comfyui_cointeract.cointeract_core.pipeline.clips import VideoOptions, generate
from comfyui_cointeract.cointeract_core.sampling.sampler import SamplerConfig
from comfyui_cointeract.cointeract_core.toy.bundle import load_bundle
from comfyui_cointeract.train.demo import evaluate as ev
from comfyui_cointeract.train.demo.data import demo_world, fit_toy_codec
from comfyui_cointeract.train.demo.distill import story_conditioning
from comfyui_cointeract.train.toyworld.evaluation import lip_audio_correlation, segment
from comfyui_cointeract.train.toyworld.render import BODY_COLOURS, CLASSES

MOUTH, TOKEN = CLASSES.index("mouth"), 16


def _video(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).float().permute(3, 0, 1, 2)[None] / 127.5 - 1  # [1, 3, T, H, W]


def mouth_size(truth, codec) -> None:
    """(a) mouth pixels and tokens per frame; lip r of the ground truth after a codec round trip."""
    classes = segment(truth.frames, truth.rgb)
    mouth = classes == MOUTH
    area = mouth.sum((1, 2))
    tokens = [len({(y // TOKEN, x // TOKEN) for y, x in zip(*np.nonzero(m))}) for m in mouth]
    print(
        f"(a) mouth area px: min {area.min()} mean {area.mean():.1f} max {area.max()} of {mouth[0].size} "
        f"({100 * area.mean() / mouth[0].size:.2f}% of the frame, {100 * area.mean() / TOKEN**2:.1f}% of one token)"
    )
    print(
        f"    16-px tokens touched per frame: {min(tokens)}..{max(tokens)}; mouth region (union + 1 px) "
        f"{ev.mouth_region(truth).sum()} px"
    )
    frames = np.concatenate([truth.frames[:1], truth.frames])  # 1 + 4k frames, as the codec takes
    back = codec.decode(codec.encode(_video(frames)))[0, :, 1:].permute(1, 2, 3, 0)
    pixels = ((back + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    spf = truth.config.samples_per_frame
    r_codec = lip_audio_correlation(segment(pixels, truth.rgb), truth.audio, spf)
    a_codec = (segment(pixels, truth.rgb) == MOUTH).sum((1, 2))
    for channels in (16, 32, 48, 64):  # the demo's PCA fit with other channel counts: the codec's ceiling
        other = fit_toy_codec(demo_world(), 0, channels)
        px = ((other.decode(other.encode(_video(frames)))[0, :, 1:].permute(1, 2, 3, 0) + 1) * 127.5).round()
        s = ev.score_frames(px.clamp(0, 255).to(torch.uint8).numpy(), truth)
        print(
            f"    ground truth through a {channels}-channel PCA codec: lip r {s['lip_audio_r']:.2f}, contact "
            f"{s['contact_error_px']:.1f} px, missing {s['missing_rate']:.2f}, penetration {s['penetration_rate']:.2f}"
        )
    print(
        f"    codec round trip: lip r {r_codec:.3f} (truth {lip_audio_correlation(classes, truth.audio, spf):.3f}); "
        f"mouth area px mean {a_codec.mean():.1f}, r(area, true area) {np.corrcoef(a_codec, area)[0, 1]:.3f}"
    )


def audio_alignment(bundle, truth, clips: int) -> None:
    """(b) energy feature per 25-fps column vs the true mouth opening per frame, by lag; encoder receptive field."""
    cond = story_conditioning(bundle, ev.ASSETS, clips)
    energy_ch = cond.audio.shape[2] - 3  # log energy: see ToyAudioFeatures.base_features
    env = truth.envelope
    for lag in (-2, -1, 0, 1, 2):
        rs = []
        for r in range(clips):
            col = cond.audio_window(r)[0, 0, energy_ch].numpy()  # what the DiT gets for clip r: [80]
            e = env[r * 80 : (r + 1) * 80]
            a, b = (col[max(0, -lag) : 80 - max(0, lag)], e[max(0, lag) : 80 - max(0, -lag)])
            rs.append(np.corrcoef(a, b)[0, 1])
        print(
            f"(b) r(energy column t, true mouth opening frame t{lag:+d}) per clip: " + " ".join(f"{x:.3f}" for x in rs)
        )
    lat_env = env[: clips * 80].reshape(-1, 4).mean(1)
    lat_col = torch.cat([cond.audio_window(r)[0, 0, energy_ch] for r in range(clips)]).reshape(-1, 4).mean(1)
    print(f"    per latent frame (4 frames): r {np.corrcoef(lat_col.numpy(), lat_env)[0, 1]:.3f}")
    model = bundle[0]
    audio = cond.audio_window(0).clone().requires_grad_(True)
    local, _ = model.encode_audio(audio, 20)
    local[:, 5].sum().backward()
    cols = torch.nonzero(audio.grad.abs().sum((0, 1, 2)) > 0).flatten().tolist()
    print(f"    audio columns that reach latent frame 5 (frames 20..23): {cols[0]}..{cols[-1]} ({len(cols)} columns)")


def injector_share(bundle, clips: int, steps: int) -> dict:
    """(c) ||audio residual|| / ||target tokens|| per injection, and the part of it that changes with the speech."""
    model, codec = bundle[0], bundle[1]
    speech = load_audio(ev.ASSETS / "speech.wav", sample_rate=16000).waveform.numpy()
    records: dict[str, list] = {}

    def run(name: str, waveform: np.ndarray) -> None:
        records[name] = []
        hook = model.audio_injector.register_forward_hook(
            lambda m, args, out: records[name].append((args[1], args[0].norm().item(), out.detach().clone()))
        )
        try:
            with tempfile.TemporaryDirectory() as tmp:
                for n in ("person.png", "product.png", "prompts.txt"):
                    shutil.copy(ev.ASSETS / n, Path(tmp) / n)
                write_wav(Path(tmp) / "speech.wav", waveform, 16000)
                cond = story_conditioning(bundle, Path(tmp), clips)
            generate(
                model,
                codec,
                cond,
                SamplerConfig(steps=steps, cfg=3.0, shift=1.0, seed=0),
                VideoOptions(max_clips=clips),
            )
        finally:
            hook.remove()

    run("speech", speech)
    run("reversed", ev.other_speech(speech))
    for j in sorted({r[0] for r in records["speech"]}):
        a = [r for r in records["speech"] if r[0] == j]
        b = [r for r in records["reversed"] if r[0] == j]
        share = np.mean([r[2].norm().item() / r[1] for r in a])
        change = np.mean([(ra[2] - rb[2]).norm().item() / ra[1] for ra, rb in zip(a, b)])
        print(
            f"(c) injection {j}: ||audio residual|| / ||tokens|| {share:.4f}; "
            f"||residual(speech) - residual(reversed)|| / ||tokens|| {change:.5f}"
        )
    return records


def mouth_loss_share(bundle, truth) -> None:
    """(d) share of the flow-loss target (x0 latents) that the mouth's motion carries: ||E(x0) - E(x0 closed)||^2
    over the expected per-clip loss of a model that knows everything but the mouth (noise variance excluded)."""
    codec = bundle[1]
    frames = np.concatenate([truth.frames[:1], truth.frames])
    classes = segment(frames, truth.rgb)
    closed = frames.copy()
    closed[classes == MOUTH] = BODY_COLOURS["head"]  # no mouth at all: the upper bound of what lips change
    x0, x0c = codec.encode(_video(frames)), codec.encode(_video(closed))
    delta = (x0 - x0c)[:, :, 1:]  # latent 0 (the reference frame) is not a target
    var = x0[:, :, 1:].var().item()
    cells = (delta.abs().amax((0, 1, 2)) > 1e-6).sum().item()
    print(
        f"(d) latent cells touched by the mouth: {cells} of {delta.shape[-1] * delta.shape[-2]}; "
        f"mouth part of the x0 signal: mean square {delta.square().mean().item():.5f} vs x0 variance {var:.3f} "
        f"({100 * delta.square().mean().item() / var:.2f}%)"
    )
    print(
        f"    flow target v = noise - x0 (unit noise + x0): {100 * delta.square().mean().item() / (1 + var):.2f}%"
        " of the per-element loss of a model that predicts the mean (before region weights)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=str(ev.ASSETS / "toy_bundle.safetensors"))
    p.add_argument("--steps", type=int, default=10, help="sampler steps of the injector measurement")
    args = p.parse_args()
    torch.set_num_threads(1)
    bundle, truth = load_bundle(args.bundle), ev.truth_story(2)
    mouth_size(truth, bundle[1])
    audio_alignment(bundle, truth, 2)
    injector_share(bundle, 1, args.steps)
    mouth_loss_share(bundle, truth)


if __name__ == "__main__":
    main()
