"""Merging several LoRA adapters of one base, without full-rank deltas where the method allows.

An adapter's task vector is Δᵢ = sᵢ · Bᵢ Aᵢ (sᵢ = alpha / r, or alpha / √r with rsLoRA). For task arithmetic,
W + λ Σ wᵢ Δᵢ, and linear (normalised weights: Σ wᵢ (W + Δᵢ) / Σ wᵢ = W + Σ (wᵢ / Σ w) Δᵢ), the merged delta is
exactly low-rank: concatenating the factors, B = [c₁ s₁ B₁, …, cₙ sₙ Bₙ] and A = [A₁; …; Aₙ], gives
B A = Σ cᵢ sᵢ Bᵢ Aᵢ with rank Σ rᵢ per module. `merge_adapters` writes that as a PEFT adapter (scale 1); no
tensor larger than the factors is ever formed.

TIES, DARE, DELLA, breadcrumbs, SLERP and the other methods act on individual entries (signs, magnitudes,
random masks) or on norms of the full delta, which the factors do not give: for them the deltas must be
materialised. `merge_adapters` then runs the ordinary streamed merge over `base+adapter` inputs (one full
tensor per input at a time) and writes the merged model; with `rank=` it re-extracts a LoRA from the result
(truncated SVD, approximate: the reported tail norms say by how much).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alloyml.atomic import atomic_directory
from alloyml.errors import InvalidInputError
from alloyml.merging.lora import ADAPTER_CONFIG, LoraCheckpoint, open_lora_checkpoint

LOW_RANK_METHODS = ("task_arithmetic", "linear")
_PREFIX = "base_model.model."


@dataclass
class AdapterMerge:
    """What `merge_adapters` wrote: an adapter folder (`kind="adapter"`) or a full model (`"model"`)."""

    path: Path
    kind: str
    method: str
    exact: bool  # True: the result equals the full-rank merge (up to rounding)
    ranks: dict[str, int] = field(default_factory=dict)  # module -> rank of the written adapter
    tail_norms: dict[str, float] = field(default_factory=dict)  # re-extraction error, full-rank methods


def _weights(adapters: Mapping[str, Mapping[str, Any]] | Sequence[str]) -> dict[str, dict[str, Any]]:
    if isinstance(adapters, Mapping):
        return {os.fspath(k): dict(v or {}) for k, v in adapters.items()}
    return {os.fspath(a): {} for a in adapters}


def _coefficients(method: str, specs: dict[str, dict], parameters: Mapping[str, Any]) -> dict[str, float]:
    """cᵢ with merged delta Σ cᵢ Δᵢ, validated as the merge config would validate them."""
    from alloyml.merging.parameters import coerce_value
    from alloyml.merging.registry import get_method

    m = get_method(method)
    weight = m.parameter("weight")
    weights = {}
    for adapter, params in specs.items():
        unknown = set(params) - {"weight"}
        if unknown:
            raise InvalidInputError(f"adapter {adapter!r}: parameters {sorted(unknown)}; the low-rank merge takes "
                                    "only `weight` per adapter")
        if "weight" not in params and weight.default is None:
            raise InvalidInputError(f"merge method {method!r} needs parameter 'weight' for adapter {adapter!r}")
        weights[adapter] = float(coerce_value(weight, params.get("weight", weight.default), f" of {adapter!r}"))
    unknown = set(parameters) - {"lambda", "normalize"}
    if unknown:
        raise InvalidInputError(f"parameters {sorted(unknown)} do not apply to a low-rank {method} merge")
    if method == "task_arithmetic":
        lam = float(coerce_value(m.parameter("lambda"), parameters.get("lambda", 1.0), ""))
        return {a: lam * w for a, w in weights.items()}
    normalize = coerce_value(m.parameter("normalize"), parameters.get("normalize", True), "")
    total = sum(weights.values())
    if normalize:
        if total == 0:
            raise InvalidInputError("linear merge: the adapters' weights sum to 0, so they cannot be normalised")
        return {a: w / total for a, w in weights.items()}
    if abs(total - 1) > 1e-9:
        raise InvalidInputError(
            f"linear merge with normalize: false scales the base by the weights' sum ({total:g}), which no "
            "adapter can express; use weights that sum to 1, normalize: true, or task_arithmetic"
        )
    return weights


def _low_rank(base: str, specs: dict[str, dict], method: str, parameters: Mapping, out_dir, overwrite) -> AdapterMerge:
    coefficients = _coefficients(method, specs, parameters)
    opened: list[tuple[str, LoraCheckpoint]] = []
    try:
        for adapter in specs:
            ckpt = open_lora_checkpoint(base, adapter, f"{base}+{adapter}")
            if ckpt.replaced:
                raise InvalidInputError(
                    f"adapter {adapter!r} replaces whole tensors ({sorted(ckpt.replaced)[:3]}: modules_to_save or "
                    "saved embeddings), which are not low-rank; merge it as a `base+adapter` model instead"
                )
            opened.append((adapter, ckpt))
        a_parts: dict[str, list[torch.Tensor]] = {}
        b_parts: dict[str, list[torch.Tensor]] = {}
        names: dict[str, tuple[str, str, bool]] = {}
        for adapter, ckpt in opened:
            for target, update in ckpt.updates.items():
                seen = names.setdefault(target, (update.a, update.b, update.transpose))
                if seen[2] != update.transpose:
                    raise InvalidInputError(f"adapters disagree on the layout of {target!r} (fan_in_fan_out)")
                a = ckpt.adapter.read(update.a)
                b = ckpt.adapter.read(update.b)
                dtype = b.dtype
                a_parts.setdefault(target, []).append(a)
                scaled = (b.to(torch.promote_types(dtype, torch.float32)) * (coefficients[adapter] * update.scale))
                b_parts.setdefault(target, []).append(scaled.to(dtype))
        tensors, ranks = {}, {}
        for target, (a_name, b_name, _) in names.items():
            a_cat = torch.cat(a_parts[target], dim=0).contiguous()
            b_cat = torch.cat(b_parts[target], dim=1).contiguous()
            tensors[_PREFIX + a_name.removeprefix(_PREFIX)] = a_cat
            tensors[_PREFIX + b_name.removeprefix(_PREFIX)] = b_cat
            ranks[target.removesuffix(".weight")] = int(a_cat.shape[0])
        fan_in_fan_out = any(json.loads((Path(a) / ADAPTER_CONFIG).read_text()).get("fan_in_fan_out") for a in specs)
    finally:
        for _, ckpt in opened:
            ckpt.close()
    from safetensors.torch import save_file

    top = max(ranks.values())
    pattern = {m: r for m, r in ranks.items() if r != top}
    with atomic_directory(out_dir, overwrite=overwrite) as staging:
        save_file(tensors, str(staging / "adapter_model.safetensors"))
        config = {"peft_type": "LORA", "r": top, "lora_alpha": top, "target_modules": sorted(ranks),
                  "rank_pattern": pattern, "alpha_pattern": pattern, "lora_dropout": 0.0, "bias": "none",
                  "fan_in_fan_out": bool(fan_in_fan_out), "use_rslora": False, "use_dora": False,
                  "base_model_name_or_path": os.fspath(base), "task_type": None}  # fmt: skip
        (staging / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    return AdapterMerge(Path(out_dir), "adapter", method, True, ranks)


def merge_adapters(
    base: str | os.PathLike,
    adapters: Mapping[str | os.PathLike, Mapping[str, Any]] | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    method: str = "task_arithmetic",
    parameters: Mapping[str, Any] | None = None,
    rank: int | None = None,
    overwrite: bool = False,
) -> AdapterMerge:
    """Merge LoRA adapters of `base` (`{adapter_dir: {"weight": w, ...}}`, or a list: mergekit's defaults).

    `task_arithmetic` and `linear` write an adapter whose factors are the adapters' factors concatenated
    (exact, rank Σ rᵢ per module). Every other method needs full-rank deltas: the merged model is written
    (an ordinary streamed merge of `base+adapter` inputs), or, with `rank=`, a rank-`rank` adapter extracted
    from it (approximate).
    """
    from alloyml.merging.registry import get_method

    specs = _weights(adapters)
    if not specs:
        raise InvalidInputError("no adapters to merge")
    get_method(method)  # raises, naming the known methods, for an unknown one
    parameters = dict(parameters or {})
    base = os.fspath(base)
    for adapter in specs:
        if not (Path(adapter) / ADAPTER_CONFIG).is_file():
            raise InvalidInputError(f"adapter {adapter!r} is not a PEFT adapter folder (no {ADAPTER_CONFIG})")
    if method in LOW_RANK_METHODS:
        return _low_rank(base, specs, method, parameters, out_dir, overwrite)
    from alloyml.merging.engine import merge

    config = {
        "merge_method": method,
        "base_model": base,
        "models": [{"model": f"{base}+{a}", "parameters": p} for a, p in specs.items()],
        "parameters": parameters,
    }
    if rank is None:
        merge(config, out_dir, overwrite=overwrite)
        return AdapterMerge(Path(out_dir), "model", method, True)
    import tempfile

    from alloyml.merging.lora_extract import extract_lora

    with tempfile.TemporaryDirectory(prefix="alloyml-lora-merge-") as tmp:
        merge(config, Path(tmp) / "merged")
        extracted = extract_lora(base, Path(tmp) / "merged", out_dir, rank=rank, overwrite=overwrite)
    ranks = {m: rank for m in extracted.modules}
    return AdapterMerge(Path(out_dir), "adapter", method, False, ranks, extracted.tail_norms)
