"""Open Hugging Face checkpoints: resolve a directory or hub id, read the config and the tensors lazily.

Weights are read one tensor at a time (safetensors by positioned reads, or `torch.load(mmap=True,
weights_only=True)`), so the loader in encoders/rules.py can copy each straight into a module built on the
meta device: loading needs the model's size plus one tensor, never twice the file. This module only reads;
which tensor fills which parameter is encoders/rules.py's job.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmsearch.errors import CheckpointError, NotFound

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def hub_cache_dirs() -> list[Path]:
    """Where the Hugging Face hub cache may live, in the order huggingface_hub itself looks."""
    dirs = []
    if os.environ.get("HF_HUB_CACHE"):
        dirs.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        dirs.append(Path(os.environ["HF_HOME"]) / "hub")
    xdg = os.environ.get("XDG_CACHE_HOME")
    dirs.append((Path(xdg) if xdg else Path.home() / ".cache") / "huggingface" / "hub")
    return dirs


def _cached_snapshot(repo_id: str) -> Path | None:
    for cache in hub_cache_dirs():
        repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
        snapshots = repo_dir / "snapshots"
        if not snapshots.is_dir():
            continue
        ref = repo_dir / "refs" / "main"
        if ref.is_file():
            snap = snapshots / ref.read_text().strip()
            if (snap / "config.json").is_file():
                return snap
        candidates = sorted((p for p in snapshots.iterdir() if (p / "config.json").is_file()),
                            key=lambda p: p.stat().st_mtime, reverse=True)
        if candidates:
            return candidates[0]
    return None


def resolve(path_or_id: str | os.PathLike) -> Path:
    """A local checkpoint directory for `path_or_id`: the directory itself, a hub snapshot already in the
    local cache, or (only when `huggingface_hub` is installed and the network is allowed) a fresh download."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path}: not a checkpoint directory (no config.json)")
        return path
    name = str(path_or_id)
    looks_like_hub_id = re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None and not path.exists()
    if not looks_like_hub_id:
        raise NotFound(f"checkpoint {name!r} not found: no such directory")
    snap = _cached_snapshot(name)
    if snap is not None:
        return snap
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    try:
        import huggingface_hub  # optional
    except ImportError:
        huggingface_hub = None
    if huggingface_hub is not None and not offline:
        try:
            return Path(huggingface_hub.snapshot_download(
                name, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "pytorch_model*.bin"]))
        except Exception as exc:  # network errors come in many types; the message below says what to do
            reason = f"download failed ({type(exc).__name__}: {exc})"
    else:
        reason = "offline (HF_HUB_OFFLINE is set)" if offline else "huggingface_hub is not installed"
    raise NotFound(
        f"checkpoint {name!r} is not in the local Hugging Face cache ({hub_cache_dirs()[-1]}) and {reason}; "
        f"download it where there is network (`huggingface-cli download {name}`) and pass its directory instead")


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


