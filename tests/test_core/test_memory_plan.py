"""Memory planner: exact weight bytes, activations vs a measured peak, swap decisions, errors; compile option."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from comfyui_cointeract.cointeract_core.model.config import PRESETS, DiTConfig, HOIConfig, MoEConfig
from comfyui_cointeract.cointeract_core.model.dit import CoInteractDiT
from comfyui_cointeract.cointeract_core.model.layout import SequenceLayout
from comfyui_cointeract.cointeract_core.runtime import memory_plan as mp
from comfyui_cointeract.cointeract_core.runtime.compile import check_compile_support, compile_blocks, uncompile_blocks
from comfyui_cointeract.cointeract_core.runtime.offload import install_block_swap
from comfyui_cointeract.cointeract_core.weights import fp8


def scaled_cfg(dim: int = 256, layers: int = 4) -> DiTConfig:
    """14B proportions at a small width: head_dim 128, ffn 2.7·dim, experts dim/20."""
    return DiTConfig(
        dim=dim,
        ffn_dim=int(2.7 * dim),
        num_heads=dim // 128,
        num_layers=layers,
        text_dim=64,
        text_len=64,
        audio_dim=32,
        audio_inject_layers=(0, layers - 1),
        moe=MoEConfig(expert_dim=dim // 20),
        hoi=HOIConfig(),
    )


def _bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


@pytest.mark.parametrize("weights", ["bf16", "fp8"])
def test_weight_bytes_are_exact(weights):
    cfg = PRESETS["tiny_cointeract"]
    model = CoInteractDiT(cfg).to(torch.bfloat16)
    if weights == "fp8":
        fp8.quantize_model_fp8(model)
    wb = mp.weight_bytes(cfg, weights)
    assert wb.block == _bytes(model.blocks[0]) and wb.num_blocks == cfg.num_layers
    assert wb.other + wb.block * wb.num_blocks == _bytes(model)
    assert (wb.fp8_transient > 0) == (weights == "fp8")


def test_14b_weight_bytes():
    wb = mp.weight_bytes(PRESETS["14B_cointeract"], "bf16")
    total = wb.other + wb.block * wb.num_blocks
    assert 31 * mp.GiB < total < 33 * mp.GiB  # 14B_cointeract in bf16 (≈ 32.6 GB of the design notes, in GB)
    assert mp.weight_bytes(PRESETS["14B_cointeract"], "fp8").block * 2 < wb.block + 1e6


@pytest.mark.parametrize(("hw", "frames", "hoi"), [((16, 32), 4, False), ((32, 32), 6, True)])
def test_activation_estimate_bounds_the_measured_peak(hw, frames, hoi, make_inputs):
    cfg = scaled_cfg(128, layers=2)
    model = CoInteractDiT(cfg).eval().to(torch.bfloat16)
    inputs = make_inputs(cfg, frames=frames, hw=hw, hoi=hoi)
    layout = SequenceLayout(frames=frames, latent_hw=hw, product=True, product_scale=0.6, motion=True, hoi=hoi)
    with torch.no_grad(), mp.TensorMemoryTracker() as tracker:
        model(**inputs)
    estimate = mp.activation_bytes(cfg, layout)
    assert tracker.peak <= estimate <= 1.1 * tracker.peak, (tracker.peak, estimate)


def test_tracker_counts_new_storage_once():
    x = torch.ones(1000)
    with mp.TensorMemoryTracker() as tracker:
        y = x * 2  # 4000 bytes
        z = y.view(10, 100)  # a view: free
        y.add_(1)  # in place: free
        w = torch.cat([y, y])  # 8000 bytes
        del w
        v = y + 1  # 4000 (w's 8000 were freed)
    assert tracker.peak == 12000 and tracker.current == 8000 and z.shape == (10, 100) and v.shape == (1000,)


def test_plan_picks_the_fewest_swapped_blocks():
    cfg, layout = PRESETS["14B_cointeract"], mp.video_layout(832, 480)
    assert layout.total == 36634  # 480p x 81 frames: 31,200 target + 2 x 1,560 references + 2,314 motion
    big = mp.plan_memory(cfg, layout, 80 * mp.GiB)
    assert big.n_swap == 0
    for k in (3, 17, 40):
        need = mp.estimate_memory(cfg, layout, "bf16", k).total
        plan = mp.plan_memory(cfg, layout, need)
        assert plan.n_swap <= k and plan.estimate.total <= need
        assert mp.estimate_memory(cfg, layout, "bf16", plan.n_swap - 1).total > need if plan.n_swap else True
    p24 = mp.plan_memory(cfg, layout, 24 * mp.GiB)
    assert 0 < p24.n_swap < 40 and p24.estimate.total <= 24 * mp.GiB
    assert mp.plan_memory(cfg, layout, 24 * mp.GiB, weights="fp8").n_swap < p24.n_swap


def test_plan_error_says_minimum_and_what_fits():
    cfg = PRESETS["14B_cointeract"]
    layout = mp.video_layout(1280, 720, hoi=True)
    with pytest.raises(mp.MemoryPlanError) as info:
        mp.plan_memory(cfg, layout, 24 * mp.GiB)
    msg = str(info.value)
    need = mp.estimate_memory(cfg, layout, "bf16", 40).total / mp.GiB
    assert f"need at least {need:.1f} GiB" in msg and "24.0 GiB is free" in msg
    assert "Settings that fit: HOI preview off" in msg and "at most" in msg
    with pytest.raises(mp.MemoryPlanError, match="Nothing fits"):
        mp.plan_memory(cfg, layout, 2 * mp.GiB, weights="fp8")


def test_plan_validates_inputs():
    cfg, layout = PRESETS["tiny_cointeract"], SequenceLayout(frames=2, latent_hw=(8, 8))
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        mp.plan_memory(cfg, layout, mp.GiB, attention_backend="flash")
    with pytest.raises(ValueError, match="unknown weight format 'int4'"):
        mp.plan_memory(cfg, layout, mp.GiB, weights="int4")
    with pytest.raises(ValueError, match="cannot swap 3 blocks: the model has 2"):
        mp.estimate_memory(cfg, layout, "bf16", n_swap=3)
    with pytest.raises(ValueError, match="not a multiple of 16"):
        mp.video_layout(830, 480)
    with pytest.raises(ValueError, match="CUDA devices only"):
        mp.device_free_bytes("cpu")


def test_compile_mode_validation(ci_model):
    with pytest.raises(ValueError, match="unknown compile mode 'fast'"):
        compile_blocks(ci_model, mode="fast")
    model = copy.deepcopy(ci_model)
    install_block_swap(model, "cpu", n_swap=1)
    with pytest.raises(ValueError, match="CUDA graphs"):
        compile_blocks(model, mode="reduce-overhead")
    with pytest.raises(ValueError, match="not mps|supported on cuda and cpu"):
        check_compile_support("mps")


@pytest.mark.slow
def test_compiled_blocks_match_eager(ci_model, ci_cfg, make_inputs):
    check_compile_support("cpu")  # this machine has g++; a missing compiler is a clear ValueError, tested above
    inputs = make_inputs(ci_cfg)
    model = copy.deepcopy(ci_model)
    install_block_swap(model, "cpu", n_swap=1)  # compiled blocks run under the swap hooks too
    with torch.no_grad():
        ref = ci_model(**inputs).velocity
        assert compile_blocks(model) == ci_cfg.num_layers
        with pytest.raises(ValueError, match="already compiled"):
            compile_blocks(model)
        torch.testing.assert_close(model(**inputs).velocity, ref, rtol=1e-5, atol=1e-5)
        uncompile_blocks(model)
        assert "forward" not in vars(model.blocks[0])


def test_scaled_cfg_keeps_14b_proportions():
    cfg, big = scaled_cfg(512), PRESETS["14B_cointeract"]
    assert cfg.head_dim == big.head_dim == 128
    assert abs(cfg.ffn_dim / cfg.dim - big.ffn_dim / big.dim) < 0.01
    assert cfg.moe.expert_dim == cfg.dim // 20 and big.moe.expert_dim == big.dim // 20
    assert dataclasses.replace(cfg, hoi=None).hoi is None


@pytest.mark.gpu
def test_compiled_blocks_on_cuda_within_tolerance_of_bf16(ci_model, ci_cfg, make_inputs):
    model = copy.deepcopy(ci_model).to("cuda", torch.bfloat16)
    inputs = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in make_inputs(ci_cfg).items()}
    with torch.no_grad():
        ref = model(**inputs).velocity.float()
        compile_blocks(model)
        out = model(**inputs).velocity.float()
    assert float((out - ref).norm() / ref.norm()) < 0.02


@pytest.mark.gpu
def test_planned_swap_fits_measured_peak_on_cuda(ci_cfg, make_inputs):
    """The planner's estimate bounds max_memory_allocated of a swapped forward (tiny model, bf16)."""
    model = CoInteractDiT(ci_cfg).eval().to(torch.bfloat16)
    inputs = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in make_inputs(ci_cfg, hoi=False).items()}
    layout = SequenceLayout(frames=3, latent_hw=(8, 16), product=True, product_scale=0.6, motion=True)
    est = mp.estimate_memory(ci_cfg, layout, "bf16", n_swap=2, reserve_bytes=0)
    install_block_swap(model, "cuda", n_swap=2)
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        model(**inputs)
    assert torch.cuda.max_memory_allocated() <= est.total + (64 << 20)  # + allocator rounding of tiny tensors


