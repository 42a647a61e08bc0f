"""Resume keeps its promises: stage exports are never lost, corrupt checkpoints are found, the environment that
decides bit-identity comes back, and a config change that alters the run is refused unless forced."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
import torch

from comfyui_cointeract.cli import main as cli_main
from comfyui_cointeract.train import loop, saving
from comfyui_cointeract.train.checkpoints import list_checkpoints, read_meta, verify_checkpoint
from comfyui_cointeract.train.config import config_to_toml
from comfyui_cointeract.train.errors import UserError
from comfyui_cointeract.train.loop import train
from comfyui_cointeract.train.metrics import read_metrics
from comfyui_cointeract.train.resume import ConfigChanged, config_changes
from comfyui_cointeract.train.synthetic import smoke_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(out: Path, **sections):
    """A 3 + 3 step run with checkpoints at steps 2, 3 (stage 1 end), 4 and 6; the newest two are kept."""
    runtime = {"checkpoint_every": 2, **sections.pop("runtime", {})}
    return smoke_config(out, (3, 3), runtime=runtime, **sections)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl")]


def test_deleted_final_exports_come_back_byte_identical(tmp_path, caplog):
    cfg = _cfg(tmp_path, runtime={"keep_last": 3})  # keeps the checkpoints of steps 3 (stage 1's end), 4 and 6
    train(cfg)
    exports = _files(tmp_path / "exports")
    for name in ("stage1-final.safetensors", "stage2-final.safetensors"):
        (tmp_path / "exports" / name).unlink()
    with caplog.at_level(logging.WARNING):
        result = train(cfg)  # the same command again
    assert result.steps == 6 and _files(tmp_path / "exports") == exports  # byte for byte
    said = [r.getMessage() for r in caplog.records if "re-exported" in r.getMessage()]
    assert len(said) == 2
    assert "stage1-final.safetensors" in said[0] and "from checkpoint step-00000003" in said[0]
    assert "stage2-final.safetensors" in said[1] and "from checkpoint step-00000006" in said[1]


def test_a_pruned_stage_end_checkpoint_is_said_and_the_command_fails(tmp_path, caplog, capsys):
    cfg = _cfg(tmp_path, runtime={"keep_last": 1})
    train(cfg)
    (tmp_path / "exports" / "stage1-final.safetensors").unlink()  # its checkpoint (step 3) was pruned
    cfg_file = tmp_path / "cfg.toml"
    cfg_file.write_text(config_to_toml(cfg))
    assert cli_main(["train", str(cfg_file)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stage1-final.safetensors cannot be made again" in err[0]
    assert any("checkpoint step-00000003 is gone" in r.getMessage() for r in caplog.records)


def test_the_stage_export_is_written_before_the_checkpoint_that_marks_the_stage_done(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    real_save = saving.save_checkpoint

    def killed_at_the_end(acc, root, step, meta):
        if step == 6:
            raise KeyboardInterrupt("killed between the export and the checkpoint")
        return real_save(acc, root, step, meta)

    monkeypatch.setattr(saving, "save_checkpoint", killed_at_the_end)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [3, 4]
    assert (tmp_path / "exports" / "stage2-final.safetensors").is_file()  # already there: nothing to lose


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_latest_checkpoint_falls_back_to_the_previous_and_ends_bit_identical(tmp_path, caplog):
    cfg = _cfg(tmp_path)
    train(cfg)
    reference, exports = _losses(tmp_path), _files(tmp_path / "exports")
    _truncate(tmp_path / "checkpoints" / "step-00000006" / "model.safetensors")
    with caplog.at_level(logging.WARNING):
        result = train(cfg)
    warned = [r.getMessage() for r in caplog.records if "is corrupt" in r.getMessage()]
    assert len(warned) == 1 and "step-00000006" in warned[0] and "truncated" in warned[0]
    assert "resuming from step-00000004" in warned[0]
    assert result.steps == 6 and _losses(tmp_path) == reference  # steps 5 and 6 again, bit for bit
    assert _files(tmp_path / "exports") == exports
    assert (tmp_path / "checkpoints" / "corrupt-step-00000006").is_dir()  # set aside, not deleted
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [4, 6]


def test_a_flipped_byte_is_detected_and_no_intact_checkpoint_refuses(tmp_path):
    cfg = _cfg(tmp_path, runtime={"keep_last": 1})
    train(cfg)
    ckpt = tmp_path / "checkpoints" / "step-00000006"
    assert verify_checkpoint(ckpt) is None
    target = ckpt / "optimizer.bin"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, one bit different
    target.write_bytes(bytes(data))
    assert verify_checkpoint(ckpt) == "optimizer.bin does not match its sha256 (the file changed on disk)"
    with pytest.raises(UserError, match=r"no intact checkpoint in .*step-00000006: optimizer.bin.*Delete"):
        train(cfg)
    assert ckpt.is_dir()  # nothing is moved or deleted when there is nothing to fall back to


def test_resume_sets_the_thread_count_and_warns_about_what_it_cannot_set(tmp_path, monkeypatch, caplog):
    reference = _cfg(tmp_path / "reference")
    train(reference)
    cfg = _cfg(tmp_path / "run")
    real_step, threads = loop._train_step, []

    def crash_at_5(*args, **kwargs):
        if args[2] == 4:
            raise KeyboardInterrupt("simulated crash")
        threads.append(torch.get_num_threads())
        return real_step(*args, **kwargs)

    def record(*args, **kwargs):
        threads.append(torch.get_num_threads())
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "_train_step", crash_at_5)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(loop, "_train_step", record)
    meta_path = tmp_path / "run" / "checkpoints" / "step-00000004" / "meta.json"
    meta = read_meta(meta_path.parent)
    assert meta["environment"]["torch_threads"] == 1 and meta["environment"]["device"] == "cpu"
    meta["environment"]["device"] = "cuda"  # as if written on a GPU machine
    meta_path.write_text(json.dumps(meta))
    torch.set_num_threads(2)  # another machine, another OMP_NUM_THREADS
    with caplog.at_level(logging.WARNING):
        train(cfg)
    assert threads == [1] * 6  # steps 1-4, then 5-6 after the resume: the checkpoint's thread count
    messages = [r.getMessage() for r in caplog.records]
    assert any("torch_threads was 1 when the checkpoint was written, 2 here: set to 1" in m for m in messages)
    assert any("device was 'cuda'" in m and "will not repeat the original bit for bit" in m for m in messages)
    assert _losses(tmp_path / "run") == _losses(tmp_path / "reference")


def test_config_changes_are_sorted_into_altering_and_harmless():
    cfg = _cfg("out")
    saved = json.dumps(dataclasses.asdict(cfg))
    changed = dataclasses.replace(
        cfg,
        runtime=dataclasses.replace(cfg.runtime, seed=1, keep_last=5, progress=True, output_dir="./out"),
        stages=(dataclasses.replace(cfg.stages[0], steps=4), cfg.stages[1]),
        lora=dataclasses.replace(cfg.lora, rank=8),
    )
    altering, harmless = config_changes(saved, changed)
    assert altering == ["lora.rank", "runtime.seed", "stages.0.steps"]
    assert harmless == ["runtime.keep_last", "runtime.output_dir", "runtime.progress"]
    one_stage = dataclasses.replace(cfg, stages=cfg.stages[:1])
    assert config_changes(saved, one_stage)[0] == ["stages"]  # a stage removed is a change of `stages`
    assert config_changes(saved, cfg) == ([], [])


def test_a_run_altering_change_is_refused_unless_forced_and_harmless_ones_pass(tmp_path, monkeypatch, capsys, caplog):
    cfg = _cfg(tmp_path)
    real_step = loop._train_step

    def crash_at_5(*args, **kwargs):
        if args[2] == 4:
            raise KeyboardInterrupt("simulated crash")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "_train_step", crash_at_5)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(loop, "_train_step", real_step)
    stage1_export = (tmp_path / "exports" / "stage1-final.safetensors").read_bytes()
    config_file = tmp_path / "config.toml"
    written = config_file.read_text()
    cfg_file = tmp_path / "run.toml"
    cfg_file.write_text(written)

    moved = ["--set", "stages.0.steps=4", "--set", "runtime.seed=7"]
    assert cli_main(["train", str(cfg_file), *moved]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cointeract train: ")
    assert "runtime.seed 0 -> 7" in err[0] and "stages.0.steps 3 -> 4" in err[0] and "--force" in err[0]
    assert config_file.read_text() == written  # a refused run changes nothing in the folder
    assert (tmp_path / "exports" / "stage1-final.safetensors").read_bytes() == stage1_export
    with pytest.raises(ConfigChanged, match="optim.warmup_steps 2 -> 3"):
        train(dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, warmup_steps=3)))

    harmless = dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, keep_last=4, checkpoint_every=1))
    assert train(harmless).steps == 6  # accepted: resumed at step 4, finished
    forced = dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, seed=7))
    with caplog.at_level(logging.WARNING):
        assert train(forced, force=True).steps == 6  # --force: continues (nothing left to do here)
    assert any("resume --force: continuing" in r.getMessage() and "runtime.seed 0 -> 7" in r.getMessage()
               for r in caplog.records)  # fmt: skip
