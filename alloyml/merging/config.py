"""mergekit-style merge configs as pydantic models, validated before any tensor is read.

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
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from alloyml.errors import ConfigError
from alloyml.merging.registry import get_method

Scalar = bool | int | float | str
DTypeName = Literal["float32", "float16", "bfloat16", "float64"]


class ConditionalValue(BaseModel):
    """A value that applies to tensors whose name contains `filter` (`*` or None: every tensor)."""

    model_config = ConfigDict(extra="forbid")
    value: Scalar | list[Scalar]
    filter: str | None = None


ParameterSetting = Scalar | list[Scalar] | ConditionalValue | list[ConditionalValue]


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    parameters: dict[str, ParameterSetting] = {}


class MergeConfig(BaseModel):
    """One merge: method, inputs, parameters, dtypes and which backend runs it."""

    model_config = ConfigDict(extra="forbid")
    merge_method: str
    base_model: str | None = None
    models: list[ModelSpec]
    parameters: dict[str, ParameterSetting] = {}
    dtype: DTypeName | None = None
    out_dtype: DTypeName | None = None
    backend: Literal["alloyml", "mergekit"] = "alloyml"
    seed: int = 0
    # Passed to mergekit only (alloyml copies the base model's tokenizer files).
    tokenizer_source: str | None = None

    @model_validator(mode="after")
    def _check(self) -> MergeConfig:
        method = get_method(self.merge_method)
        names = [m.model for m in self.models]
        if not names:
            raise ValueError("`models` is empty; list the models to merge")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"models listed more than once: {duplicates}")
        if method.uses_base and not self.base_model:
            raise ValueError(f"merge method {method.name!r} needs `base_model`")
        if not method.uses_base and self.base_model and self.base_model not in names:
            raise ValueError(
                f"merge method {method.name!r} does not use a base model; list {self.base_model!r} "
                "under `models` with a weight, or drop `base_model`"
            )
        merged = self.merged_models()
        if len(merged) < method.min_models or (method.max_models and len(merged) > method.max_models):
            wanted = (
                f"exactly {method.min_models}"
                if method.min_models == method.max_models
                else f"at least {method.min_models}"
            )
            raise ValueError(
                f"merge method {method.name!r} merges {wanted} model(s) besides the base; got {len(merged)}"
            )
        for name in self.parameters:
            method.parameter(name)  # raises for unknown names
        for spec in self.models:
            if spec.parameters and spec.model == self.base_model and method.uses_base:
                raise ValueError(f"parameters given for base model {spec.model!r} are not used by {method.name}")
            for name in spec.parameters:
                if method.parameter(name).scope == "shared":
                    raise ValueError(
                        f"parameter {name!r} of {method.name} is shared by all models; set it under the "
                        f"top-level `parameters`, not under model {spec.model!r}"
                    )
        for p in method.parameters:
            missing = [s.model for s in merged if p.name not in s.parameters and p.name not in self.parameters]
            if p.default is None and (missing if p.scope == "per_model" else p.name not in self.parameters):
                where = f" for models {missing}" if p.scope == "per_model" else ""
                raise ValueError(f"merge method {method.name!r} needs parameter {p.name!r}{where}")
        return self

    def merged_models(self) -> list[ModelSpec]:
        """The models that are combined (the base model excluded for methods that use one)."""
        if get_method(self.merge_method).uses_base:
            return [m for m in self.models if m.model != self.base_model]
        return list(self.models)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_defaults=True), sort_keys=False)


def load_config(source: MergeConfig | dict | str | os.PathLike) -> MergeConfig:
    """Validate a config given as a model, a dict, a YAML file path or YAML text."""
    if isinstance(source, MergeConfig):
        return source
    if isinstance(source, str | os.PathLike) and not (isinstance(source, str) and "\n" in source):
        path = Path(source)
        if not path.exists():
            raise ConfigError(f"merge config file {path} does not exist")
        data: Any = yaml.safe_load(path.read_text())
        label = str(path)
    elif isinstance(source, str):
        data, label = yaml.safe_load(source), "<yaml text>"
    else:
        data, label = source, "<dict>"
    if not isinstance(data, dict):
        raise ConfigError(f"merge config {label}: expected a mapping, got {type(data).__name__}")
    try:
        return MergeConfig.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg'].removeprefix('Value error, ')}"
            for e in err.errors()
        )
        raise ConfigError(f"merge config {label} is invalid: {problems}") from None
