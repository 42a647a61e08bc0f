"""`cointeract generate --lora` on the toy bundle: one delta as kohya / PEFT / full diff gives one video, strength 0
gives the plain video, a LoRA that fits nothing is refused cleanly; `cointeract inspect` on LoRA files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from comfyui_cointeract.cointeract_core.media import load_video
from comfyui_cointeract.cointeract_core.pipeline import generate as gen
from comfyui_cointeract.cointeract_core.toy.bundle import load_bundle
from comfyui_cointeract.cointeract_core.weights import inspect as inspect_cli
from comfyui_cointeract.cointeract_core.weights.safetensors_io import write_safetensors

ASSETS = Path(__file__).resolve().parents[2] / "cointeract_core" / "toy" / "assets"
BUNDLE = ASSETS / "toy_bundle.safetensors"
RUN = ["--clips", "1", "--steps", "2", "--cfg", "1", "--height", "64", "--width", "64", "--device", "cpu"]
MODULES = ("blocks.{i}.self_attn.q", "blocks.{i}.cross_attn.o", "blocks.{i}.ffn.0", "blocks.{i}.ffn.2")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory) -> dict[str, Path]:
    """One delta on every block's q / cross o / both FFN linears (+ a bias delta on q) of the toy DiT, written as
    kohya (rank 4, alpha 2), PEFT (alpha folded into lora_B) and full diffs; every number is exact in float32."""
    root = tmp_path_factory.mktemp("loras")
    model = load_bundle(BUNDLE)[0]
    params = dict(model.named_parameters())
    gen_ = torch.Generator().manual_seed(0)
    kohya, peft, diff = {}, {}, {}
    for i in range(model.cfg.num_layers):
        for module in (m.format(i=i) for m in MODULES):
            out, inp = params[module.replace("ffn.", "ffn.ffn_base.") + ".weight"].shape
            a = torch.randint(-4, 5, (4, inp), generator=gen_).float() / 16
            b = torch.randint(-4, 5, (out, 4), generator=gen_).float() / 16
            k = "lora_unet_" + module.replace(".", "_")
            kohya |= {f"{k}.lora_down.weight": a, f"{k}.lora_up.weight": b, f"{k}.alpha": torch.tensor(2.0)}
            peft |= {f"diffusion_model.{module}.lora_A.weight": a, f"diffusion_model.{module}.lora_B.weight": b / 2}
            diff[f"diffusion_model.{module}.diff"] = b @ a / 2
        bias = torch.randint(-4, 5, (model.cfg.dim,), generator=gen_).float() / 16
        kohya[f"lora_unet_blocks_{i}_self_attn_q.diff_b"] = peft[
            f"diffusion_model.blocks.{i}.self_attn.q.lora_B.bias"
        ] = bias
        diff[f"diffusion_model.blocks.{i}.self_attn.q.diff_b"] = bias
    sdxl = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4)}  # fmt: skip
    files = {"kohya": kohya, "peft": peft, "diff": diff, "sdxl": sdxl}
    for name, sd in files.items():
        write_safetensors(root / f"{name}.safetensors", sd)
    return {name: root / f"{name}.safetensors" for name in files}


def _generate(out: Path, *extra: str) -> int:
    args = ["--bundle", str(BUNDLE), "--person", str(ASSETS / "person.png"), "--prompt", "a person shows a product"]
    args += ["--product", str(ASSETS / "product.png"), "--audio", str(ASSETS / "speech.wav"), "--out", str(out)]
    return gen.main([*args, *RUN, *extra])


def test_three_layouts_of_one_lora_give_one_video_and_strength_zero_the_plain_one(lora_files, tmp_path):
    runs = {"plain": (), "zero": (f"{lora_files['kohya']}:0",)}
    runs |= {name: (f"{lora_files[name]}:0.8",) for name in ("kohya", "peft", "diff")}
    frames = {}
    for name, loras in runs.items():
        out = tmp_path / f"{name}.mp4"
        assert _generate(out, *(a for lora in loras for a in ("--lora", lora))) == 0
        frames[name] = load_video(out, fps=None)[0]
    assert torch.equal(frames["kohya"], frames["peft"]) and torch.equal(frames["kohya"], frames["diff"])
    assert torch.equal(frames["zero"], frames["plain"])
    assert (frames["kohya"].float() - frames["plain"].float()).abs().mean() > 1.0  # the LoRA visibly changes the video
    sidecar = json.loads((tmp_path / "peft.json").read_text())
    assert sidecar["loras"] == [{"file": str(lora_files["peft"]), "strength": 0.8}]
    assert json.loads((tmp_path / "plain.json").read_text())["loras"] == []


def test_a_lora_that_fits_nothing_is_refused_without_a_traceback(lora_files, tmp_path, capsys):
    out = tmp_path / "never.mp4"
    assert _generate(out, "--lora", str(lora_files["kohya"]), "--lora", str(lora_files["sdxl"])) == 2
    err = capsys.readouterr().err
    assert "sdxl.safetensors does not fit this model" in err and "SDXL / SD1.5 keys" in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not out.exists() and not list(tmp_path.iterdir())
    (tmp_path / "demos.csv").write_text(
        f"audio,person_image,prompt\n{ASSETS / 'speech.wav'},{ASSETS / 'person.png'},hi\n"
    )
    batch = [str(tmp_path / "demos.csv"), "--out-dir", str(tmp_path / "out"), "--bundle", str(BUNDLE)]
    assert gen.batch_main([*batch, "--lora", f"{lora_files['sdxl']}:0.5", *RUN]) == 2
    assert not list((tmp_path / "out").iterdir())
    with pytest.raises(SystemExit) as exit_info:
        _generate(out, "--lora", str(tmp_path / "missing.safetensors:0.5"))
    assert exit_info.value.code == 2 and "LoRA file not found" in capsys.readouterr().err


def test_inspect_names_the_layout_and_counts_what_fits_a_base(lora_files, tmp_path, capsys):
    i2v = {"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 128),
           "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(128, 4),
           "diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight": torch.zeros(4, 128),
           "diffusion_model.blocks.0.cross_attn.k_img.lora_up.weight": torch.zeros(128, 4),
           "diffusion_model.blocks.0.diff_m": torch.zeros(1, 6, 128)}  # fmt: skip
    write_safetensors(tmp_path / "i2v.safetensors", i2v)
    info = inspect_cli.describe(lora_files["kohya"])
    assert info["family"] == "lora" and info["lora_file"]["format"] == "kohya"
    assert info["lora_file"]["ranks"] == [4] and info["lora_file"]["modules"] == 4 * 4
    assert inspect_cli.describe(lora_files["diff"])["lora_file"]["format"] == "lightx2v"
    assert inspect_cli.describe(lora_files["peft"])["lora_file"]["format"] == "peft"
    assert inspect_cli.main([str(tmp_path / "i2v.safetensors"), "--base", str(BUNDLE)]) == 0
    out = capsys.readouterr().out
    assert "lightx2v-style" in out and "rank 4, 3 modules" in out
    assert "i2v.safetensors on toy_bundle.safetensors: 3 of 5 keys fit (2 parameters)" in out
    assert "no module 2: diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight" in out
    assert inspect_cli.main([str(lora_files["sdxl"]), "--against", str(BUNDLE), "--json"]) == 2
    (result,) = json.loads(capsys.readouterr().out)
    assert result["lora_check"]["fit"] == 0 and "SDXL / SD1.5 keys" in result["lora_check"]["error"]
