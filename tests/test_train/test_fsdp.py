"""train/fsdp.py in one process: the gradient terms FSDP2 needs change no gradient, and the parameters they drop
afterwards are exactly those one process leaves without a gradient; FSDP1 on CPU is refused."""

from __future__ import annotations

import dataclasses
import types

import pytest
import torch

from comfyui_cointeract.cointeract_core.model.block import DiTBlock
from comfyui_cointeract.train.builders import build_dataset
from comfyui_cointeract.train.errors import UserError
from comfyui_cointeract.train.fsdp import EveryParamGrad, promote_cpu_fsdp, refuse_unrun_deepspeed
from comfyui_cointeract.train.loop import _trainable_model, compute_losses, forward_batch
from comfyui_cointeract.train.losses import FlowSchedule
from comfyui_cointeract.train.stages import make_batch, stage_at, stage_spans
from comfyui_cointeract.train.synthetic import smoke_config

ONE_PROCESS = types.SimpleNamespace(device=torch.device("cpu"), reduce=lambda t, op: t)


def _grads(tmp_path, timestep: float, hooked: bool) -> tuple[dict[str, torch.Tensor | None], list[str]]:
    """Trainable gradients of one stage-2 step at `timestep` -> ({name: grad or None}, names dropped)."""
    cfg = smoke_config(tmp_path, (1, 1))
    torch.manual_seed(0)
    model, trainable, _ = _trainable_model(cfg)
    grads = EveryParamGrad(model, [DiTBlock]) if hooked else None
    span = stage_at(stage_spans(cfg.stages), 1)
    samples = [build_dataset(cfg.data, model.cfg)[0]]
    batch = make_batch(samples, [torch.Generator().manual_seed(3)], FlowSchedule(cfg.loss), cfg.dropout, span.stage)
    batch = dataclasses.replace(batch, timestep=torch.tensor([timestep]))
    compute_losses(forward_batch(model, batch, span), batch, cfg.stage_loss(span.stage)).total.backward()
    dropped = grads.drop_unused(ONE_PROCESS) if grads is not None else []
    params = dict(model.named_parameters())
    return {n: params[n].grad for n in trainable}, dropped


@pytest.mark.parametrize("timestep", [300.0, 950.0])  # MoE experts on / off
def test_the_zero_terms_change_no_gradient_and_drop_exactly_the_unused(tmp_path, timestep):
    plain, _ = _grads(tmp_path / "plain", timestep, hooked=False)
    hooked, dropped = _grads(tmp_path / "hooked", timestep, hooked=True)
    assert sorted(dropped) == sorted(n for n, g in plain.items() if g is None)
    assert all(hooked[n] is None for n in dropped)
    for name, grad in plain.items():
        if grad is not None:
            assert torch.equal(hooked[name], grad), name
    if timestep >= 900:
        assert any(".experts." in n or "expert" in n for n in dropped), dropped  # experts are off at t >= 900


def test_fsdp1_on_cpu_is_refused_not_run_as_ddp(monkeypatch):
    from accelerate.utils import DistributedType

    acc = types.SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, mixed_precision="no")
    promote_cpu_fsdp(acc)  # no FSDP config: nothing happens
    assert acc.distributed_type == DistributedType.MULTI_CPU
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(UserError, match="FSDP1 does not run on CPU"):
        promote_cpu_fsdp(acc)


@pytest.mark.parametrize(
    ("kind", "processes"), [("MULTI_CPU", 2), ("DEEPSPEED", 1)]
)  # runtime.cpu = true; no GPU (each process a world of one)
def test_deepspeed_that_accelerate_would_not_run_is_refused(monkeypatch, kind, processes):
    from accelerate.utils import DistributedType

    acc = types.SimpleNamespace(distributed_type=DistributedType[kind], num_processes=processes)
    refuse_unrun_deepspeed(acc)  # no DeepSpeed config: nothing happens
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="DeepSpeed needs GPUs here"):
        refuse_unrun_deepspeed(acc)
    refuse_unrun_deepspeed(types.SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, num_processes=2))
