"""Training-state checkpoints: atomic accelerate-state folders, keep-last-N, resume lookup, the run's position.

A checkpoint is `checkpoints/step-NNNNNNNN/`, written by `accelerator.save_state` into `.tmp-step-NNNNNNNN/`,
fsynced, completed with `meta.json`, then renamed into place; a crash or a full disk at any point leaves either
the complete folder or no folder of that name (a leftover `.tmp-*` is removed at the next start). The model part
holds only the trainable weights (the frozen base is rebuilt from the config); the optimizer, scheduler, every
process's RNG and the run position (`RunState`: global step, which also fixes the stage and the data position)
come back through `accelerator.load_state`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = [
    "RunState",
    "keep_trainable_only",
    "list_checkpoints",
    "latest_checkpoint",
    "remove_stale",
    "save_checkpoint",
    "prune_checkpoints",
    "read_meta",
    "META",
]

META = "meta.json"
TMP_PREFIX = ".tmp-"
_NAME = re.compile(r"^step-(\d{8})$")


class RunState:
    """The run's position, saved with the accelerate state: optimizer steps done, and the stage they were in."""

    def __init__(self) -> None:
        self.step = 0
        self.stage = ""

    def state_dict(self) -> dict:
        return {"step": self.step, "stage": self.stage}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.stage = int(state["step"]), str(state["stage"])


def keep_trainable_only(models: Sequence, weights: Sequence[dict], output_dir: str) -> None:
    """accelerate save-state pre-hook: drop frozen tensors from the saved model state (the base is rebuilt)."""
    for model, state in zip(models, weights):
        keep = {name for name, p in model.named_parameters() if p.requires_grad}
        for key in [k for k in state if k not in keep]:
            del state[key]


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (folder name step-N with a meta.json), oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / META).is_file()]
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def read_meta(path: Path) -> dict:
    return json.loads((path / META).read_text(encoding="utf-8"))


def remove_stale(root: Path) -> None:
    """Delete leftovers of interrupted writes (`.tmp-*` folders) and folders without meta.json."""
    if not root.is_dir():
        return
    for p in root.iterdir():
        if p.name.startswith(TMP_PREFIX) or (_NAME.match(p.name) and not (p / META).is_file()):
            log.warning("removing the incomplete checkpoint %s (an interrupted write)", p)
            shutil.rmtree(p, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for dirpath, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(accelerator, root: Path, step: int, meta: dict) -> Path:
    """Write the accelerate state for `step` atomically (every process calls this); returns the final folder."""
    final, tmp = root / f"step-{step:08d}", root / f"{TMP_PREFIX}step-{step:08d}"
    main = accelerator.is_main_process
    try:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if main:
            (tmp / META).write_text(json.dumps(meta, sort_keys=True), encoding="utf-8")
            _fsync_tree(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(root)
        accelerator.wait_for_everyone()
    except BaseException:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def prune_checkpoints(root: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints (main process); returns what was deleted."""
    old = [p for _, p in list_checkpoints(root)[:-keep]]
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return old
