"""Every node run with ComfyUI-shaped inputs on tiny models: declared types and shapes, clear errors before sampling."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from comfyui_cointeract import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from comfyui_cointeract.nodes import services, types
from comfyui_cointeract.nodes.adapters import ComfyVAE

IDS = ["CoInteractModelLoader", "CoInteractLoRA", "CoInteractReferences", "CoInteractPrompts", "CoInteractAudio",
       "CoInteractSampler"]  # fmt: skip


def run(node_id: str, **kwargs):
    cls = NODE_CLASS_MAPPINGS[node_id]
    return getattr(cls(), cls.FUNCTION)(**kwargs)


def load(base="base.safetensors", ckpt="ckpt.safetensors", strength=1.0):
    return run("CoInteractModelLoader", base_model=base, cointeract_checkpoint=ckpt, lora_strength=strength,
               weight_dtype="fp32", attention="sdpa")[0]  # fmt: skip


def conditioning(inputs, product=True, timeline=""):
    refs = run("CoInteractReferences", vae=inputs.vae, person=inputs.person, width=inputs.width, height=inputs.height,
               product_scale=1.0, person_fit="stretch", product=inputs.product if product else None)[0]  # fmt: skip
    prompts = run("CoInteractPrompts", clip=inputs.clip, prompt="a person holds a red box", negative_prompt="blurry",
                  timeline=timeline)[0]  # fmt: skip
    audio, clips = run("CoInteractAudio", audio_encoder_output=inputs.encoder_output, audio=inputs.audio,
                       allow_silence=False)  # fmt: skip
    return refs, prompts, audio, clips


def sample(model, inputs, refs, prompts, audio, **kw):
    args = dict(seed=0, steps=2, cfg=7.0, shift=7.0, max_clips=0, trim_to_audio=True, hoi_preview=False,
                router_heatmaps=False)  # fmt: skip
    args.update(kw)
    return run("CoInteractSampler", model=model, vae=inputs.vae, references=refs, prompts=prompts, audio=audio, **args)


def test_ids_and_declarations() -> None:
    assert set(IDS) <= set(NODE_CLASS_MAPPINGS) and all(i.startswith("CoInteract") for i in NODE_CLASS_MAPPINGS)
    assert len(set(NODE_DISPLAY_NAME_MAPPINGS.values())) == len(NODE_DISPLAY_NAME_MAPPINGS)
    ours = {types.COINTERACT_MODEL, types.COINTERACT_REFS, types.COINTERACT_PROMPTS, types.COINTERACT_AUDIO}
    produced = {t for c in NODE_CLASS_MAPPINGS.values() for t in c.RETURN_TYPES}
    specs = [s[0] for c in NODE_CLASS_MAPPINGS.values() for s in c.INPUT_TYPES()["required"].values()]
    consumed = {s for s in specs if isinstance(s, str)}
    assert ours <= produced and ours <= consumed  # every custom socket is both made and used
    sampler = NODE_CLASS_MAPPINGS["CoInteractSampler"]
    assert sampler.RETURN_TYPES == ("IMAGE", "AUDIO", "LATENT", "IMAGE", "IMAGE")


@pytest.mark.usefixtures("model_dir")
def test_loader_builds_the_cointeract_model(cfgs) -> None:
    model = load()
    assert isinstance(model, services.FallbackPatcher) and model.model.cfg.moe and model.model.cfg.hoi
    plain = load(ckpt="none")
    assert plain.model.cfg.moe is None and plain.model.cfg.hoi is None
    no_lora = load(strength=0.0).model.state_dict()
    merged = model.model.state_dict()
    changed = sorted(k for k in merged if not torch.equal(merged[k], no_lora[k]))
    assert changed == ["blocks.0.self_attn.q.weight", "blocks.1.ffn.ffn_base.0.weight"]


def test_loader_errors(model_files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for folder in ("diffusion_models", "cointeract"):
        (tmp_path / folder).mkdir()
    shutil.copy(model_files / "cointeract" / "ckpt.safetensors", tmp_path / "diffusion_models" / "addon.safetensors")
    shutil.copy(model_files / "diffusion_models" / "base.safetensors", tmp_path / "cointeract" / "base.safetensors")
    shutil.copy(
        model_files / "diffusion_models" / "base.safetensors", tmp_path / "diffusion_models" / "base.safetensors"
    )
    monkeypatch.setattr(services, "comfy_available", lambda: False)
    monkeypatch.setenv(services.MODELS_DIR_ENV, str(tmp_path))
    with pytest.raises(ValueError, match="pass it as the CoInteract checkpoint"):
        load(base="addon.safetensors", ckpt="none")
    with pytest.raises(ValueError, match="expected a CoInteract checkpoint"):
        load(ckpt="base.safetensors")
    with pytest.raises(ValueError, match="unknown attention backend"):
        run("CoInteractModelLoader", base_model="base.safetensors", cointeract_checkpoint="none", lora_strength=1.0,
            weight_dtype="fp32", attention="magic")  # fmt: skip


def test_loader_takes_a_toy_bundle_as_the_whole_model(model_files: Path, tmp_path: Path, monkeypatch) -> None:
    from comfyui_cointeract.cointeract_core.toy.bundle import load_bundle
    from comfyui_cointeract.nodes.toy import ASSETS

    (tmp_path / "diffusion_models").mkdir()
    (tmp_path / "cointeract").symlink_to(model_files / "cointeract")
    shutil.copy(ASSETS / "toy_bundle.safetensors", tmp_path / "diffusion_models" / "toy.safetensors")
    monkeypatch.setattr(services, "comfy_available", lambda: False)
    monkeypatch.setenv(services.MODELS_DIR_ENV, str(tmp_path))
    model = load(base="toy.safetensors", ckpt="none").model
    reference = load_bundle(ASSETS / "toy_bundle.safetensors")[0]
    assert model.cfg == reference.cfg and model.cfg.moe is not None and model.cfg.hoi is not None
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    with pytest.raises(ValueError, match="toy bundle: it already holds the whole CoInteract model"):
        load(base="toy.safetensors", ckpt="ckpt.safetensors")


def test_checkpoint_that_does_not_fit_the_base(model_files: Path, tmp_path: Path, monkeypatch, cfgs) -> None:
    from comfyui_cointeract.cointeract_core.weights.checkpoint import save_cointeract_checkpoint

    (tmp_path / "cointeract").mkdir()
    (tmp_path / "diffusion_models").symlink_to(model_files / "diffusion_models")
    wrong = {"blocks.0.self_attn.q.lora_A.default.weight": torch.zeros(4, cfgs.base.dim * 2),
             "blocks.0.self_attn.q.lora_B.default.weight": torch.zeros(cfgs.base.dim, 4)}  # fmt: skip
    save_cointeract_checkpoint(wrong, tmp_path / "cointeract" / "other_size.safetensors")
    monkeypatch.setattr(services, "comfy_available", lambda: False)
    monkeypatch.setenv(services.MODELS_DIR_ENV, str(tmp_path))
    with pytest.raises(ValueError, match="another model size"):
        load(ckpt="other_size.safetensors")


@pytest.mark.usefixtures("model_dir")
def test_lora_patches_a_clone_and_never_the_loaded_weights(comfy_inputs) -> None:
    model = load()
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    (patched,) = run("CoInteractLoRA", model=model, lora_name="finetune.safetensors", strength=0.5)
    assert patched is not model and patched.model is model.model and not model.patches
    assert sorted(patched.patches) == ["blocks.0.ffn.router.3.weight", "blocks.0.self_attn.k.weight"]
    assert run("CoInteractLoRA", model=model, lora_name="finetune.safetensors", strength=0.0)[0] is model
    dit = services.load_model(patched)
    up, down = patched.patches["blocks.0.self_attn.k.weight"][0][1][1]
    expected = before["blocks.0.self_attn.k.weight"] + 0.5 * up @ down
    torch.testing.assert_close(dit.blocks[0].self_attn.k.weight, expected)
    services.release_model(patched)
    refs, prompts, audio, _ = conditioning(comfy_inputs)
    sample(patched, comfy_inputs, refs, prompts, audio, max_clips=1)
    after = model.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the loaded model's weights changed"


@pytest.mark.usefixtures("model_dir")
def test_finetune_needing_parts_the_model_lacks() -> None:
    with pytest.raises(ValueError, match="HOI"):
        run("CoInteractLoRA", model=load(ckpt="none"), lora_name="hoi_parts.safetensors", strength=1.0)
    with pytest.raises(ValueError, match="not a CoInteract finetune"):
        run("CoInteractLoRA", model=load(), lora_name="not_a_finetune.safetensors", strength=1.0)


def test_references(comfy_inputs, make_vae) -> None:
    refs = conditioning(comfy_inputs)[0]
    assert refs.person.shape == refs.product.shape == (1, 16, 1, 8, 8) and (refs.height, refs.width) == (64, 64)
    fake = make_vae()
    vae = ComfyVAE(fake)  # the core sees normalised latents; ComfyUI's VAE speaks raw ones
    image = comfy_inputs.person[:, :64, :64]
    raw = fake.encode(image)
    torch.testing.assert_close(vae.encode(image.permute(3, 0, 1, 2)[None] * 2 - 1), (raw - vae.mean) / vae.std)
    assert not torch.allclose(raw, (raw - vae.mean) / vae.std)
    frames = vae.decode(refs.person)  # [1, 3, 1, 64, 64] in [-1, 1]
    torch.testing.assert_close(frames, fake.decode(refs.person * vae.std + vae.mean).permute(0, 4, 1, 2, 3) * 2 - 1)
    torch.testing.assert_close(vae.to_comfy_latent(refs.person), refs.person * vae.std + vae.mean)
    node = dict(vae=comfy_inputs.vae, width=64, height=64, product_scale=1.0, person_fit="cover")
    with pytest.raises(ValueError, match="batch of 3 images"):
        run("CoInteractReferences", person=comfy_inputs.person.expand(3, -1, -1, -1), **node)
    with pytest.raises(ValueError, match="product image is a batch of 2"):
        run("CoInteractReferences", person=comfy_inputs.person, product=comfy_inputs.product.repeat(2, 1, 1, 1), **node)
    with pytest.raises(ValueError, match="multiples of 16"):
        run("CoInteractReferences", person=comfy_inputs.person, **{**node, "width": 72})
    with pytest.raises(ValueError, match="too small"):
        run("CoInteractReferences", person=comfy_inputs.person, **{**node, "width": 48})
    with pytest.raises(ValueError, match="too large: sides must be <= 4096"):
        run("CoInteractReferences", person=comfy_inputs.person, **{**node, "width": 4112})


@pytest.mark.parametrize("which", ["person", "product"])
def test_references_refuse_a_tiny_image_naming_the_minimum(comfy_inputs, which) -> None:
    images = {"person": comfy_inputs.person, "product": comfy_inputs.product, which: torch.rand(1, 1, 1, 3)}
    node = dict(vae=comfy_inputs.vae, width=64, height=64, product_scale=1.0, person_fit="stretch")
    with pytest.raises(ValueError, match=rf"the {which} image is 1x1 \(WxH\); it must be at least 16x16 pixels"):
        run("CoInteractReferences", **images, **node)


def test_audio_refuses_speech_too_short_for_one_frame(comfy_inputs) -> None:
    short = {"waveform": comfy_inputs.audio["waveform"][..., : int(0.04 * 44100)], "sample_rate": 44100}
    with pytest.raises(ValueError, match=r"the speech is 0.04 s; at least 0.10 s is needed"):
        NODE_CLASS_MAPPINGS["CoInteractAudio"]().encode(comfy_inputs.encoder_output, short, False)


def test_wrong_vae(comfy_inputs) -> None:
    class Wan22VAE:
        latent_channels = 48

        def spacial_compression_encode(self) -> int:
            return 16

        def temporal_compression_decode(self) -> int:
            return 4

    with pytest.raises(ValueError, match="expected the Wan 2.1 VAE"):
        run("CoInteractReferences", vae=Wan22VAE(), person=comfy_inputs.person, width=64, height=64, product_scale=1.0,
            person_fit="stretch")  # fmt: skip


def test_prompts(comfy_inputs, cfgs) -> None:
    prompts = conditioning(comfy_inputs, timeline="then puts it down\n\n  while talking  \n")[1]
    assert prompts.texts == ("a person holds a red box", "then puts it down", "while talking")
    assert [p.shape for p in prompts.prompts] == [(1, 7, 64), (1, 5, 64), (1, 3, 64)]  # padding rows trimmed
    assert len(prompts.hoi_prompts) == 3 and prompts.hoi_prompts[0].shape[1] > prompts.prompts[0].shape[1]
    assert prompts.negative.shape == (1, 2, 64)
    with pytest.raises(ValueError, match="prompt is empty"):
        run("CoInteractPrompts", clip=comfy_inputs.clip, prompt="  ", negative_prompt="", timeline="x")


def test_audio(comfy_inputs) -> None:
    _, _, audio, clips = conditioning(comfy_inputs)
    assert audio.features.shape == (1, 25, 24, 89) and clips == 2 and audio.sample_rate == 44100
    node, enc = NODE_CLASS_MAPPINGS["CoInteractAudio"](), comfy_inputs.encoder_output
    empty = {"waveform": torch.zeros(1, 2, 0), "sample_rate": 44100}
    with pytest.raises(ValueError, match="zero samples"):
        node.encode(enc, empty, False)
    silent = {"waveform": torch.zeros(1, 2, comfy_inputs.audio["waveform"].shape[-1]), "sample_rate": 44100}
    with pytest.raises(ValueError, match="silent"):
        node.encode(enc, silent, False)
    assert node.encode(enc, silent, True)[1] == 2
    half = {"waveform": comfy_inputs.audio["waveform"][..., :44100], "sample_rate": 44100}
    with pytest.raises(ValueError, match="same AUDIO"):
        node.encode(enc, half, False)


@pytest.mark.usefixtures("model_dir")
def test_sampler_outputs(comfy_inputs) -> None:
    model = load()
    refs, prompts, audio, clips = conditioning(comfy_inputs)
    frames, sound, latent, hoi, heat = sample(model, comfy_inputs, refs, prompts, audio, trim_to_audio=False,
                                              hoi_preview=True, router_heatmaps=True)  # fmt: skip
    assert frames.shape == (clips * 80, 64, 64, 3) == hoi.shape == heat.shape  # 2 clips x 80, untrimmed
    assert sound["waveform"].shape == (1, 2, round(160 / 25 * 44100)) and sound["sample_rate"] == 44100
    torch.testing.assert_close(sound["waveform"][0, :, :1000], comfy_inputs.audio["waveform"][0, :, :1000])
    assert sound["waveform"][..., round(3.6 * 44100) :].abs().max() == 0  # silence after the 3.6 s of speech
    assert latent["samples"].shape == (1, 16, 40, 8, 8)
    trimmed = sample(model, comfy_inputs, refs, prompts, audio)  # no HOI: the RGB frames are the same
    assert trimmed[0].shape == (89, 64, 64, 3) and trimmed[1]["waveform"].shape[-1] == round(89 / 25 * 44100)
    torch.testing.assert_close(trimmed[0], frames[:89])
    assert trimmed[3].shape == trimmed[4].shape == (1, 64, 64, 3)  # placeholders when not asked for


@pytest.mark.usefixtures("model_dir")
def test_sampler_errors_come_before_sampling(comfy_inputs) -> None:
    refs, prompts, audio, _ = conditioning(comfy_inputs)
    calls = comfy_inputs.vae.calls
    with pytest.raises(ValueError, match="HOI preview asked of a checkpoint without HOI"):
        sample(load(ckpt="none"), comfy_inputs, refs, prompts, audio, hoi_preview=True)
    with pytest.raises(ValueError, match="router heatmaps need the Human-Aware MoE"):
        sample(load(ckpt="none"), comfy_inputs, refs, prompts, audio, router_heatmaps=True)
    wide = run("CoInteractPrompts", clip=type(comfy_inputs.clip)(text_dim=32), prompt="hello", negative_prompt="")[0]
    with pytest.raises(ValueError, match="text encoder gives"):
        sample(load(), comfy_inputs, refs, wide, audio)
    assert comfy_inputs.vae.calls == calls, "the VAE ran before the error"


@pytest.mark.usefixtures("model_dir")
def test_cancel_between_steps_unloads_the_model(comfy_inputs) -> None:
    model = load()
    (patched,) = run("CoInteractLoRA", model=model, lora_name="finetune.safetensors", strength=1.0)
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    refs, prompts, audio, _ = conditioning(comfy_inputs)
    forwards = []

    def cancel_after_three(module, args, output) -> None:
        forwards.append(1)
        if len(forwards) == 3:  # during step 2 of clip 1 (2 forwards per step with CFG)
            services.interrupt_processing()

    hook = model.model.register_forward_hook(cancel_after_three)
    try:
        with pytest.raises(services.ProcessingInterrupted):
            sample(patched, comfy_inputs, refs, prompts, audio, steps=5)
    finally:
        hook.remove()
    assert len(forwards) == 4  # stopped at the end of step 2, not after the clip
    assert not patched.loaded and not patched._backup
    assert all(torch.equal(before[k], v) for k, v in model.model.state_dict().items())
    services.check_interrupt()  # the request was consumed


def test_sampler_choices_are_appended_last_with_official_defaults() -> None:
    from comfyui_cointeract.cointeract_core.sampling.sampler import SAMPLERS

    required = NODE_CLASS_MAPPINGS["CoInteractSampler"].INPUT_TYPES()["required"]
    names = list(required)
    assert names[-2:] == ["sampler_name", "scheduler"] and names[:5] == [
        "model",
        "vae",
        "references",
        "prompts",
        "audio",
    ]
    assert names.index("router_heatmaps") == len(names) - 3  # saved workflows keep their widget order
    assert required["sampler_name"][0] == list(SAMPLERS) and required["sampler_name"][1]["default"] == "euler"
    assert required["scheduler"][0] == ["shifted", "simple"] and required["scheduler"][1]["default"] == "shifted"


@pytest.mark.usefixtures("model_dir")
def test_sampler_runs_every_solver_outside_comfyui(comfy_inputs) -> None:
    pytest.importorskip("diffusers")
    model = load()
    refs, prompts, audio, _ = conditioning(comfy_inputs)
    frames = {}
    for name in ("euler", "unipc", "dpmpp_2m", "lcm"):
        assert services.comfy_solver(name, 5.0) is None  # outside ComfyUI: the core's solvers
        frames[name] = sample(model, comfy_inputs, refs, prompts, audio, steps=3, cfg=1.0, shift=5.0, max_clips=1,
                              sampler_name=name, scheduler="simple")[0]  # fmt: skip
        assert frames[name].shape == (80, 64, 64, 3) and torch.isfinite(frames[name]).all()
    again = sample(model, comfy_inputs, refs, prompts, audio, steps=3, cfg=1.0, shift=5.0, max_clips=1,
                   sampler_name="lcm", scheduler="simple")[0]  # fmt: skip
    assert torch.equal(again, frames["lcm"]) and not torch.equal(frames["lcm"], frames["euler"])
    with pytest.raises(ValueError, match="unknown sampler 'heun'; choose one of euler, unipc, dpmpp_2m, lcm"):
        sample(model, comfy_inputs, refs, prompts, audio, sampler_name="heun")
