"""FSDP2 (`fully_shard`) support for the trainer: CPU / gloo runs, and gradients equal to DDP's.

Two things stand between accelerate's FSDP2 and this model:

- accelerate 1.15 turns `distributed_type: FSDP` into plain DDP (`MULTI_CPU`) when `cpu=True`, without a word
  (`AcceleratorState` only honours the FSDP plugin for GPU-like devices), and FSDP1 (`FullyShardedDataParallel`)
  does not run on CPU at all. `promote_cpu_fsdp` makes a CPU run under an FSDP2 config a real FSDP2 run over
  gloo (torch's `fully_shard` supports CPU meshes) and refuses FSDP1 on CPU instead of training unsharded.
- The model skips modules by data: MoE experts at timesteps >= 900, HOI / pose / product parts when a batch lacks
  them. DDP copes (`find_unused_parameters`); FSDP2 reduce-scatters the gradients of one unit as one flat buffer
  built from the parameters that have a gradient on *this* rank, so ranks that used different parameters send
  buffers of different sizes (gloo: "Received data size doesn't match expected size"; NCCL: a hang or garbage).
  `EveryParamGrad` adds `0 · Σ trainable parameters` of each unit to its output, so every rank reduces every
  parameter, and after backward sets the gradient to None where no rank ran the owning module: AdamW then skips
  that parameter exactly as it does in one process (a zero gradient would still apply weight decay and move the
  moments).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from .errors import UserError

log = logging.getLogger(__name__)

__all__ = ["fsdp_requested", "promote_cpu_fsdp", "refuse_unrun_deepspeed", "EveryParamGrad"]


def fsdp_requested() -> bool:
    """True when the launcher asked for FSDP (`accelerate launch` with an FSDP config sets ACCELERATE_USE_FSDP)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def promote_cpu_fsdp(accelerator: Any) -> None:
    """Under an FSDP config with runtime.cpu: make the accelerator a real FSDP2 one (gloo), or refuse FSDP1."""
    from accelerate.state import PartialState  # noqa: PLC0415
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin  # noqa: PLC0415

    if not fsdp_requested() or accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    plugin = FullyShardedDataParallelPlugin()  # read from the FSDP_* variables the launcher set
    if plugin.fsdp_version != 2:
        raise UserError(
            "an FSDP1 config (fsdp_version: 1) with runtime.cpu = true: FSDP1 does not run on CPU and accelerate "
            "would silently train unsharded (DDP). Use train/accelerate_configs/fsdp.yaml (fsdp_version: 2)"
        )
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    # Both shared states: every AcceleratorState() copies PartialState's distributed_type back over its own.
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin
    log.info("FSDP2 on CPU over gloo (accelerate would otherwise run DDP here)")


def refuse_unrun_deepspeed(accelerator: Any) -> None:
    """A DeepSpeed config that accelerate 1.15 would not run as DeepSpeed on all processes: refuse, naming why."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if str(accelerator.distributed_type).endswith("DEEPSPEED") and accelerator.num_processes == world:
        return
    raise UserError(
        f"a DeepSpeed config, but accelerate runs {accelerator.distributed_type} with {accelerator.num_processes} of "
        f"{world} process(es): with runtime.cpu = true accelerate ignores DeepSpeed (plain DDP), and without a GPU "
        "it makes every process a world of one. DeepSpeed needs GPUs here; on CPU use fsdp.yaml or ddp.yaml"
    )


def _owned(unit: nn.Module, units: set[nn.Module]) -> list[str]:
    """Names of the trainable parameters of `unit` that do not belong to a nested unit."""
    names: list[str] = []

    def walk(module: nn.Module, prefix: str) -> None:
        names.extend(prefix + n for n, p in module.named_parameters(recurse=False) if p.requires_grad)
        for child_name, child in module.named_children():
            if child not in units:
                walk(child, f"{prefix}{child_name}.")

    walk(unit, "")
    return names


def _add_zero(output: Any, zero: torch.Tensor) -> Any:
    """`output` with `zero` added to its first tensor (a tensor, a tuple starting with one, or a DiTOutput)."""
    if isinstance(output, torch.Tensor):
        return output + zero.to(output.dtype)
    if isinstance(output, tuple):
        return (_add_zero(output[0], zero), *output[1:])
    if hasattr(output, "velocity"):
        return replace(output, velocity=output.velocity + zero.to(output.velocity.dtype))
    raise TypeError(f"cannot attach the zero gradient term to a {type(output).__name__}")


def _tensors(value: Any, depth: int = 0) -> list[torch.Tensor]:
    """The tensors in a module output: a tensor, tuples / lists of them, or a dataclass's tensor fields."""
    if isinstance(value, torch.Tensor):
        return [value]
    if depth > 2:
        return []
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v, depth + 1)]
    if hasattr(value, "__dataclass_fields__"):
        return [t for name in value.__dataclass_fields__ for t in _tensors(getattr(value, name), depth + 1)]
    return []


