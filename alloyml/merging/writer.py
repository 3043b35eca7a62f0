"""Writing a checkpoint in safetensors shards while tensors are still being produced.

Every output name, shape and dtype is known before merging starts, so each shard's header (which lists
byte offsets) is written up front and tensors are appended as they arrive: nothing waits in memory for
its shard to fill. Shards follow Hugging Face naming (`model.safetensors`, or
`model-00001-of-00003.safetensors` plus `model.safetensors.index.json`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch

from alloyml.errors import InvalidInputError
from alloyml.merging.checkpoints import SAFETENSORS_DTYPES, TensorInfo

_DTYPE_CODES = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}


def plan_shards(infos: dict[str, TensorInfo], max_shard_bytes: int) -> list[list[str]]:
    """Split tensor names (in the given order) into shards of at most `max_shard_bytes` each."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, info in infos.items():
        if shards[-1] and size + info.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += info.nbytes
    return shards


class ShardedWriter:
    """Append tensors, in the order of `infos`, to pre-planned safetensors shards in `directory`."""

    def __init__(self, directory: Path, infos: dict[str, TensorInfo], max_shard_bytes: int):
        self.directory, self.infos = Path(directory), infos
        self.shards = plan_shards(infos, max_shard_bytes)
        count = len(self.shards)
        self.files = (
            ["model.safetensors"]
            if count == 1
            else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        )
        self._order = [name for shard in self.shards for name in shard]
        self._shard_of = {name: i for i, shard in enumerate(self.shards) for name in shard}
        self._next = 0
        self._handle = None
        self._open_shard = -1

    def write(self, name: str, tensor: torch.Tensor) -> None:
        self.write_blocks(name, [tensor], whole=True)

    def write_blocks(self, name: str, blocks: Iterable[torch.Tensor], whole: bool = False) -> None:
        """Write tensor `name` from its row blocks, in order (one block: the whole tensor)."""
        expected = self._order[self._next] if self._next < len(self._order) else None
        if name != expected:
            raise InvalidInputError(f"writer expected tensor {expected!r} next, got {name!r}")
        info = self.infos[name]
        shard = self._shard_of[name]
        if shard != self._open_shard:
            self._start_shard(shard)
        rows = 0
        for tensor in blocks:
            if whole:
                ok = tuple(tensor.shape) == info.shape
            else:
                ok = info.shape and tuple(tensor.shape[1:]) == info.shape[1:] and rows + len(tensor) <= info.shape[0]
            if not ok or tensor.dtype != info.dtype:
                raise InvalidInputError(
                    f"tensor {name!r}: planned {info.shape} {info.dtype}, got {tuple(tensor.shape)} {tensor.dtype}"
                    + ("" if whole else f" after {rows} rows")
                )
            rows += len(tensor) if tensor.dim() else 1
            if tensor.numel():
                self._handle.write(memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy()))
        if not whole and rows != info.shape[0]:
            raise InvalidInputError(f"tensor {name!r}: planned {info.shape[0]} rows, got {rows}")
        self._next += 1

    def _start_shard(self, shard: int) -> None:
        if self._handle is not None:
            self._handle.close()
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name in self.shards[shard]:
            info = self.infos[name]
            header[name] = {
                "dtype": _DTYPE_CODES[info.dtype],
                "shape": list(info.shape),
                "data_offsets": [offset, offset + info.nbytes],
            }
            offset += info.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the format pads the header so tensor data is 8-byte aligned
        self._handle = open(self.directory / self.files[shard], "wb")  # noqa: SIM115
        self._handle.write(len(raw).to_bytes(8, "little") + raw)
        self._open_shard = shard

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self._next != len(self._order):
            raise InvalidInputError(f"writer closed after {self._next} of {len(self._order)} tensors")
        if len(self.files) > 1:
            weight_map = {name: self.files[self._shard_of[name]] for name in self._order}
            total = sum(info.nbytes for info in self.infos.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (self.directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
