"""Training-state checkpoints: atomic accelerate-state folders, keep-last-N, resume lookup, the run's position.

A checkpoint is `checkpoints/step-NNNNNNNN/`, written by `accelerator.save_state` into `.tmp-step-NNNNNNNN/`,
completed with `meta.json` (written last; it lists the size and sha256 of every other file), fsynced, then renamed
into place; a crash or a full disk at any point leaves either the complete folder or no folder of that name (a
leftover `.tmp-*` is removed at the next start). A resume takes the newest checkpoint whose files match their
checksums: a truncated or changed file is found, that checkpoint is set aside as `corrupt-step-NNNNNNNN` with a
warning, and the previous one is used; when none is left, the run refuses and says what to delete. The model part
holds only the trainable weights (the frozen base is rebuilt from the config); the optimizer, scheduler, every
process's RNG and the run position (`RunState`: global step, which also fixes the stage and the data position)
come back through `accelerator.load_state`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from .errors import UserError

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
    "file_checksums",
    "verify_checkpoint",
    "usable_checkpoint",
    "META",
]

META = "meta.json"
TMP_PREFIX = ".tmp-"
CORRUPT_PREFIX = "corrupt-"
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
            meta = {**meta, "files": file_checksums(tmp)}
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def file_checksums(folder: Path) -> dict[str, dict[str, int | str]]:
    """{relative path: {"bytes", "sha256"}} of every file under `folder` except meta.json."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != META)
    return {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files}


def verify_checkpoint(path: Path) -> str | None:
    """Why the checkpoint cannot be trusted (a file missing, truncated or changed), or None when it is intact.

    A checkpoint written before checksums were recorded is trusted as it is."""
    try:
        files = read_meta(path).get("files")
    except (OSError, ValueError) as err:
        return f"{META} is unreadable ({err})"
    for rel, want in (files or {}).items():
        p = path / rel
        if not p.is_file():
            return f"{rel} is missing"
        if p.stat().st_size != want["bytes"]:
            return f"{rel} has {p.stat().st_size} bytes, {want['bytes']} were written (truncated or replaced)"
        if _sha256(p) != want["sha256"]:
            return f"{rel} does not match its sha256 (the file changed on disk)"
    return None


def usable_checkpoint(root: Path) -> Path | None:
    """The newest intact checkpoint (main process); newer corrupt ones are set aside with a warning.

    UserError, naming what to delete, when checkpoints exist but none is intact."""
    found = list_checkpoints(root)
    bad: list[tuple[Path, str]] = []
    for _, path in reversed(found):
        reason = verify_checkpoint(path)
        if reason is None:
            for corrupt, why in bad:
                aside = corrupt.with_name(CORRUPT_PREFIX + corrupt.name)
                shutil.rmtree(aside, ignore_errors=True)
                os.replace(corrupt, aside)
                log.warning(
                    "checkpoint %s is corrupt (%s); resuming from %s instead. It was moved to %s: delete it when "
                    "you no longer need it",
                    corrupt.name, why, path.name, aside,
                )  # fmt: skip
            return path
        bad.append((path, reason))
    if bad:
        listed = "; ".join(f"{p.name}: {why}" for p, why in bad)
        raise UserError(
            f"no intact checkpoint in {root} ({listed}). Delete {root} to start the run over from step 0, "
            "or choose another runtime.output_dir"
        )
    return None
