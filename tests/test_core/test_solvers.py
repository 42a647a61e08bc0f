"""Solvers on an ODE with a known solution, against diffusers, and the one-velocity-call-per-step contract.

The test problem: x0 ~ N(1, 0.5²) per element, so the flow velocity E[noise − x0 | x_σ] is analytic and the ODE
from x_1 = z ends exactly at 1 + 0.5·z.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from comfyui_cointeract.cointeract_core.sampling.lcm import noise_stream
from comfyui_cointeract.cointeract_core.sampling.sampler import SAMPLERS, SamplerConfig, sample, sigma_schedule

MU, SD = 1.0, 0.5


def gaussian_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """E[noise − x0 | x_σ] for x0 ~ N(MU, SD²), σ = t/1000 (the sampler's timestep)."""
    s = float(t) / 1000.0
    var = (1 - s) ** 2 * SD**2 + s**2
    x0 = MU + (1 - s) * SD**2 / var * (x - (1 - s) * MU)
    return (x - x0) / s


def _z(n: int = 2048) -> torch.Tensor:
    return torch.randn(1, n, generator=torch.Generator().manual_seed(1))


def _error(sampler: str, steps: int, shift: float = 1.0) -> float:
    z = _z()
    cfg = SamplerConfig(steps=steps, shift=shift, sampler=sampler, quantize_timesteps=False)
    return float((sample(gaussian_velocity, z, cfg) - (MU + SD * z)).abs().max())


@pytest.mark.parametrize(
    "sampler,low,high", [("euler", 0.9, 1.1), ("unipc", 1.8, 2.3), ("dpmpp_2m", 1.45, 2.3)]
)  # DPM++(2M) approaches 2 slowly (1.5 -> 1.8 over these step counts, as in diffusers' own runs)
def test_order_of_convergence(sampler, low, high):
    if sampler != "euler":
        pytest.importorskip("diffusers")
    errors = [_error(sampler, n) for n in (32, 64, 128, 256)]
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(low < o < high for o in orders[1:]), (errors, orders)
    assert errors[-1] < (1e-4 if sampler == "unipc" else 1e-3 if sampler == "dpmpp_2m" else 2e-2)


@pytest.mark.parametrize("steps", [20, 40])
def test_second_order_solvers_beat_euler_at_the_official_shift(steps):
    pytest.importorskip("diffusers")
    euler = _error("euler", steps, 7.0)
    assert _error("unipc", steps, 7.0) < euler and _error("dpmpp_2m", steps, 7.0) < euler


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("steps", [1, 2, 4, 7])
def test_one_velocity_call_per_step(sampler, steps):
    if sampler in ("unipc", "dpmpp_2m"):
        pytest.importorskip("diffusers")
    calls, seen = [], []
    velocity = lambda x, t: (calls.append(float(t)), gaussian_velocity(x, t))[1]  # noqa: E731
    cfg = SamplerConfig(steps=steps, shift=5.0, sampler=sampler)
    out = sample(velocity, _z(16), cfg, callback=lambda i, n, x: seen.append((i, n)))
    assert len(calls) == steps and seen == [(i, steps) for i in range(1, steps + 1)] and torch.isfinite(out).all()
    expected = (sigma_schedule(steps, 5.0)[:-1] * 1000).to(torch.bfloat16).float().tolist()
    assert calls == expected  # every solver feeds the DiT the official bf16-rounded timesteps


def _old_sample(velocity, noise, steps, shift, quantize=True):
    """The sampler before named solvers existed (commit 4ace483), verbatim in substance."""
    sigmas = sigma_schedule(steps, shift)
    t = sigmas[:-1] * 1000.0
    timesteps = t.to(torch.bfloat16).float() if quantize else t
    x = noise
    for i in range(steps):
        v = velocity(x, timesteps[i : i + 1].to(x.device))
        x = x + v * float(sigmas[i + 1] - sigmas[i])
    return x


@pytest.mark.parametrize("quantize", [True, False])
def test_euler_default_is_bit_identical_to_the_old_sampler(quantize):
    weight = torch.randn(8, 8, generator=torch.Generator().manual_seed(2))
    velocity = lambda x, t: torch.tanh(x @ weight) * (t / 1000.0) - x  # noqa: E731
    noise = torch.randn(3, 8, generator=torch.Generator().manual_seed(3))
    cfg = SamplerConfig(steps=40, shift=7.0, quantize_timesteps=quantize)
    assert cfg.sampler == "euler" and cfg.scheduler == "shifted"
    assert torch.equal(sample(velocity, noise, cfg), _old_sample(velocity, noise, 40, 7.0, quantize))


def _diffusers_loop(scheduler, velocity, x, sigmas, generator=None):
    """A plain diffusers sampling loop, the velocity evaluated at the scheduler's own sigmas."""
    for i, t in enumerate(scheduler.timesteps):
        v = velocity(x, torch.tensor(float(scheduler.sigmas[i]) * 1000.0))
        extra = {} if generator is None else {"generator": generator}
        x = scheduler.step(v, t, x, return_dict=False, **extra)[0]
    return x


def test_euler_equals_diffusers_flow_match_euler():
    diffusers = pytest.importorskip("diffusers")
    sig = sigma_schedule(20, 7.0)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0)  # given sigmas are shifted again: pass shift 1
    sched.set_timesteps(sigmas=sig[:-1].numpy().copy())
    z = _z(64)
    ours = sample(gaussian_velocity, z, SamplerConfig(steps=20, shift=7.0, quantize_timesteps=False))
    torch.testing.assert_close(ours, _diffusers_loop(sched, gaussian_velocity, z, sig), rtol=0, atol=1e-6)


