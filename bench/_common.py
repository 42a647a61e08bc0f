"""Shared helpers of the bench scripts: package import, 14B-proportioned configs, 480p token mixes, inputs, timing.

Imported by the scripts as `import _common` (bench/ is their sys.path[0]); needs only torch, safetensors, einops,
numpy and the pack. When the pack is not pip-installed (e.g. on a bare GPU machine) it is loaded from this
checkout by file location, as ComfyUI does, without putting the repository root on sys.path.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def import_pack():
    """The `comfyui_cointeract` package (installed, or this checkout loaded by file location)."""
    try:
        return importlib.import_module("comfyui_cointeract")
    except ImportError:
        spec = importlib.util.spec_from_file_location(
            "comfyui_cointeract", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["comfyui_cointeract"] = module
        spec.loader.exec_module(module)
        return module


import_pack()
from comfyui_cointeract.cointeract_core.model.config import PRESETS, DiTConfig, HOIConfig, MoEConfig  # noqa: E402
from comfyui_cointeract.cointeract_core.model.layout import SequenceLayout  # noqa: E402

# 480p x 81 frames (832 x 480 px, 20 target latent frames): tokens per segment in the official layout.
LAYOUT_480P = SequenceLayout(frames=20, latent_hw=(104, 60), product=True, motion=True)
LAYOUT_720P = SequenceLayout(frames=20, latent_hw=(160, 90), product=True, motion=True)
# tokens / dim of the 14B model at 480p without HOI: keeps the attention : linear cost ratio at small widths
TOKENS_PER_DIM_480P = LAYOUT_480P.total / PRESETS["14B"].dim


def scaled_config(dim: int, layers: int, moe: bool = True, hoi: bool = True, text_len: int = 512) -> DiTConfig:
    """The 14B config at width `dim`: head_dim 128, ffn 2.7·dim, experts dim/20, router dim/2, text_dim 0.8·dim,
    audio injected after 12/40 of the blocks. Pass `text_len=proportional_text_len(tokens)` to keep the
    cross-attention share of 14B at 480p (512 text rows for 36,634 tokens)."""
    if dim % 128:
        raise ValueError(f"dim {dim} must be a multiple of 128 (head_dim 128)")
    big = PRESETS["14B"]
    n_inject = max(1, round(layers * len(big.audio_inject_layers) / big.num_layers))  # 12 of 40 blocks inject audio
    inject = tuple(sorted({round(k * (layers - 1) / max(1, n_inject - 1)) for k in range(n_inject)}))
    return dataclasses.replace(
        big,
        dim=dim,
        ffn_dim=round(big.ffn_dim / big.dim * dim),
        num_heads=dim // 128,
        num_layers=layers,
        text_dim=round(0.8 * dim),
        text_len=text_len,
        audio_inject_layers=inject,
        moe=MoEConfig(expert_dim=dim // 20) if moe else None,
        hoi=HOIConfig() if hoi else None,
    )


def proportional_text_len(tokens: int) -> int:
    """Text rows that keep 14B-at-480p's text : token ratio (512 : 36,634) for a run of `tokens` tokens."""
    return max(8, round(PRESETS["14B"].text_len * tokens / LAYOUT_480P.total))


def layout_for_tokens(total: int, hoi: bool, frames: int = 20) -> SequenceLayout:
    """A layout with the 480p mix (portrait 52:30 grid, 20 frames, person, product, motion) of about `total` tokens."""
    best = None
    for h in range(8, 240, 2):
        for w in range(max(8, 2 * round(h * 30 / 52 / 2) - 2), 2 * round(h * 30 / 52 / 2) + 4, 2):
            lay = SequenceLayout(frames=frames, latent_hw=(h, w), product=True, motion=True, hoi=hoi)
            if best is None or abs(lay.total - total) < abs(best.total - total):
                best = lay
    return best


def make_inputs(cfg: DiTConfig, layout: SequenceLayout, device, dtype=torch.float32, seed: int = 0, text: int = 120):
    """Random forward inputs for `layout` (batch 1), prompt of min(`text`, text_len) tokens (zero-padded inside)."""
    text = min(text, cfg.text_len)
    gen = torch.Generator().manual_seed(seed)
    (h, w), f, c = layout.latent_hw, layout.frames, cfg.in_dim

    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(device, dtype)

    out = dict(
        x=rnd(1, c, f, h, w),
        timestep=torch.tensor([500.0], device=device),
        context=rnd(1, text, cfg.text_dim),
        audio=rnd(1, cfg.audio_layers, cfg.audio_dim, 4 * f),
        person=rnd(1, c, 1, h, w),
        attention="asymmetric",
    )
    if layout.product:
        out["product"] = rnd(1, c, 1, h, w)
    if layout.motion:
        out["motion"] = rnd(1, c, cfg.motion_frames[1], h, w)
    if layout.hoi:
        out.update(hoi=rnd(1, c, f, h, w), hoi_context=rnd(1, min(text + 40, cfg.text_len), cfg.text_dim))
    return out


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero weights everywhere (experts and injectors are zero-initialised otherwise), scaled by fan-in."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        fan_in = p[0].numel() if p.ndim > 1 else p.numel()
        std = 0.02 if p.ndim == 1 or name.endswith("modulation") else fan_in**-0.5
        p.copy_(torch.randn(p.shape, generator=gen) * std + (1.0 if "norm" in name and p.ndim == 1 else 0.0))
    return model


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def clock(device) -> Callable[[], float]:
    """The clock benches use: wall time on CUDA; on CPU the process's CPU time, which a shared, busy machine
    does not inflate (benches run torch single-threaded on CPU, so no OpenMP spin-waiting is counted either)."""
    return time.perf_counter if torch.device(device).type == "cuda" else time.process_time


