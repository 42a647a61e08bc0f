"""Two-stage CoInteract training on accelerate: one process, DDP, FSDP or DeepSpeed, from an accelerate config.

Reads top to bottom like DiT's train.py: accelerator -> the output folder's lock (lock.py) -> the resume plan
(intact checkpoint, config changes, environment: resume.py) -> the latent cache, built when the config asks
(cache_build.py) -> model (frozen base + PEFT LoRA + MoE / HOI in full) -> data -> AdamW + LR schedule -> resume,
and missing stage exports written again -> the loop over global steps, where the stage (attention mode, lr,
trainable set, HOI stream) is looked up as data -> metrics, official-layout exports, then atomic checkpoints
(saving.py).

Every random choice for a sample comes from a generator seeded by (seed, step, global slot) and the sample order
is a fixed stream (`sampling.py`): a resumed run repeats an uninterrupted one exactly, and N processes see the
same samples and noise as one process with N-fold gradient accumulation.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..cointeract_core.model.dit import DiTOutput
from .builders import DTYPES, build_dataset, build_model, load_start_checkpoint
from .cache_build import ensure_cache
from .checkpoints import RunState, keep_trainable_only, latest_checkpoint, read_meta
from .config import LossConfig, TrainConfig, config_to_toml
from .errors import UserError
from .fsdp import EveryParamGrad, promote_cpu_fsdp, refuse_unrun_deepspeed
from .lock import RunLock
from .lora_peft import inject_lora
from .losses import (
    FlowSchedule,
    LossParts,
    flow_loss,
    region_weights,
    router_counts,
    router_loss,
    router_summary,
    total_loss,
)
from .metrics import MetricsLog, peak_memory_mb
from .resume import on_main, plan_resume
from .sample import TrainSample
from .sampling import global_slot, sample_generator, step_loader
from .saving import Saver
from .stages import Batch, StageSpan, drop_frozen_grads, make_batch, set_trainable, stage_at, stage_spans

log = logging.getLogger(__name__)

__all__ = [
    "train",
    "TrainResult",
    "TrainingDiverged",
    "forward_batch",
    "compute_losses",
    "lr_at",
]


class TrainingDiverged(UserError):
    """The loss or the gradient became NaN / inf; the last good checkpoint is kept."""


@dataclass(frozen=True)
class TrainResult:
    output_dir: Path
    steps: int  # optimizer steps completed
    exports: tuple[Path, ...]  # stage-final exports, in stage order
    last_checkpoint: Path | None


def train(cfg: TrainConfig, dataset: Sequence[TrainSample] | None = None, *, force: bool = False) -> TrainResult:
    """Run every stage of `cfg`, resuming from the newest intact checkpoint in runtime.output_dir when there is one.

    `dataset` replaces the one `cfg.data` describes (else the latent cache, built first when `[data.encode]` asks).
    A resume refuses a config change that alters the run unless `force` (resume.py). One trainer per output folder
    (lock.py). accelerate keeps one state per process: runs in the same process must use the same
    runtime.mixed_precision and runtime.cpu.
    """
    accelerator = _make_accelerator(cfg)
    out = Path(cfg.runtime.output_dir)
    held: list[RunLock] = []
    on_main(accelerator, lambda: held.append(RunLock.acquire(out)))
    try:
        return _train(accelerator, cfg, out, dataset, force)
    finally:
        for lock in held:
            lock.release()


def _train(accelerator, cfg: TrainConfig, out: Path, dataset: Sequence[TrainSample] | None, force: bool) -> TrainResult:
    """`train` with the output folder locked: resume plan, model, data, optimizer, then the loop over steps."""
    latest = plan_resume(accelerator, cfg, out / "checkpoints", force)
    if dataset is None:
        ensure_cache(accelerator, cfg.data, cfg.model.preset)
    if accelerator.is_main_process:  # the resolved config, to rerun or resume with
        _write_text(out / "config.toml", config_to_toml(cfg))
    torch.manual_seed(cfg.runtime.seed)
    model, trainable, stage_params = _trainable_model(cfg)

    # Data: a fixed stream of sample indices; each optimizer step takes the next global batch.
    dataset = build_dataset(cfg.data, model.cfg) if dataset is None else dataset
    spans = stage_spans(cfg.stages)

    # Optimizer and schedule (the lambda returns the absolute lr of the step's stage; base lr is 1).
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=1.0, betas=cfg.optim.betas, eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_at, cfg))
    grads = _every_param_grad(accelerator, model)  # before prepare: its hooks run before FSDP's
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    state = RunState()
    accelerator.register_for_checkpointing(state)
    accelerator.register_save_state_pre_hook(keep_trainable_only)
    schedules = {s.name: FlowSchedule(cfg.stage_loss(s)) for s in cfg.stages}
    run = _Run(accelerator, model, optimizer, scheduler, cfg, schedules, stage_params, grads)
    saver = Saver(accelerator, model, cfg, trainable, out)

    start = _load(accelerator, latest, state, trainable)
    saver.restore_exports(spans, state, latest)
    metrics = MetricsLog(out / "metrics.jsonl", accelerator.is_main_process)
    metrics.truncate(start)
    loader = iter(step_loader(dataset, cfg, accelerator.num_processes, accelerator.process_index, start))
    progress = _progress_bar(cfg, accelerator, start)
    last = latest

    for step in range(start, cfg.total_steps):
        span = stage_at(spans, step)
        if step == span.start and span.index > 0 and cfg.optim.reset_between_stages:
            optimizer.optimizer.state.clear()  # a stage starts with fresh AdamW moments, as a new official run
        record = _train_step(run, next(loader), step, span)
        state.step, state.stage = step + 1, span.stage.name
        metrics.write(record)
        progress.update(1)
        progress.set_postfix(stage=span.stage.name, loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
        if (step + 1) % cfg.runtime.checkpoint_every == 0 or step + 1 == span.end:
            last = saver.checkpoint(state, final=step + 1 == span.end)
    progress.close()
    return TrainResult(out, state.step, tuple(saver.final_export(s.stage.name) for s in spans), last)


def _trainable_model(cfg: TrainConfig) -> tuple[nn.Module, list[str], dict[str, set[str]]]:
    """Frozen base (+ LoRA through peft), MoE router / experts and HOI modules trained in full -> (model, trainable
    parameter names, per-stage trainable names)."""
    model = build_model(cfg.model)
    inject_lora(model, cfg.lora)
    if cfg.model.cointeract:
        load_start_checkpoint(model, cfg.model.cointeract, cfg.lora)
    stage_params = set_trainable(model, cfg.stages)
    _cast_params(model, DTYPES[cfg.model.base_dtype])
    model.gradient_checkpointing = cfg.model.gradient_checkpointing
    model.train()
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    log.info(
        "trainable: %d tensors, %.2fM parameters",
        len(trainable),
        sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
    )
    return model, trainable, stage_params


# ---------------------------------------------------------------------------------------------- setup


def _make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator  # noqa: PLC0415 - heavy, training only
    from accelerate.utils import DistributedDataParallelKwargs  # noqa: PLC0415

    # Unused parameters are normal: experts are off at t >= 900, HOI / pose may be absent in a step.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    accelerator = Accelerator(
        mixed_precision=cfg.runtime.mixed_precision,
        cpu=cfg.runtime.cpu,
        step_scheduler_with_optimizer=False,
        kwargs_handlers=[ddp],
    )
    promote_cpu_fsdp(accelerator)  # accelerate alone would run an FSDP config with runtime.cpu as DDP
    refuse_unrun_deepspeed(accelerator)  # ... and a DeepSpeed one on CPU as DDP or as N separate runs
    log.info(
        "accelerate: %s, %d process(es), device %s, mixed precision %s",
        accelerator.distributed_type,
        accelerator.num_processes,
        accelerator.device,
        accelerator.mixed_precision,
    )
    return accelerator


def _every_param_grad(accelerator, model: nn.Module) -> EveryParamGrad | None:
    """Under FSDP, equal gradient-reduction sizes on every rank (fsdp.py); None otherwise."""
    from accelerate.utils import DistributedType  # noqa: PLC0415

    if accelerator.distributed_type != DistributedType.FSDP:
        return None
    names = set(accelerator.state.fsdp_plugin.transformer_cls_names_to_wrap or ())
    return EveryParamGrad(model, {type(m) for m in model.modules() if type(m).__name__ in names})


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@torch.no_grad()
def _cast_params(model: nn.Module, base_dtype: torch.dtype) -> None:
    """Frozen weights in the base dtype, trainable ones in fp32 (AdamW on fp32 master weights)."""
    for p in model.parameters():
        p.data = p.data.float() if p.requires_grad else p.data.to(base_dtype)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Absolute lr at global optimizer step `step`: the stage's lr times its warmup / cosine / official factor."""
    span = stage_at(stage_spans(cfg.stages), min(step, cfg.total_steps - 1))
    s, n, o = step - span.start, span.stage.steps, cfg.optim
    if o.schedule == "official":  # torch ConstantLR defaults: factor 1/3 for the first 5 steps
        return span.stage.lr * (1 / 3 if s < 5 else 1.0)
    if s < o.warmup_steps:
        return span.stage.lr * (s + 1) / (o.warmup_steps + 1)
    if o.schedule == "constant":
        return span.stage.lr
    progress = (s - o.warmup_steps) / max(1, n - o.warmup_steps)
    return span.stage.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _progress_bar(cfg: TrainConfig, accelerator, start: int):
    from tqdm.auto import tqdm  # noqa: PLC0415

    enabled = cfg.runtime.progress and accelerator.is_main_process
    return tqdm(total=cfg.total_steps, initial=start, disable=not enabled, desc="train", dynamic_ncols=True)


