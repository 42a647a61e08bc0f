"""One parameter's update from a LoRA file, and its delta ΔW computed in float64.

Kinds (research notes §2, §6; the formulas ComfyUI's weight adapters and LyCORIS use):
- lora: ΔW = scale·(up @ down), up [out, r], down [r, in(, k...)]; with a LoCon `mid` [r, r, k...] the down factor
  becomes Σ_b mid[a, b, k]·down[b, i]; scale = alpha / r (no alpha: 1).
- loha: ΔW = scale·(w1a @ w1b) ⊙ (w2a @ w2b) (CP form with t1 / t2 for convolutions); scale = alpha / w1b.shape[0].
- lokr: ΔW = scale·kron(w1, w2), each factor whole or a product (w2 also CP with t2); scale = alpha / r of a
  factorised factor (w2 first), 1 when both are whole.
- diff: ΔW = scale·T (lightx2v `.diff` / `.diff_b` / `.diff_m`, PEFT `lora_B.bias`). set: W = T.
Every delta is laid out as the target's rows: a weight [out, in, k...] as [out, in·k], a vector [n] as [n, 1].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from .lora_keys import wan_name

__all__ = ["Update", "delta_shape", "flat_shape", "to_kohya_state_dict"]

Kind = Literal["lora", "loha", "lokr", "diff", "set"]
_CP = "i j k l, j r, i p -> p r k l"  # LyCORIS CP (Tucker) form of a conv factor: core t [i, j, k, l]


def flat_shape(shape: Sequence[int]) -> tuple[int, int]:
    """The (rows, columns) a tensor of `shape` is updated as: [out, in, k...] -> (out, in·k); [n] -> (n, 1)."""
    shape = tuple(shape)
    return (shape[0], math.prod(shape[1:])) if len(shape) >= 1 else (1, 1)


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(flat_shape(t.shape))


def _f64(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t.to(device=device, dtype=torch.float64)


def delta_shape(kind: Kind, shapes: Mapping[str, Sequence[int]]) -> tuple[int, int]:
    """(rows, columns) of the delta an update of `kind` with factors of `shapes` {role: shape} makes."""
    s = {k: tuple(v) for k, v in shapes.items()}
    if kind == "lora":
        down = s["lora_down.weight"]
        kernel = s["lora_mid.weight"][2:] if "lora_mid.weight" in s else ()
        return s["lora_up.weight"][0], math.prod(down[1:]) * math.prod(kernel)
    if kind == "loha":
        if "hada_t1" in s:  # CP: [w1a cols = out, w1b cols = in, k...] per the einsum
            return s["hada_w1_a"][1], s["hada_w1_b"][1] * math.prod(s["hada_t1"][2:])
        return s["hada_w1_a"][0], math.prod(s["hada_w1_b"][1:])
    if kind == "lokr":
        (a, b), (c, d) = _lokr_factor_shape(s, "1"), _lokr_factor_shape(s, "2")
        return a * c, b * d
    return flat_shape(s["diff"] if kind == "diff" else s["set_weight"])


def _lokr_factor_shape(s: Mapping[str, tuple[int, ...]], i: str) -> tuple[int, int]:
    """(rows, flat columns) of LoKr factor w1 or w2."""
    if f"lokr_w{i}" in s:
        return flat_shape(s[f"lokr_w{i}"])
    if f"lokr_t{i}" in s:
        return s[f"lokr_w{i}_a"][1], s[f"lokr_w{i}_b"][1] * math.prod(s[f"lokr_t{i}"][2:])
    return s[f"lokr_w{i}_a"][0], math.prod(s[f"lokr_w{i}_b"][1:])


@dataclass(frozen=True)
class Update:
    """An update of parameter `target`: `kind`, its tensors by role (LyCORIS names) and the scale alpha/rank."""

    target: str
    kind: Kind
    tensors: Mapping[str, torch.Tensor] = field(repr=False)
    scale: float = 1.0

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of the delta."""
        return delta_shape(self.kind, {k: v.shape for k, v in self.tensors.items()})

    def rows(self, start: int, stop: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Rows start:stop of scale·ΔW (of W itself for `set`) in float64: [stop - start, columns]."""
        device, t = torch.device(device), self.tensors
        if "dora_scale" in t:
            raise ValueError(
                f"{self.target}: DoRA (dora_scale) rescales the merged weight; CoInteract merges plain deltas only "
                "(ComfyUI's own loader applies DoRA: use CoInteract LoRA inside ComfyUI)"
            )
        if self.kind == "lora":
            up = _f64(_flat(t["lora_up.weight"])[start:stop], device)
            return self.scale * (up @ self._lora_down(device))
        if self.kind == "loha" and "hada_t1" not in t:
            m1 = _f64(t["hada_w1_a"][start:stop], device) @ _f64(_flat(t["hada_w1_b"]), device)
            m2 = _f64(t["hada_w2_a"][start:stop], device) @ _f64(_flat(t["hada_w2_b"]), device)
            return self.scale * (m1 * m2)
        if self.kind == "loha":  # CP form (convolutions): small, built whole
            m1 = torch.einsum(_CP, *(_f64(t[k], device) for k in ("hada_t1", "hada_w1_b", "hada_w1_a")))
            m2 = torch.einsum(_CP, *(_f64(t[k], device) for k in ("hada_t2", "hada_w2_b", "hada_w2_a")))
            return self.scale * _flat(m1 * m2)[start:stop]
        if self.kind == "lokr":
            w1, w2 = self._lokr_factor("1", device), self._lokr_factor("2", device)
            idx = torch.arange(start, stop, device=device)
            rows = w1[idx // w2.shape[0]][:, :, None] * w2[idx % w2.shape[0]][:, None, :]  # kron, row by row
            return self.scale * rows.reshape(stop - start, -1)
        role = "diff" if self.kind == "diff" else "set_weight"
        return self.scale * _f64(_flat(t[role])[start:stop], device)

    def _lora_down(self, device: torch.device) -> torch.Tensor:
        """The down factor [r, in·k] in float64, with a LoCon mid [r, r, k...] folded in (as ComfyUI does)."""
        down = _f64(self.tensors["lora_down.weight"], device)
        if "lora_mid.weight" not in self.tensors:
            return _flat(down)
        mid = _f64(self.tensors["lora_mid.weight"], device)
        return torch.einsum("abk,bi->aik", mid.flatten(2), _flat(down)).reshape(down.shape[0], -1)

    def _lokr_factor(self, i: str, device: torch.device) -> torch.Tensor:
        """LoKr factor w1 or w2 as [rows, flat columns] in float64."""
        t = self.tensors
        if f"lokr_w{i}" in t:
            return _flat(_f64(t[f"lokr_w{i}"], device))
        a, b = _f64(t[f"lokr_w{i}_a"], device), _f64(t[f"lokr_w{i}_b"], device)
        if f"lokr_t{i}" in t:
            return _flat(torch.einsum(_CP, _f64(t[f"lokr_t{i}"], device), b, a))
        return a @ _flat(b)

    def divisor(self) -> int | None:
        """The rank that alpha is divided by (ComfyUI's rule); None where alpha plays no part."""
        t = self.tensors
        if self.kind == "lora":
            return t["lora_down.weight"].shape[0]
        if self.kind == "loha":
            return t["hada_w1_b"].shape[0]
        if self.kind == "lokr":
            factorised = [k for k in ("lokr_w2_b", "lokr_w1_b") if k in t]
            return t[factorised[0]].shape[0] if factorised else None
        return None


def to_kohya_state_dict(updates: Mapping[str, Update]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict in LyCORIS / kohya suffixes under Wan module names, {module: our parameter key}): the input of
    ComfyUI's `comfy.lora.load_lora(state_dict, key_map)`; alpha = scale·rank, so the loader's alpha/rank is the scale.
    `set` updates are left out (they are "set" patches, whatever the strength)."""
    sd: dict[str, torch.Tensor] = {}
    key_map: dict[str, str] = {}
    for target, u in updates.items():
        if u.kind == "set":
            continue
        owner, _, attr = target.rpartition(".")
        module = wan_name(owner) if attr in ("weight", "bias") else wan_name(target)
        key_map[module] = f"{owner}.weight" if attr in ("weight", "bias") else target
        if u.kind == "diff":
            tensor = u.tensors["diff"]
            sd[f"{module}.{'diff_b' if attr == 'bias' else 'diff'}"] = tensor if u.scale == 1 else tensor * u.scale
            continue
        tensors = dict(u.tensors)
        divisor = u.divisor()
        if u.scale != 1 and divisor is None:  # LoKr with two whole factors: no alpha, fold the scale in
            tensors["lokr_w1"] = tensors["lokr_w1"] * u.scale
        elif u.scale != 1:
            tensors["alpha"] = torch.tensor(u.scale * divisor, dtype=torch.float64)
        sd.update({f"{module}.{role}": t for role, t in tensors.items()})
    return sd, key_map
