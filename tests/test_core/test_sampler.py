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
