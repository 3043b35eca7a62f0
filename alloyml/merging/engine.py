"""The streaming merge engine: plan every tensor up front, then read, merge and write one tensor at a time.

Planning opens only checkpoint headers and fails before anything is written when tensor names, shapes
or dtypes disagree, or a parameter cannot be resolved for some tensor. Execution holds one tensor per
input plus the method's working memory; the output goes to a staging directory that is renamed into
place at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alloyml.errors import InvalidInputError
from alloyml.merging.checkpoints import WEIGHT_INDEXES, WEIGHT_SUFFIXES, Checkpoint, TensorInfo, open_checkpoint
from alloyml.merging.config import MergeConfig, load_config
from alloyml.merging.parameters import layer_positions, resolve
from alloyml.merging.registry import MergeMethod, Parameter, get_method
from alloyml.merging.writer import ShardedWriter, staged_directory

DEFAULT_SHARD_BYTES = 2 * 1024**3


@dataclass
class MergeInput:
    """One input model: its name in the config, its role and the parameters given for it."""

    model: str
    role: str  # "base" or "merged"
    parameters: dict[str, Any]


@dataclass
class MergeResult:
    """What a merge did. `state_dict` is set for in-memory merges (no `out_dir`), else `output_path`."""

    method: str
    backend: str
    config: dict[str, Any]
    inputs: list[MergeInput]
    output_path: str | None
    state_dict: dict[str, torch.Tensor] | None
    num_tensors: int
    num_parameters: int
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TensorTask:
    """How one output tensor is produced: merged with `parameters`, or copied from the reference model."""

    name: str
    out: TensorInfo
    merge: bool
    parameters: dict[str, Any]


def _torch_dtype(name: str | None) -> torch.dtype | None:
    return getattr(torch, name) if name else None


def _check_same_tensors(checkpoints: Mapping[str, Checkpoint], reference: str, casts: bool) -> None:
    ref = checkpoints[reference].infos
    for model, ckpt in checkpoints.items():
        if model == reference:
            continue
        missing = sorted(set(ref) - set(ckpt.infos))
        extra = sorted(set(ckpt.infos) - set(ref))
        if missing or extra:
            raise InvalidInputError(
                f"model {model!r} does not have the same tensors as {reference!r}: "
                f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''} ({len(missing)}), "
                f"unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''} ({len(extra)})"
            )
        for name, info in ref.items():
            other = ckpt.infos[name]
            if other.shape != info.shape:
                raise InvalidInputError(
                    f"tensor {name!r} has shape {other.shape} in {model!r} but {info.shape} in {reference!r}"
                )
            both_float = other.dtype.is_floating_point and info.dtype.is_floating_point
            if other.dtype != info.dtype and not (casts and both_float):
                raise InvalidInputError(
                    f"tensor {name!r} is {other.dtype} in {model!r} but {info.dtype} in {reference!r}; "
                    "set `dtype:` in the config to merge floating tensors of different dtypes"
                )


def _resolve_parameters(config: MergeConfig, method: MergeMethod, name: str, t: float) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for p in method.parameters:
        if p.scope == "shared":
            values[p.name] = _checked(p, resolve(p.name, [config.parameters], name, t), name, None)
        else:
            values[p.name] = [
                _checked(p, resolve(p.name, [spec.parameters, config.parameters], name, t), name, spec.model)
                for spec in config.merged_models()
            ]
    return values


def _checked(p: Parameter, value: Any, tensor: str, model: str | None) -> Any:
    if value is not None:
        return p.kind(value)
    if p.default is None:
        who = f" of model {model!r}" if model else ""
        raise InvalidInputError(f"parameter {p.name!r}{who} has no value for tensor {tensor!r} (no filter matched)")
    return p.default


def plan_merge(config: MergeConfig, checkpoints: Mapping[str, Checkpoint]) -> list[TensorTask]:
    """One task per output tensor, in output order; raises before any I/O if the inputs don't line up."""
    method = get_method(config.merge_method)
    reference = config.base_model or config.models[0].model
    _check_same_tensors(checkpoints, reference, casts=config.dtype is not None)
    ref_infos = checkpoints[reference].infos
    positions = layer_positions(ref_infos)
    out_dtype = _torch_dtype(config.out_dtype or config.dtype)
    tasks = []
    for name, info in ref_infos.items():
        if info.dtype.is_floating_point:
            out = TensorInfo(info.shape, out_dtype or info.dtype)
            tasks.append(TensorTask(name, out, True, _resolve_parameters(config, method, name, positions[name])))
        else:  # integer and boolean buffers (position ids, step counters, masks) pass through unchanged
            tasks.append(TensorTask(name, info, False, {}))
    return tasks


def _tensor_seed(seed: int, name: str) -> int:
    # Derived from the name, so a tensor's random mask is the same whatever order tensors are merged in.
    return zlib.crc32(f"{seed}:{name}".encode())