class EveryParamGrad:
    """Give every trainable parameter of every FSDP unit a gradient on every rank; drop what no rank used.

    A parameter counts as used on a rank when the autograd graph of its unit's output reaches it (what decides
    whether it gets a gradient in one process). Install on the model before `accelerator.prepare`: the forward
    hooks must run before FSDP's post-forward hook, while the unit's parameters are still gathered."""

    def __init__(self, model: nn.Module, unit_types: Iterable[type[nn.Module]]) -> None:
        types = tuple(unit_types)
        self.root = model
        self.units = [model, *(m for m in model.modules() if isinstance(m, types) and m is not model)]
        unit_set = set(self.units)
        self.names: list[str] = []  # every trainable parameter's name in the model
        for unit in self.units:
            owned = _owned(unit, unit_set)
            if owned:
                prefix = next(n for n, m in model.named_modules() if m is unit)
                first = len(self.names)
                self.names.extend(f"{prefix}.{n}" if prefix else n for n in owned)
                unit.register_forward_hook(self._hook(owned, first))
        self.used = torch.zeros(len(self.names), dtype=torch.float64)
        self._reached: set[int] = set()  # ids of parameters the graph reaches (this forward)
        self._visited: set[Any] = set()  # graph nodes already walked (this forward)
        model.register_forward_pre_hook(self._reset)

    def _reset(self, module: nn.Module, args: Any) -> None:
        """Root pre-forward: a new graph."""
        self._reached.clear()
        self._visited.clear()

    def _walk(self, outputs: list[torch.Tensor]) -> None:
        """Record the leaf tensors the graph of `outputs` reaches (nodes walked before are skipped)."""
        stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
        while stack:
            node = stack.pop()
            if node in self._visited:
                continue
            self._visited.add(node)
            variable = getattr(node, "variable", None)
            if variable is not None:
                self._reached.add(id(variable))
            stack.extend(n for n, _ in node.next_functions if n is not None and n not in self._visited)

    def _hook(self, owned: list[str], first: int):
        """Forward hook of a unit: mark its parameters the output reaches, then add 0 · Σ all of them."""

        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if not torch.is_grad_enabled():
                return output
            self._walk(_tensors(output))
            params = [module.get_parameter(n) for n in owned]
            for i, p in enumerate(params):
                if id(p) in self._reached:
                    self.used[first + i] = 1.0
            return _add_zero(output, sum(p.sum() for p in params) * 0.0)

        return hook

    def drop_unused(self, accelerator: Any) -> list[str]:
        """After the step's backward: grad = None where no rank used the parameter; returns their names."""
        used = accelerator.reduce(self.used.to(accelerator.device), "sum").cpu().tolist()
        dropped = [name for name, u in zip(self.names, used) if u == 0]
        for name in dropped:
            self.root.get_parameter(name).grad = None
        self.used.zero_()
        return dropped
