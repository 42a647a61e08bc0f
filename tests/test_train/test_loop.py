"""The training loop in one process: metrics, schedule, exports, crash + resume, NaN stop, atomic checkpoints."""

from __future__ import annotations

import errno
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from comfyui_cointeract.train import loop
from comfyui_cointeract.train.checkpoints import list_checkpoints
from comfyui_cointeract.train.loop import TrainingDiverged, lr_at, train
from comfyui_cointeract.train.metrics import read_metrics
from comfyui_cointeract.train.synthetic import smoke_config, synthetic_dataset

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def _steps(out: Path) -> list[int]:
    return [step for step, _ in list_checkpoints(out / "checkpoints")]


def _exports(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "exports").iterdir())


def test_two_stages_run_back_to_back_with_metrics_checkpoints_and_exports(tmp_path):
    cfg = smoke_config(tmp_path, (3, 3), runtime={"checkpoint_every": 2, "keep_last": 2})
    result = train(cfg)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6] and result.steps == 6
    assert [r["stage"] for r in records] == ["stage1"] * 3 + ["stage2"] * 3
    assert [r["lr"] for r in records] == pytest.approx([lr_at(cfg, s) for s in range(6)])
    for r in records:
        assert all(math.isfinite(r[k]) for k in ("loss", "flow", "router", "hoi", "grad_norm", "target_tokens_per_s"))
        assert r["peak_mem_mb"] > 0 and 0 <= r["router_balanced_acc"] <= 1 and len(r["timesteps"]) == 1
        assert r["router_prior_hand"] is not None and r["step_time_s"] > 0
    assert _steps(tmp_path) == [4, 6]  # checkpoints at 2, 3 (stage end), 4, 6: the newest two are kept
    assert _exports(tmp_path) == [
        "stage1-final.safetensors",
        "stage2-final.safetensors",
        "step-00000004.safetensors",
        "step-00000006.safetensors",
    ]
    assert result.exports[1] == tmp_path / "exports" / "stage2-final.safetensors"
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "checkpoints").iterdir())


def test_lr_schedules():
    cfg = smoke_config("unused", (10, 4), lr=1.0)
    assert [round(lr_at(cfg, s), 4) for s in (0, 1, 2, 9, 10, 12)] == [0.3333, 0.6667, 1.0, 0.0381, 0.3333, 1.0]
    official = smoke_config("unused", (10, 4), lr=3.0, optim={"schedule": "official"})
    assert [lr_at(official, s) for s in (0, 4, 5, 9, 10, 15)] == [1.0, 1.0, 3.0, 3.0, 1.0, 3.0]
    constant = smoke_config("unused", (10, 4), lr=2.0, optim={"schedule": "constant", "warmup_steps": 0})
    assert {lr_at(constant, s) for s in range(14)} == {2.0}


def test_a_crash_then_resume_repeats_the_uninterrupted_run(tmp_path, monkeypatch):
    cfg = smoke_config(tmp_path / "full", (3, 3), runtime={"checkpoint_every": 2})
    train(cfg)
    reference = read_metrics(tmp_path / "full" / "metrics.jsonl")

    crashed = smoke_config(tmp_path / "crash", (3, 3), runtime={"checkpoint_every": 2})
    real_step = loop._train_step

    def crash_at_5(*args, **kwargs):
        if args[2] == 4:  # the 0-based global step: after the checkpoints at steps 2, 3 and 4
            raise KeyboardInterrupt("simulated crash")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "_train_step", crash_at_5)
    with pytest.raises(KeyboardInterrupt):
        train(crashed)
    monkeypatch.setattr(loop, "_train_step", real_step)
    assert _steps(tmp_path / "crash")[-1] == 4
    train(crashed)
    resumed = read_metrics(tmp_path / "crash" / "metrics.jsonl")
    assert [r["loss"] for r in resumed] == [r["loss"] for r in reference]
    assert [r["timesteps"] for r in resumed] == [r["timesteps"] for r in reference]
    a = load_file(tmp_path / "full" / "exports" / "stage2-final.safetensors")
    b = load_file(tmp_path / "crash" / "exports" / "stage2-final.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = smoke_config(tmp_path, (6, 2), data={"shuffle": False}, runtime={"checkpoint_every": 2})
    samples = synthetic_dataset(*_dit_and_syn(cfg))
    samples[3] = _with_nan(samples[3])  # read at step 4 (no shuffling, batch 1)
    with pytest.raises(TrainingDiverged, match="step 4: the loss or gradient is not finite"):
        train(cfg, dataset=samples)
    assert _steps(tmp_path) == [2]
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    assert _exports(tmp_path) == ["step-00000002.safetensors"]
    before = load_file(tmp_path / "exports" / "step-00000002.safetensors")
    assert all(torch.isfinite(t).all() for t in before.values())


def test_a_full_disk_during_a_checkpoint_leaves_no_partial_files(tmp_path, monkeypatch):
    import accelerate.checkpointing as acc_ckpt

    cfg = smoke_config(tmp_path, (4, 1), runtime={"checkpoint_every": 2})
    real_save = acc_ckpt.save

    def disk_full_at_step_4(obj, path, *args, **kwargs):
        if "step-00000004" in str(path) and "optimizer" in str(path):
            Path(path).write_bytes(b"partial")  # some bytes made it to disk before the error
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(acc_ckpt, "save", disk_full_at_step_4)
    with pytest.raises(OSError, match="No space left"):
        train(cfg)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000002"]
    monkeypatch.setattr(acc_ckpt, "save", real_save)
    result = train(cfg)  # space is back: resumes from step 2 and finishes
    assert result.steps == 5 and _steps(tmp_path) == [4, 5]


def _dit_and_syn(cfg):
    from comfyui_cointeract.cointeract_core.model.config import PRESETS

    return PRESETS[cfg.model.preset], cfg.data.synthetic


def _with_nan(sample):
    import dataclasses

    bad = sample.target_alone.clone()
    bad[0, 0, 0, 0] = float("nan")
    return dataclasses.replace(sample, target_alone=bad, target_with_motion=bad)


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state; a run with another mixed precision needs it reset (tests only)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def test_gradient_checkpointing_and_bf16(tmp_path, fresh_accelerate_state):
    tiny = {"preset": "tiny_cointeract", "attention_backend": "sdpa"}
    plain = train(smoke_config(tmp_path / "plain", (2, 1), model={**tiny, "base_dtype": "fp32"}))
    ckpt = train(
        smoke_config(tmp_path / "gc", (2, 1), model={**tiny, "base_dtype": "fp32", "gradient_checkpointing": True})
    )
    losses = {p: [r["loss"] for r in read_metrics(p / "metrics.jsonl")] for p in (plain.output_dir, ckpt.output_dir)}
    assert losses[plain.output_dir] == losses[ckpt.output_dir]  # recomputation is exact
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    bf16 = train(
        smoke_config(
            tmp_path / "bf16",
            (2, 1),
            model={**tiny, "base_dtype": "bf16", "gradient_checkpointing": True},
            runtime={"mixed_precision": "bf16"},
        )
    )
    got = [r["loss"] for r in read_metrics(bf16.output_dir / "metrics.jsonl")]
    assert got == pytest.approx(losses[plain.output_dir], rel=2e-2) and got != losses[plain.output_dir]
    export = load_file(bf16.exports[-1])
    assert all(t.dtype == torch.float32 for t in export.values())  # trainable weights stay fp32 masters
