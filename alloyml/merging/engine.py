"""The streaming merge engine: plan every tensor up front (`plan.py`), then read, merge and write one
tensor at a time.

Planning opens only checkpoint headers and fails before anything is written when tensor names, shapes
or dtypes disagree, a layer range or a parameter cannot be resolved, or config.json cannot take the new
layer count. Execution holds one tensor per input plus the method's working memory; the output goes to a
staging directory that is renamed into place at the end.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alloyml.atomic import atomic_directory
from alloyml.errors import InvalidInputError
from alloyml.merging.checkpoints import Checkpoint, open_checkpoint
from alloyml.merging.config import MergeConfig, load_merge_config
from alloyml.merging.lora import split_lora_path
from alloyml.merging.model_files import copy_model_files, output_model_config
from alloyml.merging.plan import TensorSource, TensorTask, plan_merge, torch_dtype
from alloyml.merging.registry import get_method
from alloyml.merging.vocabulary import TOKENIZER_FILES, Vocabulary, build_vocabulary, save_tokenizer
from alloyml.merging.writer import ShardedWriter

DEFAULT_SHARD_BYTES = 2 * 1024**3
# Tensors above BLOCK_THRESHOLD entries are merged in row blocks of about BLOCK_ENTRIES (16 MB in float32)
# by methods that can (`MergeMethod.blocks`), so peak memory is a few blocks per model rather than
# n_models + 1 copies of the largest tensor (a 49152 x 576 embedding is 113 MB in float32).
BLOCK_ENTRIES = 1 << 22
BLOCK_THRESHOLD = 2 * BLOCK_ENTRIES


@dataclass
class InputModel:
    """One input model: its name in the config, its role and the parameters given for it (with `slices`,
    in the first slice that takes it), and the layer ranges taken from it (`slices` only)."""

    model: str
    role: str  # "base" or "merged"
    parameters: dict[str, Any]
    layer_ranges: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class MergeResult:
    """What a merge did. `state_dict` is set for in-memory merges (no `out_dir`), else `output_path`."""

    method: str
    backend: str
    config: dict[str, Any]
    inputs: list[InputModel]
    output_path: str | None
    state_dict: dict[str, torch.Tensor] | None
    num_tensors: int
    num_parameters: int
    timings: dict[str, float] = field(default_factory=dict)


def _tensor_seed(seed: int, name: str) -> int:
    # Derived from the name, so a tensor's random mask is the same whatever order tensors are merged in.
    return zlib.crc32(f"{seed}:{name}".encode())


def run_tasks(
    config: MergeConfig,
    checkpoints: Mapping[str, Checkpoint],
    tasks: list[TensorTask],
    sink: Callable[[str, torch.Tensor], None],
    progress: bool = False,
    vocabulary: Vocabulary | None = None,
    block_sink: Callable[[str, Iterable[torch.Tensor]], None] | None = None,
) -> dict[str, float]:
    """Merge tensor by tensor, handing each result to `sink` (or, for tensors merged in row blocks, its
    blocks in order to `block_sink` when given); returns read/compute/write seconds."""
    method = get_method(config.merge_method)
    compute_dtype = torch_dtype(config.dtype)
    timings = {"read_s": 0.0, "compute_s": 0.0, "write_s": 0.0}
    iterator = tasks
    if progress:
        from rich.progress import track

        iterator = track(tasks, description=f"{method.name} merge")

    def read(source: TensorSource) -> torch.Tensor:
        return checkpoints[source.model].read(source.name)

    for task in iterator:
        start = time.perf_counter()
        blocks = _merge_blocks(method, task, checkpoints, compute_dtype, config.seed)
        if blocks is not None:
            # Reads, math and writes interleave block by block; the block loop is timed as compute.
            if block_sink is not None:
                block_sink(task.name, (b.to(task.out.dtype) for b in blocks))
            else:
                sink(task.name, torch.cat([b.to(task.out.dtype) for b in blocks]))
            timings["compute_s"] += time.perf_counter() - start
            continue
        if not task.merge:
            tensor = read(task.inputs[0])
            timings["read_s"] += time.perf_counter() - start
        else:
            base = read(task.base) if task.base else None
            tensors = [read(source) for source in task.inputs]
            if compute_dtype is not None:
                base = base.to(compute_dtype) if base is not None else None
                tensors = [t.to(compute_dtype) for t in tensors]
            if task.vocabulary:
                by_model = {s.model: t for s, t in zip(task.inputs, tensors, strict=True)}
                if task.base is not None:
                    by_model = {task.base.model: base, **by_model}
                aligned = vocabulary.align(by_model, task.vocabulary_base)
                base = aligned[task.base.model] if task.base is not None else None
                tensors = [aligned[s.model] for s in task.inputs]
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


def _merge_blocks(method, task: TensorTask, checkpoints, compute_dtype, seed) -> Iterator[torch.Tensor] | None:
    """The merged rows of a large tensor block by block, read lazily from its sources; None where the
    tensor is small, its method or parameters need it whole, or a source cannot read rows alone."""
    shape = task.out.shape
    if not task.merge or task.vocabulary or task.out.numel <= BLOCK_THRESHOLD or method.blocks is None:
        return None
    sources = ([task.base] if task.base is not None else []) + list(task.inputs)
    if task.base is None or not all(checkpoints[s.model].row_reads for s in sources):
        return None

    def reader(source: TensorSource):
        def read(start: int, stop: int) -> torch.Tensor:
            rows = checkpoints[source.model].read_rows(source.name, start, stop)
            return rows.to(compute_dtype) if compute_dtype is not None else rows

        return read

    # The dtype the math runs in, as `methods.compute_dtype` picks it for the (cast) inputs.
    read_dtype = compute_dtype or checkpoints[task.base.model].infos[task.base.name].dtype
    math_dtype = torch.float64 if read_dtype == torch.float64 else torch.float32
    block_rows = max(1, BLOCK_ENTRIES // max(1, task.out.numel // shape[0]))
    extra = {"generator": torch.Generator().manual_seed(_tensor_seed(seed, task.name))} if method.stochastic else {}
    return method.run_blocks(
        reader(task.base), [reader(s) for s in task.inputs], shape, math_dtype,
        block_rows, **dict(task.parameters), **extra,
    )  # fmt: skip


def _plain(parameters: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v.model_dump() if hasattr(v, "model_dump") else v) for k, v in parameters.items()}


def merge_inputs(config: MergeConfig) -> list[InputModel]:
    """The input models, each once, for the result and the lineage the merge workflow records."""
    if config.models is not None:
        inputs = [InputModel(config.base_model, "base", {})] if get_method(config.merge_method).uses_base else []
        return inputs + [InputModel(spec.model, "merged", _plain(spec.parameters)) for spec in config.merged_models()]
    by_model: dict[str, InputModel] = {}
    for out_slice in config.slices:
        for src in out_slice.sources:
            item = by_model.setdefault(src.model, InputModel(src.model, "merged", _plain(src.parameters)))
            item.role = "base" if src.model == config.slice_base(out_slice) else item.role
            item.layer_ranges.append(src.layer_range)
    return list(by_model.values())


def check_output_dir(out_dir: str | os.PathLike, inputs: Mapping[str, Any]) -> None:
    """Refuse, before any work, an output that is a file, or that is (or contains) one of the `inputs`
    (`{name: path or state dict}`): the finished merge replaces the output directory, input included."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"output {out} is a file; give a directory path for the merged model")
    target = out.resolve()
    for name, source in inputs.items():
        if not isinstance(source, str | os.PathLike):
            continue
        for part in split_lora_path(source):  # a `base+adapter` input: neither may be replaced
            path = Path(part).resolve() if part is not None else None
            if path is not None and (path == target or target in path.parents):
                raise InvalidInputError(
                    f"output directory {out} is (or contains) input model {name!r}; writing the merge there "
                    "would replace that input, so choose another output directory"
                )


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
    With `out_dir` the result is written as safetensors shards (plus the reference model's config and
    tokenizer files: the base model's, else the first input's); without it the merged state dict is
    returned in `MergeResult.state_dict`.
    """
    total_start = time.perf_counter()
    config = load_merge_config(config)
    sources = sources or {}
    if out_dir is not None:
        check_output_dir(out_dir, {n: sources.get(n, n) for n in config.referenced_models()})
    if config.backend == "mergekit":
        from alloyml.merging.mergekit_backend import run_mergekit

        return run_mergekit(config, out_dir, overwrite=overwrite)
    checkpoints = {n: open_checkpoint(sources.get(n, n), label=n) for n in config.referenced_models()}
    try:
        start = time.perf_counter()
        directories = {n: ckpt.directory for n, ckpt in checkpoints.items()}
        vocabulary = build_vocabulary(config, directories)
        tasks = plan_merge(config, checkpoints, vocabulary)
        reference = checkpoints[config.reference_model()].directory
        out_dtype = config.out_dtype or config.dtype
        model_config = (
            output_model_config(reference, out_dtype, config.output_layers()) if out_dir is not None else None
        )
        if model_config is not None and vocabulary is not None:
            model_config["vocab_size"] = vocabulary.size
        timings = {"plan_s": time.perf_counter() - start}
        state_dict = None
        if out_dir is None:
            state_dict = {}
            timings.update(run_tasks(config, checkpoints, tasks, state_dict.__setitem__, progress, vocabulary))
        else:
            with atomic_directory(out_dir, overwrite=overwrite) as staging:
                writer = ShardedWriter(staging, {t.name: t.out for t in tasks}, max_shard_bytes)
                timings.update(
                    run_tasks(config, checkpoints, tasks, writer.write, progress, vocabulary, writer.write_blocks)
                )
                writer.close()
                own_tokenizer = save_tokenizer(config, vocabulary, directories, reference, staging)
                copy_model_files(reference, staging, model_config, skip=TOKENIZER_FILES if own_tokenizer else ())
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
