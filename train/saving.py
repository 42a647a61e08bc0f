"""What a run writes, and writes again when it went missing: official-layout exports and checkpoints.

At every checkpoint the trainable weights are exported (`exports/step-N.safetensors`, and at a stage's end
`exports/<stage>-final.safetensors`) BEFORE the accelerate state is saved: the checkpoint that marks a stage done
never exists without its stage-final export. On resume, a finished stage whose final export is missing (deleted,
or lost by a crash of an older version) gets it written again from the checkpoint at the stage's end, which is
the resumed one after a finished run; the result is byte-identical to the original export.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .builders import DTYPES
from .checkpoints import RunState, prune_checkpoints, save_checkpoint, verify_checkpoint
from .config import TrainConfig, train_config_to_json
from .export import export_state_dict
from .resume import capture_environment, on_main
from .stages import StageSpan

log = logging.getLogger(__name__)

__all__ = ["Saver"]


@dataclass(frozen=True)
class Saver:
    """Writes one run's exports and checkpoints (every process calls it; only the main process writes files)."""

    accelerator: Any
    model: nn.Module  # as prepared by accelerate
    cfg: TrainConfig
    trainable: list[str]  # parameter names, sorted
    out: Path  # runtime.output_dir

    def final_export(self, stage: str) -> Path:
        """exports/<stage>-final.safetensors"""
        return self.out / "exports" / f"{stage}-final.safetensors"

    def _export(self, full_state: dict, path: Path, stage: str, step: int) -> None:
        export_state_dict(
            full_state,
            set(self.trainable),
            path,
            dit_cfg=self.accelerator.unwrap_model(self.model).cfg,
            lora=self.cfg.lora,
            stage=stage,
            step=step,
            dtype=DTYPES[self.cfg.runtime.export_dtype],
            train_config_json=train_config_to_json(self.cfg),
        )

    def checkpoint(self, state: RunState, final: bool) -> Path:
        """Exports (step-N, + the stage-final one when `final`), then the accelerate state (atomic, keep-last-N)."""
        acc, out = self.accelerator, self.out
        full_state = acc.get_state_dict(self.model)  # every process (gathers under FSDP / DeepSpeed)
        if acc.is_main_process:
            self._export(full_state, out / "exports" / f"step-{state.step:08d}.safetensors", state.stage, state.step)
            if final:
                self._export(full_state, self.final_export(state.stage), state.stage, state.step)
        meta = {
            "step": state.step,
            "stage": state.stage,
            "trainable": self.trainable,
            "train_config": train_config_to_json(self.cfg),
            "world_size": acc.num_processes,
            "environment": capture_environment(acc),
        }
        path = save_checkpoint(acc, out / "checkpoints", state.step, meta)
        if acc.is_main_process:
            for old in prune_checkpoints(out / "checkpoints", self.cfg.runtime.keep_last):
                (out / "exports" / f"{old.name}.safetensors").unlink(missing_ok=True)
        acc.wait_for_everyone()
        log.info("checkpoint %s", path)
        return path

    def restore_exports(self, spans: Sequence[StageSpan], state: RunState, latest: Path | None) -> None:
        """Write again the missing stage-final exports of finished stages, from the checkpoint at each stage's end
        (the resumed one, or a kept older one: loaded for the export, then the resumed one is loaded again)."""
        acc, root = self.accelerator, self.out / "checkpoints"
        missing = on_main(
            acc, lambda: [s for s in spans if s.end <= state.step and not self.final_export(s.stage.name).is_file()]
        )
        reloaded = False
        for span in missing:
            path, source = self.final_export(span.stage.name), root / f"step-{span.end:08d}"
            if span.end != state.step:
                if not source.is_dir() or verify_checkpoint(source) is not None:
                    log.warning("%s is missing and cannot be made again: checkpoint %s is gone", path, source.name)
                    continue
                acc.load_state(str(source), strict=False)
                reloaded = True
            full_state = acc.get_state_dict(self.model)
            if acc.is_main_process:
                self._export(full_state, path, span.stage.name, span.end)
                log.warning("re-exported %s (it was missing) from checkpoint %s", path, source.name)
            acc.wait_for_everyone()
        if reloaded:
            acc.load_state(str(latest), strict=False)
