"""mergekit-style merge configs as pydantic models, validated before any tensor is read.

Whole models (`models:`), merged tensor by tensor:

```yaml
merge_method: ties
base_model: ./base
models:
  - model: ./math
    parameters: {weight: 0.6, density: 0.5}
  - model: ./code
    parameters: {weight: [0.2, 0.8], density: 0.7}   # a gradient over the layer stack
parameters:
  lambda: 1.0
dtype: float32
```

Or layer ranges (`slices:`, exactly one of the two): each output slice merges its sources' layers
`[start, end)` position by position, and the slices are stacked in order. A slice with one source copies
its layers, which is how `passthrough` frankenmerges stack ranges of different models:

```yaml
merge_method: passthrough
slices:
  - sources: [{model: ./chat, layer_range: [0, 24]}]
  - sources: [{model: ./code, layer_range: [8, 32]}]
```

Gradients run over each slice's own layers; a slice may set its own `parameters` and `base_model`, and a
source its own `parameters` (most specific first: source, slice, module, top level).

Or mergekit's `modules:` form, `{modules: {default: {models: [...] | slices: [...], parameters: {...}}}}`:
single-module architectures (every decoder-only LM) name their one module `default`, as mergekit does; its
`models`/`slices` are read as if given at the top level and its `parameters` form a scope between the
slice's and the top level's. Multi-module architectures (vision-language models) are refused.
`layer_pattern` (alloyml only) names the layer tensors when they are not named like a known architecture
(see `layers.py`).
"""

from __future__ import annotations

import os
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, model_validator

from alloyml.errors import ConfigError
from alloyml.merging.layers import LayerNaming
from alloyml.merging.parameters import coerce_config_parameters, refuse_unsupported_keys
from alloyml.merging.registry import MergeMethod, get_method
from alloyml.yaml_config import load_yaml_model

Scalar = bool | int | float | str
DTypeName = Literal["float32", "float16", "bfloat16", "float64"]


class ConditionalValue(BaseModel):
    """A value that applies to tensors whose name contains `filter` (`*` or None: every tensor)."""

    model_config = ConfigDict(extra="forbid")
    value: Scalar | list[Scalar]
    filter: str | None = None


ParameterSetting = Scalar | list[Scalar] | ConditionalValue | list[ConditionalValue]


class MergeModelEntry(BaseModel):
    """One entry of a merge config's `models:` list: a model and the parameters it is merged with."""

    model_config = ConfigDict(extra="forbid")
    model: str
    parameters: dict[str, ParameterSetting] = {}


class SliceSource(BaseModel):
    """Layers `layer_range` = [start, end) of `model`, and the parameters they are merged with."""

    model_config = ConfigDict(extra="forbid")
    model: str
    layer_range: tuple[int, int]
    parameters: dict[str, ParameterSetting] = {}

    @model_validator(mode="after")
    def _check_range(self) -> SliceSource:
        start, end = self.layer_range
        if not 0 <= start < end:
            raise ValueError(
                f"layer_range {list(self.layer_range)} of model {self.model!r} is empty or reversed; "
                "give [start, end) with 0 <= start < end"
            )
        return self

    @property
    def num_layers(self) -> int:
        return self.layer_range[1] - self.layer_range[0]


class OutputSlice(BaseModel):
    """Output layers made by merging the sources' layers position by position (one source: copied)."""

    model_config = ConfigDict(extra="forbid")
    sources: list[SliceSource]
    base_model: str | None = None
    parameters: dict[str, ParameterSetting] = {}

    @property
    def num_layers(self) -> int:
        return self.sources[0].num_layers


class OutputModule(BaseModel):
    """One entry of mergekit's `modules:` mapping: its own `models` or `slices`, and its parameters."""

    model_config = ConfigDict(extra="forbid")
    models: list[MergeModelEntry] | None = None
    slices: list[OutputSlice] | None = None
    parameters: dict[str, ParameterSetting] = {}


# mergekit's name for the one module of a single-module architecture (its JSON definitions' default).
DEFAULT_MODULE = "default"


