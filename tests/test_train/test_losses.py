"""Training schedule and losses against hand computations of the official formulas (reference §1.11, §4.4)."""

from __future__ import annotations

import math

import pytest
import torch

from comfyui_cointeract.train.config import DropoutConfig, LossConfig, StageConfig
from comfyui_cointeract.train.losses import (
    FlowSchedule,
    add_noise,
    flow_loss,
    region_weights,
    router_counts,
    router_loss,
    router_summary,
    total_loss,
)
from comfyui_cointeract.train.stages import draw_drops


def test_weighting_sums_to_1000_and_matches_the_formula():
    sched = FlowSchedule(LossConfig())
    assert len(sched) == 1000
    assert math.isclose(float(sched.weights.sum()), 1000.0, rel_tol=1e-5)
    for i in (0, 1, 250, 500, 999):
        u = 1 - i / 1000  # linspace(1, 0, 1001)[:1000]
        sigma = 5 * u / (1 + 4 * u)
        assert math.isclose(float(sched.sigmas[i]), sigma, rel_tol=1e-6, abs_tol=1e-7)
        t = 1000 * sigma
        y = [math.exp(-2 * ((float(x) - 500) / 1000) ** 2) for x in sched.timesteps]
        w = (math.exp(-2 * ((t - 500) / 1000) ** 2) - min(y)) * 1000 / (sum(y) - 1000 * min(y))
        assert math.isclose(float(sched.weights[i]), w, rel_tol=1e-4, abs_tol=1e-6)
    assert float(sched.weights.min()) == 0.0 and 2.0 < float(sched.weights.max()) < 2.1  # range 0 ... 2.08


def test_bf16_timestep_quantisation_picks_sigma_and_weight_of_the_nearest_entry():
    sched = FlowSchedule(LossConfig())
    draws = [sched.draw(torch.Generator().manual_seed(s)) for s in range(200)]
    for d in draws:
        assert d.timestep == float(torch.tensor(d.timestep).to(torch.bfloat16).float())  # a bf16 value
        assert d.index == int(torch.argmin((sched.timesteps - d.timestep).abs()))
        assert d.sigma == float(sched.sigmas[d.index]) and d.weight == float(sched.weights[d.index])
    share = sum(d.timestep >= 900 for d in draws) / len(draws)
    assert 0.25 < share < 0.47  # ~35.8 % of shift-5 timesteps are >= 900 (reference §1.10)
    exact = FlowSchedule(LossConfig(quantize_timestep=False, timestep_weighting=False))
    d = exact.draw(torch.Generator().manual_seed(3))
    assert d.timestep == float(exact.timesteps[d.index]) and d.weight == 1.0


def test_noising_and_flow_loss():
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 2, 4, 4, generator=gen), torch.randn(2, 4, 2, 4, 4, generator=gen)
    sigma = torch.tensor([0.25, 0.9])
    xt = add_noise(x0, eps, sigma)
    assert torch.allclose(xt[1], 0.1 * x0[1] + 0.9 * eps[1])
    pred, weight = torch.randn(2, 4, 2, 4, 4, generator=gen), torch.tensor([0.5, 2.0])
    target = eps - x0
    expected = (0.5 * ((pred[0] - target[0]) ** 2).mean() + 2.0 * ((pred[1] - target[1]) ** 2).mean()) / 2
    assert torch.allclose(flow_loss(pred, target, weight), expected)


def test_router_ce_equals_a_hand_computation():
    gen = torch.Generator().manual_seed(1)
    layers, b, n = 3, 2, 5
    logits = torch.randn(layers, b, n, 3, generator=gen)
    labels = torch.randint(0, 3, (b, n), generator=gen)
    targets = torch.nn.functional.one_hot(labels, 3).float()
    weights = torch.where(labels == 0, 1.0, 10.0)
    per_block = []
    for layer in range(layers):
        acc = 0.0
        for i in range(b):
            for j in range(n):
                z = logits[layer, i, j].tolist()
                log_z = math.log(sum(math.exp(v) for v in z))
                acc += float(weights[i, j]) * (log_z - z[int(labels[i, j])])
        per_block.append(acc / (b * n))  # mean of weighted terms, not normalised by the weight sum
    assert math.isclose(float(router_loss(logits, targets, weights)), sum(per_block) / layers, rel_tol=1e-5)


def test_total_loss_uses_the_stage_weights():
    flow, router, hoi = torch.tensor(2.0), torch.tensor(3.0), torch.tensor(4.0)
    assert math.isclose(float(total_loss(flow, router, hoi, LossConfig()).total), 2 + 0.05 * 3 + 0.5 * 4, rel_tol=1e-6)
    assert float(total_loss(flow, router, None, LossConfig(hoi_weight=1, router_weight=1)).total) == 5.0


def test_router_metrics_recall_prior_balanced_accuracy():
    labels = torch.tensor([[0, 0, 0, 0, 1, 1, 2, 2]])
    targets = torch.nn.functional.one_hot(labels, 3).float()
    pred = torch.tensor([[0, 0, 0, 1, 1, 0, 2, 2]])
    logits = torch.nn.functional.one_hot(pred, 3).float()[None].repeat(2, 1, 1, 1)  # two identical blocks
    summary = router_summary(*router_counts(logits, targets))
    assert summary["router_recall_base"] == 0.75 and summary["router_recall_hand"] == 0.5
    assert summary["router_recall_face"] == 1.0 and summary["router_prior_hand"] == 0.25
    assert math.isclose(summary["router_balanced_acc"], (0.75 + 0.5 + 1.0) / 3)


