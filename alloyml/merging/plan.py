"""Planning a merge: one task per output tensor, naming the input tensors it is made from and the
parameters it is merged with. Planning reads only checkpoint headers, so tensors that do not line up,
layer ranges outside a model and parameters that resolve to nothing all fail before anything is written.

With `models:`, each output tensor merges the same-named tensor of every model. With `slices:` the
output layer stack is built slice by slice, as mergekit does: output layer k of a slice merges layer
`start + k` of each source, renamed to its place in the output stack, with gradients running over the
slice's own layers; tensors before the stack (embeddings) are merged across the first slice's sources and
tensors after it (final norm, head) across the last slice's, both at gradient position 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from alloyml.errors import ConfigError, InvalidInputError
from alloyml.merging.checkpoints import Checkpoint, TensorInfo
from alloyml.merging.config import MergeConfig, OutputSlice, SliceSource
from alloyml.merging.layers import detect_layer_naming, split_layers
from alloyml.merging.parameters import layer_positions, resolve
from alloyml.merging.registry import MergeMethod, Parameter, get_method
from alloyml.merging.vocabulary import Vocabulary, is_vocabulary_tensor


@dataclass(frozen=True)
class TensorSource:
    """Tensor `name` of input model `model`."""

    model: str
    name: str


@dataclass(frozen=True)
class TensorTask:
    """How output tensor `name` is produced: `method(base, inputs, **parameters)` when `merge`, else
    copied from `inputs[0]` (integer and boolean buffers)."""

    name: str
    out: TensorInfo
    merge: bool
    base: TensorSource | None
    inputs: tuple[TensorSource, ...]
    parameters: dict[str, Any]
    # With `tokenizer_source`: the inputs' rows are re-indexed to the output vocabulary before merging,
    # preferring `vocabulary_base`'s rows for tokens some inputs lack (see vocabulary.py).
    vocabulary: bool = False
    vocabulary_base: str | None = None


# One merged input: the tensor it reads and its parameter scopes, most specific first.
_Input = tuple[TensorSource, list[Mapping[str, Any]]]


def torch_dtype(name: str | None) -> torch.dtype | None:
    return getattr(torch, name) if name else None


def check_same_tensors(
    groups: Mapping[str, Mapping[str, TensorInfo]], casts: bool, vocabularies_differ: bool = False
) -> None:
    """Every group (a label such as `'b'` or `layer 3 of 'b'`, and its tensors) must hold the same tensor
    names, shapes and dtypes as the first; floating dtypes may differ when the config `casts` them, and
    vocabulary tensors' row counts when `vocabularies_differ` (`tokenizer_source` realigns them)."""
    (ref_label, ref), *others = groups.items()
    for label, infos in others:
        missing = sorted(set(ref) - set(infos))
        extra = sorted(set(infos) - set(ref))
        if missing or extra:
            raise InvalidInputError(
                f"{label} does not have the same tensors as {ref_label}: "
                f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''} ({len(missing)}), "
                f"unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''} ({len(extra)})"
            )
        for name, info in ref.items():
            other = infos[name]
            rows_free = vocabularies_differ and is_vocabulary_tensor(name) and len(info.shape) >= 1
            if (other.shape[1:] != info.shape[1:]) if rows_free else (other.shape != info.shape):
                raise InvalidInputError(
                    f"tensor {name!r} has shape {other.shape} in {label} but {info.shape} in {ref_label}"
                )
            both_float = other.dtype.is_floating_point and info.dtype.is_floating_point
            if other.dtype != info.dtype and not (casts and both_float):
                raise InvalidInputError(
                    f"tensor {name!r} is {other.dtype} in {label} but {info.dtype} in {ref_label}; "
                    "set `dtype:` in the config to merge floating tensors of different dtypes"
                )


def _checked(p: Parameter, value: Any, tensor: str, model: str | None) -> Any:
    if value is not None:
        # Values were validated with the config; only gradients make new (float) values, e.g. of ints.
        return p.kind(value) if p.kind in (int, float, bool) else value
    if p.default is None:
        who = f" of model {model!r}" if model else ""
        raise InvalidInputError(f"parameter {p.name!r}{who} has no value for tensor {tensor!r} (no filter matched)")
    return p.default


def _task(
    config: MergeConfig,
    method: MergeMethod,
    name: str,
    info: TensorInfo,
    base: TensorSource | None,
    inputs: Sequence[_Input],
    shared: list[Mapping[str, Any]],
    t: float,
    copy_from: TensorSource,
    vocabulary: Vocabulary | None = None,
    vocabulary_base: str | None = None,
) -> TensorTask:
    """The task for output tensor `name` (shaped like `info`), at position `t` of the layer stack."""
    if not info.dtype.is_floating_point:  # position ids, step counters, masks pass through unchanged
        return TensorTask(name, info, False, None, (copy_from,), {})
    parameters: dict[str, Any] = {}
    for p in method.parameters:
        if p.scope == "shared":
            parameters[p.name] = _checked(p, resolve(p.name, shared, name, t), name, None)
        else:
            # As in mergekit, a model's filters match the name of the tensor read from that model, which with
            # `slices` differs from the output name (`model.layers.5.` read, `model.layers.2.` written).
            parameters[p.name] = [
                _checked(p, resolve(p.name, scopes, s.name, t), s.name, s.model) for s, scopes in inputs
            ]
    problem = method.check(parameters) if method.check else None
    if problem:
        raise InvalidInputError(f"merge method {method.name!r}, tensor {name!r}: {problem}")
    realign = vocabulary is not None and is_vocabulary_tensor(name)
    shape = (vocabulary.size, *info.shape[1:]) if realign else info.shape
    out = TensorInfo(shape, torch_dtype(config.out_dtype or config.dtype) or info.dtype)
    return TensorTask(
        name, out, True, base, tuple(s for s, _ in inputs), parameters, realign, vocabulary_base if realign else None
    )


