"""CoInteractDiT behaviour: shapes, asymmetric invariance, MoE gating, zero-cost experts, fresh parts, bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from comfyui_cointeract.cointeract_core.model.config import PRESETS, MoEConfig
from comfyui_cointeract.cointeract_core.model.dit import CoInteractDiT
from comfyui_cointeract.cointeract_core.model.init import init_cointeract_parts


def _run(model, **kw):
    with torch.no_grad():
        return model(**kw)


def test_output_shapes(ci_model, ci_cfg, make_inputs):
    args = make_inputs(ci_cfg)
    out = _run(ci_model, **args, return_router=True)
    assert out.velocity.shape == args["x"].shape and out.hoi_velocity.shape == args["x"].shape
    assert out.router_logits.shape == (ci_cfg.num_layers, 1, 3 * 4 * 8, 3)


def test_asymmetric_rgb_is_independent_of_hoi(ci_model, ci_cfg, make_inputs):
    args = make_inputs(ci_cfg)
    with_hoi = _run(ci_model, **args, attention="asymmetric").velocity
    no_hoi = {k: v for k, v in args.items() if k not in ("hoi", "hoi_context")}
    assert torch.equal(with_hoi, _run(ci_model, **no_hoi).velocity)
    assert not torch.allclose(_run(ci_model, **args, attention="full").velocity, with_hoi)  # full mode mixes


def test_every_input_contributes(ci_model, ci_cfg, make_inputs):
    args = make_inputs(ci_cfg)
    base = _run(ci_model, **args).velocity
    for drop in ("product", "motion", "pose"):
        out = _run(ci_model, **{k: v for k, v in args.items() if k != drop}).velocity
        assert (out - base).abs().max() > 1e-3, drop
    assert (_run(ci_model, **{**args, "audio": args["audio"] * 0}).velocity - base).abs().max() > 1e-3


def _count_expert_calls(model) -> list[int]:
    calls = [0]
    for block in model.blocks:
        for name in block.ffn.cfg.expert_names:
            block.ffn.expert(name).register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_experts_not_called_at_or_after_900(ci_model, ci_cfg, make_inputs):
    calls = _count_expert_calls(ci_model)
    router_calls = [0]
    ci_model.blocks[0].ffn.router.register_forward_hook(lambda *_: router_calls.__setitem__(0, router_calls[0] + 1))
    args = make_inputs(ci_cfg)
    out = _run(ci_model, **{**args, "timestep": torch.tensor([900.0])})
    assert calls[0] == 0 and router_calls[0] == 0 and out.router_logits is None
    _run(ci_model, **{**args, "timestep": torch.tensor([937.0])}, return_router=True)  # maps asked: router only
    assert calls[0] == 0 and router_calls[0] == 1
    _run(ci_model, **{**args, "timestep": torch.tensor([899.0])})
    assert calls[0] == 2 * ci_cfg.num_layers


def test_experts_change_output_only_below_900(ci_model, ci_cfg, make_inputs):
    args = make_inputs(ci_cfg, hoi=False)
    plain = CoInteractDiT(dataclasses.replace(ci_cfg, moe=None, hoi=None)).eval()
    sd = {k.replace("ffn.ffn_base.", "ffn."): v for k, v in ci_model.state_dict().items()}
    plain.load_state_dict(sd, strict=False)
    for t, same in ((950.0, True), (500.0, False)):
        a = _run(ci_model, **{**args, "timestep": torch.tensor([t])}).velocity
        b = _run(plain, **{**args, "timestep": torch.tensor([t])}).velocity
        assert torch.allclose(a, b, atol=1e-6) is same


def test_mixed_batch_gates_experts_per_sample(ci_model, ci_cfg, make_inputs):
    one = make_inputs(ci_cfg, hoi=False)
    batch = {k: torch.cat([v, v]) if isinstance(v, torch.Tensor) and v.ndim > 1 else v for k, v in one.items()}
    out = _run(ci_model, **{**batch, "timestep": torch.tensor([500.0, 950.0])}).velocity
    for i, t in enumerate((500.0, 950.0)):
        single = _run(ci_model, **{**one, "timestep": torch.tensor([t])}).velocity
        assert torch.allclose(out[i : i + 1], single, atol=1e-5)


def test_moe_ffn_traces_without_a_graph_break_when_told_whether_experts_run(ci_model, ci_cfg):
    """The model reads experts_on.any() once per forward; given it, the MoE FFN compiles as one graph."""
    ffn, gen = ci_model.blocks[0].ffn, torch.Generator().manual_seed(0)
    x, on = torch.randn(1, 10, ci_cfg.dim, generator=gen), torch.tensor([True])
    with torch.no_grad():
        eager = ffn(x, 6, on, False)
        compiled = torch.compile(ffn, backend="eager", fullgraph=True)(x, 6, on, False, True)
    torch.testing.assert_close(compiled[0], eager[0])
    torch.testing.assert_close(compiled[1], eager[1])
    torch._dynamo.reset()


def test_fresh_cointeract_parts_leave_base_output_unchanged(ci_cfg, make_inputs, randomize):
    base_cfg = dataclasses.replace(ci_cfg, moe=None, hoi=None)
    base = randomize(CoInteractDiT(base_cfg)).eval()
    full = CoInteractDiT(ci_cfg).eval()
    sd = {k.replace("ffn.", "ffn.ffn_base."): v for k, v in base.state_dict().items()}
    assert not full.load_state_dict(sd, strict=False).unexpected_keys
    init_cointeract_parts(full)
    args = make_inputs(ci_cfg, hoi=False)
    expected = _run(base, **args).velocity
    assert torch.allclose(_run(full, **args).velocity, expected, atol=1e-6)
    args = make_inputs(ci_cfg)
    assert torch.allclose(_run(full, **args, attention="asymmetric").velocity, expected, atol=1e-6)
    hoi_only = _run(full, **{**args, "x": args["hoi"]}, attention="asymmetric").velocity
    assert hoi_only.shape == expected.shape


def test_paper_variant_has_base_expert(ci_cfg, make_inputs, randomize):
    cfg = dataclasses.replace(ci_cfg, moe=MoEConfig(expert_dim=8, experts="paper"))
    model = randomize(CoInteractDiT(cfg)).eval()
    assert "blocks.0.ffn.base_expert.fc1.weight" in model.state_dict()
    calls = _count_expert_calls(model)
    _run(model, **make_inputs(cfg))
    assert calls[0] == 3 * cfg.num_layers


def test_14B_parameter_count_matches_reference():
    with torch.device("meta"):
        model = CoInteractDiT(PRESETS["14B"])
    assert sum(p.numel() for p in model.parameters()) == 16_295_755_609  # reference wan-s2v.md §1.2


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(x=torch.randn(1, 16, 3, 9, 16)), "not divisible by the patch"),
        (dict(audio=torch.randn(1, 25, 24, 20)), "audio gives"),
        (dict(product=torch.randn(1, 16, 1, 8, 8)), "product latent"),
    ],
)
def test_bad_input_raises(ci_model, ci_cfg, change, match, make_inputs):
    with pytest.raises(ValueError, match=match):
        _run(ci_model, **{**make_inputs(ci_cfg), **change})


def test_hoi_on_a_model_without_hoi_raises(ci_cfg, make_inputs):
    model = CoInteractDiT(dataclasses.replace(ci_cfg, hoi=None)).eval()
    with pytest.raises(ValueError, match="no HOI stream"):
        _run(model, **make_inputs(ci_cfg))


def test_gradient_checkpointing_gives_same_gradients(ci_cfg, make_inputs, randomize):
    args = make_inputs(ci_cfg)
    grads = []
    for ckpt in (False, True):
        model = randomize(CoInteractDiT(ci_cfg)).train()
        model.gradient_checkpointing = ckpt
        out = model(**args, attention="asymmetric")
        (out.velocity.square().mean() + out.hoi_velocity.square().mean() + out.router_logits.mean()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
