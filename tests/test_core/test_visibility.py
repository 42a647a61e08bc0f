"""Co-generation visibility: the grouped calls follow Eq. 4 and equal a naive masked softmax."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from comfyui_cointeract.cointeract_core.model.attention import SelfAttention
from comfyui_cointeract.cointeract_core.model.layout import SequenceLayout
from comfyui_cointeract.cointeract_core.model.rope import apply_rope, rope_frequencies
from comfyui_cointeract.cointeract_core.model.visibility import attention_groups, dense_mask

LAYOUT = SequenceLayout(frames=2, latent_hw=(8, 16), product=True, motion=True, hoi=True)


def test_asymmetric_table():
    mask, seg = dense_mask(LAYOUT, "asymmetric"), LAYOUT.segments()
    main = slice(0, LAYOUT.n_main)
    assert not mask[main, seg["hoi"]].any()  # main tokens never see HOI
    assert mask[main, main].all()
    for name, visible in [("hoi", True), ("target", True), ("product", True), ("person", False), ("motion", False)]:
        assert bool(mask[seg["hoi"], seg[name]].all()) is visible and bool(mask[seg["hoi"], seg[name]].any()) is visible


def test_full_mode_is_one_call_over_everything():
    (group,) = attention_groups(LAYOUT, "full")
    assert group.queries == slice(0, LAYOUT.total) and dense_mask(LAYOUT, "full").all()


def test_unknown_mode_raises():
    with pytest.raises(ValueError, match="attention mode"):
        attention_groups(LAYOUT, "sideways")


@pytest.mark.parametrize("mode", ["full", "asymmetric"])
def test_grouped_attention_equals_masked_softmax(mode):
    torch.manual_seed(0)
    attn = SelfAttention(64, 2).double()
    x = torch.randn(1, LAYOUT.total, 64, dtype=torch.float64)
    freqs = rope_frequencies(LAYOUT.positions(), 32)
    grouped = attn(x, freqs, attention_groups(LAYOUT, mode))
    q = apply_rope(attn.norm_q(attn.q(x)).view(1, -1, 2, 32), freqs).transpose(1, 2)
    k = apply_rope(attn.norm_k(attn.k(x)).view(1, -1, 2, 32), freqs).transpose(1, 2)
    v = attn.v(x).view(1, -1, 2, 32).transpose(1, 2)
    naive = torch.softmax((q @ k.transpose(-1, -2)) / 32**0.5 + (~dense_mask(LAYOUT, mode)) * -1e30, dim=-1) @ v
    expected = attn.o(naive.transpose(1, 2).reshape(1, -1, 64))
    assert torch.allclose(grouped, expected, atol=1e-10)
    assert torch.allclose(F.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask(LAYOUT, mode)), naive)