def test_activations_per_ulysses_rank_divide_all_but_the_replicated_part():
    cfg, layout = PRESETS["14B_cointeract"], mp.video_layout(480, 832)
    per_rank = [mp.activation_bytes(cfg, layout, n) for n in (1, 2, 4, 8)]
    assert per_rank[0] == mp.activation_bytes(cfg, layout)  # one rank: the single-process estimate
    assert per_rank == sorted(per_rank, reverse=True)
    s, d = layout.total, cfg.dim
    replicated = (4 * s * d + 8 * cfg.head_dim * s + 4 * cfg.text_len * d) * mp.SMALL_TENSORS  # embeddings, RoPE, text
    divided = per_rank[0] - replicated
    for n, got in zip((2, 4, 8), per_rank[1:]):
        assert got == pytest.approx(replicated + divided / n, rel=1e-3)


def test_multi_gpu_bench_table_agrees_with_the_layout_all_to_all():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "multi_gpu_memory.py"
    spec = importlib.util.spec_from_file_location("multi_gpu_memory", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = {(r[0], r[2]): r for r in bench.rows()}
    assert rows["480p", 1][1] == 36_634 and rows["720p", 1][1] == 84_560
    # 4 tensors x (S/N)·D x (N-1)/N x 40 blocks x 2 bytes, as the README's Multi-GPU section states
    assert [round(rows["480p", n][7], 1) for n in (2, 4, 8)] == [14.0, 10.5, 6.1]
    assert [round(rows["720p", n][7], 1) for n in (2, 4, 8)] == [32.3, 24.2, 14.1]
    assert rows["480p", 1][3] > rows["480p", 8][3]
    assert rows["480p", 2][4] == rows["480p", 8][4]  # Ulysses: weights replicated
    assert "| 720p | 84,560 | 8 |" in bench.table()