def run_tasks(
    config: MergeConfig,
    checkpoints: Mapping[str, Checkpoint],
    tasks: list[TensorTask],
    sink: Callable[[str, torch.Tensor], None],
    progress: bool = False,
) -> dict[str, float]:
    """Merge tensor by tensor, handing each result to `sink`; returns read/compute seconds."""
    method = get_method(config.merge_method)
    reference = config.base_model or config.models[0].model
    merged = [spec.model for spec in config.merged_models()]
    compute_dtype = _torch_dtype(config.dtype)
    timings = {"read_s": 0.0, "compute_s": 0.0, "write_s": 0.0}
    iterator = tasks
    if progress:
        from rich.progress import track

        iterator = track(tasks, description=f"{method.name} merge")
    for task in iterator:
        start = time.perf_counter()
        if not task.merge:
            tensor = checkpoints[reference].read(task.name)
            timings["read_s"] += time.perf_counter() - start
        else:
            base = checkpoints[config.base_model].read(task.name) if method.uses_base else None
            tensors = [checkpoints[m].read(task.name) for m in merged]
            if compute_dtype is not None:
                base = base.to(compute_dtype) if base is not None else None
                tensors = [t.to(compute_dtype) for t in tensors]
            timings["read_s"] += time.perf_counter() - start
            start = time.perf_counter()
            extra = {}
            if method.stochastic:
                extra["generator"] = torch.Generator().manual_seed(_tensor_seed(config.seed, task.name))
            tensor = method(base, tensors, **task.parameters, **extra).to(task.out.dtype)
            del base, tensors
            timings["compute_s"] += time.perf_counter() - start
        start = time.perf_counter()
        sink(task.name, tensor)
        timings["write_s"] += time.perf_counter() - start
    return timings


def _copy_model_files(source: Path | None, target: Path, out_dtype: str | None) -> None:
    """Copy config/tokenizer files (everything but weights) from the reference model's directory."""
    if source is None:
        return
    for path in source.iterdir():
        if path.is_file() and not path.name.startswith(".") and path.suffix not in WEIGHT_SUFFIXES:
            if path.name not in WEIGHT_INDEXES:
                shutil.copy2(path, target / path.name)
    config_json = target / "config.json"
    if out_dtype and config_json.exists():
        hf_config = json.loads(config_json.read_text())
        hf_config["torch_dtype"] = out_dtype
        if "dtype" in hf_config:
            hf_config["dtype"] = out_dtype
        config_json.write_text(json.dumps(hf_config, indent=2))


def merge_inputs(config: MergeConfig) -> list[MergeInput]:
    method = get_method(config.merge_method)
    inputs = []
    if method.uses_base:
        inputs.append(MergeInput(config.base_model, "base", {}))
    inputs += [MergeInput(spec.model, "merged", dict(spec.parameters)) for spec in config.merged_models()]
    for item in inputs:
        item.parameters = {k: (v.model_dump() if hasattr(v, "model_dump") else v) for k, v in item.parameters.items()}
    return inputs


def merge(
    config: MergeConfig | dict | str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    sources: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: bool = False,
) -> MergeResult:
    """Run a merge described by `config` (a `MergeConfig`, dict, YAML path or YAML text).

    Models are located by their name in the config, or through `sources` (`{name: path or state dict}`).
    With `out_dir` the result is written as safetensors shards (plus the base model's config and
    tokenizer files); without it the merged state dict is returned in `MergeResult.state_dict`.
    """
    total_start = time.perf_counter()
    config = load_config(config)
    if config.backend == "mergekit":
        from alloyml.merging.mergekit_backend import run_mergekit

        return run_mergekit(config, out_dir, overwrite=overwrite)
    sources = sources or {}
    names = ([config.base_model] if config.base_model else []) + [m.model for m in config.models]
    checkpoints = {n: open_checkpoint(sources.get(n, n), label=n) for n in dict.fromkeys(names)}
    try:
        start = time.perf_counter()
        tasks = plan_merge(config, checkpoints)
        timings = {"plan_s": time.perf_counter() - start}
        state_dict = None
        if out_dir is None:
            state_dict = {}
            timings.update(run_tasks(config, checkpoints, tasks, state_dict.__setitem__, progress))
        else:
            with staged_directory(out_dir, overwrite) as staging:
                writer = ShardedWriter(staging, {t.name: t.out for t in tasks}, max_shard_bytes)
                timings.update(run_tasks(config, checkpoints, tasks, writer.write, progress))
                writer.close()
                reference = config.base_model or config.models[0].model
                _copy_model_files(checkpoints[reference].directory, staging, config.out_dtype or config.dtype)
                (staging / "merge_config.yaml").write_text(config.to_yaml())
    finally:
        for ckpt in checkpoints.values():
            ckpt.close()
    timings["total_s"] = time.perf_counter() - total_start
    return MergeResult(
        method=config.merge_method,
        backend="alloyml",
        config=config.model_dump(mode="json"),
        inputs=merge_inputs(config),
        output_path=str(out_dir) if out_dir is not None else None,
        state_dict=state_dict,
        num_tensors=len(tasks),
        num_parameters=sum(t.out.numel for t in tasks),
        timings=timings,
    )
