"""Attention backends side by side: every backend of attention.BACKENDS that can run here, and the SDPA kernels
(math, flash, memory-efficient, cuDNN) one at a time; time per call and max difference to SDPA's default.

    python bench/attention_backends.py                  # CPU: 4k tokens, 1 head, fp32
    python bench/attention_backends.py --device cuda    # CUDA: 36,634 tokens (480p), 40 heads, bf16
"""

from __future__ import annotations

import argparse

import _common as C
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from comfyui_cointeract.cointeract_core.model.attention import BACKENDS, attention, resolve_backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.device_arg(parser)
    parser.add_argument("--tokens", type=int, default=None)
    parser.add_argument("--heads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = C.pick_device(args.device)
    cuda = device.type == "cuda"
    n = args.tokens or (C.LAYOUT_480P.total if cuda else 4000)
    heads, dtype = args.heads or (40 if cuda else 1), torch.bfloat16 if cuda else torch.float32
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, n, heads, 128, generator=gen).to(device, dtype) for _ in range(3))
    ref = attention(q, k, v, "sdpa").float()
    rows = []
    for name in BACKENDS:
        try:
            resolve_backend(name)
            secs = C.time_it(lambda name=name: attention(q, k, v, name), device, args.repeats)
            diff = float((attention(q, k, v, name).float() - ref).abs().max())
            rows.append([f"attention(backend={name!r})", C.fmt_s(secs), f"{diff:.2g}"])
        except (ValueError, RuntimeError) as err:
            rows.append([f"attention(backend={name!r})", f"cannot run: {str(err).splitlines()[0][:90]}", ""])
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    for kernel in (
        SDPBackend.MATH,
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.CUDNN_ATTENTION,
    ):

        def run(kernel=kernel):
            with sdpa_kernel([kernel]):
                return F.scaled_dot_product_attention(qt, kt, vt)

        try:
            secs = C.time_it(run, device, args.repeats)
            diff = float((run().transpose(1, 2).float() - ref).abs().max())
            rows.append([f"SDPA kernel {kernel.name}", C.fmt_s(secs), f"{diff:.2g}"])
        except RuntimeError as err:
            reason = "not available for these inputs here" if "No viable backend" in str(err) else str(err)[:90]
            rows.append([f"SDPA kernel {kernel.name}", f"cannot run: {reason}", ""])
    print(f"# Attention backends on {C.describe_device(device)}, {dtype}, {n:,} tokens, {heads} heads x 128\n")
    print(C.table(["backend", "time per call", "max |diff| vs sdpa"], rows))


if __name__ == "__main__":
    main()
