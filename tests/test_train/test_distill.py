"""Toy step distillation (train/demo/distill.py): the student rollout is the pipeline's sampler, training lowers the
loss, the kohya export merges to the trained LoRA, and the shipped LoRA fits the bundle and beats plain 4 steps on
the held-out story."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from comfyui_cointeract.cointeract_core.pipeline.clips import VideoOptions, _ClipSampler, generate
from comfyui_cointeract.cointeract_core.pipeline.noise import clip_renoise
from comfyui_cointeract.cointeract_core.sampling.presets import SAMPLER_PRESETS
from comfyui_cointeract.cointeract_core.toy.bundle import load_bundle
from comfyui_cointeract.cointeract_core.weights.inspect import check_lora
from comfyui_cointeract.cointeract_core.weights.lora_stack import apply_loras
from comfyui_cointeract.train.demo import distill as D

BUNDLE = D.ASSETS / "toy_bundle.safetensors"
SHIPPED = D.ASSETS / "toy_distill_lora.safetensors"
ONE_CLIP = VideoOptions(max_clips=1)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def held_out():
    """(bundle, the shipped held-out story's conditioning, 1 clip)."""
    bundle = load_bundle(BUNDLE)
    return bundle, D.story_conditioning(bundle, D.ASSETS, 1)


@pytest.mark.parametrize(("preset", "solver"), [("lightning", "euler"), ("distill", "lcm")])
def test_student_rollout_is_the_pipelines_sampler(held_out, preset, solver):
    (model, codec, *_), cond = held_out
    sampler = dataclasses.replace(SAMPLER_PRESETS[preset], seed=3)
    res = generate(model, codec, cond, sampler, ONE_CLIP)
    inputs = _ClipSampler(model, cond, 0, None, sampler, ONE_CLIP).pos
    with torch.no_grad():
        noise = D.clip_noise(cond, 3, 0)
        preds = D.student_rollout(model, inputs, noise, sampler.sigmas(), solver, clip_renoise(3, 20))
    assert len(preds) == 4
    assert torch.equal(preds[-1], res.latents[0])


def test_world_story_refuses_the_held_out_seed(held_out):
    with pytest.raises(ValueError, match="held-out"):
        D.world_story(held_out[0], 0, 1)


def test_training_lowers_the_loss_and_the_kohya_file_merges_to_the_trained_lora(tmp_path, held_out):
    bundle, cond = held_out
    student = load_bundle(BUNDLE)[0]
    target = generate(bundle[0], bundle[1], cond, dataclasses.replace(D.TEACHER, steps=8, seed=1), ONE_CLIP)
    item = D.TeacherClip(0, 0, 1, _ClipSampler(student, cond, 0, None, D.STUDENT, ONE_CLIP).pos,
                         D.clip_noise(cond, 1, 0), target.latents[0])  # fmt: skip
    names = D.add_lora(student, rank=4)
    assert len(names) == 10 * student.cfg.num_layers
    cfg = D.DistillConfig(stories=1, clips=1, rank=4, iters=12, lr=5e-3)
    losses = D.train_lora(student, [item], cfg, log=lambda _: None)
    assert losses[-1] < 0.8 * losses[0]

    path = D.save_kohya(tmp_path / "lora.safetensors", student, cfg)
    check = check_lora(path, BUNDLE)
    assert check["ok"] and check["fit"] == check["keys"] == 3 * len(names) and not check["unfit"]
    merged = load_bundle(BUNDLE)[0]
    assert len(apply_loras(merged, [(str(path), 1.0)])) == len(names)
    x, t = item.noise, torch.tensor([937.0])
    with torch.no_grad():
        want, got = student(x, t, **item.inputs).velocity, merged(x, t, **item.inputs).velocity
    assert (got - want).norm() / want.norm() < 1e-3  # fp16 factors


@pytest.mark.skipif(not SHIPPED.is_file(), reason="no shipped toy distill LoRA")
def test_shipped_lora_fits_and_beats_plain_four_steps_on_the_held_out_story(held_out):
    check = check_lora(SHIPPED, BUNDLE)
    assert check["ok"] and check["fit"] == check["keys"] and not check["unfit"] and not check["mismatched"]
    (model, codec, *_), cond = held_out
    tuned = load_bundle(BUNDLE)
    assert len(apply_loras(tuned[0], [(str(SHIPPED), 1.0)])) == check["targets"]
    teacher = generate(model, codec, cond, D.TEACHER, ONE_CLIP)
    plain = D.compare(teacher, generate(model, codec, cond, D.STUDENT, ONE_CLIP))
    distilled = D.compare(teacher, generate(tuned[0], tuned[1], cond, D.STUDENT, ONE_CLIP))
    assert distilled["frames"] < 0.8 * plain["frames"] and distilled["latents"] < plain["latents"]
