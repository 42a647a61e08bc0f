"""Asymmetric co-attention (Eq. 4) as grouped dense calls (what the model runs) vs one SDPA call with a dense
N x N boolean mask, at 4k, 16k and 40k tokens with the 480p token mix with HOI (46% target, 46% HOI, refs, motion).

Prints time, counted FLOPs and peak extra memory of each, and their max difference. Memory: on CUDA the rise of
max_memory_allocated; on CPU the rise of the process's peak RSS (VmHWM), mask included. A dense run that would not
fit (bytes per N² measured at the smallest size, times N²) is skipped with the memory it would need.

    python bench/attention_grouped.py                    # CPU: 1 head (fp32); CUDA: 40 heads (bf16), as 14B
    python bench/attention_grouped.py --sizes 4000 16000 --heads 2
"""

from __future__ import annotations

import argparse
import gc

import _common as C
import torch
import torch.nn.functional as F

from comfyui_cointeract.cointeract_core.model.attention import attention
from comfyui_cointeract.cointeract_core.model.visibility import attention_groups, dense_mask


def grouped(q, k, v, groups):
    """What SelfAttention does: one dense call per group, keys gathered from their slices. [B, S, H, d]."""
    outs = []
    for g in groups:
        keys = torch.cat([k[:, s] for s in g.keys], dim=1) if len(g.keys) > 1 else k[:, g.keys[0]]
        vals = torch.cat([v[:, s] for s in g.keys], dim=1) if len(g.keys) > 1 else v[:, g.keys[0]]
        outs.append(attention(q[:, g.queries], keys, vals))
    return torch.cat(outs, dim=1)


def masked(q, k, v, layout):
    """One SDPA call over all tokens with the dense [S, S] visibility mask. [B, S, H, d]."""
    mask = dense_mask(layout, "asymmetric").to(q.device)  # built on the CPU, as the mask is part of the cost
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


class Memory:
    """Time and peak extra bytes of one call: CUDA max_memory_allocated, or CPU peak RSS (VmHWM reset before)."""

    def __init__(self, device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device

    def run(self, fn, repeats: int = 1):
        """(output, fastest seconds, peak extra bytes of the first run)."""
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
        else:
            C.peak_rss_reset()
            base = C.peak_rss_bytes()
        now, times = C.clock(self.device), []
        for i in range(repeats):
            t0 = now()
            out = fn()
            C.sync(self.device)
            times.append(now() - t0)
            if i == 0:
                peak = torch.cuda.max_memory_allocated(self.device) if self.cuda else C.peak_rss_bytes()
        return out, min(times), peak - base

    def available(self) -> int:
        if self.cuda:
            free, _ = torch.cuda.mem_get_info(self.device)
            return free
        return C.available_bytes()


def meta_flops(fn, *tensors) -> int:
    """FLOPs of fn on meta copies of `tensors` (counted, nothing computed)."""
    return C.count_flops(lambda: fn(*(t.to("meta") for t in tensors)))


def bench_size(size: int, heads: int, device, dtype, mem: Memory, per_n2, args) -> tuple[list, float | None]:
    """One table row at ~`size` tokens, and the dense bytes per N² (measured at the first dense run)."""
    layout = C.layout_for_tokens(size, hoi=True)
    n, groups = layout.total, attention_groups(layout, "asymmetric")
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, n, heads, 128, generator=gen).to(device, dtype) for _ in range(3))

    def run_grouped(q=q, k=k, v=v):
        return grouped(q, k, v, groups)

    def run_dense(q=q, k=k, v=v):
        return masked(q, k, v, layout)

    out_g, t_g, m_g = mem.run(run_grouped, args.repeats)
    f_g = meta_flops(run_grouped, q, k, v)
    row = [f"{n:,}", C.fmt_s(t_g), C.mib(m_g)]
    need, free = (None if per_n2 is None else per_n2 * n * n), mem.available()
    if need is not None and need > args.headroom * free:
        skipped = f"skipped: would need {need / 2**30:.1f} GiB ({free / 2**30:.1f} GiB available)"
        return row + [skipped, "", "", ""], per_n2
    out_d, t_d, m_d = mem.run(run_dense, args.repeats)
    f_d = meta_flops(run_dense, q, k, v)
    diff = float((out_g.float() - out_d.float()).abs().max())
    ratios = f"{t_d / t_g:.2f}x time, {f_d / f_g:.2f}x FLOPs, {m_d / max(m_g, 1):.0f}x memory"
    return row + [C.fmt_s(t_d), C.mib(m_d), ratios, f"{diff:.2g}"], per_n2 or m_d / (n * n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.device_arg(parser)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4000, 16000, 40000])
    parser.add_argument("--heads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=1, help="runs per call (the fastest is shown)")
    parser.add_argument("--headroom", type=float, default=0.7, help="run dense only if it needs < this x available")
    args = parser.parse_args()
    device = C.pick_device(args.device)
    cuda = device.type == "cuda"
    heads, dtype = args.heads or (40 if cuda else 1), torch.bfloat16 if cuda else torch.float32
    mem, per_n2, rows = Memory(device), None, []
    for size in sorted(args.sizes):
        row, per_n2 = bench_size(size, heads, device, dtype, mem, per_n2, args)
        rows.append(row)
    print(f"# Grouped vs dense-masked attention on {C.describe_device(device)}, {dtype}, {heads} heads x 128")
    print("480p token mix with HOI (target, person, product, motion, HOI); memory = peak extra MiB of the call\n")
    headers = ["tokens", "grouped time", "grouped MiB", "dense-mask time", "dense-mask MiB", "dense / grouped"]
    headers.append("max |diff|")
    print(C.table(headers, rows))


if __name__ == "__main__":
    main()