def _load(accelerator, latest: Path | None, state: RunState, trainable: list[str]) -> int:
    """Load the planned checkpoint (model part, optimizer, scheduler, RNG, position); returns its step."""
    if latest is None:
        return 0
    if read_meta(latest)["trainable"] != trainable:
        raise UserError(
            f"{latest} was written for a different set of trainable weights (lora / stages changed); "
            "use the original config or a new runtime.output_dir"
        )
    accelerator.load_state(str(latest), strict=False)
    log.info("resumed from %s (step %d, stage %s)", latest, state.step, state.stage)
    return state.step


# ---------------------------------------------------------------------------------------------- one step


def forward_batch(model: nn.Module, batch: Batch, span: StageSpan) -> DiTOutput:
    """One DiT forward on a prepared batch under the stage's attention mode (router logits always returned)."""
    return model(
        batch.x,
        batch.timestep,
        batch.context,
        batch.audio,
        batch.person,
        product=batch.product,
        product_scale=batch.product_scale,
        motion=batch.motion,
        pose=batch.pose,
        hoi=batch.hoi,
        hoi_context=batch.hoi_context,
        attention=span.stage.attention,
        return_router=True,
    )


def compute_losses(out: DiTOutput, batch: Batch, cfg: LossConfig) -> LossParts:
    """Flow (RGB), HOI (when co-generated) and router losses of one forward, combined with the stage's weights."""
    cells = region_weights(batch.router_targets, tuple(batch.velocity.shape), cfg.face_weight, cfg.hand_weight)
    flow = flow_loss(out.velocity, batch.velocity, batch.weight, cells)
    hoi = flow_loss(out.hoi_velocity, batch.hoi_velocity, batch.weight, cells) if batch.hoi is not None else None
    router = (
        router_loss(out.router_logits, batch.router_targets, batch.router_weights)
        if out.router_logits is not None
        else flow.new_zeros(())
    )
    return total_loss(flow, router, hoi, cfg)


