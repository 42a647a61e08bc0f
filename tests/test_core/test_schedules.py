"""Sigma tables: the official shifted one, ComfyUI's `simple`, and lightx2v's explicit step lists."""

from __future__ import annotations

import pytest
import torch

from comfyui_cointeract.cointeract_core.sampling.schedules import sigma_schedule, sigma_table


def _comfy_simple(steps: int, shift: float) -> torch.Tensor:
    """ComfyUI's simple_scheduler over ModelSamplingDiscreteFlow's 1000-entry table, rewritten from its definition."""
    t = torch.arange(1, 1001, dtype=torch.float32) / 1000
    table = shift * t / (1 + (shift - 1) * t)
    stride = len(table) / steps
    return torch.tensor([float(table[-(1 + int(i * stride))]) for i in range(steps)] + [0.0])


@pytest.mark.parametrize("steps", [3, 4, 8, 20, 30, 40, 50])
@pytest.mark.parametrize("shift", [1.0, 5.0, 7.0])
def test_simple_is_comfyuis_simple(steps, shift):
    torch.testing.assert_close(sigma_table("simple", steps, shift), _comfy_simple(steps, shift), rtol=0, atol=1e-6)


def test_simple_equals_shifted_when_steps_divide_1000():
    for steps in (4, 8, 20, 40):
        torch.testing.assert_close(sigma_table("simple", steps, 7.0), sigma_schedule(steps, 7.0), rtol=0, atol=1e-6)
    diff = (sigma_table("simple", 30, 7.0) - sigma_schedule(30, 7.0)).abs().max()
    assert 1e-4 < diff < 7.0 / 1000


def test_step_distill_tables():
    # lightx2v: denoising_step_list [1000, 750, 500, 250] at shift 5 = the shifted 4-step table
    lightx2v = sigma_table("step_list", 4, 5.0, (1000, 750, 500, 250))
    torch.testing.assert_close(lightx2v, sigma_schedule(4, 5.0), rtol=0, atol=1e-7)
    torch.testing.assert_close(lightx2v, torch.tensor([1.0, 0.9375, 5 / 6, 0.625, 0.0]), rtol=0, atol=1e-7)
    # Wan2.2-Lightning's 8-step timesteps (maintainer's list in ModelTC/Wan2.2-Lightning issue #3) = shifted, 8, shift 5
    eight = torch.tensor([1000, 972.2, 937.5, 892.9, 833.3, 750, 625, 416.7, 0]) / 1000
    torch.testing.assert_close(sigma_schedule(8, 5.0), eight, rtol=0, atol=1e-4)


def test_every_table_runs_from_one_to_zero_and_decreases():
    for table in (
        sigma_table("shifted", 7, 3.0),
        sigma_table("simple", 7, 3.0),
        sigma_table("step_list", 2, 3.0, (900, 100)),
    ):
        assert table.dtype == torch.float32 and table[-1] == 0 and (table[1:] < table[:-1]).all()
    with pytest.raises(ValueError, match="choose one of shifted, simple, step_list"):
        sigma_table("beta", 4, 5.0)