class _TensorFile:
    """One weights file, read lazily.

    safetensors are read with plain positioned reads straight into each tensor's buffer rather than
    through mmap: mapped pages stay resident until the file is closed, which would make loading need
    the file size on top of the model."""

    def __init__(self, path: Path):
        self.path = path
        self._header: dict | None = None
        self._data_start = 0
        self._state = None

    def names(self) -> list[str]:
        if self.path.suffix == ".safetensors":
            return [k for k in self._safe_header() if k != "__metadata__"]
        return list(self._torch().keys())

    def read(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        if self.path.suffix != ".safetensors":
            tensor = self._torch()[name]
            return tensor if dtype is None else tensor.to(dtype)
        entry = self._safe_header()[name]
        try:
            stored = _SAFETENSORS_DTYPES[entry["dtype"]]
            begin, end = entry["data_offsets"]
            shape = tuple(entry["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{self.path}: bad header entry for tensor {name!r} ({exc})") from exc
        out = torch.empty(shape, dtype=stored)
        nbytes = out.numel() * out.element_size()
        if end - begin != nbytes:
            raise CheckpointError(f"{self.path}: tensor {name!r} holds {end - begin} bytes, "
                                  f"its shape {shape} and dtype need {nbytes}")
        if nbytes:
            view = memoryview(out.view(-1).view(torch.uint8).numpy())
            with open(self.path, "rb") as f:
                f.seek(self._data_start + begin)
                if f.readinto(view) != nbytes:
                    raise CheckpointError(f"{self.path}: file ends inside tensor {name!r} (truncated download?)")
        return out if dtype is None or dtype == stored else out.to(dtype)

    def _safe_header(self) -> dict:
        if self._header is None:
            try:
                with open(self.path, "rb") as f:
                    size = int.from_bytes(f.read(8), "little")
                    if size <= 0 or size > 100 * 1024 * 1024:
                        raise ValueError(f"header length {size} is implausible")
                    self._header = json.loads(f.read(size))
                self._data_start = 8 + size
            except (OSError, ValueError) as exc:
                raise CheckpointError(f"{self.path}: unreadable safetensors file ({exc})") from exc
        return self._header

    def _torch(self):
        if self._state is None:
            try:
                self._state = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:
                raise CheckpointError(f"{self.path}: unreadable PyTorch weights file ({exc})") from exc
            if not isinstance(self._state, dict):
                raise CheckpointError(f"{self.path}: expected a state dict, found {type(self._state).__name__}")
        return self._state

    def close(self):
        self._header = None
        self._state = None


@dataclass
class Checkpoint:
    """A resolved checkpoint directory: its config and a lazy view of its tensors."""

    dir: Path
    name: str
    config: dict
    files: list[Path]
    _index: dict[str, _TensorFile] = field(default_factory=dict, repr=False)

    @property
    def model_type(self) -> str:
        return self.config.get("model_type", "")

    def tensor_names(self) -> list[str]:
        return list(self._tensor_index())

    def file_of(self, name: str) -> Path:
        return self._tensor_index()[name].path

    def read(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        index = self._tensor_index()
        if name not in index:
            raise CheckpointError(f"{self.describe_files()}: tensor {name!r} is missing")
        return index[name].read(name, dtype)

    def describe_files(self) -> str:
        names = [f.name for f in self.files]
        return str(self.dir / names[0]) if len(names) == 1 else f"{self.dir}/{{{', '.join(names)}}}"

    def json_file(self, filename: str) -> dict | None:
        path = self.dir / filename
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: invalid JSON ({exc})") from exc

    def _tensor_index(self) -> dict[str, _TensorFile]:
        if not self._index:
            for path in self.files:
                handle = _TensorFile(path)
                for name in handle.names():
                    self._index[name] = handle
        return self._index

    def close(self):
        for handle in set(self._index.values()):
            handle.close()
        self._index.clear()

    @property
    def digest(self) -> str:
        """A fingerprint of the weights: file sizes, safetensors headers and 16 sampled 64 KiB blocks per
        file. Reading every byte of a multi-GB checkpoint at each start would be too slow; random or trained
        weights differ in every block, so sampling tells two checkpoints apart."""
        h = hashlib.sha256()
        block = 1 << 16
        for path in self.files:
            size = path.stat().st_size
            h.update(f"{path.name}:{size}".encode())
            with open(path, "rb") as f:
                if path.suffix == ".safetensors":
                    header_len = int.from_bytes(f.read(8), "little")
                    h.update(f.read(min(header_len, 1 << 24)))
                for i in range(16):
                    f.seek(max(0, (size - block) * i // 15))
                    h.update(f.read(block))
        return h.hexdigest()[:32]


def _weight_files(directory: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index_path = directory / index_name
        if index_path.is_file():
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as exc:
                raise CheckpointError(f"{index_path}: not a shard index ({exc})") from exc
            shards = sorted(set(weight_map.values()))
            missing = [s for s in shards if not (directory / s).is_file()]
            if missing:
                raise CheckpointError(f"{index_path}: shard file(s) missing: {', '.join(missing)}")
            return [directory / s for s in shards]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (directory / single).is_file():
            return [directory / single]
    raise CheckpointError(f"{directory}: no weights found (looked for {', '.join(WEIGHT_FILES)})")


def open_checkpoint(path_or_id: str | os.PathLike) -> Checkpoint:
    directory = resolve(path_or_id)
    config_path = directory / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_path}: invalid JSON ({exc})") from exc
    return Checkpoint(dir=directory, name=str(path_or_id), config=config, files=_weight_files(directory))
