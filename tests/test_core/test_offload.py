"""Block swapping: the slot schedule (fake transport), forward equality on CPU, validation, the CUDA path (gpu)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from comfyui_cointeract.cointeract_core.pipeline.conditioning import Conditioning
from comfyui_cointeract.cointeract_core.runtime import offload
from comfyui_cointeract.cointeract_core.runtime.offload import BlockSwapper, install_block_swap, swapped_indices


class RecordingTransport(offload.SyncTransport):
    """SyncTransport that logs every load / wait / release with its tokens, to check the ordering rules."""

    def __init__(self) -> None:
        super().__init__("cpu")
        self.log: list[tuple] = []
        self.count = 0

    def load(self, slot, host, after):
        self.count += 1
        token = f"ready{self.count}"
        block = next(k for k, v in self.owner.host.items() if v is host)
        slot_id = next(j for j, s in enumerate(self.owner.slots) if s is slot)
        self.log.append(("load", block, slot_id, after, token))
        super().load(slot, host, after)
        return token

    def wait(self, ready):
        self.log.append(("wait", ready))

    def release(self):
        self.count += 1
        token = f"free{self.count}"
        self.log.append(("release", token))
        return token


class Lin(nn.Module):
    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.lin(x)


def _swapper(n_blocks: int, swapped: list[int], prefetch: int) -> tuple[BlockSwapper, RecordingTransport, list]:
    torch.manual_seed(0)
    blocks = nn.ModuleList(Lin() for _ in range(n_blocks))
    transport = RecordingTransport()
    swapper = BlockSwapper(blocks, swapped, transport, prefetch)  # builds host copies and slots; loads nothing yet
    transport.owner = swapper
    return swapper, transport, blocks


def _host_weight(swapper: BlockSwapper, i: int, block: nn.Module) -> torch.Tensor:
    """The host copy of block i's `lin.weight` (found by identity: == on tensors is elementwise)."""
    k = next(j for j, t in enumerate(swapper.tensors[i]) if t is block.lin.weight)
    return swapper.host[i][k]


def _run(swapper: BlockSwapper, blocks, forwards: int = 2) -> list[int]:
    seen = []
    with torch.no_grad():
        for _ in range(forwards):
            for i, block in enumerate(blocks):
                swapper.before(i)
                if i in swapper.tensors:
                    seen.append(i)
                    assert block.lin.weight.data_ptr() in {t.data_ptr() for s in swapper.slots for t in s}
                block(torch.ones(1, 4))
                swapper.after(i)
    return seen


def test_prefetch_order_and_slot_reuse_wait_for_release():
    swapper, tr, blocks = _swapper(6, [1, 2, 4], prefetch=1)
    _run(swapper, blocks, forwards=2)
    loads = [e for e in tr.log if e[0] == "load"]
    # use order 1,2,4 | 1,2,4 (+ the prefetch of the third forward's first block); slots alternate 0,1
    assert [e[1] for e in loads] == [1, 2, 4, 1, 2, 4, 1]
    assert [e[2] for e in loads] == [0, 1, 0, 1, 0, 1, 0]
    # every load into a used slot waits for the release token of that slot's previous user
    last_release: dict[int, str] = {}
    active_slot = None
    for e in tr.log:
        if e[0] == "load":
            assert e[3] == last_release.get(e[2]), e
        elif e[0] == "wait":
            active_slot = next(x[2] for x in tr.log if x[0] == "load" and x[4] == e[1])
        elif e[0] == "release":
            last_release[active_slot] = e[1]
    assert swapper.stats.on_demand == 1 and swapper.stats.prefetched == 5 and swapper.stats.loads == 7


def test_each_load_is_issued_before_the_previous_block_is_released():
    """Prefetch: the load of the next swapped block is issued while the current one is still active."""
    swapper, tr, blocks = _swapper(4, [0, 1, 2, 3], prefetch=1)
    _run(swapper, blocks, forwards=1)
    kinds = [(e[0], e[1] if e[0] == "load" else None) for e in tr.log]
    assert kinds[:4] == [("load", 0), ("wait", None), ("load", 1), ("release", None)]


@pytest.mark.parametrize("prefetch", [0, 1, 2, 5])
@pytest.mark.parametrize("swapped", [[0], [3], [0, 2], [1, 2, 3], [0, 1, 2, 3, 4]])
def test_any_schedule_runs_the_right_weights(prefetch, swapped):
    swapper, tr, blocks = _swapper(5, swapped, prefetch)
    ref = [copy.deepcopy(b).requires_grad_(False) for b in blocks]  # host copies hold the true weights
    for i in swapped:
        ref[i].lin.weight.data = _host_weight(swapper, i, blocks[i]).clone()
    with torch.no_grad():
        for _ in range(3):
            for i, block in enumerate(blocks):
                swapper.before(i)
                torch.testing.assert_close(block(torch.ones(1, 4)), ref[i](torch.ones(1, 4)), rtol=0, atol=0)
                swapper.after(i)
    assert len(swapper.slots) == min(prefetch + 1, len(swapped))
    for i in swapped:  # between forwards every swapped block points at its host copy again
        assert blocks[i].lin.weight.data_ptr() == _host_weight(swapper, i, blocks[i]).data_ptr()


