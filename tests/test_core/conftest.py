"""Core-test fixtures: `ci_cfg` (tiny CoInteract preset), `ci_model`, reference fixtures, input builders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from comfyui_cointeract.cointeract_core.model.config import PRESETS, DiTConfig
from comfyui_cointeract.cointeract_core.model.dit import CoInteractDiT
from comfyui_cointeract.cointeract_core.model.init import init_random

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def randomize(model: torch.nn.Module, seed: int = 1234) -> torch.nn.Module:
    """Overwrite every parameter so zero-initialised paths contribute (the fixtures' recipe)."""
    return init_random(model, seed)


def make_inputs(cfg: DiTConfig, frames: int = 3, hw: tuple[int, int] = (8, 16), seed: int = 0, **parts: bool) -> dict:
    """Random named inputs for CoInteractDiT.forward; `parts` switches product/motion/pose/hoi (all on by default)."""
    gen = torch.Generator().manual_seed(seed)
    c, (h, w) = cfg.in_dim, hw

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    out = dict(
        x=rnd(1, c, frames, h, w),
        timestep=torch.tensor([500.0]),
        context=rnd(1, 5, cfg.text_dim),
        audio=rnd(1, cfg.audio_layers, cfg.audio_dim, 4 * frames),
        person=rnd(1, c, 1, h, w),
    )
    if parts.get("product", True):
        out.update(product=rnd(1, c, 1, h, w), product_scale=0.6)
    if parts.get("motion", True):
        out["motion"] = rnd(1, c, 19, h, w)
    if parts.get("pose", True) and cfg.cond_dim:
        out["pose"] = 0.5 * rnd(1, cfg.cond_dim, frames, h, w)
    if parts.get("hoi", True) and cfg.hoi:
        out.update(hoi=rnd(1, c, frames, h, w), hoi_context=rnd(1, 6, cfg.text_dim))
    return out


@pytest.fixture(name="randomize")
def randomize_fixture():
    """The `randomize(model, seed)` helper (test modules cannot import conftest under importlib mode)."""
    return randomize


@pytest.fixture(name="make_inputs")
def make_inputs_fixture():
    """The `make_inputs(cfg, ...)` helper."""
    return make_inputs


@pytest.fixture(scope="session")
def wan_fixture() -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / "wan_s2v_tiny.safetensors")


@pytest.fixture
def ci_cfg() -> DiTConfig:
    return PRESETS["tiny_cointeract"]


@pytest.fixture
def ci_model(ci_cfg: DiTConfig) -> CoInteractDiT:
    return randomize(CoInteractDiT(ci_cfg)).eval()
