"""CoInteract Step Cache: a clone carrying the options, read by CoInteract Sampler; threshold 0 changes nothing."""

from __future__ import annotations

import pytest
import torch

from comfyui_cointeract import NODE_CLASS_MAPPINGS
from comfyui_cointeract.cointeract_core.sampling.cache import StepCacheConfig
from comfyui_cointeract.nodes.step_cache import STEP_CACHE_OPTION, step_cache_options


def run(node_id: str, **kwargs):
    cls = NODE_CLASS_MAPPINGS[node_id]
    return getattr(cls(), cls.FUNCTION)(**kwargs)


def cached(model, threshold=0.1, start=2, end=1, cap=0):
    return run("CoInteractStepCache", model=model, threshold=threshold, start_step=start, end_steps_full=end,
               max_consecutive=cap)[0]  # fmt: skip


def load():
    return run("CoInteractModelLoader", base_model="base.safetensors", cointeract_checkpoint="ckpt.safetensors",
               lora_strength=1.0, weight_dtype="fp32", attention="sdpa")[0]  # fmt: skip


def frames(model, inputs, steps=6):
    """CoInteract Sampler's frames for one clip, and how many times the first block ran."""
    refs = run("CoInteractReferences", vae=inputs.vae, person=inputs.person, width=inputs.width, height=inputs.height,
               product_scale=1.0, person_fit="stretch", product=inputs.product)[0]  # fmt: skip
    prompts = run("CoInteractPrompts", clip=inputs.clip, prompt="a person holds a box", negative_prompt="blurry",
                  timeline="")[0]  # fmt: skip
    audio = run("CoInteractAudio", audio_encoder_output=inputs.encoder_output, audio=inputs.audio,
                allow_silence=False)[0]  # fmt: skip
    calls = []
    hook = model.model.blocks[0].register_forward_hook(lambda *_: calls.append(1))
    try:
        out = run("CoInteractSampler", model=model, vae=inputs.vae, references=refs, prompts=prompts, audio=audio,
                  seed=0, steps=steps, cfg=7.0, shift=7.0, max_clips=1, trim_to_audio=False, hoi_preview=False,
                  router_heatmaps=False)  # fmt: skip
    finally:
        hook.remove()
    return out[0], len(calls)


@pytest.mark.usefixtures("model_dir")
def test_options_travel_on_a_clone_and_through_lora() -> None:
    model = load()
    patched = cached(model, threshold=0.2, start=3, end=2, cap=2)
    assert patched is not model and patched.model is model.model
    assert step_cache_options(patched) == StepCacheConfig(0.2, 3, 2, 2) and step_cache_options(model) is None
    assert step_cache_options(cached(model, cap=0)).max_consecutive is None  # 0: no cap
    (lora,) = run("CoInteractLoRA", model=patched, lora_name="finetune.safetensors", strength=1.0)
    assert step_cache_options(lora) == step_cache_options(patched)  # clone() copies model_options
    assert STEP_CACHE_OPTION not in cached(patched, threshold=0.0).model_options  # 0 turns it off again


@pytest.mark.usefixtures("model_dir")
def test_sampler_skips_blocks_with_the_cache_and_is_unchanged_at_threshold_zero(comfy_inputs) -> None:
    model = load()
    plain, plain_calls = frames(model, comfy_inputs)
    off, off_calls = frames(cached(model, threshold=0.0), comfy_inputs)
    assert torch.equal(plain, off) and plain_calls == off_calls == 12  # 6 steps x 2 branches
    fast, fast_calls = frames(cached(model, threshold=3.0, start=2, end=1, cap=0), comfy_inputs)
    assert fast_calls == 6 and fast.shape == plain.shape  # steps 2-4 skipped in both branches
    assert torch.isfinite(fast).all() and not torch.equal(fast, plain)