def test_lcm_equals_diffusers_stochastic_flow_match_euler():
    diffusers = pytest.importorskip("diffusers")
    sig = sigma_schedule(4, 5.0)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0, stochastic_sampling=True)
    sched.set_timesteps(sigmas=sig[:-1].numpy().copy())
    z = _z(64)
    theirs = _diffusers_loop(sched, gaussian_velocity, z, sig, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    renoise = lambda x: torch.randn(x.shape, generator=gen)  # noqa: E731
    cfg = SamplerConfig(steps=4, shift=5.0, sampler="lcm", quantize_timesteps=False)
    torch.testing.assert_close(sample(gaussian_velocity, z, cfg, renoise=renoise), theirs, rtol=0, atol=1e-6)


def test_unipc_equals_diffusers_configured_the_usual_way():
    """Ours feeds the shifted table with flow_shift 1; the usual route lets diffusers shift linspace(1, 0)."""
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=7.0, solver_type="bh2"
    )
    sched.set_timesteps(sigmas=np.linspace(1.0, 0.0, 21)[:-1])
    sched.set_begin_index(0)
    z = _z(64)
    theirs = _diffusers_loop(sched, gaussian_velocity, z, None)
    ours = sample(gaussian_velocity, z, SamplerConfig(steps=20, shift=7.0, sampler="unipc", quantize_timesteps=False))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)


def _dpmpp_2m_reference(x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    """DPM-Solver++(2M), midpoint, in flow form (λ = log((1−σ)/σ)), written from the paper's update, float64."""
    lam = lambda s: math.log((1 - s) / s) if 0 < s < 1 else (-math.inf if s >= 1 else math.inf)  # noqa: E731
    prev = None
    for s, s1 in zip(sigmas, sigmas[1:]):
        d = x - s * gaussian_velocity(x, torch.tensor(s * 1000.0))
        h = lam(s1) - lam(s)
        use = d if prev is None or s1 == 0 else (1 + 1 / (2 * prev[1] / h)) * d - prev[0] / (2 * prev[1] / h)
        x = d if s1 == 0 else (s1 / s) * x - (1 - s1) * math.expm1(-h) * use
        prev = (d, h)
    return x


def test_dpmpp_2m_equals_an_independent_implementation():
    pytest.importorskip("diffusers")
    z = _z(64).double()
    sig = sigma_schedule(12, 7.0)
    ref = _dpmpp_2m_reference(z, sig.double().tolist())
    ours = sample(
        gaussian_velocity, z.float(), SamplerConfig(steps=12, shift=7.0, sampler="dpmpp_2m", quantize_timesteps=False)
    )
    torch.testing.assert_close(ours.double(), ref, rtol=0, atol=1e-5)


def test_lcm_is_reproducible_and_its_noise_is_seeded():
    cfg = SamplerConfig(steps=4, shift=5.0, cfg=1.0, sampler="lcm", seed=7)
    a, b = (sample(gaussian_velocity, _z(64), cfg) for _ in range(2))
    c = sample(gaussian_velocity, _z(64), SamplerConfig(steps=4, shift=5.0, sampler="lcm", seed=8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    first = noise_stream(7)(torch.zeros(1, 64))
    assert not torch.allclose(first, torch.randn(1, 64, generator=torch.Generator().manual_seed(7)))  # own stream


def test_lcm_with_an_oracle_returns_x0():
    x0 = torch.randn(2, 6, generator=torch.Generator().manual_seed(4))
    oracle = lambda x, t: (x - x0) / (t / 1000.0)  # noqa: E731  v of the straight line through x0
    cfg = SamplerConfig(steps=4, shift=5.0, sampler="lcm", quantize_timesteps=False)
    torch.testing.assert_close(sample(oracle, torch.randn(2, 6), cfg), x0, rtol=0, atol=1e-5)


def test_multistep_solvers_keep_the_dtype_and_step_in_fp32():
    pytest.importorskip("diffusers")
    seen = []
    velocity = lambda x, t: (seen.append(x.dtype), gaussian_velocity(x.float(), t))[1]  # noqa: E731
    out = sample(velocity, _z(16).bfloat16(), SamplerConfig(steps=5, sampler="unipc"))
    assert out.dtype == torch.bfloat16 and set(seen) == {torch.float32}


def test_without_diffusers_the_error_says_how_to_get_it(monkeypatch):
    from comfyui_cointeract.cointeract_core.sampling import multistep

    def missing(name):
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    monkeypatch.setattr(multistep.importlib, "import_module", missing)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'diffusers>=0.35' .* or use the euler or lcm sampler"):
        sample(gaussian_velocity, _z(4), SamplerConfig(steps=2, sampler="unipc"))
    assert torch.isfinite(sample(gaussian_velocity, _z(4), SamplerConfig(steps=2, sampler="lcm"))).all()
