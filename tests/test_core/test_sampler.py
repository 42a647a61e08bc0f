"""Sampler: the official σ table, bf16 timesteps, CFG, and an oracle velocity that must return x0."""

from __future__ import annotations

import pytest
import torch

from comfyui_cointeract.cointeract_core.sampling.sampler import (
    SamplerConfig,
    cfg_combine,
    model_timesteps,
    sample,
    sigma_schedule,
)


@pytest.mark.parametrize("shift", [5.0, 7.0])
def test_sigma_table_is_the_official_formula(shift):
    sig = sigma_schedule(40, shift)
    base = torch.linspace(1, 0, 41)[:-1]
    assert torch.equal(sig[:-1], shift * base / (1 + (shift - 1) * base)) and sig[-1] == 0 and sig[0] == 1


def test_bf16_timesteps_turn_experts_off_for_the_first_18_of_40_steps():
    t = model_timesteps(sigma_schedule(40, 7.0))
    assert int((t >= 900).sum()) == 18  # reference official-cointeract.md §1.10
    assert t[17] == 904.0  # 904.49 quantised through bf16
    assert not torch.equal(t, model_timesteps(sigma_schedule(40, 7.0), quantize=False))


def test_oracle_velocity_returns_x0():
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(1, 4, 2, 3, 3, generator=gen), torch.randn(1, 4, 2, 3, 3, generator=gen)
    seen = []

    def oracle(x, t):  # v = ε − x0 recovered from x_t = (1−σ)x0 + σε
        return (x - x0) / (t / 1000.0)

    out = sample(
        oracle,
        noise,
        SamplerConfig(steps=12, shift=5.0, quantize_timesteps=False),
        callback=lambda i, n, x: seen.append(i),
    )
    assert torch.allclose(out, x0, atol=1e-5) and seen == list(range(1, 13))


def test_cfg_combine():
    assert torch.equal(cfg_combine(torch.tensor(3.0), torch.tensor(1.0), 7.0), torch.tensor(15.0))


def test_callback_can_cancel():
    def stop(i, n, x):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sample(lambda x, t: x, torch.zeros(1), SamplerConfig(steps=3), callback=stop)


def test_bad_sampler_config():
    with pytest.raises(ValueError, match="steps"):
        SamplerConfig(steps=0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(sampler="dpm"), "unknown sampler 'dpm'; choose one of euler, unipc, dpmpp_2m, lcm"),
        (dict(scheduler="karras"), "unknown scheduler 'karras'; choose one of shifted, simple, step_list"),
        (dict(cfg_batch="yes"), "unknown cfg_batch 'yes'; choose one of auto, on, off"),
        (dict(cfg=float("nan")), "cfg must be a finite number >= 0, got nan"),
        (dict(cfg=float("inf")), "cfg must be a finite number"),
        (dict(cfg=-1.0), "cfg must be a finite number >= 0"),
        (dict(shift=float("nan")), "shift must be a finite number > 0"),
        (dict(shift=0.0), "shift must be a finite number > 0"),
        (dict(shift=-2.0), "shift must be"),
        (dict(steps=-3), "steps must be an integer >= 1"),
        (dict(steps=4.0), "steps must be an integer"),
        (dict(steps=True), "steps must be an integer"),
        (dict(step_list=(1000, 500)), "only read by scheduler 'step_list'"),
        (dict(scheduler="step_list", steps=3, step_list=(1000, 500)), "steps == len"),
        (dict(scheduler="step_list", steps=2, step_list=(500, 1000)), "must decrease"),
        (dict(scheduler="step_list", steps=2, step_list=(1200, 500)), r"\(0, 1000\]"),
    ],
)
def test_config_refuses_bad_values_with_clear_messages(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplerConfig(**kwargs)


def test_config_defaults_are_the_official_ones_and_cfg_zero_is_allowed():
    cfg = SamplerConfig()
    assert (cfg.steps, cfg.shift, cfg.cfg, cfg.sampler, cfg.scheduler, cfg.cfg_batch) == (
        40, 7.0, 7.0, "euler", "shifted", "auto"
    )  # fmt: skip
    assert torch.equal(cfg.sigmas(), sigma_schedule(40, 7.0))
    SamplerConfig(cfg=0.0)  # the unconditional branch alone


def test_presets():
    from comfyui_cointeract.cointeract_core.sampling.presets import SAMPLER_PRESETS

    assert SAMPLER_PRESETS["official"] == SamplerConfig()
    distill, lightning = SAMPLER_PRESETS["distill"], SAMPLER_PRESETS["lightning"]
    assert (distill.sampler, distill.steps, distill.shift, distill.cfg) == ("lcm", 4, 5.0, 1.0)
    assert (lightning.sampler, lightning.steps, lightning.shift, lightning.cfg) == ("euler", 4, 5.0, 1.0)
    torch.testing.assert_close(distill.sigmas(), torch.tensor([1.0, 0.9375, 5 / 6, 0.625, 0.0]), rtol=0, atol=1e-7)
