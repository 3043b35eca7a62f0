"""Per-tensor parameter values, resolved as mergekit does.

A setting is a scalar, a gradient (a list of numbers interpolated over the layer stack: the first value
at layer 0, the last at the final layer), a conditional `{filter, value}` (applies when `filter` is a
substring of the tensor name; `*` or no filter matches everything), or a list of conditionals (the first
match wins). Tensors outside the layer stack (embeddings, final norm, head) take the gradient's first
value, as in mergekit.
"""

from __future__ import annotations

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
