"""SequenceLayout: token counts of the official table, and the RoPE positions of each segment."""

from __future__ import annotations

import pytest
import torch

from comfyui_cointeract.cointeract_core.model.layout import ROPE_TABLE, SequenceLayout


@pytest.mark.parametrize(
    "latent_hw,image,motion",
    [((160, 90), 3600, 3600 + 880 + 880), ((104, 60), 1560, 1560 + 390 + 364), ((90, 60), 1350, 1350 + 330 + 308)],
)
def test_token_counts_match_official_table(latent_hw, image, motion):
    lay = SequenceLayout(frames=20, latent_hw=latent_hw, product=True, motion=True, hoi=True)
    assert lay.n_image == image and lay.n_motion == motion
    assert lay.n_target == 20 * image and lay.n_hoi == lay.n_target
    assert lay.total == lay.positions().shape[0] == 2 * lay.n_target + 2 * image + motion


def test_segments_are_in_official_order():
    lay = SequenceLayout(frames=3, latent_hw=(8, 16), product=True, motion=True, hoi=True)
    names = list(lay.segments())
    assert names == ["target", "person", "product", "motion", "hoi"]
    assert lay.type_ids().tolist() == [0] * 96 + [1] * 64 + [2] * lay.n_motion


def test_positions_per_segment():
    lay = SequenceLayout(frames=3, latent_hw=(8, 16), product=True, product_scale=0.6, motion=True, hoi=True)
    pos, seg = lay.positions(), lay.segments()
    assert set(pos[seg["person"], 0].tolist()) == {30}
    prod = pos[seg["product"]]
    assert set(prod[:, 0].tolist()) == {31}
    assert (
        sorted(set(prod[:, 1].tolist())) == [0, 1] and max(prod[:, 2].tolist()) == 4
    )  # round(0.6·4)=2, round(0.6·8)=5
    motion_t = sorted(set(pos[seg["motion"], 0].tolist()))
    assert motion_t == [-19, -14, -9, -4, -3, -1]
    hoi = pos[seg["hoi"]]
    assert torch.equal(hoi[:, :2], pos[seg["target"], :2])
    assert sorted(set(hoi[:, 2].tolist())) == list(range(ROPE_TABLE - 8, ROPE_TABLE))  # the official wrap


def test_true_negative_hoi_width_is_an_option():
    lay = SequenceLayout(frames=1, latent_hw=(8, 16), hoi=True, hoi_width="negative")
    assert sorted(set(lay.positions()[lay.segments()["hoi"], 2].tolist())) == list(range(-8, 0))
