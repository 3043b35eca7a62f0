"""A base model with a LoRA adapter folded in, read like any checkpoint: mergekit's `base+adapter` syntax.

`open_checkpoint("path/base+path/adapter")` gives the base's tensors with each adapted weight replaced by
W + scale · B @ A (computed in float32 or wider, returned in W's dtype), one tensor at a time; nothing full-rank is
held beyond the tensor being read. The adapter is a PEFT folder: `adapter_config.json` (`r`, `lora_alpha`,
`use_rslora`, `fan_in_fan_out`, `rank_pattern`, `alpha_pattern`) and `adapter_model.safetensors` (or
`.bin`) with `<module>.lora_A.weight` (r × in) and `<module>.lora_B.weight` (out × r), embeddings as
`<module>.lora_embedding_A` / `lora_embedding_B`. scale = alpha / r (alpha / √r with rsLoRA). Other adapter
tensors (PEFT's `modules_to_save`, saved embedding layers) replace the base's tensor of that name. DoRA
adapters are refused.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from alloyml.errors import InvalidInputError, NotFoundError
from alloyml.merging.checkpoints import Checkpoint, open_checkpoint

ADAPTER_CONFIG = "adapter_config.json"
_PEFT_PREFIX = "base_model.model."
_PARTS = {"lora_A.weight": ("A", False), "lora_B.weight": ("B", False),
          "lora_embedding_A": ("A", True), "lora_embedding_B": ("B", True)}  # fmt: skip


def split_lora_path(source: str | os.PathLike) -> tuple[str, str | None]:
    """(base, adapter) for `base+adapter`, (source, None) otherwise. A path that exists as given is never
    split; otherwise the split is at the first `+` whose two sides both exist (mergekit splits at a `+`)."""
    text = os.fspath(source)
    if "+" not in text or Path(text).exists():
        return text, None
    cuts = [i for i, ch in enumerate(text) if ch == "+"]
    for i in cuts:
        if Path(text[:i]).exists() and Path(text[i + 1 :]).exists():
            return text[:i], text[i + 1 :]
    return text[: cuts[0]], text[cuts[0] + 1 :]


@dataclass(frozen=True)
class _Update:
    a: str  # adapter tensor names
    b: str
    scale: float
    transpose: bool  # the delta is (B @ A)ᵀ: embeddings, and fan_in_fan_out (Conv1D) layers


def _pattern_value(pattern: dict, module: str, default):
    """PEFT's per-module override: the key equal to the module name or to a dotted suffix of it."""
    for key, value in pattern.items():
        if module == key or module.endswith("." + key):
            return value
    return default


