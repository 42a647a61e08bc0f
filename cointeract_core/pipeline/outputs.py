"""What one generated case leaves on disk: the video, its optional previews and the JSON sidecar that records every
setting and seed; all or nothing."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from ..media import atomic_output, write_video
from .clips import GenerationResult
from .heatmaps import overlay_heatmaps

__all__ = ["build_sidecar", "write_outputs"]


def write_outputs(result: GenerationResult, out: Path, audio: torch.Tensor, rate: int, sidecar: dict) -> None:
    """The video, its optional previews and the .json sidecar; on any failure none of them is left behind."""
    written: list[Path] = []
    try:
        write_video(out, result.frames, result.fps, audio, rate)
        written.append(out)
        if result.hoi_frames is not None:
            write_video(out.with_suffix(".hoi.mp4"), result.hoi_frames, result.fps, audio, rate)
            written.append(out.with_suffix(".hoi.mp4"))
        if result.router_maps is not None:
            overlay = overlay_heatmaps(result.frames[: result.router_maps.shape[0]], result.router_maps)
            write_video(out.with_suffix(".router.mp4"), overlay, result.fps, audio, rate)
            written.append(out.with_suffix(".router.mp4"))
        with atomic_output(out.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps(sidecar, indent=2))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def build_sidecar(case, result, sampler, video, inputs, seconds: float, loras: tuple = ()) -> dict:
    """The JSON sidecar of one video: its case, every option, the LoRAs merged, the seeds and step-cache counts."""

    def plain(obj: Any) -> Any:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(obj).items()}

    return {
        "case": plain(case),
        "sampler": plain(sampler),
        "video": plain(video),
        "inputs": plain(inputs),
        "loras": [{"file": str(path), "strength": strength} for path, strength in loras],
        "seeds": result.seeds,
        "passes_run": result.passes_run,  # per clip: DiT forwards that ran the blocks
        "passes_skipped": result.passes_skipped,  # per clip: forwards the step cache skipped
        "clips": len(result.seeds),
        "frames": int(result.frames.shape[0]),
        "audio_frames": result.audio_frames,
        "seconds": round(seconds, 2),
    }
