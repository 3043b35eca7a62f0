"""A LoRA adapter extracted from a fine-tune (what mergekit-extract-lora does): for each 2-D weight that
changed, the best rank-r approximation of the delta, Δ ≈ B @ A from its truncated SVD (B = U_r Σ_r,
A = V_rᵀ), written as a PEFT adapter folder with lora_alpha = r so the scale is 1.

By Eckart–Young the approximation error is the SVD tail, ‖Δ − B A‖_F² = Σ_{i>r} σ_i², the least any
rank-r adapter can have; `ExtractedLora.tail_norms` reports it per tensor. Changed tensors that are not
2-D (norms, biases) are stored whole and replace the base's when the adapter is applied (`base+adapter`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from alloyml.atomic import atomic_directory
from alloyml.errors import InvalidInputError
from alloyml.merging.checkpoints import open_checkpoint
from alloyml.merging.lora import ADAPTER_CONFIG

_PREFIX = "base_model.model."


@dataclass
class ExtractedLora:
    path: Path
    rank: int
    modules: list[str]  # module names that got a low-rank update
    copied: list[str]  # changed non-2-D tensors stored whole
    tail_norms: dict[str, float] = field(default_factory=dict)  # ‖Δ − B A‖_F per adapted weight


def extract_lora(base: str | os.PathLike, finetuned: str | os.PathLike, out_dir: str | os.PathLike, *,
                 rank: int, overwrite: bool = False) -> ExtractedLora:
    """Write the rank-`rank` LoRA adapter that turns `base` into (approximately) `finetuned`."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise InvalidInputError(f"rank must be a positive integer, got {rank!r}")
    base_ckpt, tuned_ckpt = open_checkpoint(base), open_checkpoint(finetuned)
    if set(base_ckpt.infos) != set(tuned_ckpt.infos):
        missing = sorted(set(base_ckpt.infos) ^ set(tuned_ckpt.infos))[:5]
        raise InvalidInputError(f"{finetuned} and {base} name different tensors (e.g. {missing})")
    tensors: dict[str, torch.Tensor] = {}
    result = ExtractedLora(Path(out_dir), rank, [], [])
    try:
        for name, info in base_ckpt.infos.items():
            if tuned_ckpt.infos[name].shape != info.shape:
                raise InvalidInputError(f"tensor {name!r}: {tuned_ckpt.infos[name].shape} in {finetuned}, "
                                        f"{info.shape} in {base}")
            if not info.dtype.is_floating_point:
                continue
            delta = tuned_ckpt.read(name).double() - base_ckpt.read(name).double()
            if not torch.isfinite(delta).all():
                raise InvalidInputError(f"tensor {name!r}: the fine-tune's delta is not finite")
            if not delta.any():
                continue
            if delta.dim() != 2 or not name.endswith(".weight"):
                tensors[_PREFIX + name] = tuned_ckpt.read(name).contiguous()
                result.copied.append(name)
                continue
            u, s, vh = torch.linalg.svd(delta, full_matrices=False)
            r = min(rank, s.numel())
            module = name.removesuffix(".weight")
            dtype = info.dtype
            tensors[f"{_PREFIX}{module}.lora_B.weight"] = (u[:, :r] * s[:r]).to(dtype).contiguous()
            tensors[f"{_PREFIX}{module}.lora_A.weight"] = vh[:r].to(dtype).contiguous()
            result.modules.append(module)
            result.tail_norms[name] = math.sqrt(float((s[r:] ** 2).sum()))
    finally:
        base_ckpt.close()
        tuned_ckpt.close()
    if not tensors:
        raise InvalidInputError(f"{finetuned} does not differ from {base}: there is no adapter to extract")
    from safetensors.torch import save_file

    with atomic_directory(out_dir, overwrite=overwrite) as staging:
        save_file(tensors, str(staging / "adapter_model.safetensors"))
        # Every weight gets rank `rank` unless it is smaller; rank_pattern records those, so the scale
        # alpha / r stays 1 for each (alpha_pattern = r).
        small = {m: int(tensors[f"{_PREFIX}{m}.lora_A.weight"].shape[0]) for m in result.modules}
        small = {m: r for m, r in small.items() if r != rank}
        config = {"peft_type": "LORA", "r": rank, "lora_alpha": rank, "target_modules": result.modules,
                  "rank_pattern": small, "alpha_pattern": small, "lora_dropout": 0.0, "bias": "none",
                  "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
                  "modules_to_save": sorted({n.rsplit(".", 1)[0] for n in result.copied}) or None,
                  "base_model_name_or_path": os.fspath(base), "task_type": None}
        (staging / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    return result
