"""Safetensors files in any layout: headers, lazy per-tensor reads, atomic writes.

Reads the format itself (header + one `readinto` per tensor, no mmap), so a loader that casts and assigns
each tensor as it is read holds about one copy of the weights. Layouts: a single file (keys optionally
prefixed `model.diffusion_model.` / `diffusion_model.` / `pipe.dit.`, stripped), a sharded set given by its
`*.safetensors.index.json`, any one shard, or their folder. Key names and model families are
`checkpoint.py`'s business.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

log = logging.getLogger(__name__)

__all__ = [
    "Checkpoint",
    "TensorEntry",
    "LazyStateDict",
    "open_checkpoint",
    "read_state_dict",
    "iter_state_dict",
    "write_safetensors",
    "PREFIXES",
    "PathLike",
]

PathLike = str | os.PathLike
DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_CODES = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 100_000_000  # the safetensors limit
# Prefixes of ComfyUI single files / DiffSynth trainers; the first one any key carries is stripped.
PREFIXES = ("model.diffusion_model.", "diffusion_model.", "pipe.dit.")
PICKLES = (".pth", ".pt", ".bin", ".ckpt", ".pkl")


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives: absolute byte offset and size inside `file`."""

    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """The headers of one checkpoint (single file or sharded set); keys are already un-prefixed."""

    name: str
    format: Literal["single", "sharded"]
    files: tuple[Path, ...]
    entries: dict[str, TensorEntry]
    metadata: dict[str, str]
    prefix: str = ""

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: e.shape for k, e in self.entries.items()}

    def read(self, key: str, dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        """One tensor, floating ones cast to `dtype` (None: as stored)."""
        return _read_entry(self.entries[key], dtype, device)

    def iter(
        self, keys: Sequence[str] | None = None, dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """(key, tensor) one at a time, in file order (sequential reads)."""
        keys = list(self.entries) if keys is None else list(keys)
        keys.sort(key=lambda k: (str(self.entries[k].file), self.entries[k].offset))
        for key in keys:
            yield key, self.read(key, dtype, device)


class LazyStateDict(Mapping):
    """A read-on-access state dict over a subset of a checkpoint's keys (for merging LoRA pair by pair)."""

    def __init__(self, ckpt: Checkpoint, keys: Sequence[str] | None = None) -> None:
        self.ckpt, self._keys = ckpt, list(ckpt.entries if keys is None else keys)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self.ckpt.entries:
            raise KeyError(key)
        return self.ckpt.read(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: self.ckpt.entries[k].shape for k in self._keys}


def _read_entry(entry: TensorEntry, dtype: torch.dtype | None, device: torch.device | str) -> torch.Tensor:
    raw = torch.empty(entry.nbytes, dtype=torch.uint8)
    with open(entry.file, "rb") as f:
        f.seek(entry.offset)
        view, done = memoryview(raw.numpy()), 0
        while done < entry.nbytes:
            n = f.readinto(view[done:])
            if not n:
                raise ValueError(f"{entry.file.name} ended while reading a tensor: it is truncated, download it again")
            done += n
    tensor = raw.view(entry.dtype).reshape(entry.shape)
    if dtype is not None and tensor.is_floating_point():
        tensor = tensor.to(dtype)
    return tensor.to(device)


def _read_header(path: Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """Parse a safetensors header and check that the file holds every byte it announces."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 2 <= n <= min(MAX_HEADER, size - 8):
            raise ValueError(
                f"{path.name} is not a safetensors file (bad header length); "
                "expected a .safetensors checkpoint, or the file is truncated"
            )
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path.name} is not a safetensors file (header is not JSON: {err})") from err
    if not isinstance(header, dict):
        raise ValueError(f"{path.name} is not a safetensors file (header is not a JSON object)")
    metadata = {str(k): str(v) for k, v in (header.pop("__metadata__", None) or {}).items()}
    entries, end = {}, 0
    for key, info in header.items():
        try:
            dtype, shape = DTYPES[info["dtype"]], tuple(int(s) for s in info["shape"])
            begin, stop = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path.name}: malformed header entry for '{key}' ({err!r})") from err
        numel = 1
        for s in shape:
            numel *= s
        if stop - begin != numel * dtype.itemsize or begin < 0:
            raise ValueError(f"{path.name}: header entry '{key}' has {stop - begin} bytes for shape {list(shape)}")
        entries[key] = TensorEntry(path, dtype, shape, 8 + n + begin, stop - begin)
        end = max(end, stop)
    if 8 + n + end > size:
        raise ValueError(
            f"{path.name} is truncated: the header announces {8 + n + end} bytes but the file has "
            f"{size}; download it again"
        )
    return entries, metadata


def _read_index(index: Path) -> tuple[list[Path], dict[str, str], dict[str, str]]:
    """(shard files, weight_map key -> file name, metadata) of a `*.safetensors.index.json`."""
    try:
        raw = json.loads(index.read_text())
        weight_map = dict(raw["weight_map"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{index.name} is not a safetensors index (need a JSON 'weight_map'): {err!r}") from err
    names = sorted(set(weight_map.values()))
    missing = [name for name in names if not (index.parent / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{index.name} lists {len(names)} shards but {len(missing)} are missing from "
            f"{index.parent}: {', '.join(missing)}; download them next to the index"
        )
    meta = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (raw.get("metadata") or {}).items()}
    return [index.parent / name for name in names], weight_map, meta


def _sibling_index(shard: Path) -> Path | None:
    """The `*.index.json` next to `shard` whose weight_map lists it."""
    for index in sorted(shard.parent.glob("*.index.json")):
        try:
            if shard.name in set(json.loads(index.read_text()).get("weight_map", {}).values()):
                return index
        except (OSError, ValueError, AttributeError):
            continue
    return None


def _resolve(path: Path) -> tuple[Path | None, Path | None]:
    """(index, single file): what the user's path points at."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_dir():
        indexes = sorted(path.glob("*.safetensors.index.json"))
        preferred = [i for i in indexes if i.name == "diffusion_pytorch_model.safetensors.index.json"]
        if len(indexes) == 1 or preferred:
            return (preferred or indexes)[0], None
        files = sorted(path.glob("*.safetensors"))
        if len(files) == 1 and not indexes:
            return None, files[0]
        raise ValueError(
            f"{path} is a folder holding {len(indexes)} index files and {len(files)} .safetensors files; "
            "pass the index.json of a sharded checkpoint, one of its shards, or the single file you mean"
        )
    if path.name.endswith(".json"):
        return path, None
    if path.suffix.lower() in PICKLES:
        raise ValueError(
            f"{path.name} is a pickle checkpoint ({path.suffix}); DiT weights are only read from "
            ".safetensors (pickles can run code when loaded). Download the .safetensors release or "
            "convert it: safetensors.torch.save_file(torch.load(f, weights_only=True), 'x.safetensors')"
        )
    if path.suffix.lower() == ".gguf":
        raise ValueError(f"{path.name} is GGUF; this loader reads .safetensors only")
    index = _sibling_index(path)
    if index is None and re.search(r"-\d+-of-\d+\.safetensors$", path.name):
        raise FileNotFoundError(
            f"{path.name} is one shard of a sharded checkpoint, but no *.safetensors.index.json "
            f"listing it is in {path.parent}; put the index (and all shards) beside it"
        )
    return index, None if index else path


def _strip_prefix(entries: dict[str, TensorEntry], name: str) -> tuple[dict[str, TensorEntry], str]:
    for prefix in PREFIXES:
        if any(k.startswith(prefix) for k in entries):
            kept = {k[len(prefix) :]: e for k, e in entries.items() if k.startswith(prefix)}
            if len(kept) < len(entries):
                log.info("%s: ignored %d keys outside '%s' (other components)", name, len(entries) - len(kept), prefix)
            return kept, prefix
    return entries, ""


def open_checkpoint(paths: PathLike | Sequence[PathLike], strip_prefix: bool = True) -> Checkpoint:
    """Read the headers of a checkpoint given as a file, a shard, an index.json, a folder, or several of them.

    `strip_prefix=False` keeps every key as stored (LoRA files: their prefixes say what the keys are).
    """
    paths = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    if not paths:
        raise ValueError("no checkpoint path given")
    files: dict[Path, None] = {}
    weight_map: dict[str, Path] = {}
    metadata: dict[str, str] = {}
    sharded = len(paths) > 1
    for path in paths:
        index, single = _resolve(path)
        if index is not None:
            shard_files, wmap, meta = _read_index(index)
            files.update(dict.fromkeys(shard_files))
            weight_map.update({k: index.parent / v for k, v in wmap.items()})
            metadata.update(meta)
            sharded = True
        else:
            files[single] = None
    entries: dict[str, TensorEntry] = {}
    for file in files:
        found, meta = _read_header(file)
        metadata.update(meta)
        dup = sorted(set(found) & set(entries))
        if dup:
            raise ValueError(
                f"{file.name} repeats {len(dup)} keys of another file, e.g. {dup[0]}; pass one checkpoint at a time"
            )
        entries.update(found)
    absent = [k for k, f in weight_map.items() if k not in entries or entries[k].file != f]
    if absent:
        raise ValueError(
            f"the index maps {len(absent)} keys to shards that do not hold them, e.g. {absent[0]} -> "
            f"{weight_map[absent[0]].name}; the download is incomplete or mixed, fetch it again"
        )
    name = ", ".join(p.name for p in paths)
    entries, prefix = _strip_prefix(entries, name) if strip_prefix else (entries, "")
    return Checkpoint(name, "sharded" if sharded else "single", tuple(files), entries, metadata, prefix)


def read_state_dict(
    paths: PathLike | Sequence[PathLike], device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict with un-prefixed keys, metadata) of a checkpoint in any supported layout."""
    ckpt = open_checkpoint(paths)
    return dict(ckpt.iter(dtype=dtype, device=device)), ckpt.metadata


def iter_state_dict(
    paths: PathLike | Sequence[PathLike], device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, tensor) one at a time: the lazy variant of `read_state_dict`."""
    yield from open_checkpoint(paths).iter(dtype=dtype, device=device)


def write_safetensors(
    path: PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write a safetensors file atomically (temp file in the same folder, fsync, rename), one tensor at a time."""
    path = Path(path)
    header: dict[str, dict] = {"__metadata__": dict(metadata)} if metadata else {}
    bad = [k for k, v in header.get("__metadata__", {}).items() if not isinstance(v, str)]
    if bad:
        raise TypeError(f"safetensors metadata values must be str; not for {bad}")
    offset = 0
    for key in sorted(tensors):
        t = tensors[key]
        nbytes = t.numel() * t.element_size()
        header[key] = {"dtype": DTYPE_CODES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(blob)) + blob)
            for key in sorted(tensors):
                t = tensors[key].detach().to("cpu").contiguous().reshape(-1)
                f.write(t.view(torch.uint8).numpy().data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
