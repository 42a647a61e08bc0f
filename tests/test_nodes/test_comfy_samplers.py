"""services.comfy_solver: a core velocity driven by ComfyUI's samplers, checked with stand-ins that follow
comfy.samplers.KSAMPLER's protocol (ComfyUI @a125cd8): noise scaling by the flow model_sampling, the model called as
model(x, σ·ones[B], denoise_mask=..., model_options=..., seed=...) and returning x0, callback(i, x0, x, total)."""

from __future__ import annotations

import importlib.machinery
import sys
import types

import pytest
import torch

from comfyui_cointeract.cointeract_core.sampling.lcm import noise_stream
from comfyui_cointeract.cointeract_core.sampling.sampler import SamplerConfig, sample
from comfyui_cointeract.nodes import services


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    module.__dict__.update(attrs)
    return module


class ModelSamplingDiscreteFlow:
    def set_parameters(self, shift: float = 1.0, multiplier: int = 1000) -> None:
        self.shift, self.multiplier = shift, multiplier


class CONST:
    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        return sigma * noise + (1.0 - sigma) * latent_image

    def inverse_noise_scaling(self, sigma, latent):
        return latent / (1.0 - sigma)


class KSampler:
    """KSAMPLER.sample over k-diffusion's euler (d = (x − x0)/σ) or lcm (x0, then noise_scaling to σ')."""

    def __init__(self, name: str, extra: dict | None = None) -> None:
        self.name, self.extra, self.seen_sigmas = name, extra or {}, []

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):  # fmt: skip
        self.seen_sigmas.append(sigmas)
        ms = model_wrap.inner_model.model_sampling
        x = ms.noise_scaling(sigmas[0], noise, latent_image)
        s_in = x.new_ones([x.shape[0]])
        for i in range(len(sigmas) - 1):
            x0 = model_wrap(x, sigmas[i] * s_in, model_options={}, seed=extra_args.get("seed"))
            if callback is not None:
                callback(i, x0, x, len(sigmas) - 1)
            if self.name == "lcm":
                x = x0 if sigmas[i + 1] == 0 else ms.noise_scaling(sigmas[i + 1], self.extra["noise_sampler"](0, 0), x0)
            else:
                x = x + (x - x0) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        sigmas[-1] = 0.001 if self.name == "uni_pc_bh2" else sigmas[-1]  # uni_pc writes into its table
        return ms.inverse_noise_scaling(0.0, x)


@pytest.fixture
def fake_comfy(monkeypatch: pytest.MonkeyPatch) -> dict:
    made = {}

    def ksampler(name, extra=None):
        made[name] = KSampler(name, extra)
        return made[name]

    monkeypatch.setattr(services, "comfy_available", lambda: True)
    monkeypatch.setitem(sys.modules, "comfy", _module("comfy"))
    monkeypatch.setitem(
        sys.modules, "comfy.samplers", _module("comfy.samplers", ksampler=ksampler, sampler_object=ksampler)
    )
    sampling = _module("comfy.model_sampling", ModelSamplingDiscreteFlow=ModelSamplingDiscreteFlow, CONST=CONST)
    monkeypatch.setitem(sys.modules, "comfy.model_sampling", sampling)
    return made


def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.sin(x) * (t / 1000.0) + 0.3 * x


def test_euler_stays_in_the_core_and_the_others_map_to_comfy_names(fake_comfy) -> None:
    assert services.comfy_solver("euler", 7.0) is None
    assert services.COMFY_SAMPLERS == {"unipc": "uni_pc_bh2", "dpmpp_2m": "dpmpp_2m", "lcm": "lcm"}
    noise, steps = torch.randn(1, 4, 2, 3, 3, generator=torch.Generator().manual_seed(0)), []
    cfg = SamplerConfig(steps=6, shift=5.0, sampler="unipc")
    solver = services.comfy_solver("unipc", 5.0)
    table = cfg.sigmas()
    out = sample(velocity, noise, cfg, lambda i, n, x: steps.append((i, n)), solver=solver)
    core_euler = sample(velocity, noise, SamplerConfig(steps=6, shift=5.0))
    torch.testing.assert_close(out, core_euler, rtol=0, atol=1e-5)  # the stand-in steps like euler
    assert steps == [(i, 6) for i in range(1, 7)]
    assert fake_comfy["uni_pc_bh2"].seen_sigmas[0] is not table and torch.equal(cfg.sigmas(), table)


def test_lcm_through_comfy_uses_our_seeded_noise(fake_comfy) -> None:
    noise = torch.randn(1, 4, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    cfg = SamplerConfig(steps=4, shift=5.0, cfg=1.0, sampler="lcm", seed=3)
    comfy = sample(velocity, noise, cfg, renoise=noise_stream(3), solver=services.comfy_solver("lcm", 5.0))
    core = sample(velocity, noise, cfg, renoise=noise_stream(3))
    torch.testing.assert_close(comfy, core, rtol=0, atol=1e-6)
