"""Step distillation of the toy bundle: a kohya-format LoRA for the 4-step `lightning` preset (euler, cfg 1, shift 5).

Teacher: the bundle's DiT sampled as `cointeract demo` does (euler, 40 steps, cfg 3, shift 1), through the
pipeline's own `generate`, so its conditioning, noise (seed + clip) and guidance are the pipeline's. Data: stories of
the demo's toy world (`held_out_inputs(demo_world(), s, clips)` for world seeds s >= 1), written to files and read
back exactly as the shipped story is; world seed 0 is the shipped held-out story (`toy/assets`) and is never used.

Student: the same DiT with a rank-r LoRA on every block's self_attn / cross_attn q, k, v, o and FFN linears (the
targets of lightx2v / Lightning LoRAs), run at cfg 1 (one pass: the LoRA also absorbs the guidance) on the 4-step
table σ = 1, .9375, .8333, .625. Objective (trajectory distillation by unrolling, Luhman & Luhman 2021 with the
student's own 4 steps): from the teacher's noise, roll out the student's Euler steps with gradients through the
whole chain; at each step i its x0 prediction x_i − σ_i·v_i must match the teacher's output x0*:

    loss = mean_i ‖x_i − σ_i·v_i − x0*‖² / ‖x0*‖²

The last term is the lightning output's own error (Euler's last step lands on its x0 prediction); the earlier terms
ask for x0* from every state the sampler visits, which is also what `lcm` (the `distill` preset) reads. The LoRA is
written in kohya format on Wan module names (`lora_unet_blocks_0_self_attn_q.lora_down.weight`, `.lora_up.weight`,
`.alpha` = rank), so `--lora` reads it through the community-LoRA loader, as it reads a lightx2v / Lightning file.

    python -m comfyui_cointeract.train.demo.distill --out toy-distill            # data, teacher, training, table
    python -m comfyui_cointeract.train.demo.distill --measure FILE.safetensors   # held-out table of a LoRA file
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ...cointeract_core.media import load_audio, load_image
from ...cointeract_core.model.dit import CoInteractDiT
from ...cointeract_core.pipeline.build import InputOptions, build_conditioning
from ...cointeract_core.pipeline.clips import GenerationResult, VideoOptions, _ClipSampler, generate
from ...cointeract_core.pipeline.conditioning import Conditioning
from ...cointeract_core.pipeline.noise import clip_renoise
from ...cointeract_core.sampling.presets import SAMPLER_PRESETS
from ...cointeract_core.sampling.sampler import SamplerConfig
from ...cointeract_core.toy.bundle import Bundle, load_bundle
from ...cointeract_core.weights.lora import LoRALinear
from ...cointeract_core.weights.lora_stack import apply_loras
from ...cointeract_core.weights.safetensors_io import write_safetensors
from .data import demo_world, held_out_inputs, write_inputs

__all__ = [
    "ASSETS",
    "TEACHER",
    "STUDENT",
    "DistillConfig",
    "TeacherClip",
    "story_conditioning",
    "world_story",
    "clip_noise",
    "teacher_clips",
    "add_lora",
    "lora_parameters",
    "student_rollout",
    "distill_loss",
    "train_lora",
    "kohya_state_dict",
    "save_kohya",
    "compare",
    "measure",
    "main",
]

ASSETS = Path(__file__).resolve().parents[2] / "cointeract_core" / "toy" / "assets"
TEACHER = SamplerConfig(steps=40, cfg=3.0, shift=1.0)  # `cointeract demo`'s sampler at its accurate end
STUDENT = SAMPLER_PRESETS["lightning"]  # euler, 4 steps, cfg 1, shift 5
HELD_OUT_WORLD_SEED = 0  # toy/assets is held_out_inputs(demo_world(), 0, 2), byte for byte
TARGETS = re.compile(r"^blocks\.\d+\.(self_attn\.[qkvo]|cross_attn\.[qkvo]|ffn\.ffn_base\.[02])$")
_WAN_FFN = re.compile(r"\.ffn\.ffn_base\.")  # our MoE-wrapped FFN; Wan (and LoRA files) call it blocks.N.ffn.{0,2}
_TOY_INPUTS = InputOptions(height=64, width=64, person_fit="cover", product_margin=1.0, loudness_lufs=-23.0)


@dataclass(frozen=True)
class DistillConfig:
    """What `distill` trains: stories of the toy world, LoRA rank, optimisation, rollout solver, seed."""

    stories: int = 24  # training stories (world seeds 1 .. stories)
    clips: int = 2  # 80-frame clips per story (clip 1 is conditioned on the teacher's clip 0)
    rank: int = 16
    iters: int = 600
    lr: float = 2e-3
    seed: int = 0  # LoRA init, sample order and noise seeds
    solver: str = "euler"  # student rollout in training: euler (lightning), lcm (distill) or mix (alternate)


@dataclass
class TeacherClip:
    """One training pair: the student's DiT inputs for a clip, the teacher's seed, noise and output x0*
    (noise and x0* [1, C, F, h, w])."""

    story: int
    clip: int
    seed: int  # the generation seed (the clip's noise is seed + clip, as in `generate`)
    inputs: dict  # the positive-branch DiT keyword inputs (_ClipSampler.pos), motion from the teacher's last clip
    noise: torch.Tensor
    target: torch.Tensor


def story_conditioning(bundle: Bundle, folder: Path, clips: int) -> Conditioning:
    """person.png, product.png, speech.wav, prompts.txt in `folder` -> Conditioning, preprocessed as the toy trained
    (cover, margin 1, -23 LUFS, 64x64; as bench/step_cache_toy.py `toy_story`); latents [1, 16, 1, 8, 8]."""
    _, codec, text, audio = bundle
    speech = load_audio(folder / "speech.wav", sample_rate=audio.sample_rate)
    prompts = [p for p in (folder / "prompts.txt").read_text().splitlines() if p.strip()]
    person, product = load_image(folder / "person.png"), load_image(folder / "product.png")
    opts = dataclasses.replace(_TOY_INPUTS, max_clips=clips)
    return build_conditioning(
        codec, text, audio, person, prompts, speech.waveform, speech.sample_rate, product=product, opts=opts
    )


def world_story(bundle: Bundle, world_seed: int, clips: int) -> Conditioning:
    """The demo world's story of `world_seed` (not the shipped held-out one), written to files and read back."""
    if world_seed == HELD_OUT_WORLD_SEED:
        raise ValueError("world seed 0 is the shipped held-out story; training stories use seeds >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        write_inputs(held_out_inputs(demo_world(), world_seed, clips), Path(tmp))
        return story_conditioning(bundle, Path(tmp), clips)


def clip_noise(cond: Conditioning, seed: int, clip: int, frames: int = 20) -> torch.Tensor:
    """The noise `generate` draws for clip `clip` at `seed`: [1, C, frames, h, w] (latent 0 of the draw dropped)."""
    c, (h, w) = cond.person.shape[1], cond.person.shape[-2:]
    gen = torch.Generator("cpu").manual_seed(seed + clip)
    return torch.randn(1, c, frames + 1, h, w, generator=gen)[:, :, 1:]


def teacher_clips(
    model: CoInteractDiT, bundle: Bundle, cond: Conditioning, story: int, seed: int, clips: int
) -> tuple[list[TeacherClip], GenerationResult]:
    """Run the teacher (TEACHER at `seed`) on a story through `generate` -> per clip a TeacherClip, and the result."""
    opts = VideoOptions(max_clips=clips)
    result = generate(model, bundle[1], cond, dataclasses.replace(TEACHER, seed=seed), opts)
    out = []
    for r, (target, motion) in enumerate(zip(result.latents, result.motion_latents)):
        inputs = _ClipSampler(model, cond, r, motion, STUDENT, opts).pos
        out.append(TeacherClip(story, r, seed, inputs, clip_noise(cond, seed, r, opts.clip_frames // 4), target))
    return out, result


def add_lora(model: nn.Module, rank: int) -> list[str]:
    """Freeze `model` and wrap every TARGETS nn.Linear in a LoRALinear of `rank` (B = 0: starts as the base)."""
    for p in model.parameters():
        p.requires_grad_(False)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and TARGETS.match(n)]
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, LoRALinear(model.get_submodule(name), rank))
    return names


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable factors (lora_A [r, in], lora_B [out, r]) of every LoRALinear in `model`."""
    return [p for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_A.weight, m.lora_B.weight)]


def _timestep(sigma: float) -> torch.Tensor:
    """[1] the DiT timestep of σ as `sample` feeds it: 1000·σ in float32, rounded through bf16."""
    return (torch.tensor([sigma], dtype=torch.float32) * 1000.0).to(torch.bfloat16).float()


def student_rollout(
    model: nn.Module,
    inputs: dict,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    solver: str = "euler",
    renoise: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """The cfg-1 sampler's steps from noise [1, C, F, h, w] with gradients -> the x0 prediction x − σ·v of each step.

    euler: x ← x + (σ' − σ)·v (the last step lands on its x0 prediction); lcm: x ← σ'·ε + (1 − σ')·x0 with fresh
    ε from `renoise` (the pipeline's clip_renoise). Same operations and timesteps as `generate` at cfg 1."""
    x, preds = noise, []
    for i in range(len(sigmas) - 1):
        sigma, nxt = float(sigmas[i]), float(sigmas[i + 1])
        v = model(x, _timestep(sigma), **inputs).velocity
        x0 = x - sigma * v
        preds.append(x0)
        if solver == "euler":
            x = x + v * (nxt - sigma)
        elif solver == "lcm":
            x = nxt * renoise(x0) + (1.0 - nxt) * x0 if nxt > 0 else x0
        else:
            raise ValueError(f"unknown solver {solver!r}; use euler or lcm")
    return preds


def distill_loss(preds: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Mean over steps of ‖x0_i − x0*‖² / ‖x0*‖² (x0 predictions and target [1, C, F, h, w]) -> scalar."""
    scale = target.square().sum()
    return torch.stack([(p - target).square().sum() / scale for p in preds]).mean()


def train_lora(
    model: nn.Module, data: Sequence[TeacherClip], cfg: DistillConfig, log: Callable[[str], None] = print
) -> list[float]:
    """Train the LoRA factors in `model` (after add_lora) on teacher clips -> the loss of every iteration.

    AdamW, warm-up min(20, iters / 10) iterations then cosine to 0, gradient norm clipped at 1; one clip per
    iteration drawn from a generator seeded by cfg.seed (deterministic on one thread)."""
    params = lora_parameters(model)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    warm, rest = min(20, max(1, cfg.iters // 10)), max(1, cfg.iters - min(20, max(1, cfg.iters // 10)))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: (i + 1) / warm if i < warm else 0.5 * (1 + math.cos(math.pi * min(1.0, (i - warm) / rest)))
    )
    gen, sigmas, losses = torch.Generator().manual_seed(cfg.seed), STUDENT.sigmas(), []
    order: list[int] = []
    for it in range(cfg.iters):
        if not order:
            order = torch.randperm(len(data), generator=gen).tolist()
        item = data[order.pop()]
        solver = cfg.solver if cfg.solver != "mix" else ("euler", "lcm")[it % 2]
        renoise = clip_renoise(item.seed + item.clip, item.noise.shape[2])
        loss = distill_loss(student_rollout(model, item.inputs, item.noise, sigmas, solver, renoise), item.target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if (it + 1) % 50 == 0 or it == 0:
            log(f"iter {it + 1}/{cfg.iters}: loss {sum(losses[-50:]) / len(losses[-50:]):.4f}")
    return losses


def kohya_state_dict(model: nn.Module, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Every LoRALinear of `model` in kohya format on Wan names: `lora_unet_<name>.lora_down.weight` [r, in],
    `.lora_up.weight` [out, r] (strength folded in) and `.alpha` = r (scale alpha / r = 1)."""
    out = {}
    for name, m in model.named_modules():
        if not isinstance(m, LoRALinear):
            continue
        key = "lora_unet_" + _WAN_FFN.sub(".ffn.", name).replace(".", "_")
        rank = m.lora_A.out_features
        out[f"{key}.lora_down.weight"] = m.lora_A.weight.detach().to(dtype).contiguous()
        out[f"{key}.lora_up.weight"] = (m.strength * m.lora_B.weight.detach()).to(dtype).contiguous()
        out[f"{key}.alpha"] = torch.tensor(float(rank), dtype=dtype)
    return out


def save_kohya(path: Path, model: nn.Module, cfg: DistillConfig, extra: dict | None = None) -> Path:
    """Write the LoRA of `model` (kohya_state_dict) with its recipe in the metadata -> path."""
    recipe = {"config": dataclasses.asdict(cfg), "teacher": dataclasses.asdict(TEACHER)}
    meta = {
        "ss_network_dim": str(cfg.rank),
        "ss_network_alpha": str(cfg.rank),
        "cointeract_toy_distill": json.dumps(recipe | {"student": "lightning (euler, 4 steps, cfg 1, shift 5)"}),
        **(extra or {}),
    }
    write_safetensors(Path(path), kohya_state_dict(model), meta)
    return Path(path)


def compare(ref: GenerationResult, res: GenerationResult) -> dict[str, float]:
    """Relative L2 error of the frames and the latents (all clips), PSNR of the frames in [0, 1]."""
    lat_ref, lat = torch.cat(ref.latents, dim=2), torch.cat(res.latents, dim=2)
    mse = float(((res.frames - ref.frames) ** 2).mean())
    return {
        "frames": float((res.frames - ref.frames).norm() / ref.frames.norm()),
        "latents": float((lat - lat_ref).norm() / lat_ref.norm()),
        "psnr": 10 * math.log10(1 / mse) if mse > 0 else math.inf,
    }


def _timed(model: nn.Module, codec, cond: Conditioning, sampler: SamplerConfig, opts: VideoOptions) -> tuple:
    """`generate(...)` -> (its result, the CPU seconds it took)."""
    t = time.process_time()
    result = generate(model, codec, cond, sampler, opts)
    return result, time.process_time() - t


def measure(
    bundle_path: Path,
    lora_path: Path | None,
    stories: Sequence[tuple[str, Conditioning, int, GenerationResult | None]],
    clips: int,
    steps8: bool = True,
) -> list[dict]:
    """Per story (name, conditioning, seed, teacher result or None) and setting: errors against the teacher and CPU
    seconds per clip. The LoRA goes in through `apply_loras`, as `cointeract generate --lora` merges it."""
    base = load_bundle(bundle_path)
    tuned = load_bundle(bundle_path)
    if lora_path is not None:
        apply_loras(tuned[0], [(str(lora_path), 1.0)])
    settings = [("lightning (euler 4, cfg 1, shift 5)", base, STUDENT), ("distill (lcm 4, cfg 1, shift 5)", base,
                SAMPLER_PRESETS["distill"])]  # fmt: skip
    if steps8:
        settings.append(("euler 8, cfg 1, shift 5", base, dataclasses.replace(STUDENT, steps=8)))
    if lora_path is not None:
        settings += [(f"{n} + LoRA", tuned, s) for n, _, s in settings]
    opts, rows = VideoOptions(max_clips=clips), []
    for story, cond, seed, ref in stories:
        teacher_s = math.nan
        if ref is None:
            ref, teacher_s = _timed(base[0], base[1], cond, dataclasses.replace(TEACHER, seed=seed), opts)
        rows.append({"story": story, "setting": "teacher (euler 40, cfg 3, shift 1)", "s_per_clip": teacher_s / clips,
                     "frames": 0.0, "latents": 0.0, "psnr": math.inf})  # fmt: skip
        for name, (model, codec, *_), sampler in settings:
            res, s = _timed(model, codec, cond, dataclasses.replace(sampler, seed=seed), opts)
            rows.append({"story": story, "setting": name, "s_per_clip": s / clips} | compare(ref, res))
    return rows


def _table(rows: list[dict]) -> str:
    """Mean over stories of each (group, setting) -> a markdown table."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["story"].split(":")[0], r["setting"]), []).append(r)
    lines = ["| stories | setting | frames rel. err | latents rel. err | PSNR dB | CPU s / clip |", "|---" * 6 + "|"]
    for (group, setting), rs in groups.items():
        mean = {k: sum(r.get(k, math.nan) for r in rs) / len(rs) for k in ("frames", "latents", "psnr", "s_per_clip")}
        lines.append(
            f"| {group} ({len(rs)}) | {setting} | {mean['frames']:.2%} | {mean['latents']:.2%} | {mean['psnr']:.1f} "
            f"| {mean['s_per_clip']:.2f} |"
        )
    return "\n".join(lines)


def _noise_seed(cfg: DistillConfig, story: int) -> int:
    """The generation seed of training story `story` (clips use seed + clip): away from the held-out seed 0."""
    return 1000 * (cfg.seed + 1) + 10 * story


def _teacher_data(bundle: Bundle, cfg: DistillConfig, eval_stories: int, cache: Path) -> tuple[list, list, float]:
    """(training clips, the first `eval_stories` stories with their teacher results, teacher seconds); reused from
    `cache` when it was made for the same stories, clips and seed (the teacher is deterministic)."""
    key = {"stories": cfg.stories, "clips": cfg.clips, "seed": cfg.seed, "eval_stories": eval_stories}
    if cache.is_file():
        saved = torch.load(cache, weights_only=False)
        if saved["key"] == key:
            return saved["data"], saved["refs"], saved["seconds"]
    t0, data, refs = time.monotonic(), [], []
    for k in range(1, cfg.stories + 1):
        cond = world_story(bundle, k, cfg.clips)
        clips, ref = teacher_clips(bundle[0], bundle, cond, k, _noise_seed(cfg, k), cfg.clips)
        data += clips
        if k <= eval_stories:
            refs.append((f"train:{k}", cond, _noise_seed(cfg, k), ref))
    seconds = time.monotonic() - t0
    torch.save({"key": key, "data": data, "refs": refs, "seconds": seconds}, cache)
    return data, refs, seconds


def run(args: argparse.Namespace) -> dict:
    """Teacher data, training, the LoRA file, and the train / unseen / held-out table (see the module docstring)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = DistillConfig(args.stories, args.clips, args.rank, args.iters, args.lr, args.seed, args.solver)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bundle = load_bundle(args.bundle)
    t0 = time.monotonic()
    data, train_refs, teacher_s = _teacher_data(bundle, cfg, args.eval_stories, out / "teacher.pt")
    print(f"teacher: {len(data)} clips of {cfg.stories} stories in {teacher_s:.0f} s", flush=True)
    t0 = time.monotonic()
    model = bundle[0]
    add_lora(model, cfg.rank)
    losses = train_lora(model, data, cfg)
    train_s = time.monotonic() - t0
    path = save_kohya(out / "toy_distill_lora.safetensors", model, cfg)
    print(f"training: {cfg.iters} iterations in {train_s:.0f} s -> {path} ({path.stat().st_size / 1e3:.0f} kB)")
    unseen = [
        (f"unseen:{k}", world_story(load_bundle(args.bundle), k, cfg.clips), _noise_seed(cfg, k), None)
        for k in range(cfg.stories + 1, cfg.stories + 1 + args.eval_stories)
    ]
    held = [("held-out (shipped)", story_conditioning(load_bundle(args.bundle), ASSETS, cfg.clips), 0, None)]
    rows = measure(Path(args.bundle), path, train_refs + unseen + held, cfg.clips, steps8=not args.no_steps8)
    report = {"config": dataclasses.asdict(cfg), "teacher_s": teacher_s, "train_s": train_s, "losses": losses,
              "rows": rows, "file": str(path), "bytes": path.stat().st_size}  # fmt: skip
    (out / "report.json").write_text(json.dumps(report, indent=1))
    table = _table(rows)
    (out / "table.md").write_text(table + "\n")
    print(table)
    return report


def main(argv: list[str] | None = None) -> int:
    """Entry point: `python -m comfyui_cointeract.train.demo.distill` (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = DistillConfig()
    p.add_argument("--out", default="toy-distill", help="folder for the LoRA, report.json and table.md")
    p.add_argument("--bundle", default=str(ASSETS / "toy_bundle.safetensors"))
    p.add_argument("--stories", type=int, default=d.stories, help="training stories (toy-world seeds 1..N)")
    p.add_argument("--clips", type=int, default=d.clips, help="clips per story, trained and measured")
    p.add_argument("--rank", type=int, default=d.rank)
    p.add_argument("--iters", type=int, default=d.iters)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--solver", choices=("euler", "lcm", "mix"), default=d.solver, help="rollout solver in training")
    p.add_argument("--eval-stories", type=int, default=4, help="training and unseen stories measured besides held-out")
    p.add_argument("--no-steps8", action="store_true", help="leave the 8-step rows out of the table")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--measure", metavar="LORA", help="only measure this LoRA file on the shipped held-out story")
    args = p.parse_args(argv)
    if args.measure:
        torch.set_num_threads(args.threads)
        held = [("held-out (shipped)", story_conditioning(load_bundle(args.bundle), ASSETS, args.clips), 0, None)]
        print(_table(measure(Path(args.bundle), Path(args.measure), held, args.clips, steps8=not args.no_steps8)))
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
