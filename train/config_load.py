"""Reading a training config: TOML file or plain data + `--set a.b=c` overrides -> a validated TrainConfig.

Every field can be overridden from the command line with `--set a.b=c` (`--set stages.1.lr=2e-5`,
`--set loss.preset=paper`). Values are checked against the dataclass field types (errors name the key), the
dataclasses then check their own values, and `lora.targets` is checked against the model's linear layers.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from .config import DEFAULT_STAGES, LOSS_PRESETS, StageConfig, TrainConfig, check
from .lora_peft import check_lora_targets

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["load_config", "config_from_dict", "apply_override"]


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """Read a TOML file, apply `a.b=c` overrides, validate -> TrainConfig (errors name the offending key)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path} is not valid TOML: {err}") from err
    for text in overrides:
        apply_override(raw, text)
    return config_from_dict(raw)


def _parse_value(text: str) -> Any:
    """A TOML value (`2e-5`, `true`, `["q", "k"]`, `"x"`); anything else is taken as a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(raw: dict, text: str) -> None:
    """In place: `stages.1.lr=2e-5` sets raw["stages"][1]["lr"]; missing tables are created."""
    key, sep, value = text.partition("=")
    check(bool(sep) and bool(key.strip()), f"override {text!r} must look like section.field=value")
    parts = key.strip().split(".")
    if parts[0] == "stages" and "stages" not in raw:
        raw["stages"] = [_stage_dict(s) for s in DEFAULT_STAGES]
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            check(part.isdigit() and int(part) < len(node), f"override {text!r}: no item {part} in {parts[i - 1]}")
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
            check(isinstance(node, (dict, list)), f"override {text!r}: {'.'.join(parts[: i + 1])} is not a table")
    last = parts[-1]
    if isinstance(node, list):
        check(last.isdigit() and int(last) < len(node), f"override {text!r}: no item {last}")
        node[int(last)] = _parse_value(value.strip())
    else:
        node[last] = _parse_value(value.strip())


def _stage_dict(stage: StageConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(stage).items() if v is not None}


def _resolve_loss(raw: Any, where: str) -> Any:
    """`preset = "paper"` plus explicit fields -> the preset's fields updated by the explicit ones."""
    if not isinstance(raw, dict) or "preset" not in raw:
        return raw
    raw = dict(raw)
    name = raw.pop("preset")
    check(name in LOSS_PRESETS, f"{where}.preset = {name!r}; choose one of {sorted(LOSS_PRESETS)}")
    return {**dataclasses.asdict(LOSS_PRESETS[name]), **raw}


def config_from_dict(raw: dict) -> TrainConfig:
    """Build and validate a TrainConfig from plain data (TOML tables / JSON)."""
    raw = dict(raw)
    check("data" in raw, 'the [data] table is missing; set data.kind ("cache" or "synthetic") and data.path')
    if "loss" in raw:
        raw["loss"] = _resolve_loss(raw["loss"], "loss")
    if "stages" in raw:
        check(isinstance(raw["stages"], list), "stages must be an array of tables ([[stages]])")
        raw["stages"] = [
            {**s, "loss": _resolve_loss(s["loss"], f"stages.{i}.loss")} if isinstance(s, dict) and "loss" in s else s
            for i, s in enumerate(raw["stages"])
        ]
    cfg = _build(TrainConfig, raw, "config")
    check_lora_targets(cfg.lora, cfg.model.preset)
    return cfg


def _build(cls: type, raw: Any, where: str) -> Any:
    check(isinstance(raw, dict), f"{where} must be a table, got {type(raw).__name__} {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    check(not unknown, f"unknown key(s) {unknown} in {where}; valid keys: {sorted(known)}")
    kwargs = {name: _convert(value, hints[name], f"{where}.{name}") for name, value in raw.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise ValueError(f"{where}: {err}") from err


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check / convert one value against a field's type hint."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, where)
    if origin is Literal:
        check(value in args, f"{where} = {value!r}; choose one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin is tuple:
        check(isinstance(value, (list, tuple)), f"{where} must be an array, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}.{i}") for i, v in enumerate(value))
        check(len(value) == len(args), f"{where} must have {len(args)} items, got {value!r}")
        return tuple(_convert(v, a, f"{where}.{i}") for i, (v, a) in enumerate(zip(value, args)))
    if tp is float:
        check(isinstance(value, (int, float)) and not isinstance(value, bool), f"{where} must be a number: {value!r}")
        return float(value)
    if tp in (int, bool, str):
        check(type(value) is tp, f"{where} must be {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"{where}: unsupported field type {tp}")  # a bug in this file, not in the user's config
