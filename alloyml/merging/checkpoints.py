"""Reading checkpoints one tensor at a time.

`open_checkpoint(source)` accepts a Hugging Face-style directory (single `model.safetensors`, sharded with
`model.safetensors.index.json`, or `pytorch_model.bin`), a single `.safetensors` / `.bin` / `.pt` file, or
an in-memory `{name: tensor}` dict. Opening reads only headers; `read(name)` returns one fresh tensor.

Safetensors are read with plain `readinto` rather than `safetensors.safe_open`: safe_open memory-maps
the file, and every page it touches stays resident (and counts in RSS) until the file is closed, so
streaming three 0.5 GB checkpoints through it holds 1.5 GB. Reading each tensor into its own buffer
keeps resident memory to the tensors currently in use.
"""

from __future__ import annotations

import json
import os
import struct
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from alloyml.errors import InvalidInputError, NotFoundError

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
}  # fmt: skip
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


class Checkpoint(ABC):
    """Tensor names, shapes and dtypes of a checkpoint, and one-tensor-at-a-time reads."""

    label: str
    directory: Path | None = None  # where config/tokenizer files live, if on disk
    infos: dict[str, TensorInfo]

    @abstractmethod
    def read(self, name: str) -> torch.Tensor:
        """One tensor, read from the source."""

    def close(self) -> None:  # noqa: B027 (a no-op by default: in-memory sources hold no files)
        """Release open files; reading again reopens them."""


class SafetensorsCheckpoint(Checkpoint):
    def __init__(self, files: list[Path], label: str, directory: Path | None):
        self.label, self.directory = label, directory
        self.infos: dict[str, TensorInfo] = {}
        self._where: dict[str, tuple[Path, int, int]] = {}
        self._handles: dict[Path, object] = {}
        for path in files:
            for name, (info, start, end) in _safetensors_header(path).items():
                self.infos[name] = info
                self._where[name] = (path, start, end)

    def read(self, name: str) -> torch.Tensor:
        path, start, end = self._where[name]
        info = self.infos[name]
        tensor = torch.empty(info.shape, dtype=info.dtype)
        if end > start:
            handle = self._handles.get(path)
            if handle is None:
                handle = self._handles[path] = open(path, "rb", buffering=0)  # noqa: SIM115
            buffer = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
            done = 0
            while done < end - start:  # Linux returns at most ~2 GiB per call
                got = os.preadv(handle.fileno(), [buffer[done:]], start + done)
                if got == 0:
                    raise InvalidInputError(f"{path}: tensor {name!r} is truncated")
                done += got
        return tensor

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()


class StateDictCheckpoint(Checkpoint):
    def __init__(self, state: Mapping[str, torch.Tensor], label: str, directory: Path | None = None):
        self.label, self.directory, self._state = label, directory, state
        bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            raise InvalidInputError(
                f"{label}: expected a flat {{name: tensor}} state dict; entries {bad[:5]} are not tensors"
            )
        self.infos = {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in state.items()}

    def read(self, name: str) -> torch.Tensor:
        # A copy, so merge methods may work in place without touching the caller's tensors.
        return self._state[name].detach().to("cpu", copy=True)


def _safetensors_header(path: Path) -> dict[str, tuple[TensorInfo, int, int]]:
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise InvalidInputError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (length,) = struct.unpack("<Q", raw)
        if length > os.path.getsize(path):
            raise InvalidInputError(f"{path}: not a safetensors file (header length {length} too large)")
        header = json.loads(handle.read(length))
    data_start = 8 + length
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] not in SAFETENSORS_DTYPES:
            raise InvalidInputError(f"{path}: tensor {name!r} has unsupported dtype {entry['dtype']}")
        begin, end = entry["data_offsets"]
        info = TensorInfo(tuple(entry["shape"]), SAFETENSORS_DTYPES[entry["dtype"]])
        if end - begin != info.nbytes:
            raise InvalidInputError(f"{path}: tensor {name!r} byte range does not match its shape")
        out[name] = (info, data_start + begin, data_start + end)
    return out


def _torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    # weights_only refuses arbitrary pickled objects; mmap avoids reading the whole file up front.
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(state, Mapping):
        raise InvalidInputError(f"{path}: expected a state dict, found {type(state).__name__}")
    return dict(state)


def _weight_files(directory: Path) -> tuple[str, list[Path]]:
    for index_name in WEIGHT_INDEXES:
        index = directory / index_name
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted({directory / f for f in weight_map.values()})
            return ("safetensors" if index_name.startswith("model.safetensors") else "torch"), files
    for kind, pattern in (("safetensors", "*.safetensors"), ("torch", "*.bin"), ("torch", "*.pt")):
        files = sorted(directory.glob(pattern))
        if files:
            return kind, files
    raise NotFoundError(
        f"{directory}: no weights found (expected model.safetensors, a sharded index, *.safetensors, "
        f"pytorch_model.bin or *.pt)"
    )


def open_checkpoint(source: str | os.PathLike | Mapping[str, torch.Tensor], label: str | None = None) -> Checkpoint:
    """Open a checkpoint directory, weight file or in-memory state dict (headers only)."""
    if isinstance(source, Mapping):
        return StateDictCheckpoint(source, label or "<state dict>")
    path = Path(source)
    label = label or str(path)
    if not path.exists():
        raise NotFoundError(f"checkpoint {label!r}: {path} does not exist")
    if path.is_dir():
        kind, files = _weight_files(path)
        directory = path
    elif path.suffix in WEIGHT_SUFFIXES:
        kind = "safetensors" if path.suffix == ".safetensors" else "torch"
        files, directory = [path], None
    else:
        raise InvalidInputError(f"checkpoint {label!r}: expected a directory or one of {WEIGHT_SUFFIXES}")
    if kind == "safetensors":
        return SafetensorsCheckpoint(files, label, directory)
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(_torch_state_dict(file))
    return StateDictCheckpoint(state, label, directory)