class LoraCheckpoint(Checkpoint):
    """The base checkpoint with the adapter's low-rank updates added as each tensor is read."""

    def __init__(self, base: Checkpoint, adapter_dir: Path, label: str):
        self.label, self.directory, self.base = label, base.directory, base
        self.infos = dict(base.infos)
        config = _adapter_config(adapter_dir)
        self.adapter = open_checkpoint(adapter_dir / _adapter_weights(adapter_dir), label=f"{adapter_dir} (adapter)")
        self.updates: dict[str, _Update] = {}
        self.replaced: dict[str, str] = {}  # base tensor -> adapter tensor that replaces it
        pieces: dict[str, dict[str, str]] = {}
        for name in self.adapter.infos:
            # PEFT saves a targeted embedding's own weight as `<module>.base_layer.weight` (save_embedding_layers).
            module = name.removeprefix(_PEFT_PREFIX).replace(".base_layer.", ".")
            part = next((p for p in _PARTS if module.endswith("." + p)), None)
            if part is None:
                target = self._target(module, name)
                if self.adapter.infos[name].shape != self.infos[target].shape:
                    raise InvalidInputError(f"adapter tensor {name!r} has shape {self.adapter.infos[name].shape}, "
                                            f"the base's {target!r} {self.infos[target].shape} (resized vocabularies "
                                            "are not supported)")
                self.replaced[target] = name
                continue
            module = module[: -len(part) - 1]
            letter, embedding = _PARTS[part]
            pieces.setdefault(module, {"embedding": str(embedding)})[letter] = name
        for module, found in pieces.items():
            if "A" not in found or "B" not in found:
                raise InvalidInputError(f"adapter {adapter_dir}: module {module!r} has lora_A or lora_B but not both")
            a, b = self.adapter.infos[found["A"]], self.adapter.infos[found["B"]]
            rank = a.shape[0]
            if len(a.shape) != 2 or len(b.shape) != 2 or b.shape[1] != rank:
                raise InvalidInputError(f"adapter {adapter_dir}: module {module!r} has lora_A {a.shape} and "
                                        f"lora_B {b.shape}; expected (r, in) and (out, r)")
            embedding = found["embedding"] == "True"
            target = self._target(f"{module}.weight", found["A"])
            delta_shape = (b.shape[0], a.shape[1])
            transpose = embedding or bool(config.get("fan_in_fan_out"))
            if (delta_shape[::-1] if transpose else delta_shape) != self.infos[target].shape:
                raise InvalidInputError(f"adapter {adapter_dir}: the update of {target!r} has shape {delta_shape}"
                                        f"{' (transposed)' if transpose else ''}, the base tensor "
                                        f"{self.infos[target].shape}")
            expected_rank = _pattern_value(config.get("rank_pattern") or {}, module, config["r"])
            if rank != expected_rank:
                raise InvalidInputError(f"adapter {adapter_dir}: module {module!r} has rank {rank}, its config says "
                                        f"{expected_rank}")
            alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config["lora_alpha"])
            scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
            self.updates[target] = _Update(found["A"], found["B"], float(scale), transpose)

    def _target(self, name: str, adapter_name: str) -> str:
        if name not in self.infos:
            raise InvalidInputError(f"adapter tensor {adapter_name!r} targets {name!r}, which the base model "
                                    f"{self.base.label} does not have")
        return name

    def read(self, name: str) -> torch.Tensor:
        if name in self.replaced:  # the adapter's own copy (possibly then updated, as PEFT's embeddings are)
            weight = self.adapter.read(self.replaced[name]).to(self.infos[name].dtype)
        else:
            weight = self.base.read(name)
        update = self.updates.get(name)
        if update is None:
            return weight
        compute = torch.promote_types(weight.dtype, torch.float32)  # float32 at least; float64 stays float64
        delta = self.adapter.read(update.b).to(compute) @ self.adapter.read(update.a).to(compute)
        merged = weight.to(compute) + update.scale * (delta.T if update.transpose else delta)
        return merged.to(weight.dtype)

    def close(self) -> None:
        self.base.close()
        self.adapter.close()


def _adapter_config(adapter_dir: Path) -> dict:
    path = adapter_dir / ADAPTER_CONFIG
    if not path.is_file():
        raise NotFoundError(f"LoRA adapter {adapter_dir}: no {ADAPTER_CONFIG} (expected a PEFT adapter folder)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InvalidInputError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise InvalidInputError(f"{path}: expected a JSON object")
    if config.get("peft_type", "LORA") != "LORA":
        raise InvalidInputError(f"{path}: peft_type {config['peft_type']!r}; only LORA adapters can be merged")
    if config.get("use_dora"):
        raise InvalidInputError(f"{path}: DoRA adapters (use_dora) are not supported; merge plain LoRA adapters")
    for key in ("r", "lora_alpha"):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise InvalidInputError(f"{path}: `{key}` must be a positive number, got {value!r}")
    return config


def _adapter_weights(adapter_dir: Path) -> str:
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (adapter_dir / name).is_file():
            return name
    raise NotFoundError(f"LoRA adapter {adapter_dir}: no adapter_model.safetensors or adapter_model.bin")


def open_lora_checkpoint(base: str, adapter: str, label: str) -> LoraCheckpoint:
    adapter_dir = Path(adapter)
    if not adapter_dir.is_dir():
        raise NotFoundError(f"checkpoint {label!r}: LoRA adapter folder {adapter_dir} does not exist")
    return LoraCheckpoint(open_checkpoint(base, label=base), adapter_dir, label)
