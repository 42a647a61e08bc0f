"""torch.compile of the DiT blocks (regional compilation): every block's forward is compiled; all blocks share one
code object, so the graph is traced once and reused. Forward hooks (block swapping) stay outside the compiled
region. Availability is checked before anything is compiled.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil

import torch
from torch import nn

__all__ = ["COMPILE_MODES", "check_compile_support", "compile_blocks", "uncompile_blocks"]
log = logging.getLogger(__name__)

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def check_compile_support(device: torch.device | str) -> None:
    """Raise a ValueError saying what is missing when torch.compile (inductor) cannot run on `device`."""
    device = torch.device(device)
    if not hasattr(torch, "compile") or not torch._dynamo.is_dynamo_supported():
        raise ValueError(
            f"torch.compile is not supported by torch {torch.__version__} on this Python; turn compile off"
        )
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        raise ValueError(
            "torch.compile on CUDA needs the 'triton' package (triton-windows on Windows); turn compile off"
        )
    if device.type == "cpu":
        compilers = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
        if not any(c and shutil.which(c) for c in compilers):
            raise ValueError(
                "torch.compile on CPU needs a C++ compiler (g++ or clang++ on PATH, or CXX); turn compile off"
            )
    if device.type not in ("cuda", "cpu"):
        raise ValueError(
            f"torch.compile of the blocks is supported on cuda and cpu, not {device.type}; turn compile off"
        )


def compile_blocks(model: nn.Module, mode: str = "default", dynamic: bool | None = None) -> int:
    """Compile `forward` of every block of `model.blocks` in place (inference or training); returns the count.

    Modes with CUDA graphs need fixed weight addresses, so they are refused while block swapping is installed.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; choose one of {list(COMPILE_MODES)}")
    devices = {p.device for n, p in model.named_parameters() if not n.startswith("blocks.")}
    for device in devices or {torch.device("cpu")}:
        check_compile_support(device)
    if mode in _CUDA_GRAPH_MODES and getattr(model, "_block_swap", None) is not None:
        raise ValueError(
            f"compile mode {mode!r} uses CUDA graphs, which need fixed weight addresses; block swapping moves them. "
            "Use 'default' or 'max-autotune-no-cudagraphs'"
        )
    for block in model.blocks:
        if "forward" in vars(block):
            raise ValueError("the blocks are already compiled; call uncompile_blocks first")
        block.forward = torch.compile(block.forward, mode=mode, dynamic=dynamic)  # instance attribute, set once here
    log.info("compiled %d blocks (mode %s)", len(model.blocks), mode)
    return len(model.blocks)


def uncompile_blocks(model: nn.Module) -> None:
    """Undo `compile_blocks`: the blocks run their class forward again."""
    for block in model.blocks:
        vars(block).pop("forward", None)
