"""RoPE: the Wan head-dim split, interleaved pairs, and dependence on relative position only."""

from __future__ import annotations

import torch

from comfyui_cointeract.cointeract_core.model.rope import apply_rope, axis_dims, rope_frequencies


def test_axis_split_matches_wan():
    assert axis_dims(128) == (44, 42, 42)  # equals DiffSynth's split at the 14B head dim
    assert axis_dims(64) == (24, 20, 20)  # the Wan fixture (DiffSynth's split would give odd dims here)
    assert axis_dims(32) == (12, 10, 10)


def test_scores_depend_only_on_relative_position():
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 2, 32, generator=gen), torch.randn(1, 1, 2, 32, generator=gen)
    delta = torch.tensor([[3, -2, 5]])

    def score(p: torch.Tensor) -> torch.Tensor:
        fq, fk = rope_frequencies(p, 32), rope_frequencies(p + delta, 32)
        return (apply_rope(q.double(), fq) * apply_rope(k.double(), fk)).sum(-1)

    a, b = score(torch.tensor([[0, 0, 0]])), score(torch.tensor([[-19, 7, 1000]]))
    assert torch.allclose(a, b, atol=1e-10)


def test_negative_position_is_conjugate():
    pos = torch.tensor([[4, 2, 9]])
    assert torch.allclose(rope_frequencies(-pos, 64), rope_frequencies(pos, 64).conj())


def test_pairs_are_interleaved():
    x = torch.zeros(1, 1, 1, 8, dtype=torch.float64)
    x[..., 0] = 1.0  # real part of complex channel 0 (time axis)
    out = apply_rope(x, rope_frequencies(torch.tensor([[1, 0, 0]]), 8))
    assert out[..., 1].abs() > 0.5 and out[..., 2:].abs().max() == 0  # rotated into channel 1 only
