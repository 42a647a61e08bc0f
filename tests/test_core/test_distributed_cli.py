"""`cointeract generate` / `batch` under `python -m torch.distributed.run` on the CPU (gloo), shipped toy bundle:
--sequence-parallel 2 writes one video equal to the one-process video; batch shares rows over 2 processes, writes
each once and skips them on a rerun; a failure is reported once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from comfyui_cointeract.cointeract_core.media import load_video

ASSETS = Path(__file__).resolve().parents[2] / "cointeract_core" / "toy" / "assets"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # the same thread count in every process
TOY = ["--bundle", str(ASSETS / "toy_bundle.safetensors"), "--steps", "4", "--clips", "1"]
CASE = ["--person", str(ASSETS / "person.png"), "--product", str(ASSETS / "product.png"), "--prompt", "a presenter"]

pytestmark = pytest.mark.slow


def _cointeract(*args: str, ranks: int = 1) -> subprocess.CompletedProcess:
    launch = ["-m", "torch.distributed.run", "--nproc-per-node", str(ranks)] if ranks > 1 else []
    cmd = [sys.executable, *launch, "-m", "comfyui_cointeract.cli", *args]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)


def _sidecar(path: Path) -> dict:
    data = json.loads(path.read_text())
    data.pop("seconds")
    return data


def test_generate_sequence_parallel_2_equals_one_process(tmp_path):
    audio = ["--audio", str(ASSETS / "speech.wav")]
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = _cointeract("generate", *TOY, *CASE, *audio, "--out", str(tmp_path / "one" / "v.mp4"))
    assert one.returncode == 0, one.stderr[-2000:]
    two_args = ("generate", *TOY, *CASE, *audio, "--sequence-parallel", "2", "--out", str(tmp_path / "two" / "v.mp4"))
    two = _cointeract(*two_args, ranks=2)
    assert two.returncode == 0, two.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["v.json", "v.mp4"]  # written once, by rank 0
    a, _ = load_video(tmp_path / "one" / "v.mp4")
    b, _ = load_video(tmp_path / "two" / "v.mp4")
    assert a.shape == b.shape and (a.int() - b.int()).abs().max().item() == 0  # bit-identical frames
    assert _sidecar(tmp_path / "one" / "v.json") == _sidecar(tmp_path / "two" / "v.json")


def test_an_input_error_on_every_rank_is_reported_once(tmp_path):
    args = ("generate", *TOY, *CASE, "--audio", str(tmp_path / "missing.wav"), "--sequence-parallel", "2")
    proc = _cointeract(*args, "--out", str(tmp_path / "v.mp4"), ranks=2)
    assert proc.returncode != 0
    assert proc.stderr.count("cointeract generate:") == 1, proc.stderr[-3000:]
    assert "missing.wav" in proc.stderr
    assert not list(tmp_path.glob("v.*"))


def test_sequence_parallel_needs_that_many_processes(tmp_path):
    proc = _cointeract("generate", *TOY, *CASE, "--audio", str(ASSETS / "speech.wav"), "--sequence-parallel", "2",
                       "--out", str(tmp_path / "v.mp4"))  # fmt: skip
    assert proc.returncode == 1
    assert "--sequence-parallel 2 must divide the number of processes" in proc.stderr


def test_batch_shares_rows_over_two_processes_and_skips_done_rows(tmp_path):
    rows = ["audio,person_image,prompt,product_image"]
    for name in ("a", "b", "c"):
        shutil.copy(ASSETS / "speech.wav", tmp_path / f"{name}.wav")
        rows.append(f"{name}.wav,{ASSETS / 'person.png'},a presenter,{ASSETS / 'product.png'}")
    (tmp_path / "rows.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    args = ("batch", str(tmp_path / "rows.csv"), "--out-dir", str(out), *TOY)
    first = _cointeract(*args, ranks=2)
    assert first.returncode == 0, first.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.mp4", "b.json", "b.mp4", "c.json", "c.mp4"]
    single = tmp_path / "single"
    alone = _cointeract("batch", str(tmp_path / "rows.csv"), "--out-dir", str(single), *TOY)
    assert alone.returncode == 0, alone.stderr[-2000:]
    for name in ("a", "b", "c"):  # each row as one process makes it
        assert (out / f"{name}.mp4").read_bytes() == (single / f"{name}.mp4").read_bytes()
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (out / "b.mp4").unlink()
    again = _cointeract(*args, ranks=2)
    assert again.returncode == 0, again.stderr[-2000:]
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert {k for k in after if after[k] != stamps.get(k)} == {"b.mp4", "b.json"}  # only the missing row again
