"""Step cache (sampling/cache.py): off is bit-identical; skips follow the warm-up, tail and cap rules; one decision per
step for both CFG branches; state per clip; HOI preview and router maps work; the hook is exact on full steps."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from comfyui_cointeract.cointeract_core.model.config import PRESETS
from comfyui_cointeract.cointeract_core.model.dit import CoInteractDiT
from comfyui_cointeract.cointeract_core.pipeline import clips
from comfyui_cointeract.cointeract_core.pipeline.clips import VideoOptions, generate
from comfyui_cointeract.cointeract_core.pipeline.conditioning import Conditioning
from comfyui_cointeract.cointeract_core.sampling.cache import StepCache, StepCacheConfig
from comfyui_cointeract.cointeract_core.sampling.sampler import SamplerConfig, sigma_schedule
from comfyui_cointeract.cointeract_core.toy.codec import ToyCodec

CFG = dataclasses.replace(PRESETS["tiny_cointeract"], in_dim=12, out_dim=12, cond_dim=12)
ALWAYS = 1e9  # a threshold that the accumulated change never reaches: skips follow the window and the cap only


@pytest.fixture
def model(randomize) -> CoInteractDiT:
    return randomize(CoInteractDiT(CFG)).eval()


def _cond(audio_frames: int = 150) -> Conditioning:
    gen = torch.Generator().manual_seed(3)
    img = lambda: ToyCodec(1).encode(torch.rand(1, 3, 1, 8, 16, generator=gen) * 2 - 1)  # noqa: E731
    txt = lambda: torch.randn(1, 5, CFG.text_dim, generator=gen)  # noqa: E731
    return Conditioning(
        person=img(), product=img(), product_scale=0.8, prompts=(txt(), txt()), negative=txt(),
        audio=torch.randn(1, 25, CFG.audio_dim, audio_frames, generator=gen), hoi_prompts=(txt(),),
        hoi_negative=txt(),
    )  # fmt: skip


def _spy(model: CoInteractDiT) -> list[tuple[str, bool]]:
    """Record (branch, blocks ran) for every DiT forward; the uncond branch is the one with silenced audio."""
    seen: list[tuple[str, bool]] = []
    ran: list[int] = []
    model.blocks[0].register_forward_hook(lambda *_: ran.append(1))
    original = model.forward

    def forward(*args, **kwargs):
        before = len(ran)
        out = original(*args, **kwargs)
        seen.append(("cond" if kwargs["audio"].abs().sum() > 0 else "uncond", len(ran) > before))
        return out

    model.forward = forward
    return seen


def _skipped_steps(seen: list[tuple[str, bool]], branch: str, steps: int) -> list[list[int]]:
    """Per clip, the step indices whose `branch` pass skipped the blocks."""
    runs = [r for b, r in seen if b == branch]
    return [[i for i in range(steps) if not runs[c + i]] for c in range(0, len(runs), steps)]


@pytest.mark.parametrize(
    "field,value",
    [("threshold", -0.1), ("threshold", math.nan), ("threshold", math.inf), ("threshold", True),
     ("start_step", -1), ("start_step", 1.5), ("end_steps_full", -2), ("max_consecutive", 0)],
)  # fmt: skip
def test_bad_config_is_refused_with_the_field_named(field, value):
    with pytest.raises(ValueError, match=field):
        StepCacheConfig(**{field: value})
    with pytest.raises(TypeError, match="StepCacheConfig"):
        SamplerConfig(cache={"threshold": 0.1})


def test_threshold_zero_is_bit_identical_to_no_cache(model):
    cond, fast = _cond(), SamplerConfig(steps=5, seed=11)
    plain = generate(model, ToyCodec(1), cond, fast, VideoOptions())
    cached = generate(model, ToyCodec(1), cond, dataclasses.replace(fast, cache=StepCacheConfig(0.0, 0, 0, None)))
    assert torch.equal(plain.frames, cached.frames)
    assert all(torch.equal(a, b) for a, b in zip(plain.latents, cached.latents))
    assert plain.passes_run == cached.passes_run == [10, 10] and plain.passes_skipped == cached.passes_skipped == [0, 0]


def test_warmup_tail_and_cap_with_one_decision_for_both_branches(model):
    seen = _spy(model)
    cache = StepCacheConfig(threshold=ALWAYS, start_step=3, end_steps_full=2, max_consecutive=2)
    res = generate(model, ToyCodec(1), _cond(), SamplerConfig(steps=12, seed=11, cache=cache), VideoOptions())
    expected = [3, 4, 6, 7, 9]  # 0-2 warm-up; at most 2 in a row; 10-11 the tail
    assert _skipped_steps(seen, "cond", 12) == _skipped_steps(seen, "uncond", 12) == [expected, expected]
    assert res.passes_skipped == [10, 10] and res.passes_run == [14, 14]
    assert torch.isfinite(res.frames).all()


def test_state_restarts_with_each_clip(model):
    seen = _spy(model)
    cache = StepCacheConfig(threshold=ALWAYS, start_step=0, end_steps_full=1, max_consecutive=None)
    res = generate(model, ToyCodec(1), _cond(), SamplerConfig(steps=6, seed=11, cache=cache), VideoOptions())
    # steps 0 and 1 of every clip run: k needs two full steps of this clip, and clip 1's residuals are gone
    assert _skipped_steps(seen, "cond", 6) == [[2, 3, 4], [2, 3, 4]] and res.passes_skipped == [6, 6]


def test_cfg_one_has_one_branch(model):
    seen = _spy(model)
    cache = StepCacheConfig(threshold=ALWAYS, start_step=2, end_steps_full=1, max_consecutive=1)
    sampler = SamplerConfig(steps=7, cfg=1.0, seed=11, cache=cache)
    res = generate(model, ToyCodec(1), _cond(90), sampler, VideoOptions(max_clips=1))
    assert {b for b, _ in seen} == {"cond"} and _skipped_steps(seen, "cond", 7) == [[2, 4]]
    assert res.passes_run == [5] and res.passes_skipped == [2]


def test_a_real_threshold_skips_some_steps_and_stays_close(model):
    sampler = SamplerConfig(steps=16, seed=11, shift=1.0, cfg=3.0)
    cache = StepCacheConfig(threshold=1.0, start_step=3, end_steps_full=2, max_consecutive=3)  # ε ≈ 0.6 here
    one = VideoOptions(max_clips=1)
    plain = generate(model, ToyCodec(1), _cond(90), sampler, one)
    cached = generate(model, ToyCodec(1), _cond(90), dataclasses.replace(sampler, cache=cache), one)
    assert 0 < cached.passes_skipped[0] < 32 and cached.passes_run[0] + cached.passes_skipped[0] == 32
    error = (cached.latents[0] - plain.latents[0]).norm() / plain.latents[0].norm()
    assert 0 < error < 0.2  # measured 0.05 (random weights; the toy model: README, Step cache)


def test_hoi_preview_and_router_maps_keep_rgb_equal(model):
    cache = StepCacheConfig(threshold=1.0, start_step=2, end_steps_full=1, max_consecutive=2)
    sampler, cond = SamplerConfig(steps=8, seed=11, cache=cache), _cond(90)
    a = generate(model, ToyCodec(1), cond, sampler, VideoOptions(max_clips=1))
    b = generate(model, ToyCodec(1), cond, sampler, VideoOptions(max_clips=1, hoi_preview=True, router_maps=True))
    assert a.passes_skipped[0] > 0 and a.passes_skipped == b.passes_skipped
    assert torch.equal(a.frames, b.frames) and b.hoi_frames.shape == a.frames.shape
    assert b.router_maps is not None and torch.isfinite(b.router_maps).all()


def test_works_under_any_solver_that_calls_the_velocity_once_per_step(model, monkeypatch):
    def ab2(velocity, noise, cfg, callback=None, *_):  # 2-step Adams–Bashforth: one velocity call per step
        sigmas, x, prev = sigma_schedule(cfg.steps, cfg.shift), noise, None
        for i in range(cfg.steps):
            v = velocity(x, sigmas[i : i + 1] * 1000)
            dt = float(sigmas[i + 1] - sigmas[i])
            x = x + dt * (v if prev is None else 1.5 * v - 0.5 * prev)
            prev = v
        return x

    monkeypatch.setattr(clips, "sample", ab2)
    seen = _spy(model)
    cache = StepCacheConfig(threshold=ALWAYS, start_step=2, end_steps_full=2, max_consecutive=1)
    sampler = SamplerConfig(steps=8, seed=11, cache=cache)
    res = generate(model, ToyCodec(1), _cond(90), sampler, VideoOptions(max_clips=1))
    assert _skipped_steps(seen, "cond", 8) == _skipped_steps(seen, "uncond", 8) == [[2, 4]]
    assert res.passes_skipped == [4] and torch.isfinite(res.frames).all()


def test_hook_on_a_full_step_is_the_plain_forward_bit_for_bit(ci_model, make_inputs):
    inputs = make_inputs(ci_model.cfg, frames=3)
    inputs["timestep"] = torch.tensor([400.0])  # experts on: router logits are returned
    cache = StepCache(StepCacheConfig(threshold=ALWAYS, start_step=0, end_steps_full=0), steps=5)
    with torch.no_grad():
        plain = ci_model(**inputs, return_router=True)
        cache.begin_step(inputs["x"])
        full = ci_model(**inputs, return_router=True, blocks_hook=cache.hook("cond"))
    assert torch.equal(plain.velocity, full.velocity) and torch.equal(plain.hoi_velocity, full.hoi_velocity)
    assert torch.equal(plain.router_logits, full.router_logits) and cache.passes_run == 1 and cache.k is None


def test_a_skipped_forward_reuses_the_residual_and_runs_no_block(ci_model, make_inputs):
    inputs = make_inputs(ci_model.cfg, frames=3)
    cache = StepCache(StepCacheConfig(threshold=ALWAYS, start_step=0, end_steps_full=0), steps=5)
    calls: list[str] = []
    for i, block in enumerate(ci_model.blocks):
        block.register_forward_hook(lambda *_, i=i: calls.append(f"block {i}"))
    ci_model.audio_injector.register_forward_hook(lambda *_: calls.append("audio"))
    with torch.no_grad():
        for _ in range(2):  # two full steps at the same input: k = 0 / 0 is unknown, so still None
            assert not cache.begin_step(inputs["x"])
            full = ci_model(**inputs, blocks_hook=cache.hook("cond"))
            cache.observe(full.velocity)
        assert cache.k is None
        cache.k = 1.0  # as after two full steps at different inputs
        assert cache.begin_step(inputs["x"]) and calls
        calls.clear()
        skipped = ci_model(**inputs, blocks_hook=cache.hook("cond"))
    assert calls == [] and skipped.router_logits is None and cache.passes_skipped == 1
    torch.testing.assert_close(skipped.velocity, full.velocity, rtol=1e-5, atol=1e-5)  # in + (out − in) ≈ out
    torch.testing.assert_close(skipped.hoi_velocity, full.hoi_velocity, rtol=1e-5, atol=1e-5)


def test_the_rule_on_a_known_sequence():
    """k from two full steps, ε = k·mean|Δx| / mean|v_full| accumulated, full step when E reaches τ."""
    cache = StepCache(StepCacheConfig(threshold=0.3, start_step=2, end_steps_full=1, max_consecutive=None), 8)
    blocks = lambda h: (2 * h, None)  # noqa: E731 - residual = tokens
    tokens = torch.ones(1, 4, 2)
    decisions = []
    for step in range(8):
        x = torch.full((1, 1, 1, 1, 1), float(step))  # mean|Δx| = 1 per step
        decisions.append(cache.begin_step(x))
        out, _ = cache.hook("cond")(tokens * (step + 1), blocks)
        cache.observe(x * 0.2 + 1.0)  # v = 1 + 0.2·x: k = 0.2 from any two full steps
        if decisions[-1]:
            assert torch.equal(out, tokens * (step + 1) + cache._residual["cond"])
    # step 2: ε = 0.2·1/1.2 = 0.167 < 0.3 skip; step 3: E = 0.333 -> full (v_full = 1.6 at x = 3);
    # steps 4, 5: E = 0.125, 0.25 skip; step 6: E = 0.375 -> full; step 7: the tail
    assert decisions == [False, False, True, False, True, True, False, False]
    assert cache.k == pytest.approx(0.2) and cache.decisions == decisions


def test_batched_cfg_skips_the_same_steps_as_two_passes(model):
    sampler = SamplerConfig(steps=16, seed=11, shift=1.0, cfg=3.0, cache=StepCacheConfig(1.0, 3, 2, 3))
    one = VideoOptions(max_clips=1)
    two = generate(model, ToyCodec(1), _cond(90), dataclasses.replace(sampler, cfg_batch="off"), one)
    batched = generate(model, ToyCodec(1), _cond(90), dataclasses.replace(sampler, cfg_batch="on"), one)
    assert batched.passes_skipped == two.passes_skipped and batched.passes_run == two.passes_run
    assert 0 < batched.passes_skipped[0] < 32 and batched.passes_run[0] + batched.passes_skipped[0] == 32
    torch.testing.assert_close(batched.latents[0], two.latents[0], rtol=0, atol=1e-4)
