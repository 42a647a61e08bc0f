"""`cointeract inspect FILE... [--base BASE]`: what a checkpoint is and what it holds, from its headers only.

Reports the layout (single file / sharded), the model family, the inferred config, LoRA rank and targets,
which CoInteract parts are present, dtypes, counts and metadata; for a LoRA file its layout (kohya, PEFT,
diffusers, lightx2v, LoHa, LoKr, official CoInteract), ranks and module count. With `--base BASE` (also spelled
`--against`), checks without reading weights that each CoInteract FILE loads on top of BASE (missing / unexpected
keys, shapes, LoRA fit), and how many keys of each LoRA FILE fit BASE (a Wan / CoInteract model or a toy bundle).
Exit codes: 0 ok, 2 bad input or a file that does not fit (the error is printed, no traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from collections import Counter
from collections.abc import Sequence

from ..model.config import from_state_dict
from . import checkpoint as ck
from . import lora as lora_lib
from .lora_formats import LoRAError, lora_format, plan_lora

__all__ = ["describe", "check_against", "main"]

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def _lora_summary(ckpt: ck.Checkpoint) -> dict | None:
    keys = [k for k in ckpt.entries if lora_lib.is_lora_key(k)]
    if not keys:
        return None
    try:
        pairs = lora_lib.lora_pairs(keys)
    except ValueError:  # not the official `X.lora_A[.adapter].weight` form (e.g. PEFT `lora_B.bias`): see lora_file
        return None
    ranks = sorted({ckpt.entries[a].shape[0] for a, _ in pairs.values()})
    return {"rank": ranks[0] if len(ranks) == 1 else ranks, "targets": len(pairs)}


def _moe_summary(shapes: dict[str, tuple[int, ...]]) -> dict | None:
    experts = sorted(
        {m.group(1) for k in shapes if (m := re.match(r"blocks\.\d+\.ffn\.(\w+)_expert\.fc1\.weight$", k))}
    )
    if not experts:
        return None
    blocks = {k.split(".")[1] for k in shapes if ".ffn.router." in k}
    return {
        "expert_dim": shapes[f"blocks.0.ffn.{experts[0]}_expert.fc1.weight"][0],
        "experts": experts,
        "blocks": len(blocks),
    }


def describe(paths: ck.PathLike | Sequence[ck.PathLike]) -> dict:
    """What a checkpoint is: format, family, inferred config, LoRA, CoInteract parts, dtypes, counts, metadata."""
    ckpt = ck.open_checkpoint(paths)
    shapes = ckpt.shapes()
    family, looks_like = ck.describe_family(shapes)
    raw = ck.open_checkpoint(paths, strip_prefix=False)
    lora_file = lora_format(raw.shapes(), raw.metadata)
    if lora_file["format"] == "unknown":
        lora_file = None
    elif family in ("unknown", "cointeract") and lora_file["format"] != "official":
        family, looks_like = "lora", f"a LoRA: {lora_file['description']}"
    config, config_error = None, None
    if family == "wan22_s2v":
        try:
            config = dataclasses.asdict(from_state_dict(shapes, ckpt.metadata))
        except ValueError as err:
            config_error = str(err)
    return {
        "name": ckpt.name,
        "files": [str(f) for f in ckpt.files],
        "format": ckpt.format,
        "prefix": ckpt.prefix,
        "family": family,
        "looks_like": looks_like,
        "tensors": len(shapes),
        "parameters": sum(math.prod(s) for s in shapes.values()),
        "bytes": sum(e.nbytes for e in ckpt.entries.values()),
        "dtypes": dict(Counter(str(e.dtype).removeprefix("torch.") for e in ckpt.entries.values()).most_common()),
        "parts": ck.cointeract_parts(list(shapes)),
        "lora": _lora_summary(ckpt),
        "lora_file": lora_file,
        "moe": _moe_summary(shapes),
        "config": config,
        "config_error": config_error,
        "metadata": ckpt.metadata,
    }


def check_against(path: ck.PathLike, base: ck.PathLike | Sequence[ck.PathLike]) -> dict:
    """Whether CoInteract file `path` loads on `base`: the combined config and the load problems (headers only)."""
    plan, _ = ck.plan_load(base, path)
    return {
        "name": plan.extra.name,
        "base": plan.base.name,
        "ok": plan.ok,
        "problems": plan.problems(),
        "missing": plan.missing,
        "unexpected": plan.unexpected,
        "mismatched": plan.mismatched,
        "lora_error": plan.lora_error,
        "lora_targets": len(plan.lora_keys) // 2,
        "config": dataclasses.asdict(plan.cfg),
    }


def _base_shapes(base: ck.PathLike | Sequence[ck.PathLike]) -> tuple[str, dict[str, tuple[int, ...]]]:
    """(name, parameter shapes under our names) of a whole model file: Wan / CoInteract weights or a toy bundle."""
    ckpt = ck.open_checkpoint(base)
    shapes = ckpt.shapes()
    zeros = ckpt.metadata.get("cointeract_bundle_zeros")  # a toy bundle keeps all-zero tensors as shapes only
    shapes.update({k: tuple(v) for k, v in json.loads(zeros).items()} if zeros else {})
    if ck.detect_family(shapes) == "cointeract":
        raise ValueError(f"{ckpt.name} holds CoInteract add-on parts only; give the whole model (Wan2.2-S2V) as base")
    has_moe = any(".ffn.router." in k for k in shapes)
    return ckpt.name, {ck.to_model_key(k, has_moe): s for k, s in shapes.items()}


def check_lora(path: ck.PathLike, base: ck.PathLike | Sequence[ck.PathLike]) -> dict:
    """How many keys of LoRA file `path` fit the model in `base`, and which do not (headers only)."""
    lora = ck.open_checkpoint(path, strip_prefix=False)
    base_name, params = _base_shapes(base)
    out = {"name": lora.name, "base": base_name, "keys": len(lora.entries), "error": None}
    try:
        plan = plan_lora(lora.shapes(), params, lora.name, lora.metadata, refuse=False)
    except LoRAError as err:
        return {**out, "ok": False, "fit": 0, "targets": 0, "unfit": [], "mismatched": [], "error": str(err)}
    error = None if plan.groups else plan.refusal()
    return {**out, "ok": bool(plan.groups), "fit": plan.fitting_keys, "targets": len(plan.groups),
            "unfit": list(plan.unfit), "mismatched": list(plan.mismatched), "error": error}  # fmt: skip


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return ""


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n:,}"


def _config_line(cfg: dict) -> str:
    line = (
        f"dim {cfg['dim']} · ffn {cfg['ffn_dim']} · {cfg['num_layers']} layers · {cfg['num_heads']} heads · "
        f"in {cfg['in_dim']} · text {cfg['text_dim']} · audio {cfg['audio_dim']}×{cfg['audio_layers']} · "
        f"injectors at {list(cfg['audio_inject_layers'])}"
    )
    if cfg.get("moe"):
        line += f" · MoE ({cfg['moe']['experts']}, expert_dim {cfg['moe']['expert_dim']})"
    return line + (" · HOI" if cfg.get("hoi") else "")


def format_report(info: dict) -> str:
    """The readable form of `describe`."""
    rows = [
        (
            "format",
            f"{info['format']} ({len(info['files'])} file{'s' * (len(info['files']) > 1)}, "
            f"{_size(info['bytes'])})" + (f", prefix '{info['prefix']}' stripped" if info["prefix"] else ""),
        ),
        ("family", f"{info['family']}: {info['looks_like']}"),
        ("tensors", f"{info['tensors']} ({_count(info['parameters'])} parameters)"),
        ("dtypes", ", ".join(f"{k} × {v}" for k, v in info["dtypes"].items())),
        ("parts", ", ".join(k for k, v in info["parts"].items() if v) or "none"),
    ]
    if info["lora"]:
        rows.append(("lora", f"rank {info['lora']['rank']}, {info['lora']['targets']} target modules"))
    if info.get("lora_file"):
        lf = info["lora_file"]
        ranks = ", ".join(map(str, lf["ranks"])) or "-"
        rows.append(("lora file", f"{lf['format']}: {lf['description']}; rank {ranks}, {lf['modules']} modules, "
                     f"{'/'.join(lf['algorithms'])}, alpha from {lf['alpha']}"))  # fmt: skip
    if info["moe"]:
        moe = info["moe"]
        rows.append(
            ("moe", f"experts {', '.join(moe['experts'])}, expert_dim {moe['expert_dim']}, {moe['blocks']} blocks")
        )
    if info["config"]:
        rows.append(("config", _config_line(info["config"])))
    if info["config_error"]:
        rows.append(("config", f"cannot infer: {info['config_error']}"))
    if info["metadata"]:
        meta = ", ".join(f"{k}={v if len(v) <= 60 else v[:57] + '...'}" for k, v in info["metadata"].items())
        rows.append(("metadata", meta))
    return "\n".join([info["name"], *(f"  {k:<9} {v}" for k, v in rows)])


def format_lora_check(result: dict) -> str:
    """The readable form of `check_lora`."""
    head = f"{result['name']} on {result['base']}: {result['fit']} of {result['keys']} keys fit "
    lines = [head + f"({result['targets']} parameters)" + ("" if result["ok"] else "; does NOT load")]
    if result["unfit"]:
        more = f", ... ({len(result['unfit']) - 10} more)" if len(result["unfit"]) > 10 else ""
        lines.append(f"  no module {len(result['unfit'])}: {', '.join(result['unfit'][:10])}{more}")
    lines += [f"  shape     {m}" for m in result["mismatched"][:10]]
    return "\n".join(lines + ([f"  problem   {result['error']}"] if result["error"] else []))


def format_check(result: dict) -> str:
    """The readable form of `check_against`."""
    head = f"{result['name']} on {result['base']}: " + ("loads" if result["ok"] else "does NOT load")
    lines = [head, f"  config    {_config_line(result['config'])}", f"  lora      {result['lora_targets']} merges"]
    return "\n".join(lines + [f"  problem   {p}" for p in result["problems"]])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `cointeract inspect`; returns the exit code."""
    parser = argparse.ArgumentParser(prog="cointeract inspect", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="a .safetensors file, an index.json, any shard of a sharded set, or their folder",
    )
    parser.add_argument(
        "--base",
        "--against",
        dest="base",
        metavar="BASE",
        help="check that each CoInteract FILE loads on this Wan2.2-S2V base, and which keys of each LoRA FILE fit it "
        "(a Wan / CoInteract model or a toy bundle)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the readable report")
    args = parser.parse_args(argv)
    results, seen, failed = [], set(), False
    for path in args.files:
        try:
            info = describe(path)
            if tuple(info["files"]) in seen:
                continue
            seen.add(tuple(info["files"]))
            if args.base and info["family"] == "cointeract":
                info["check"] = check_against(path, args.base)
                failed |= not info["check"]["ok"]
            elif args.base and info["lora_file"]:
                info["lora_check"] = check_lora(path, args.base)
                failed |= not info["lora_check"]["ok"]
        except (ValueError, OSError) as err:
            print(f"cointeract inspect: {path}: {err}", file=sys.stderr)
            failed = True
            continue
        results.append(info)
        if not args.json:
            check = format_check(info["check"]) if "check" in info else None
            check = format_lora_check(info["lora_check"]) if "lora_check" in info else check
            print(format_report(info) + (f"\n{check}" if check else "") + "\n")
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    return EXIT_BAD_INPUT if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
