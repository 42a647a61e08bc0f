"""Human-Aware MoE FFN (arXiv 2604.19636 §3.2): the base FFN plus hand/face experts weighted by a router.

out = FFN(x) + r·Σ_e p_e·E_e(x) on target tokens (r = 0 at timesteps ≥ `off_from_timestep`), FFN(x) elsewhere.
The router reads the detached FFN input; its classes are ordered [base, hand, face]. In the official variant the
base class only enters the softmax; the paper's variant adds a `base_expert`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import MoEConfig
from .layers import cast_to

__all__ = ["FeedForward", "Expert", "Router", "MoEFFN", "ROUTER_CLASSES"]

ROUTER_CLASSES = ("base", "hand", "face")


def FeedForward(dim: int, hidden: int) -> nn.Sequential:  # noqa: N802 - a constructor of Wan's `ffn` layout
    """Linear -> GELU(tanh) -> Linear, keys `0` and `2` as in the Wan checkpoint."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


class Expert(nn.Module):
    """A lightweight expert: fc1 -> GELU(tanh) -> fc2 (fc2 zero-initialised by `init_weights`)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., D]"""
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def Router(dim: int, classes: int = 3) -> nn.Sequential:  # noqa: N802 - keys router.{0,2,3}
    """Linear(D, D/2) -> SiLU -> LayerNorm -> Linear(D/2, classes)."""
    return nn.Sequential(nn.Linear(dim, dim // 2), nn.SiLU(), nn.LayerNorm(dim // 2), nn.Linear(dim // 2, classes))


class MoEFFN(nn.Module):
    """Base FFN on every token; router-weighted experts added on the first `n_target` tokens."""

    def __init__(self, dim: int, ffn_dim: int, cfg: MoEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.ffn_base = FeedForward(dim, ffn_dim)
        self.router = Router(dim, len(ROUTER_CLASSES))
        for name in cfg.expert_names:  # attribute names give the checkpoint keys `<name>_expert.*`
            setattr(self, f"{name}_expert", Expert(dim, cfg.expert_dim))

    def expert(self, name: str) -> Expert:
        return getattr(self, f"{name}_expert")

    def forward(
        self,
        x: torch.Tensor,
        n_target: int,
        experts_on: torch.Tensor,
        run_router: bool,
        any_on: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x [B, S, D]; experts_on [B] bool -> (out [B, S, D], router logits [B, n_target, 3] or None).

        Experts run only when some sample has them on; the router runs then or when `run_router` is set.
        `any_on` is `experts_on.any()` computed once by the caller (the model does it once per forward, so no block
        syncs with the device or breaks a compiled graph on it); None computes it here.
        """
        out = self.ffn_base(cast_to(x, self.ffn_base))
        compute_experts = bool(experts_on.any()) if any_on is None else any_on
        if not (compute_experts or run_router):
            return out, None
        xt = cast_to(x[:, :n_target], self.router)
        logits = self.router(xt.detach())  # [B, N, 3]
        if not compute_experts:
            return out, logits
        probs = torch.softmax(logits, dim=-1).to(logits.dtype)
        xe = cast_to(x[:, :n_target], self.expert(self.cfg.expert_names[0]))
        mix = sum(probs[..., ROUTER_CLASSES.index(n), None] * self.expert(n)(xe) for n in self.cfg.expert_names)
        gate = experts_on.to(mix.dtype)[:, None, None]
        target = out[:, :n_target] + (gate * mix).to(out.dtype)
        return torch.cat([target, out[:, n_target:]], dim=1), logits
