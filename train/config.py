"""Training configuration: frozen dataclasses that validate their own fields, loss presets, and the resolved
config written back out as TOML / JSON.

One TOML file describes a whole run (see `example_config.toml`); `config_load.load_config` reads it, applies the
`--set a.b=c` overrides and checks it against the model. The two stages are data (`StageConfig`), run back to back
by `loop.train`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "ModelConfig",
    "LoRAConfig",
    "SyntheticConfig",
    "EncodeConfig",
    "DataConfig",
    "DropoutConfig",
    "LossConfig",
    "LOSS_PRESETS",
    "OptimConfig",
    "StageConfig",
    "RuntimeConfig",
    "TrainConfig",
    "OFFICIAL_LORA_TARGETS",
    "OFFICIAL_TRAINABLE",
    "DEFAULT_STAGES",
    "train_config_to_json",
    "config_to_toml",
]

# PEFT suffix targets of the official train.sh. The suffix match also hits the audio injectors' q/k/v/o (official).
OFFICIAL_LORA_TARGETS = ("q", "k", "v", "o", "ffn.ffn_base.0", "ffn.ffn_base.2")
# Regexes searched in parameter names: LoRA factors, MoE router/experts and the HOI `depth_*` modules in full.
OFFICIAL_TRAINABLE = (
    r"\.lora_[AB]\.",
    r"\.ffn\.(router|hand_expert|face_expert|base_expert)\.",
    r"(^|\.)depth_",
)


def check(ok: bool, message: str) -> None:
    """Raise ValueError(message) unless ok: how every config check fails (the message names the key)."""
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class ModelConfig:
    """Where the DiT comes from: Wan2.2-S2V base files (+ a CoInteract checkpoint to start from), or a random preset."""

    preset: str = "14B_cointeract"  # architecture when `base` is empty; expert size / HOI when it is not
    base: tuple[str, ...] = ()  # Wan2.2-S2V weights (file, shards or index); empty = random init (smoke tests)
    cointeract: str = ""  # a CoInteract checkpoint to start from: its LoRA initialises the adapter, MoE/HOI load
    init_seed: int = 0  # random init of `preset` when `base` is empty
    base_dtype: Literal["fp32", "bf16", "fp16"] = "bf16"  # frozen weights; trainable ones are always fp32
    attention_backend: str = "auto"
    gradient_checkpointing: bool = True

    def __post_init__(self) -> None:
        from ..cointeract_core.model.config import PRESETS  # noqa: PLC0415 - torch; config files load without it

        check(self.preset in PRESETS, f"model.preset = {self.preset!r}; choose one of {sorted(PRESETS)}")


@dataclass(frozen=True)
class LoRAConfig:
    """PEFT LoRA on the frozen base (official: rank 128, alpha 128, q/k/v/o + both base-FFN linears)."""

    rank: int = 128
    alpha: float = 128.0
    targets: tuple[str, ...] = OFFICIAL_LORA_TARGETS
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check(self.rank > 0 and self.alpha > 0, f"lora.rank and lora.alpha must be > 0, got {self.rank}, {self.alpha}")
        check(bool(self.targets), "lora.targets is empty; the official targets are " + str(OFFICIAL_LORA_TARGETS))
        check(0 <= self.dropout < 1, f"lora.dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class SyntheticConfig:
    """Random TrainSamples with learnable router labels (`data.kind = "synthetic"`): smoke tests, no files."""

    num_samples: int = 16
    frames: int = 2  # latent frames of the target
    height: int = 8  # latent height (pixels / 8)
    width: int = 8
    seed: int = 0  # draws the samples; a held-out set is the same config with another seed
    pattern_seed: int = 0  # draws the hand / face latent patterns (the "world"), shared by train and held-out sets


WAN_ENCODER_FILES = ("vae", "text_encoder", "audio_encoder")


@dataclass(frozen=True)
class EncodeConfig:
    """How `cointeract train` builds the latent cache (data.path) from a `cointeract prepare` dataset, when it is
    missing, incomplete or built from another version of the CSV. Encoders load from local files only."""

    source: str = ""  # data.csv written by `cointeract prepare`; "" = data.path must already hold a cache
    encoders: Literal["wan", "toy"] = "wan"  # wan: the files below; toy: a toy bundle's codec, text and audio encoders
    vae: str = ""  # Wan2.1_VAE.pth, ComfyUI wan_2.1_vae.safetensors or a diffusers folder
    text_encoder: str = ""  # umT5-XXL: transformers folder, ComfyUI umt5_xxl file or Wan .pth
    tokenizer: str = ""  # umT5 tokenizer folder, when the text encoder carries none
    audio_encoder: str = ""  # wav2vec2 folder or ComfyUI audio_encoders file
    toy_bundle: str = ""  # encoders = "toy": the bundle to take them from; "" = the shipped toy bundle
    height: int = 832  # training frame size in pixels
    width: int = 480
    normalize_loudness: bool = True  # speech to -23 LUFS before wav2vec2 (official training)
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"  # of the cached tensors
    shard_size: int = 32  # samples per shard file
    device: str = "auto"  # where the encoders run: auto = cuda when available, else cpu

    def __post_init__(self) -> None:
        check(self.height > 0 and self.width > 0, f"data.encode size must be > 0, got {self.height}x{self.width}")
        check(self.shard_size >= 1, f"data.encode.shard_size must be >= 1, got {self.shard_size}")
        missing = [f"data.encode.{n}" for n in WAN_ENCODER_FILES if not getattr(self, n)]
        check(
            not (self.source and self.encoders == "wan" and missing),
            f"{', '.join(missing)} empty: building the cache from {self.source} with the Wan encoders needs the "
            'local files of the VAE, umT5 and wav2vec2 (or encoders = "toy" for toy-world data)',
        )


@dataclass(frozen=True)
class DataConfig:
    """Training samples: the latent cache (`kind = "cache"`, `path`) or generated ones (`kind = "synthetic"`)."""

    kind: Literal["cache", "synthetic"] = "cache"
    path: str = ""
    batch_size: int = 1  # per process and micro-step (official: 1); samples of a batch must have equal shapes
    shuffle: bool = True
    num_workers: int = 0
    synthetic: SyntheticConfig = SyntheticConfig()
    encode: EncodeConfig = EncodeConfig()  # build data.path from a `cointeract prepare` dataset (kind = "cache")

    def __post_init__(self) -> None:
        check(self.batch_size >= 1, f"data.batch_size must be >= 1, got {self.batch_size}")
        check(self.kind != "cache" or bool(self.path), "data.path is empty; point it at the latent cache folder")
        check(
            self.kind == "cache" or not self.encode.source,
            f'data.encode.source is set but data.kind = "{self.kind}"; the cache is built only for kind = "cache"',
        )


@dataclass(frozen=True)
class DropoutConfig:
    """Per-sample condition dropout (official): prompt -> empty prompt, audio -> zero features, motion, pose."""

    prompt: float = 0.1
    audio: float = 0.1
    motion: float = 0.4  # dropped motion: no motion tokens, the target is `target_alone`
    pose: float = 0.5

    def __post_init__(self) -> None:
        for name in ("prompt", "audio", "motion", "pose"):
            p = getattr(self, name)
            check(0.0 <= p <= 1.0, f"dropout.{name} must be a probability in [0, 1], got {p}")


@dataclass(frozen=True)
class LossConfig:
    """L = w(t)·MSE_rgb + hoi_weight·w(t)·MSE_hoi + router_weight·CE_router (official weights 0.5 / 0.05).

    `face_weight` / `hand_weight` (0 = official) weight the flow losses per token region: a token the box labels
    mark face (hand) counts 1 + face_weight (1 + hand_weight) times, normalised so that a uniform error keeps its
    MSE — the paper's region-weighted reconstruction, for regions smaller than the loss can otherwise see.
    """

    hoi_weight: float = 0.5
    router_weight: float = 0.05
    face_weight: float = 0.0
    hand_weight: float = 0.0
    shift: float = 5.0  # training schedule shift (official train_shift)
    num_timesteps: int = 1000
    timestep_weighting: bool = True  # the official w(t); False: w = 1
    quantize_timestep: bool = True  # official: the sampled timestep is cast to bf16, sigma / w(t) follow it

    def __post_init__(self) -> None:
        check(
            min(self.hoi_weight, self.router_weight, self.face_weight, self.hand_weight) >= 0,
            "loss weights (hoi_weight, router_weight, face_weight, hand_weight) must be >= 0",
        )
        check(self.shift > 0 and self.num_timesteps >= 2, "loss.shift must be > 0 and loss.num_timesteps >= 2")


LOSS_PRESETS: dict[str, LossConfig] = {
    "official": LossConfig(hoi_weight=0.5, router_weight=0.05),  # train.py / pipeline code
    "paper": LossConfig(hoi_weight=1.0, router_weight=1.0),  # arXiv 2604.19636 (lambda_h = eta = 1)
}


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with warmup + cosine (or constant, or the official ConstantLR: 1/3 for 5 steps), clipping."""

    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    schedule: Literal["cosine", "constant", "official"] = "cosine"
    warmup_steps: int = 100  # per stage (cosine, constant)
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of the stage lr
    gradient_accumulation_steps: int = 1
    reset_between_stages: bool = True  # fresh AdamW moments at a stage start (official stage 2 is a new run)

    def __post_init__(self) -> None:
        check(self.warmup_steps >= 0 and self.gradient_accumulation_steps >= 1, "optim: bad warmup / accumulation")
        check(0 <= self.min_lr_ratio <= 1, f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


@dataclass(frozen=True)
class StageConfig:
    """One training stage, as data: attention mode, length, lr, what trains, whether the HOI stream is co-generated."""

    name: str
    attention: Literal["full", "asymmetric"]
    steps: int
    lr: float = 1e-5
    trainable: tuple[str, ...] = OFFICIAL_TRAINABLE  # regexes searched in parameter names
    hoi: bool = True  # co-generate the HOI stream when the sample has HOI latents
    loss: LossConfig | None = None  # None: the run's [loss]

    def __post_init__(self) -> None:
        check(
            re.fullmatch(r"[A-Za-z0-9_.-]+", self.name) is not None,
            f"stage name {self.name!r} must be letters, digits, '_', '.' or '-' (it names export files)",
        )
        check(self.steps >= 1, f"stage {self.name!r}: steps must be >= 1, got {self.steps}")
        check(self.lr > 0, f"stage {self.name!r}: lr must be > 0, got {self.lr}")
        check(bool(self.trainable), f"stage {self.name!r}: trainable is empty, nothing would train")


@dataclass(frozen=True)
class RuntimeConfig:
    """Output folder, precision, checkpoint cadence, resume."""

    output_dir: str = "runs/cointeract"
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "bf16"
    checkpoint_every: int = 500  # optimizer steps; a checkpoint is also written at every stage end
    keep_last: int = 3  # periodic checkpoints (and their exports) kept; stage-final exports are always kept
    export_dtype: Literal["fp32", "bf16"] = "fp32"
    resume: Literal["auto", "never"] = "auto"  # auto: continue from the newest complete checkpoint in output_dir
    progress: bool = True
    cpu: bool = False  # force CPU even when a GPU is visible

    def __post_init__(self) -> None:
        check(self.checkpoint_every >= 1 and self.keep_last >= 1, "runtime.checkpoint_every and keep_last >= 1")


DEFAULT_STAGES = (
    StageConfig("stage1", "full", 5000),  # paper: 5K iterations with full attention
    StageConfig("stage2", "asymmetric", 2000),  # paper: 2K iterations with asymmetric attention
)


@dataclass(frozen=True)
class TrainConfig:
    """A whole two-stage run."""

    data: DataConfig  # required: training on generated data is never a silent default
    model: ModelConfig = ModelConfig()
    lora: LoRAConfig = LoRAConfig()
    dropout: DropoutConfig = DropoutConfig()
    loss: LossConfig = LOSS_PRESETS["official"]
    optim: OptimConfig = OptimConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    stages: tuple[StageConfig, ...] = DEFAULT_STAGES

    def __post_init__(self) -> None:
        check(bool(self.stages), "stages is empty; give at least one [[stages]] table")
        names = [s.name for s in self.stages]
        check(len(set(names)) == len(names), f"stage names must be unique, got {names}")

    def stage_loss(self, stage: StageConfig) -> LossConfig:
        return stage.loss or self.loss

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)


# ------------------------------------------------------------------------------------- TOML / JSON out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def _toml_table(data: dict, header: str, array: bool = False) -> list[str]:
    def is_tables(v: Any) -> bool:
        return isinstance(v, (list, tuple)) and any(isinstance(i, dict) for i in v)

    lines = [f"[[{header}]]" if array else f"[{header}]"] if header else []
    lines += [
        f"{k} = {_toml_value(v)}"
        for k, v in data.items()
        if v is not None and not isinstance(v, dict) and not is_tables(v)
    ]
    for key, sub in data.items():
        name = f"{header}.{key}" if header else key
        if isinstance(sub, dict):
            lines += ["", *_toml_table(sub, name)]
        elif is_tables(sub):
            for item in sub:
                lines += ["", *_toml_table(item, name, array=True)]
    return lines


def config_to_toml(cfg: TrainConfig) -> str:
    """The resolved config as a TOML file that `config_load.load_config` reads back to an equal TrainConfig."""
    return "\n".join(_toml_table(dataclasses.asdict(cfg), "")).lstrip() + "\n"


def train_config_to_json(cfg: TrainConfig) -> str:
    """The resolved config as JSON (stored beside checkpoints and in export metadata)."""
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True)