def test_dropout_rates_follow_the_config():
    gen = torch.Generator().manual_seed(0)
    drops = [draw_drops(DropoutConfig(), gen) for _ in range(4000)]
    for name, p in (("prompt", 0.1), ("audio", 0.1), ("motion", 0.4), ("pose", 0.5)):
        rate = sum(getattr(d, name) for d in drops) / len(drops)
        assert abs(rate - p) < 0.03, (name, rate)
    never = [draw_drops(DropoutConfig(0, 0, 0, 0), gen) for _ in range(100)]
    assert not any(d.prompt or d.audio or d.motion or d.pose for d in never)
    assert StageConfig("s", "full", 1).hoi  # the HOI stream is co-generated by default


def test_dropped_conditions_become_what_the_official_trainer_feeds():
    import dataclasses

    from comfyui_cointeract.cointeract_core.model.config import PRESETS
    from comfyui_cointeract.train.config import SyntheticConfig
    from comfyui_cointeract.train.sampling import sample_generator
    from comfyui_cointeract.train.stages import make_batch
    from comfyui_cointeract.train.synthetic import synthetic_sample

    s = synthetic_sample(PRESETS["tiny_cointeract"], SyntheticConfig(), 0)
    s = dataclasses.replace(
        s, target_alone=torch.zeros_like(s.target_alone), target_with_motion=torch.ones_like(s.target_alone)
    )
    sched, stage = FlowSchedule(LossConfig()), StageConfig("s", "full", 1)
    dropped = make_batch([s], [sample_generator(0, 0, 0)], sched, DropoutConfig(1, 1, 1, 1), stage)
    assert torch.equal(dropped.context[0], s.empty_prompt) and torch.equal(dropped.hoi_context[0], s.hoi_empty_prompt)
    assert not dropped.audio.any() and dropped.motion is None and dropped.pose is None
    sigma = (dropped.x / dropped.velocity).flatten()[0]
    assert torch.allclose(dropped.x, sigma * dropped.velocity)  # x0 = target_alone = 0: x = sigma * eps
    kept = make_batch([s], [sample_generator(0, 0, 0)], sched, DropoutConfig(0, 0, 0, 0), stage)
    assert torch.equal(kept.context[0], s.prompt) and torch.equal(kept.hoi_context[0], s.hoi_prompt)
    assert torch.equal(kept.audio[0], s.audio) and torch.equal(kept.motion[0], s.motion)
    assert torch.equal(kept.pose[0], s.pose) and torch.allclose(kept.velocity + 1, dropped.velocity)  # same noise
    assert torch.equal(kept.timestep, dropped.timestep) and kept.product_scale == s.product_scale


def test_region_weights_spread_each_token_over_its_patch_and_weight_the_mse():
    # 2 latent frames of 4x4 cells, 2x2 patches -> 2·2·2 = 8 tokens; token 1 is face, token 6 is hand
    targets = torch.zeros(1, 8, 3)
    targets[0, :, 0] = 1.0
    targets[0, 1] = torch.tensor([0.0, 0.0, 1.0])
    targets[0, 6] = torch.tensor([0.0, 1.0, 0.0])
    cells = region_weights(targets, (1, 3, 2, 4, 4), face=4.0, hand=9.0)
    assert cells.shape == (1, 1, 2, 4, 4)
    assert torch.equal(cells[0, 0, 0, :2, 2:], torch.full((2, 2), 5.0))  # token 1 = frame 0, row 0, column 1
    assert torch.equal(cells[0, 0, 1, 2:, :2], torch.full((2, 2), 10.0))  # token 6 = frame 1, row 1, column 0
    assert cells.sum() == 32 - 8 + 4 * 5 + 4 * 10
    assert region_weights(targets, (1, 3, 2, 4, 4), face=0.0, hand=0.0) is None  # official: unweighted

    pred, target = torch.zeros(1, 3, 2, 4, 4), torch.zeros(1, 3, 2, 4, 4)
    pred[0, :, 0, :2, 2:] = 1.0  # an error only inside the face token
    plain = flow_loss(pred, target, torch.ones(1))
    weighted = flow_loss(pred, target, torch.ones(1), cells)
    assert math.isclose(plain.item(), 4 / 32, rel_tol=1e-6)
    assert math.isclose(weighted.item(), 4 * 5 / cells.sum().item(), rel_tol=1e-6)  # 5x the face, normalised
    uniform = flow_loss(torch.ones(1, 3, 2, 4, 4), target, torch.ones(1), cells)
    assert math.isclose(uniform.item(), 1.0, rel_tol=1e-6)  # a uniform error keeps its MSE


def test_region_weights_refuse_targets_that_do_not_tile_the_latents():
    with pytest.raises(ValueError, match="do not tile"):
        region_weights(torch.zeros(1, 7, 3), (1, 3, 2, 4, 4), face=1.0, hand=0.0)


def test_loss_config_refuses_negative_region_weights():
    with pytest.raises(ValueError, match="face_weight"):
        LossConfig(face_weight=-1.0)