def time_it(fn: Callable[[], object], device, repeats: int = 3, warmup: int = 1) -> float:
    """Fastest seconds of `fn()` over `repeats` runs after `warmup` runs."""
    return interleaved({"x": fn}, device, repeats, warmup)["x"]


def interleaved(fns: dict[str, Callable[[], object]], device, repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Fastest seconds of each function over rounds (a, b, c, a, b, c, ...): drift hits all alike, and on a shared
    machine interference only adds time, so the minimum is the most repeatable estimate."""
    now = clock(device)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = now()
            fn()
            sync(device)
            times[name].append(now() - t0)
    return {k: min(v) for k, v in times.items()}


def _register_cpu_sdpa_flops() -> None:
    from torch.utils.flop_counter import register_flop_formula, sdpa_flop_count

    @register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
    def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)


_register_cpu_sdpa_flops()  # torch counts the CUDA SDPA kernels but not the CPU one


def count_flops(fn: Callable[[], object]) -> int:
    """Matmul + attention FLOPs of one call (torch.utils.flop_counter), independent of timing noise."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def peak_rss_reset() -> bool:
    """Reset this process's peak RSS (VmHWM) on Linux; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """This process's peak RSS since the last reset (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def available_bytes() -> int:
    """MemAvailable of the host (Linux)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise OSError("no MemAvailable in /proc/meminfo")


def device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")


def pick_device(name: str, threads: int = 1) -> torch.device:
    """The device to bench on; on CPU torch runs `threads` threads (see `clock`)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked but torch sees no CUDA device")
    if device.type == "cpu":
        torch.set_num_threads(threads)
    return device


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    import os

    return (
        f"CPU ({os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} torch "
        f"thread, timed in process CPU time; torch {torch.__version__})"
    )


def table(headers: list[str], rows: list[list]) -> str:
    """A markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def fmt_s(s: float) -> str:
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


def ceil_div(a: int, b: int) -> int:
    return math.ceil(a / b)


def _synthetic_value(name: str, shape, dtype, device, gen) -> torch.Tensor:
    """Deterministic stand-in weights that keep activations finite: fan-in scaled matrices, unit norms, small rest."""
    if name.endswith("casual_audio_encoder.weights"):
        return torch.full(shape, 0.01, dtype=dtype, device=device)
    if len(shape) == 1 and "norm" in name:
        return torch.ones(shape, dtype=dtype, device=device)
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else 0
    std = 0.5 * fan_in**-0.5 if fan_in and not name.endswith("modulation") else 0.02
    return (torch.randn(shape, generator=gen, device=device) * std).to(dtype)


@torch.no_grad()
def build_synthetic(cfg: DiTConfig, device, swapped=(), weights: str = "bf16", seed: int = 0):
    """The DiT with synthetic weights made on `device` tensor by tensor (never the whole model in host RAM):
    blocks in `swapped` end up on the CPU (for offload.install_block_swap), the rest on `device`; fp8 = the
    Linear layers of fp8.QUANTIZED_MODULES as FP8Linear."""
    from torch import nn

    from comfyui_cointeract.cointeract_core.model.dit import CoInteractDiT
    from comfyui_cointeract.cointeract_core.weights.fp8 import FP8Linear, quantize_model_fp8, quantize_tensor

    with torch.device("meta"):
        model = CoInteractDiT(cfg).to(torch.bfloat16)
    if weights == "fp8":
        quantize_model_fp8(model)
    gen, swapped = torch.Generator(device).manual_seed(seed), set(swapped)
    for mname, module in model.named_modules():
        parts = mname.split(".")
        dest = "cpu" if parts[0] == "blocks" and len(parts) > 1 and int(parts[1]) in swapped else device
        if isinstance(module, FP8Linear):
            w = _synthetic_value(f"{mname}.weight", module.weight.shape, torch.bfloat16, device, gen)
            w8, scale = quantize_tensor(w)
            module._buffers["weight"], module._buffers["scale_weight"] = w8.to(dest), scale.to(dest)
            module._parameters["bias"] = nn.Parameter(torch.zeros_like(module.bias, device=dest), requires_grad=False)
            continue
        for pname, p in list(module._parameters.items()):
            if p is not None and p.is_meta:
                value = _synthetic_value(f"{mname}.{pname}", tuple(p.shape), p.dtype, device, gen).to(dest)
                module._parameters[pname] = nn.Parameter(value, requires_grad=False)
        for bname, b in list(module._buffers.items()):
            if b is not None and b.is_meta:
                value = _synthetic_value(f"{mname}.{bname}", tuple(b.shape), b.dtype, device, gen)
                module._buffers[bname] = value.to(dest)
    return model.eval()