@dataclass(frozen=True)
class _Run:
    """What every step uses: the accelerate-prepared objects, the config, and per-stage schedules / trainable sets."""

    accelerator: Any
    model: nn.Module
    optimizer: Any
    scheduler: Any
    cfg: TrainConfig
    schedules: dict[str, FlowSchedule]
    stage_params: dict[str, set[str]]
    grads: EveryParamGrad | None = None  # FSDP only


def _forward_backward(
    run: _Run, samples: list, step: int, span: StageSpan
) -> tuple[torch.Tensor, torch.Tensor, int, list]:
    """Accumulate gradients over the step's micro-batches -> (loss sums [4], router counts [6], tokens, timesteps)."""
    acc, cfg = run.accelerator, run.cfg
    accum, bs = cfg.optim.gradient_accumulation_steps, cfg.data.batch_size
    sums = torch.zeros(4, dtype=torch.float64)  # total, flow, router, hoi
    counts = torch.zeros(6, dtype=torch.float64)  # router hits per class, labelled tokens per class
    tokens, timesteps = 0, []
    for m in range(accum):
        part = samples[m * bs : (m + 1) * bs]
        gens = [
            sample_generator(cfg.runtime.seed, step, global_slot(m, acc.num_processes, acc.process_index, bs, b))
            for b in range(len(part))
        ]
        batch = make_batch(part, gens, run.schedules[span.stage.name], cfg.dropout, span.stage).to(acc.device)
        with nullcontext() if m == accum - 1 else acc.no_sync(run.model):
            out = forward_batch(run.model, batch, span)
            parts = compute_losses(out, batch, cfg.stage_loss(span.stage))
            acc.backward(parts.total / accum)
        hoi = parts.hoi.detach() if parts.hoi is not None else torch.zeros(())
        sums += torch.stack([parts.total.detach(), parts.flow.detach(), parts.router.detach(), hoi]).double().cpu()
        if out.router_logits is not None:
            counts += torch.cat(router_counts(out.router_logits.detach(), batch.router_targets)).cpu()
        tokens += batch.router_targets.shape[0] * batch.router_targets.shape[1]
        timesteps += batch.timestep.tolist()
    return sums / accum, counts, tokens, timesteps