def _plan_models(
    config: MergeConfig, method: MergeMethod, checkpoints: Mapping[str, Checkpoint], vocabulary: Vocabulary | None
) -> list[TensorTask]:
    reference = config.reference_model()
    order = [reference, *(m for m in checkpoints if m != reference)]
    check_same_tensors(
        {repr(m): checkpoints[m].infos for m in order}, casts=config.dtype is not None,
        vocabularies_differ=vocabulary is not None,
    )
    ref_infos = checkpoints[reference].infos
    positions = layer_positions(ref_infos)
    base = config.base_model if method.uses_base else None
    merged = config.merged_models()
    return [
        _task(
            config,
            method,
            name,
            info,
            TensorSource(base, name) if base else None,
            [(TensorSource(spec.model, name), [spec.parameters, *config.top_scopes]) for spec in merged],
            config.top_scopes,
            positions[name],
            TensorSource(reference, name),
            vocabulary,
            config.base_model,
        )
        for name, info in ref_infos.items()
    ]


def _slice_task(
    config: MergeConfig,
    method: MergeMethod,
    out_slice: OutputSlice,
    name: str,
    info: TensorInfo,
    names: Mapping[str, str],
    t: float,
    vocabulary: Vocabulary | None = None,
) -> TensorTask:
    """Output tensor `name` of `out_slice`, read as tensor `names[model]` of each source model."""
    base = config.slice_base(out_slice)
    reference = base or out_slice.sources[0].model
    inputs = [
        (TensorSource(s.model, names[s.model]), [s.parameters, out_slice.parameters, *config.top_scopes])
        for s in config.merged_sources(out_slice)
    ]
    base_source = TensorSource(base, names[base]) if base else None
    shared = [out_slice.parameters, *config.top_scopes]
    copy_from = TensorSource(reference, names[reference])
    vocab_base = out_slice.base_model or config.base_model
    return _task(config, method, name, info, base_source, inputs, shared, t, copy_from, vocabulary, vocab_base)


def _plan_slices(
    config: MergeConfig, method: MergeMethod, checkpoints: Mapping[str, Checkpoint], vocabulary: Vocabulary | None
) -> list[TensorTask]:
    first = config.slices[0].sources[0].model
    naming = detect_layer_naming(checkpoints[first].infos, first, config.layer_pattern)
    models = dict.fromkeys(src.model for s in config.slices for src in s.sources)
    stacks = {m: split_layers(checkpoints[m].infos, naming, m) for m in models}
    for i, out_slice in enumerate(config.slices):
        for j, src in enumerate(out_slice.sources):
            count = len(stacks[src.model].layers)
            if src.layer_range[1] > count:
                raise ConfigError(
                    f"`slices[{i}].sources[{j}]`: layer_range {list(src.layer_range)} of model {src.model!r} "
                    f"is outside its {count} layers (tensors named like {naming.pattern!r})"
                )
    casts = config.dtype is not None

    def outside(out_slice: OutputSlice, part: str) -> list[TensorTask]:
        """Tasks for the tensors before (`part="before"`) or after the layer stack, from `out_slice`."""
        sources = _reference_first(config, out_slice)
        groups = {repr(s.model): getattr(stacks[s.model], part) for s in sources}
        check_same_tensors(groups, casts, vocabularies_differ=vocabulary is not None)
        return [
            _slice_task(config, method, out_slice, name, info, {s.model: name for s in sources}, 0.0, vocabulary)
            for name, info in groups[repr(sources[0].model)].items()
        ]

    tasks = outside(config.slices[0], "before")
    out_layer = 0
    for out_slice in config.slices:
        sources = _reference_first(config, out_slice)
        for k in range(out_slice.num_layers):
            layer_of = {s.model: s.layer_range[0] + k for s in sources}
            groups = {
                f"layer {layer_of[s.model]} of {s.model!r}": stacks[s.model].layers[layer_of[s.model]] for s in sources
            }
            check_same_tensors(groups, casts)
            t = k / (out_slice.num_layers - 1) if out_slice.num_layers > 1 else 1.0
            for rest, info in next(iter(groups.values())).items():
                names = {model: naming.name(layer, rest) for model, layer in layer_of.items()}
                tasks.append(_slice_task(config, method, out_slice, naming.name(out_layer, rest), info, names, t))
            out_layer += 1
    return tasks + outside(config.slices[-1], "after")


def _reference_first(config: MergeConfig, out_slice: OutputSlice) -> list[SliceSource]:
    """The slice's sources with its base (for methods that use one) first: the output copies the
    first one's shapes, dtypes and integer buffers, and mismatches are reported against it."""
    base = config.slice_base(out_slice)
    return sorted(out_slice.sources, key=lambda s: s.model != base)


def plan_merge(
    config: MergeConfig, checkpoints: Mapping[str, Checkpoint], vocabulary: Vocabulary | None = None
) -> list[TensorTask]:
    """One task per output tensor, in output order; raises before any tensor is read if the inputs
    don't line up. With a `vocabulary` (from `tokenizer_source`), vocabulary tensors may differ in row
    count and are planned at the output vocabulary's size."""
    method = get_method(config.merge_method)
    if config.slices is not None:
        return _plan_slices(config, method, checkpoints, vocabulary)
    return _plan_models(config, method, checkpoints, vocabulary)