def _unwrap_modules(data):
    """A config in `modules:` form, as the equivalent top-level `models`/`slices` config with the module's
    parameters kept as their own scope (`module_parameters`). Refuses what alloyml cannot merge."""
    if not isinstance(data, dict) or data.get("modules") is None:
        return data
    modules = data["modules"]
    if not isinstance(modules, dict) or not modules:
        raise ConfigError(f"`modules` must map module names to {{models | slices, parameters}}; got {modules!r}")
    if data.get("models") is not None or data.get("slices") is not None:
        raise ConfigError("give exactly one of `models`, `slices` or `modules`")
    if list(modules) != [DEFAULT_MODULE]:
        raise ConfigError(
            f"`modules` names {sorted(map(str, modules))}; alloyml merges single-module architectures, whose "
            f"one module mergekit calls {DEFAULT_MODULE!r} (multi-module models such as vision-language "
            f"towers are not supported): write `modules: {{{DEFAULT_MODULE}: ...}}`, or `models`/`slices`, "
            "or set `backend: mergekit`"
        )
    module = OutputModule.model_validate(modules[DEFAULT_MODULE])
    if (module.models is None) == (module.slices is None):
        raise ConfigError(f"`modules.{DEFAULT_MODULE}`: give exactly one of `models` or `slices`")
    out = {k: v for k, v in data.items() if k != "modules"}
    out["models" if module.models is not None else "slices"] = module.models or module.slices
    out["module_parameters"] = module.parameters
    return out


class MergeConfig(BaseModel):
    """One merge: method, inputs (`models` or `slices`), parameters, dtypes and which backend runs it."""

    model_config = ConfigDict(extra="forbid")
    merge_method: str
    base_model: str | None = None
    models: list[MergeModelEntry] | None = None
    slices: list[OutputSlice] | None = None
    parameters: dict[str, ParameterSetting] = {}
    dtype: DTypeName | None = None
    out_dtype: DTypeName | None = None
    backend: Literal["alloyml", "mergekit"] = "alloyml"
    seed: int = 0
    # The output tokenizer and the vocabulary embeddings are realigned to (see vocabulary.py).
    tokenizer_source: str | None = None
    chat_template: str | None = None
    # mergekit's `tokenizer:` block (per-token embedding sources, padding): refused by the alloyml backend.
    tokenizer: dict | None = None
    # alloyml only (mergekit knows layer names from its architecture definitions): the prefix of layer
    # tensors, e.g. "model.layers.{layer}.", for `slices` over checkpoints of an unknown naming.
    layer_pattern: str | None = None
    # The parameters of a `modules: {default: ...}` config's module (see `_unwrap_modules`).
    module_parameters: dict[str, ParameterSetting] = {}

    _unwrap = model_validator(mode="before")(_unwrap_modules)

    @property
    def top_scopes(self) -> list[dict]:
        """The parameter scopes above slices and sources, most specific first: module, top level."""
        return [self.module_parameters, self.parameters]

    @model_validator(mode="after")
    def _check(self) -> MergeConfig:
        method = get_method(self.merge_method)
        if self.models is not None and self.slices is not None:
            raise ValueError("give either `models` (whole models) or `slices` (layer ranges), not both")
        if self.models is None and self.slices is None:
            raise ValueError("list the models to merge under `models`, or their layer ranges under `slices`")
        if self.layer_pattern is not None:
            LayerNaming(self.layer_pattern)  # raises for a malformed pattern
        for name in [*self.parameters, *self.module_parameters]:
            method.parameter(name)  # raises for unknown names
        if self.models is not None:
            if method.requires_base and not self.base_model:
                raise ValueError(f"merge method {method.name!r} needs `base_model`")
            names = [m.model for m in self.models]
            if not method.uses_base and self.base_model and names and self.base_model not in names:
                raise ValueError(
                    f"merge method {method.name!r} does not use a base model; list {self.base_model!r} "
                    "under `models` with a weight, or drop `base_model`"
                )
            _check_inputs(method, "`models`", self.models, self.base_model, self.top_scopes)
            return self
        if not self.slices:
            raise ValueError("`slices` is empty; list the output slices and their sources")
        for i, out_slice in enumerate(self.slices):
            label = f"`slices[{i}]`"
            for name in out_slice.parameters:
                method.parameter(name)
            lengths = {s.num_layers for s in out_slice.sources}
            if len(lengths) > 1:
                ranges = ", ".join(f"{s.model!r} {list(s.layer_range)}" for s in out_slice.sources)
                raise ValueError(
                    f"{label}: every source must give the same number of layers, since layers are merged "
                    f"position by position; got {ranges}"
                )
            base = self.slice_base(out_slice)
            if method.requires_base or base:
                if not base:
                    raise ValueError(f"merge method {method.name!r} needs `base_model` (top level or in {label})")
                if base not in [s.model for s in out_slice.sources]:
                    raise ValueError(
                        f"{label}: base model {base!r} is not among its sources; {method.name} merges each "
                        f"layer against the base's layer in the same slice, so add a source for {base!r}"
                    )
            _check_inputs(
                method, f"`slices[{i}].sources`", out_slice.sources, base, [out_slice.parameters, *self.top_scopes]
            )
        return self

    @model_validator(mode="after")
    def _check_values(self) -> MergeConfig:
        refuse_unsupported_keys(self)
        coerce_config_parameters(get_method(self.merge_method), self)
        return self

    def merged_models(self) -> list[MergeModelEntry]:
        """With `models`: the models that are combined (the base model excluded for methods that use one)."""
        return _merged(get_method(self.merge_method), self.models, self.base_model)

    def slice_base(self, out_slice: OutputSlice) -> str | None:
        """The base model of a slice, for methods that use one: its own, else the top-level one."""
        return (out_slice.base_model or self.base_model) if get_method(self.merge_method).uses_base else None

    def merged_sources(self, out_slice: OutputSlice) -> list[SliceSource]:
        """The sources of a slice that are combined (its base excluded for methods that use one)."""
        return _merged(get_method(self.merge_method), out_slice.sources, self.slice_base(out_slice))

    def referenced_models(self) -> list[str]:
        """Every model the config names, each once, the reference model first."""
        names = [self.reference_model(), self.base_model]
        if self.models is not None:
            names += [m.model for m in self.models]
        else:
            names += [n for s in self.slices for n in (s.base_model, *(src.model for src in s.sources))]
        return [n for n in dict.fromkeys(names) if n]

    def reference_model(self) -> str:
        """The model whose config and tokenizer files the output gets: the base, else the first input."""
        return self.base_model or (self.models[0].model if self.models is not None else self.slices[0].sources[0].model)

    def output_layers(self) -> int | None:
        """With `slices`: the number of layers of the merged model (None with `models`: unchanged)."""
        return sum(s.num_layers for s in self.slices) if self.slices is not None else None

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", exclude_defaults=True)
        if "module_parameters" in data:  # written back in mergekit's form, which mergekit reads too
            module = {k: data.pop(k) for k in ("models", "slices") if k in data}
            data["modules"] = {DEFAULT_MODULE: {**module, "parameters": data.pop("module_parameters")}}
        return yaml.safe_dump(data, sort_keys=False)


