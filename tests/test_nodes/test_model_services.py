"""nodes/services.py model handling: the fallback patcher outside ComfyUI, and what it asks of ComfyUI inside it."""

from __future__ import annotations

import importlib.machinery
import sys
import types

import pytest
import torch
from torch import nn

from comfyui_cointeract.nodes import services


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    module.__dict__.update(attrs)
    return module


def test_fallback_patcher_swaps_weights_and_restores_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services, "comfy_available", lambda: False)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    original = {k: v.clone() for k, v in model.state_dict().items()}
    base = services.wrap_model(model)
    up, down, new_bias = torch.randn(3, 2), torch.randn(2, 4), torch.randn(2)
    a, b = base.clone(), base.clone()
    a.add_patches({"0.weight": services.lora_patch(up, down)}, 0.5)
    b.add_patches({"1.bias": services.set_patch(new_bias)})
    services.load_model(a)
    torch.testing.assert_close(model[0].weight, original["0.weight"] + 0.5 * up @ down)
    services.load_model(b)  # loading another clone takes a's patches off first, as ComfyUI does
    assert not a.loaded and torch.equal(model[0].weight, original["0.weight"])
    assert torch.equal(model[1].bias, new_bias)
    services.unload_model(b)
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    with pytest.raises(KeyError, match="not a parameter"):
        a.add_patches({"2.weight": services.set_patch(new_bias)})


def test_inside_comfyui_models_go_through_model_management(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    class Loaded:
        def __init__(self, patcher) -> None:
            self.model = patcher

        def model_unload(self) -> None:
            calls.append(("unload", self.model.name))

    class Patcher:
        def __init__(self, model, load_device, offload_device) -> None:
            self.model, self.load_device, self.offload_device, self.name = model, load_device, offload_device, "dit"

        def is_clone(self, other) -> bool:
            return other.model is self.model

    ours = Patcher(nn.Linear(2, 2), "cpu", "cpu")
    clone = Patcher(ours.model, "cpu", "cpu")
    clone.name = "clone"
    other = Patcher(nn.Linear(2, 2), "cpu", "cpu")
    other.name = "vae"
    mm = _module(
        "comfy.model_management",
        current_loaded_models=[Loaded(other), Loaded(clone)],
        load_models_gpu=lambda models, memory_required=0, force_full_load=False: calls.append(
            ("load", [m.name for m in models], memory_required, force_full_load)
        ),
        soft_empty_cache=lambda: calls.append(("empty",)),
        get_torch_device=lambda: torch.device("cpu"),
        unet_offload_device=lambda: torch.device("cpu"),
    )
    modules = {
        "comfy": _module("comfy"),
        "comfy.model_management": mm,
        "comfy.utils": _module("comfy.utils"),
        "comfy.model_patcher": _module("comfy.model_patcher", ModelPatcher=Patcher),
        "folder_paths": _module("folder_paths"),
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    assert services.comfy_available()
    wrapped = services.wrap_model(ours.model)
    assert isinstance(wrapped, Patcher)
    assert services.load_model(ours, 123) is ours.model
    services.release_model(ours)  # inside ComfyUI the model stays loaded for the next run
    services.unload_model(ours)  # unloads our model's clone, not the VAE
    assert calls == [("load", ["dit"], 123, True), ("unload", "clone"), ("empty",)]
    assert [lm.model.name for lm in mm.current_loaded_models] == ["vae"]
