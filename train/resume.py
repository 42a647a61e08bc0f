"""Resuming a run: which checkpoint, which config changes it accepts, and the settings that decide bit-identity.

- Checkpoint: the newest one whose files match their checksums (`checkpoints.usable_checkpoint`).
- Config: a change that alters the run — seed, stage steps or boundaries, data, lr, LoRA rank / targets, loss
  weights, model, precision, ... — is refused unless `--force`, with one line naming the changed fields. The
  changes in HARMLESS (checkpoint cadence and retention, the progress bar, ...) are accepted.
- Environment (`capture_environment`, stored in every checkpoint): torch's thread count and determinism flags
  are set back to the checkpoint's values; what cannot be set (device type, process count, mixed precision,
  torch version) is compared, and a difference is a warning: the run continues but will not repeat bit for bit.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from .checkpoints import read_meta, remove_stale, usable_checkpoint
from .config import TrainConfig, train_config_to_json
from .errors import UserError

log = logging.getLogger(__name__)

__all__ = [
    "HARMLESS",
    "ConfigChanged",
    "on_main",
    "config_changes",
    "check_config",
    "capture_environment",
    "restore_environment",
    "plan_resume",
]

T = TypeVar("T")

# Config fields whose change does not change what the run computes.
HARMLESS = frozenset(
    {
        "runtime.output_dir",  # the same folder, spelled another way (it is where the checkpoint was found)
        "runtime.resume",
        "runtime.checkpoint_every",
        "runtime.keep_last",
        "runtime.progress",
        "runtime.export_dtype",  # what exports are written in; the training state is fp32
        "data.num_workers",  # the sample order is a fixed stream; workers only load
        "model.gradient_checkpointing",  # recomputation gives the same numbers
    }
)


class ConfigChanged(UserError):
    """The config differs from the checkpoint's in a way that changes the run, and `--force` was not given."""


def on_main(accelerator: Any, decide: Callable[[], T]) -> T:
    """Run `decide` on the main process only and give every process its result; when it raises, the main process
    re-raises the error and the others raise a UserError with its message (no process is left waiting)."""
    from accelerate.utils import broadcast_object_list  # noqa: PLC0415

    box: list[Any] = [None, None]
    error: Exception | None = None
    if accelerator.is_main_process:
        try:
            box[0] = decide()
        except Exception as err:  # noqa: BLE001 - re-raised below, after the other processes heard of it
            error, box[1] = err, str(err)
    box = broadcast_object_list(box)
    if error is not None:
        raise error
    if box[1] is not None:
        raise UserError(box[1])
    return box[0]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested tables -> {"a.b": value}; an array of tables also gives its length under its own name."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}{key}.").items()}
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {prefix[:-1]: f"{len(value)} tables"}
        for i, item in enumerate(value):
            out.update(_flatten(item, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: value}


def config_changes(saved_json: str, cfg: TrainConfig) -> tuple[list[str], list[str]]:
    """Fields that differ between a checkpoint's config and `cfg` -> (run-altering, harmless), as dotted names.

    Fields that exist on one side only (added or removed by another version of this package) are not compared."""
    saved, now = _flatten(json.loads(saved_json)), _flatten(json.loads(train_config_to_json(cfg)))
    changed = sorted(k for k in saved.keys() & now.keys() if saved[k] != now[k])
    return [k for k in changed if k not in HARMLESS], [k for k in changed if k in HARMLESS]


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_config(saved_json: str, cfg: TrainConfig, checkpoint: Path, force: bool) -> None:
    """Refuse (ConfigChanged) a run-altering change unless `force`; log what is accepted."""
    altering, harmless = config_changes(saved_json, cfg)
    if harmless:
        log.info("resume: accepted changes to %s (they do not change the run)", ", ".join(harmless))
    if not altering:
        return
    saved, now = _flatten(json.loads(saved_json)), _flatten(json.loads(train_config_to_json(cfg)))
    listed = ", ".join(f"{k} {_short(saved[k])} -> {_short(now[k])}" for k in altering)
    if not force:
        raise ConfigChanged(
            f"{checkpoint} was written with another config: {listed}. These change the run: restore them, "
            "choose a new runtime.output_dir, or pass --force to continue this run with the new values"
        )
    log.warning("resume --force: continuing %s with %s", checkpoint, listed)


def capture_environment(accelerator: Any) -> dict[str, Any]:
    """The process settings that decide whether a resumed run repeats the original bit for bit."""
    return {
        "torch_threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "default_dtype": str(torch.get_default_dtype()),
        "device": accelerator.device.type,
        "num_processes": accelerator.num_processes,
        "mixed_precision": str(accelerator.mixed_precision),
        "torch": torch.__version__,
    }


def _set_flag(module: Any, name: str) -> Callable[[Any], None]:
    return lambda value: setattr(module, name, value)


# The settings a resume sets back; the others of capture_environment can only be compared.
_SETTERS: dict[str, Callable[[Any], None]] = {
    "torch_threads": torch.set_num_threads,
    "deterministic_algorithms": torch.use_deterministic_algorithms,
    "cudnn_deterministic": _set_flag(torch.backends.cudnn, "deterministic"),
    "cudnn_benchmark": _set_flag(torch.backends.cudnn, "benchmark"),
    "float32_matmul_precision": torch.set_float32_matmul_precision,
    "cuda_matmul_allow_tf32": _set_flag(torch.backends.cuda.matmul, "allow_tf32"),
    "cudnn_allow_tf32": _set_flag(torch.backends.cudnn, "allow_tf32"),
}


def restore_environment(saved: dict[str, Any], accelerator: Any) -> None:
    """Set the checkpoint's thread count and determinism flags; warn about what differs and cannot be set."""
    now = capture_environment(accelerator)
    for key, value in saved.items():
        if key not in now or now[key] == value:
            continue
        if key in _SETTERS:
            _SETTERS[key](value)
            log.warning("resume: %s was %r when the checkpoint was written, %r here: set to %r", key, value, now[key],
                        value)  # fmt: skip
        else:
            log.warning(
                "resume: %s was %r when the checkpoint was written, %r here: the run continues but will not repeat "
                "the original bit for bit",
                key, value, now[key],
            )  # fmt: skip


def plan_resume(accelerator: Any, cfg: TrainConfig, root: Path, force: bool) -> Path | None:
    """The checkpoint to resume from (None: a fresh run), after the config check and with its environment set."""
    if accelerator.is_main_process:
        remove_stale(root)
    name = on_main(accelerator, lambda: getattr(usable_checkpoint(root), "name", None))
    if name is None:
        return None
    latest = root / name
    if cfg.runtime.resume == "never":
        raise UserError(
            f'{root} already holds checkpoints (newest {name}); set runtime.resume = "auto" to continue that run, '
            "or choose a new runtime.output_dir"
        )
    meta = read_meta(latest)
    check_config(meta["train_config"], cfg, latest, force)
    restore_environment(meta.get("environment", {}), accelerator)
    return latest
