"""Reading checkpoints one tensor at a time.

`open_checkpoint(source)` accepts a Hugging Face-style directory (single `model.safetensors`, sharded with
`model.safetensors.index.json`, or `pytorch_model.bin`), a single `.safetensors` / `.bin` / `.pt` file, or
an in-memory `{name: tensor}` dict, or `base+adapter` (a LoRA adapter folded in, `alloyml.merging.lora`).
Opening reads only headers; `read(name)` returns one fresh tensor.

Safetensors are read with plain `readinto` rather than `safetensors.safe_open`: safe_open memory-maps
the file, and every page it touches stays resident (and counts in RSS) until the file is closed, so
streaming three 0.5 GB checkpoints through it holds 1.5 GB. Reading each tensor into its own buffer
keeps resident memory to the tensors currently in use.

PyTorch `.bin` / `.pt` files are never unpickled beyond tensors (`torch.load(weights_only=True)`) and are
memory-mapped, not read whole (`mmap=True`). A mapping's touched pages stay resident while it lives, so
each file's mapping is dropped after `TorchCheckpoint.RELEASE_BYTES` have been read through it and reopened
on the next read: peak memory stays flat however large the checkpoint (reopening costs only the small
pickled index, not the data). Legacy (pre-zip) pickles cannot be mapped and are refused with a hint.
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

    # True where `read_rows` reads only the rows asked for; the engine merges large tensors in row blocks
    # only from such sources (elsewhere each block would cost a whole-tensor read).
    row_reads = False

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows `start:stop` (along the first dimension) of one tensor, as a fresh tensor."""
        return self.read(name)[start:stop].clone()

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

    row_reads = True

    def read(self, name: str) -> torch.Tensor:
        info = self.infos[name]
        return self._read_into(name, torch.empty(info.shape, dtype=info.dtype), self._where[name][1])

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        begin, info = self._where[name][1], self.infos[name]
        if not info.shape or not 0 <= start <= stop <= info.shape[0]:
            raise InvalidInputError(f"{self.label}: tensor {name!r} {info.shape} has no rows {start}:{stop}")
        rows = torch.empty((stop - start, *info.shape[1:]), dtype=info.dtype)
        row_bytes = info.nbytes // info.shape[0] if info.shape[0] else 0
        return self._read_into(name, rows, begin + start * row_bytes)

    def _read_into(self, name: str, tensor: torch.Tensor, offset: int) -> torch.Tensor:
        """Fill `tensor` with the bytes at `offset` of `name`'s file."""
        path = self._where[name][0]
        size = tensor.numel() * tensor.element_size()
        if size:
            handle = self._handles.get(path)
            if handle is None:
                handle = self._handles[path] = open(path, "rb", buffering=0)  # noqa: SIM115
            buffer = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
            done = 0
            while done < size:  # Linux returns at most ~2 GiB per call
                got = os.preadv(handle.fileno(), [buffer[done:]], offset + done)
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
    """Each tensor's info and absolute byte range, checked against the file's size so that a truncated or
    corrupt file is refused when the checkpoint is opened, not halfway through a merge."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise InvalidInputError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (length,) = struct.unpack("<Q", raw)
        if length > size - 8:
            raise InvalidInputError(f"{path}: not a safetensors file (header length {length} exceeds the file)")
        try:
            header = json.loads(handle.read(length).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InvalidInputError(f"{path}: corrupt safetensors header ({err})") from None
    if not isinstance(header, dict):
        raise InvalidInputError(f"{path}: corrupt safetensors header (a JSON {type(header).__name__}, not an object)")
    data_start = 8 + length
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            if not all(isinstance(v, int) and v >= 0 for v in (*shape, begin, end)):
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise InvalidInputError(
                f"{path}: corrupt safetensors header: tensor {name!r} needs dtype, shape and data_offsets "
                f"(non-negative integers), got {entry!r}"
            ) from None
        if dtype not in SAFETENSORS_DTYPES:
            raise InvalidInputError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        info = TensorInfo(shape, SAFETENSORS_DTYPES[dtype])
        if end - begin != info.nbytes:
            raise InvalidInputError(f"{path}: tensor {name!r} byte range does not match its shape")
        if data_start + end > size:
            raise InvalidInputError(
                f"{path}: truncated: tensor {name!r} ends at byte {data_start + end} of a {size}-byte file"
            )
        out[name] = (info, data_start + begin, data_start + end)
    return out


class TorchCheckpoint(Checkpoint):
    """PyTorch zip-format weight files (one or many shards), memory-mapped per file and read one tensor at a
    time. Only headers (the pickled tensor index) are kept between reads."""

    RELEASE_BYTES = 64 * 1024**2  # read through the open mappings before they are dropped (bounds their pages)

    def __init__(self, files: list[Path], label: str, directory: Path | None):
        self.label, self.directory = label, directory
        self.infos: dict[str, TensorInfo] = {}
        self._file_of: dict[str, Path] = {}
        self._mapped: dict[Path, dict[str, torch.Tensor]] = {}
        self._read_since_release = 0
        for path in files:
            state = _torch_state_dict(path)
            for name, tensor in state.items():
                self.infos[name] = TensorInfo(tuple(tensor.shape), tensor.dtype)
                self._file_of[name] = path
            del state  # unmaps the file: opening touched no data pages

    def read(self, name: str) -> torch.Tensor:
        path = self._file_of[name]
        state = self._mapped.get(path)
        if state is None:
            state = self._mapped[path] = _torch_state_dict(path)
        tensor = state[name].detach().clone(memory_format=torch.contiguous_format)
        # One budget for all of this checkpoint's mappings: reads that hop between shards hold no more.
        self._read_since_release += tensor.nbytes
        if self._read_since_release >= self.RELEASE_BYTES:
            self.close()
        return tensor

    def close(self) -> None:
        self._mapped.clear()
        self._read_since_release = 0


def _torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    # weights_only refuses arbitrary pickled objects; mmap avoids reading the whole file up front.
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises RuntimeError, pickle's UnpicklingError, EOFError, ... for bad files
        hint = ""
        if "zipfile" in str(err) or "mmap" in str(err):
            hint = (" It is a legacy (pre-zip) pickle, which cannot be memory-mapped: convert it to safetensors "
                    "(safetensors.torch.save_file) or re-save it with torch.save, then merge that.")
        raise InvalidInputError(
            f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err}).{hint}"
        ) from None
    if not isinstance(state, Mapping):
        raise InvalidInputError(f"{path}: expected a state dict, found {type(state).__name__}")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise InvalidInputError(
            f"{path}: expected a flat {{name: tensor}} state dict; entries {bad[:5]} are not tensors"
        )
    return dict(state)


def _indexed_files(index: Path) -> list[Path]:
    """The shard files a sharded checkpoint's index names, each checked to exist."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = set(weight_map.values())
    except json.JSONDecodeError as err:
        raise InvalidInputError(f"{index}: not valid JSON ({err})") from None
    except (KeyError, TypeError, AttributeError):
        raise InvalidInputError(f"{index}: expected an object with `weight_map` (tensor name -> shard file)") from None
    if not all(isinstance(f, str) for f in shards):
        raise InvalidInputError(f"{index}: `weight_map` values must be shard file names")
    missing = sorted(f for f in shards if not (index.parent / f).is_file())
    if missing:
        raise InvalidInputError(f"{index} names shard files that do not exist: {missing[:5]}")
    return sorted(index.parent / f for f in shards)


def _weight_files(directory: Path) -> tuple[str, list[Path]]:
    for index_name in WEIGHT_INDEXES:
        index = directory / index_name
        if index.exists():
            return ("safetensors" if index_name.startswith("model.safetensors") else "torch"), _indexed_files(index)
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
    from alloyml.merging.lora import open_lora_checkpoint, split_lora_path

    base, adapter = split_lora_path(source)
    if adapter is not None:  # mergekit's `base+adapter`: the base with a LoRA adapter folded in
        return open_lora_checkpoint(base, adapter, label or os.fspath(source))
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
    return TorchCheckpoint(files, label, directory)