def test_out_of_order_call_drops_prefetch_and_loads_on_demand():
    swapper, tr, blocks = _swapper(6, [1, 3, 5], prefetch=1)
    with torch.no_grad():
        swapper.before(1)  # prefetches 3
        swapper.after(1)
        swapper.before(5)  # interrupted forward / skipped block: 3 is dropped, 5 loaded on demand
        w5 = blocks[5].lin.weight.clone()
        swapper.after(5)
        swapper.before(1)
        swapper.before(3)  # no after(1): the stale active block is released first
    assert swapper.stats.on_demand >= 2
    torch.testing.assert_close(w5, _host_weight(swapper, 5, blocks[5]))
    assert swapper.active[0] == 3


def test_grad_enabled_raises():
    swapper, _, blocks = _swapper(2, [0], prefetch=1)
    with pytest.raises(RuntimeError, match="inference"):
        swapper.before(0)


def test_swapped_indices_spread_and_validate():
    assert swapped_indices(40, 0) == []
    assert swapped_indices(40, 40) == list(range(40))
    assert swapped_indices(8, 2) == [2, 6]
    assert len(swapped_indices(40, 13)) == 13
    with pytest.raises(ValueError, match="cannot swap 41 blocks: the model has 40"):
        swapped_indices(40, 41)
    with pytest.raises(ValueError, match="cannot swap -1"):
        swapped_indices(40, -1)


def test_swapped_forward_equals_plain_forward(ci_model, ci_cfg, make_inputs):
    inputs = make_inputs(ci_cfg)
    with torch.no_grad():
        ref = ci_model(**inputs, return_router=True)
    model = copy.deepcopy(ci_model)
    swap = install_block_swap(model, "cpu", n_swap=2, prefetch=1)
    ptrs = [p.data_ptr() for p in model.blocks[0].parameters()]
    with torch.no_grad():
        for _ in range(2):  # the second forward runs on prefetched slots
            out = model(**inputs, return_router=True)
            torch.testing.assert_close(out.velocity, ref.velocity, rtol=0, atol=0)
            torch.testing.assert_close(out.hoi_velocity, ref.hoi_velocity, rtol=0, atol=0)
            torch.testing.assert_close(out.router_logits, ref.router_logits, rtol=0, atol=0)
    assert swap.swapper.stats.prefetched >= 2
    assert [p.data_ptr() for p in model.blocks[0].parameters()] == ptrs  # back on the host copies between calls
    with pytest.raises(ValueError, match="already installed"):
        install_block_swap(model, "cpu", n_swap=1)
    swap.remove()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).velocity, ref.velocity, rtol=0, atol=0)


def test_install_validates_before_moving(ci_model):
    with pytest.raises(ValueError, match="cannot swap 3 blocks: the model has 2"):
        install_block_swap(ci_model, "cpu", n_swap=3)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            install_block_swap(ci_model, "cuda", n_swap=1)


def test_conditioning_to_moves_every_tensor():
    t = torch.zeros(1, 2, 1, 4, 4)
    cond = Conditioning(
        person=t,
        prompts=(torch.zeros(1, 3, 8),) * 2,
        negative=torch.zeros(1, 3, 8),
        audio=torch.zeros(1, 2, 3, 10),
        product=None,
    )
    moved = offload.conditioning_to(cond, "meta")
    assert moved.person.is_meta and all(p.is_meta for p in moved.prompts) and moved.product is None


def test_vae_tiling_needs_set_tiling():
    class Tiled:
        tiling = None

        def set_tiling(self, tiling) -> None:
            self.tiling = tiling

    vae = Tiled()
    offload.set_vae_tiling(vae, (240, 416))
    assert vae.tiling == (240, 416)
    offload.set_vae_tiling(vae, None)
    assert vae.tiling is None
    with pytest.raises(ValueError, match="no tiled decode"):
        offload.set_vae_tiling(object(), None)


def test_wan_vae_tiling_switch():
    pytest.importorskip("diffusers")
    from comfyui_cointeract.cointeract_core.encoders import Tiling, WanVAE

    vae = WanVAE.from_config()
    offload.set_vae_tiling(vae, Tiling.official())
    assert vae.model.use_tiling and vae.tiling == Tiling.official()
    offload.set_vae_tiling(vae, None)
    assert not vae.model.use_tiling


@pytest.mark.gpu
def test_cuda_swap_equals_resident(ci_model, ci_cfg, make_inputs):
    inputs = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in make_inputs(ci_cfg).items()}
    resident = copy.deepcopy(ci_model).cuda()
    with torch.no_grad():
        ref = resident(**inputs).velocity
    swap = install_block_swap(ci_model, "cuda", n_swap=2, prefetch=1)
    assert isinstance(swap.swapper.transport, offload.CudaTransport)
    assert all(h.is_pinned() for hs in swap.swapper.host.values() for h in hs)
    with torch.no_grad():
        for _ in range(3):
            torch.testing.assert_close(ci_model(**inputs).velocity, ref, rtol=0, atol=0)
    assert swap.swapper.stats.prefetched >= 4
