"""The trainer as users launch it: `python -m comfyui_cointeract.train` killed with SIGKILL mid-stage and resumed,
and `accelerate launch` with 2 CPU processes (DDP, and FSDP2 with a resume, over gloo) against one process with
the same global batch."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from comfyui_cointeract.train.config import config_to_toml
from comfyui_cointeract.train.loop import train
from comfyui_cointeract.train.metrics import read_metrics
from comfyui_cointeract.train.synthetic import smoke_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "train" / "accelerate_configs"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def _config_file(path: Path, cfg) -> Path:
    path.write_text(config_to_toml(cfg), encoding="utf-8")
    return path


def _logged(metrics: Path) -> int:
    return metrics.read_text().count("\n") if metrics.exists() else 0


def _exports_equal(a: Path, b: Path) -> bool:
    x, y = load_file(a), load_file(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("name", ["ddp.yaml", "fsdp.yaml", "deepspeed_zero2.yaml"])
def test_shipped_accelerate_configs_parse(name):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(CONFIGS / name))
    assert cfg.num_processes == 8 and cfg.mixed_precision == "bf16"
    text = (CONFIGS / name).read_text()
    assert ("TESTED with 2 CPU processes" in text) == (name != "deepspeed_zero2.yaml")
    assert ("UNTESTED" in text) == (name == "deepspeed_zero2.yaml")
    if name == "fsdp.yaml":  # FSDP2 (fully_shard); accelerate's default, 1, is the FullyShardedDataParallel wrapper
        assert cfg.fsdp_config["fsdp_version"] == 2


@pytest.mark.slow
def test_sigkill_mid_stage_then_resume_repeats_the_uninterrupted_run(tmp_path):
    cfg = smoke_config(tmp_path / "killed", (8, 4), runtime={"checkpoint_every": 3, "keep_last": 2})
    reference = train(smoke_config(tmp_path / "reference", (8, 4), runtime={"checkpoint_every": 3, "keep_last": 2}))
    command = [sys.executable, "-m", "comfyui_cointeract.train", str(_config_file(tmp_path / "cfg.toml", cfg))]
    marker = tmp_path / "killed" / "checkpoints" / "step-00000003" / "meta.json"
    metrics = tmp_path / "killed" / "metrics.jsonl"
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen(command, env=ENV, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline and not (marker.exists() and _logged(metrics) >= 5):
            time.sleep(0.005)  # kill once steps 4-5 are done past the step-3 checkpoint: that work must be redone
        os.kill(proc.pid, signal.SIGKILL)  # a real SIGKILL: no handler, no cleanup
        assert proc.wait() == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-2000:]
    steps_before_resume = _logged(metrics)
    assert 5 <= steps_before_resume < 8, "the process must die mid-stage-1, steps after the step-3 checkpoint"
    assert not (tmp_path / "killed" / "exports" / "stage1-final.safetensors").exists()  # killed inside stage 1

    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "resumed from" in done.stderr
    assert f"took over the stale lock {tmp_path / 'killed' / 'train.lock'} of pid {proc.pid}" in done.stderr
    got, want = (read_metrics(p / "metrics.jsonl") for p in (tmp_path / "killed", reference.output_dir))
    assert [r["step"] for r in got] == list(range(1, 13))
    assert [r["loss"] for r in got] == [r["loss"] for r in want]  # per-step losses, bit for bit
    assert [r["timesteps"] for r in got] == [r["timesteps"] for r in want]
    for name in ("stage1-final.safetensors", "stage2-final.safetensors"):
        assert _exports_equal(tmp_path / "killed" / "exports" / name, reference.output_dir / "exports" / name)
    print(f"\nSIGKILL after {steps_before_resume} logged steps; resumed run equals the uninterrupted one bit for bit")


def _launch(config: str, cfg_file: Path) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file CONFIG --num_processes 2 -m comfyui_cointeract.train CFG` on CPU."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
        "--num_processes", "2", "--mixed_precision", "no", "-m", "comfyui_cointeract.train", str(cfg_file),
    ]  # fmt: skip
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def _worst(a: Path, b: Path) -> float:
    """Largest absolute difference between two exports with the same keys."""
    x, y = load_file(a), load_file(b)
    assert x.keys() == y.keys()
    return max(float((x[k] - y[k]).abs().max()) for k in x)


@pytest.mark.slow
def test_two_process_fsdp2_equals_one_process_and_resumes(tmp_path):
    opts = {"runtime": {"checkpoint_every": 2, "keep_last": 10}}
    single = train(smoke_config(tmp_path / "one", (4, 3), optim={"gradient_accumulation_steps": 2}, **opts))
    cfg = _config_file(tmp_path / "cfg.toml", smoke_config(tmp_path / "fsdp", (4, 3), **opts))
    done = _launch("fsdp.yaml", cfg)
    assert "FSDP2 on CPU over gloo" in done.stderr and "DistributedType.FSDP, 2 process(es)" in done.stderr
    assert (tmp_path / "fsdp" / "checkpoints" / "step-00000006" / "pytorch_model_fsdp_0").is_dir()  # sharded
    got, want = (read_metrics(p / "metrics.jsonl") for p in (tmp_path / "fsdp", single.output_dir))
    assert [r["step"] for r in got] == list(range(1, 8))
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], rel=1e-6)
    final = "exports/stage2-final.safetensors"
    worst = _worst(tmp_path / "fsdp" / final, single.output_dir / final)
    assert worst <= 1e-5, worst

    # Resume mid-stage-2 from the sharded step-6 checkpoint: the last step and the export come out the same.
    shutil.copytree(tmp_path / "fsdp", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step-00000007")
    (tmp_path / "resumed" / final).unlink()
    cfg2 = _config_file(tmp_path / "cfg2.toml", smoke_config(tmp_path / "resumed", (4, 3), **opts))
    resumed = _launch("fsdp.yaml", cfg2)
    assert "resumed from" in resumed.stderr and "step 6" in resumed.stderr
    again = read_metrics(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["loss"] for r in again] == pytest.approx([r["loss"] for r in got], rel=1e-6)
    resume_worst = _worst(tmp_path / "resumed" / final, tmp_path / "fsdp" / final)
    assert resume_worst <= 1e-6, resume_worst
    print(f"\n2-process FSDP2 vs 1 process x 2 accumulation: max weight difference {worst:.3g}; "
          f"resumed from step 6 vs uninterrupted: {resume_worst:.3g}")  # fmt: skip


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_with_the_same_global_batch(tmp_path):
    cfg = smoke_config(tmp_path / "ddp", (4, 3), runtime={"checkpoint_every": 4})
    single = train(
        smoke_config(
            tmp_path / "one", (4, 3), runtime={"checkpoint_every": 4}, optim={"gradient_accumulation_steps": 2}
        )
    )
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CONFIGS / "ddp.yaml"),
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        "-m",
        "comfyui_cointeract.train",
        str(_config_file(tmp_path / "cfg.toml", cfg)),
    ]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "MULTI_CPU, 2 process(es)" in done.stderr
    got, want = (read_metrics(p / "metrics.jsonl") for p in (tmp_path / "ddp", single.output_dir))
    assert [r["step"] for r in got] == list(range(1, 8))
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], rel=1e-6)
    a = load_file(tmp_path / "ddp" / "exports" / "stage2-final.safetensors")
    b = load_file(single.output_dir / "exports" / "stage2-final.safetensors")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, worst
    print(f"\n2-process DDP vs 1 process x 2 accumulation: max weight difference {worst:.3g}")
