"""From raw videos to a trained finetune with commands only: `cointeract prepare`, then `cointeract train`, which
builds the latent cache itself ([data.encode]) with the toy encoders, or with the Wan encoders from local files."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from comfyui_cointeract.cli import main as cli_main
from comfyui_cointeract.train import cache_build
from comfyui_cointeract.train.cache import MANIFEST, CachedDataset
from comfyui_cointeract.train.config import DataConfig, EncodeConfig
from comfyui_cointeract.train.config_load import load_config
from comfyui_cointeract.train.errors import UserError
from comfyui_cointeract.train.toyworld.dataset import write_prepare_sources

TOY_RUN = """
[model]
preset = "toy"
base_dtype = "fp32"
attention_backend = "sdpa"
gradient_checkpointing = false

[lora]
rank = 4
alpha = 4.0

[data]
kind = "cache"
path = "{root}/cache"

[data.encode]
source = "{root}/dataset/data.csv"
encoders = "toy"
height = 64
width = 64
dtype = "fp32"

[optim]
warmup_steps = 0

[runtime]
output_dir = "{root}/run"
mixed_precision = "no"
cpu = true
progress = false

[[stages]]
name = "stage1"
attention = "full"
steps = 1
lr = 1e-3

[[stages]]
name = "stage2"
attention = "asymmetric"
steps = 1
lr = 1e-3
"""


pytestmark = pytest.mark.usefixtures("one_thread")


def test_raw_toy_videos_to_a_trained_finetune_with_commands_only(tmp_path, monkeypatch, caplog):
    manifest = write_prepare_sources(tmp_path / "raw", 1, seconds=6.5)  # raw videos, speech and boxes: one clip
    assert cli_main(["prepare", str(manifest), str(tmp_path / "dataset")]) == 0
    config = tmp_path / "toy.toml"
    config.write_text(TOY_RUN.format(root=tmp_path.as_posix()))
    assert cli_main(["train", str(config)]) == 0

    cached = json.loads((tmp_path / "cache" / MANIFEST).read_text())
    assert len(cached["samples"]) == 1 and cached["source"]["csv"] == str((tmp_path / "dataset/data.csv").resolve())
    sample = CachedDataset(tmp_path / "cache")[0]
    assert sample.target_with_motion.shape == (32, 20, 8, 8) and sample.hoi is not None  # toy PCA codec, 64 px
    export = load_file(tmp_path / "run" / "exports" / "stage2-final.safetensors")
    assert any(".lora_A.default.weight" in k for k in export) and any(".ffn.router." in k for k in export)

    # Again (more steps, a new output folder): the complete cache is used as it is, no encoder is loaded.
    def no_encoders(_enc):
        raise AssertionError("the cache is complete; the encoders must not be loaded")

    monkeypatch.setattr(cache_build, "load_encoders", no_encoders)
    more = ["--set", f"runtime.output_dir={json.dumps((tmp_path / 'run2').as_posix())}", "--set", "stages.1.steps=2"]
    with caplog.at_level(logging.INFO):
        assert cli_main(["train", str(config), *more]) == 0
    assert any("is complete for" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "run2" / "exports" / "stage2-final.safetensors").is_file()


def test_cache_only_builds_and_a_changed_csv_is_encoded_again(tmp_path, caplog):
    manifest = write_prepare_sources(tmp_path / "raw", 1, seconds=6.5)
    assert cli_main(["prepare", str(manifest), str(tmp_path / "dataset")]) == 0
    config = tmp_path / "toy.toml"
    config.write_text(TOY_RUN.format(root=tmp_path.as_posix()))
    assert cli_main(["train", str(config), "--cache-only"]) == 0
    assert not (tmp_path / "run").exists()  # nothing trained
    cfg = load_config(config)
    assert cache_build.cache_is_current(Path(cfg.data.path), Path(cfg.data.encode.source))
    first_key = CachedDataset(cfg.data.path).samples[0]["key"]
    csv_path = tmp_path / "dataset" / "data.csv"
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    rows[0]["prompt"] = "a person holds a red ball"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert not cache_build.cache_is_current(Path(cfg.data.path), csv_path)
    assert cache_build.build_configured_cache(cfg.data, cfg.model.preset)  # the edited row is encoded
    assert cache_build.cache_is_current(Path(cfg.data.path), csv_path)
    cache = CachedDataset(cfg.data.path)
    assert len(cache) == 1 and cache.samples[0]["key"] != first_key  # the old version of the row is gone


@pytest.fixture(scope="module")
def wan_files(tmp_path_factory) -> dict[str, Path]:
    """Tiny Wan VAE, umT5 (+ spiece.model) and wav2vec2 saved as the local folders a user points the config at."""
    sentencepiece = pytest.importorskip("sentencepiece")
    from comfyui_cointeract.cointeract_core.encoders import WanVAE, Wav2Vec2Features, umt5
    from comfyui_cointeract.cointeract_core.encoders.wav2vec import TINY_WAV2VEC2_CONFIG

    root = tmp_path_factory.mktemp("wan_files")
    WanVAE.from_config(seed=0).model.save_pretrained(root / "vae")
    torch.manual_seed(0)
    umt5._build(umt5.TINY_UMT5_CONFIG).save_pretrained(root / "umt5")  # d_model 32 = tiny_cointeract's text_dim
    buf = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["a person presents a product", "the box and the bottle"] * 20), model_writer=buf,
        vocab_size=40, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
        minloglevel=2,
    )  # fmt: skip
    (root / "umt5" / "spiece.model").write_bytes(buf.getvalue())
    w2v = {**TINY_WAV2VEC2_CONFIG, "hidden_size": 24, "num_hidden_layers": 24}  # 25 hidden states of width 24
    w2v.update(conv_kernel=(10, 64), conv_stride=(5, 64))  # 320 samples per frame: 50 Hz, as wav2vec2
    Wav2Vec2Features.from_config(w2v, seed=0).model.save_pretrained(root / "wav2vec2")
    return {"vae": root / "vae", "text_encoder": root / "umt5", "audio_encoder": root / "wav2vec2"}


def _wan_config(tmp_path: Path, csv_path: Path, files: dict[str, Path], preset: str) -> Path:
    text = TOY_RUN.format(root=tmp_path.as_posix()).replace('preset = "toy"', f'preset = "{preset}"')
    paths = "".join(f'{k} = "{v.as_posix()}"\n' for k, v in files.items())
    text = text.replace('encoders = "toy"', f'encoders = "wan"\n{paths}').replace("= 64\n", "= 32\n")
    text = text.replace(f'source = "{tmp_path.as_posix()}/dataset/data.csv"', f'source = "{csv_path.as_posix()}"')
    path = tmp_path / "wan.toml"
    path.write_text(text)
    return path


def test_the_wan_encoders_build_the_cache_from_local_files(kit, tmp_path, wan_files):
    csv_path = kit.csv([kit.row("a", seed=1, hoi=True), kit.row("b", seed=2, motion=False)])
    config = _wan_config(tmp_path, csv_path, wan_files, "tiny_cointeract")
    assert cli_main(["train", str(config), "--cache-only"]) == 0
    cache = CachedDataset(tmp_path / "cache")
    assert len(cache) == 2 and cache.config["vae"]["class"].endswith("WanVAE")
    assert cache.config["text_encoder"]["class"].endswith("UMT5TextEncoder")
    sample = cache[0]
    assert sample.target_with_motion.shape == (16, 20, 4, 4) and sample.audio.shape == (25, 24, 80)
    assert sample.prompt.shape[1] == 32 and sample.hoi is not None and cache[1].motion is None


def test_encoders_that_do_not_fit_the_model_are_refused_in_one_line(kit, tmp_path, wan_files, capsys):
    csv_path = kit.csv([kit.row("a", seed=1)])
    config = _wan_config(tmp_path, csv_path, wan_files, "toy")  # the toy DiT takes 16-wide audio of 25 layers
    assert cli_main(["train", str(config), "--cache-only"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "do not fit model.preset 'toy'" in err[0] and "audio width" in err[0]
    missing = {**wan_files, "vae": tmp_path / "nowhere"}
    config = _wan_config(tmp_path, csv_path, missing, "tiny_cointeract")
    assert cli_main(["train", str(config), "--cache-only"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.encode.vae" in err[0] and "does not exist" in err[0]


def test_a_multi_process_run_needs_the_cache_first(tmp_path):
    class TwoProcesses:
        num_processes, is_main_process = 2, True

    encode = EncodeConfig(source=str(tmp_path / "data.csv"), encoders="toy")
    data = DataConfig(path=str(tmp_path / "cache"), encode=encode)
    with pytest.raises(UserError, match=r"before a 2-process run: run `cointeract train CONFIG --cache-only`"):
        cache_build.ensure_cache(TwoProcesses(), data, "toy")