def _train_step(run: _Run, samples: list, step: int, span: StageSpan) -> dict:
    """Forward / backward, drop other stages' gradients, clip, stop on NaN / inf, optimizer step -> the record."""
    t0, acc = time.perf_counter(), run.accelerator
    sums, counts, tokens, timesteps = _forward_backward(run, samples, step, span)
    if run.grads is not None:
        run.grads.drop_unused(acc)
    drop_frozen_grads(acc.unwrap_model(run.model), run.stage_params[span.stage.name])
    grad_norm = _clip(acc, run.model, run.cfg.optim.grad_clip)
    sums = acc.reduce(sums.to(acc.device), "mean").cpu()
    _stop_if_not_finite(acc, sums, grad_norm, step, run.cfg)
    lr = run.scheduler.get_last_lr()[0]
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    counts = acc.reduce(counts.to(acc.device), "sum").cpu()
    elapsed = time.perf_counter() - t0
    return {
        "step": step + 1, "stage": span.stage.name, "stage_step": step + 1 - span.start,
        "loss": float(sums[0]), "flow": float(sums[1]), "router": float(sums[2]),
        "hoi": float(sums[3]) if span.stage.hoi else None, "lr": lr, "grad_norm": grad_norm,
        "timesteps": timesteps,  # this process's (the main process's in the log)
        "step_time_s": elapsed, "target_tokens_per_s": tokens * acc.num_processes / elapsed,
        "peak_mem_mb": peak_memory_mb(acc.device), **router_summary(counts[:3], counts[3:]),
    }  # fmt: skip


def _clip(accelerator, model: nn.Module, max_norm: float) -> float | None:
    if max_norm <= 0:
        return None
    params = [p for p in model.parameters() if p.requires_grad]
    return float(accelerator.clip_grad_norm_(params, max_norm))


def _stop_if_not_finite(accelerator, sums: torch.Tensor, grad_norm: float | None, step: int, cfg: TrainConfig):
    """NaN / inf loss or gradient on any process: stop before the optimizer step; checkpoints stay as they are."""
    bad = not bool(torch.isfinite(sums).all()) or (grad_norm is not None and not math.isfinite(grad_norm))
    flag = accelerator.reduce(torch.tensor([float(bad)], device=accelerator.device), "sum")
    if float(flag) == 0:
        return
    last = latest_checkpoint(Path(cfg.runtime.output_dir) / "checkpoints")
    raise TrainingDiverged(
        f"step {step + 1}: the loss or gradient is not finite (loss parts {sums.tolist()}, grad norm {grad_norm}); "
        f"stopped before the update. The last good checkpoint is {last or 'none (no checkpoint was written yet)'}; "
        "lower the lr, enable grad clipping, or check the data of this step"
    )