def _merged(method: MergeMethod, specs: list[MergeModelEntry] | list[SliceSource], base: str | None) -> list:
    return [s for s in specs if not (method.uses_base and s.model == base)]


def _check_inputs(
    method: MergeMethod,
    label: str,
    specs: list[MergeModelEntry] | list[SliceSource],
    base: str | None,
    shared: list[dict],
) -> None:
    """Rules shared by `models` and each slice's `sources`: names, counts and where parameters are set.
    `shared` holds the enclosing parameter scopes (the slice's, then the top level's)."""
    names = [s.model for s in specs]
    if not names:
        raise ValueError(f"{label} is empty; list the models to merge")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{label}: models listed more than once: {duplicates}")
    merged = _merged(method, specs, base)
    if len(merged) < method.min_models or (method.max_models and len(merged) > method.max_models):
        wanted = (
            f"exactly {method.min_models}"
            if method.min_models == method.max_models
            else f"at least {method.min_models}"
        )
        besides = " besides the base" if method.uses_base else ""
        raise ValueError(
            f"merge method {method.name!r} merges {wanted} model(s){besides}; {label} gives {len(merged)} "
            f"({', '.join(repr(s.model) for s in merged)})"
        )
    for spec in specs:
        if spec.parameters and method.uses_base and spec.model == base:
            raise ValueError(f"parameters given for base model {spec.model!r} are not used by {method.name}")
        for name in spec.parameters:
            if method.parameter(name).scope == "shared":
                raise ValueError(
                    f"parameter {name!r} of {method.name} is shared by all models; set it under the "
                    f"top-level `parameters`, not under model {spec.model!r}"
                )
    for p in method.parameters:
        given = any(p.name in scope for scope in shared)
        missing = [s.model for s in merged if p.name not in s.parameters and not given]
        if p.default is None and (missing if p.scope == "per_model" else not given):
            where = f" for models {missing}" if p.scope == "per_model" else ""
            raise ValueError(f"merge method {method.name!r} needs parameter {p.name!r}{where}")


def load_merge_config(source: MergeConfig | dict | str | os.PathLike) -> MergeConfig:
    """Validate a config given as a model, a dict, a YAML file path or YAML text."""
    return load_yaml_model(source, MergeConfig, what="merge config")
