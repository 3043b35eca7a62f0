"""Per-tensor parameter values, resolved as mergekit does.

A setting is a scalar, a gradient (a list of numbers interpolated over the layer stack: the first value
at layer 0, the last at the final layer), a conditional `{filter, value}` (applies when `filter` is a
substring of the tensor name; `*` or no filter matches everything), or a list of conditionals (the first
match wins). Tensors outside the layer stack (embeddings, final norm, head) take the gradient's first
value, as in mergekit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|layer|blocks|block|h)\.(\d+)(?:\.|$)")


def layer_index(tensor_name: str) -> int | None:
    """The transformer layer a tensor belongs to, e.g. 3 for `model.layers.3.mlp.up_proj.weight`."""
    match = _LAYER_INDEX.search(tensor_name)
    return int(match.group(1)) if match else None


def layer_positions(tensor_names: Iterable[str]) -> dict[str, float]:
    """Map each tensor name to its position `t` in [0, 1] along the layer stack (0 outside it)."""
    names = list(tensor_names)
    indices = {name: layer_index(name) for name in names}
    num_layers = max((i for i in indices.values() if i is not None), default=-1) + 1
    positions = {}
    for name, index in indices.items():
        if index is None:
            positions[name] = 0.0
        else:
            positions[name] = index / (num_layers - 1) if num_layers > 1 else 1.0
    return positions


def _is_conditional(setting: Any) -> bool:
    return isinstance(setting, Mapping) or hasattr(setting, "filter")


def _field(setting: Any, key: str) -> Any:
    return setting.get(key) if isinstance(setting, Mapping) else getattr(setting, key)


def evaluate_setting(setting: Any, tensor_name: str, t: float) -> Any:
    """The value of one setting for `tensor_name` at layer position `t`; None when no filter matches."""
    if _is_conditional(setting):
        setting = [setting]
    if not isinstance(setting, Sequence) or isinstance(setting, str):
        return setting
    if not setting:
        return None
    if not any(_is_conditional(item) for item in setting):
        return _gradient(setting, t)
    for cond in setting:
        flt = _field(cond, "filter")
        if flt is None or flt == "*" or flt in tensor_name:
            return evaluate_setting(_field(cond, "value"), tensor_name, t)
    return None


def _gradient(values: Sequence[Any], t: float) -> Any:
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if not numeric:
        return values[int(t * (len(values) - 1))]
    scaled = t * (len(values) - 1)
    lo = int(scaled)
    hi = min(len(values) - 1, lo + 1)
    frac = scaled - lo
    return (1 - frac) * values[lo] + frac * values[hi]


def resolve(name: str, scopes: Iterable[Mapping[str, Any] | None], tensor_name: str, t: float) -> Any:
    """The first non-None value of parameter `name` across `scopes` (highest precedence first)."""
    for scope in scopes:
        if scope and name in scope:
            value = evaluate_setting(scope[name], tensor_name, t)
            if value is not None:
                return value
    return None


def coerce_value(parameter: Any, value: Any, where: str) -> Any:
    """`value` validated as `parameter.kind`, as mergekit validates it: numbers from numeric strings (PyYAML
    reads `1e-1` as a string), booleans strictly (`"false"` is False, `"maybe"` is refused), finite numbers
    within `parameter.bounds`. Raises ConfigError naming the parameter and `where` it was set."""
    from pydantic import TypeAdapter, ValidationError

    from alloyml.errors import ConfigError

    kind = parameter.kind
    expected = {bool: "true or false", int: "an integer", float: "a number"}.get(kind, f"one of {kind}")
    if kind in (int, float) and isinstance(value, bool):
        raise ConfigError(f"parameter {parameter.name!r}{where}: expected {expected}, got {value!r}")
    try:
        coerced = TypeAdapter(kind).validate_python(value)
    except ValidationError:
        raise ConfigError(f"parameter {parameter.name!r}{where}: expected {expected}, got {value!r}") from None
    if kind in (int, float):
        if not math.isfinite(coerced):
            raise ConfigError(f"parameter {parameter.name!r}{where}: expected a finite number, got {value!r}")
        low, high = parameter.bounds or (-math.inf, math.inf)
        if not low <= coerced <= high:
            raise ConfigError(f"parameter {parameter.name!r}{where}: {coerced} is outside [{low}, {high}]")
    return coerced


def coerce_setting(parameter: Any, setting: Any, where: str) -> Any:
    """A setting (scalar, gradient, conditional or list of conditionals) with every value coerced.
    Gradients interpolate between their anchors, so checking the anchors bounds every resolved value."""
    if _is_conditional(setting):
        value = coerce_setting(parameter, _field(setting, "value"), where)
        if isinstance(setting, Mapping):
            return {**setting, "value": value}
        return setting.model_copy(update={"value": value})
    if isinstance(setting, Sequence) and not isinstance(setting, str):
        return [coerce_setting(parameter, item, where) for item in setting]
    return coerce_value(parameter, setting, where)


def coerce_scope(method: Any, scope: dict[str, Any], where: str) -> None:
    """Coerce, in place, every setting of one parameter scope (a `parameters:` mapping) of `method`."""
    for name, setting in scope.items():
        scope[name] = coerce_setting(method.parameter(name), setting, where)


def coerce_config_parameters(method: Any, config: Any) -> None:
    """Coerce every parameter setting of a merge config in place: top level, slices and their sources,
    and models. Runs when the config is validated, so a bad value fails before any checkpoint is opened."""
    coerce_scope(method, config.parameters, "")
    coerce_scope(method, config.module_parameters, " in `modules.default.parameters`")
    for spec in config.models or ():
        coerce_scope(method, spec.parameters, f" of model {spec.model!r}")
    for i, out_slice in enumerate(config.slices or ()):
        coerce_scope(method, out_slice.parameters, f" in `slices[{i}]`")
        for j, src in enumerate(out_slice.sources):
            coerce_scope(method, src.parameters, f" of model {src.model!r} in `slices[{i}].sources[{j}]`")


# Config keys mergekit acts on that the alloyml backend does not implement yet: refused rather than ignored,
# since ignoring them would give a model that differs from mergekit's with no sign of it.
UNSUPPORTED_KEYS = {
    "tokenizer": "per-token embedding sources and `pad_to_multiple_of` are not implemented; `tokenizer_source: "
    "base | union | MODEL` is",
}


ALLOYML_ONLY_PARAMETER = "rescale_mode"


def refuse_unsupported_keys(config: Any) -> None:
    """Refuse keys the chosen backend would ignore: tokenizer keys for alloyml, alloyml-only ones for mergekit."""
    from alloyml.errors import ConfigError

    if config.backend == "mergekit":
        scopes = [*config.top_scopes, *(s.parameters for s in config.slices or ())]
        if any(ALLOYML_ONLY_PARAMETER in scope for scope in scopes):
            raise ConfigError(
                f"parameter {ALLOYML_ONLY_PARAMETER!r} is alloyml's own (mergekit always rescales by the L1 "
                "norm); remove it, or use backend: alloyml"
            )
        return
    from alloyml.merging.vocabulary import check_chat_template

    check_chat_template(config)
    for key, why in UNSUPPORTED_KEYS.items():
        if getattr(config, key) is not None:
            raise ConfigError(
                f"`{key}: {getattr(config, key)}` is not supported by the alloyml backend ({why}); remove it, "
                "or set `backend: mergekit`"
            )
