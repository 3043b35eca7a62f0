"""How workflow inputs and step outputs are stored: safe formats only, never pickle.

A value becomes a JSON tree. JSON-able leaves stay inline; other leaves become tagged objects that point
at artifacts:

- numpy arrays (numeric or fixed-width dtypes) → `{"__array__": key}`, a `.npy` read with allow_pickle=False
- torch tensors → `{"__tensor__": key}`, one safetensors file
- tuples → `{"__tuple__": [...]}`; non-finite floats → `{"__float__": "nan" | "inf" | "-inf"}`
- dataclasses defined in `alloyml.*` (library results) → `{"__dataclass__": "module:Name", "fields": {...}}`;
  decoding imports only `alloyml.*` dataclasses and calls them with the decoded fields.
- a workflow input whose JSON form is over `INLINE_LIMIT` bytes (say a list of a million floats) →
  `{"__json__": key}`, one JSON artifact, so the workflow row stays small (it is re-read by every poll)
- `StoreLocation` (where steps record results) → `{"__store__": "workflow"}`: a reference, never the
  database URL, which may carry a password. The driver resolves it to its own store's location, from its
  own environment, when it hands the inputs to the steps.

Anything else (an sklearn estimator, an open file, a lambda) is refused with `UnsafeValueError`: it has no
safe stored form, and a step that could not be stored could not be skipped on resume. Return its learned
arrays instead (see `alloyml.workflows.builtin.sklearn_train_score`).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math

import numpy as np

from alloyml.errors import InvalidInputError
from alloyml.platform.artifacts import ArtifactStore

ARTIFACT_KIND = "workflow"
_TAGS = ("__array__", "__tensor__", "__tuple__", "__float__", "__dataclass__", "__store__", "__json__")
INLINE_LIMIT = 1 << 20  # bytes of JSON kept inline in `workflow.inputs`


class StoreLocation(dict):
    """{"db_url", "home"} of a store, as steps receive it. Stored as a reference (see the module docstring),
    so a credential in `db_url` never reaches the database or the artifacts."""


class UnsafeValueError(InvalidInputError):
    """A value has no safe stored form (see the module docstring for what is accepted)."""


def encode(value, artifacts: ArtifactStore, where: str = "value"):
    """The JSON tree that stands for `value`; arrays and tensors are written to `artifacts`."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, np.generic):
        return encode(value.item(), artifacts, where)
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise UnsafeValueError(f"{where} is an object-dtype array, which cannot be stored without pickle")
        return {"__array__": artifacts.put_array(value, kind=ARTIFACT_KIND)}
    if _is_tensor(value):
        return {"__tensor__": artifacts.put_tensors({"tensor": value}, kind=ARTIFACT_KIND)}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v, artifacts, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode(v, artifacts, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, StoreLocation):
        return {"__store__": "workflow"}
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise UnsafeValueError(f"{where} has a key {key!r} of type {type(key).__name__}; keys must be str")
            if key in _TAGS:
                raise UnsafeValueError(f"{where} uses the reserved key {key!r}")
        return {key: encode(v, artifacts, f"{where}[{key!r}]") for key, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        if not cls.__module__.startswith("alloyml."):
            raise UnsafeValueError(
                f"{where} is a {cls.__qualname__} dataclass from {cls.__module__}; only alloyml result "
                "dataclasses are stored as such — return a dict of its fields instead")
        fields = {f.name: encode(getattr(value, f.name), artifacts, f"{where}.{f.name}")
                  for f in dataclasses.fields(value) if f.init}
        return {"__dataclass__": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}
    raise UnsafeValueError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which has no safe stored form; "
        "return arrays, tensors, JSON-able values, alloyml result dataclasses, or dicts/lists/tuples of those")


def encode_input(value, artifacts: ArtifactStore, where: str):
    """`encode` for a workflow input: a large JSON tree goes to an artifact instead of the workflow row."""
    tree = encode(value, artifacts, where)
    if isinstance(tree, list | dict) and len(json.dumps(tree, separators=(",", ":"))) > INLINE_LIMIT:
        return {"__json__": artifacts.put_json(tree, kind=ARTIFACT_KIND)}
    return tree


def decode(tree, artifacts: ArtifactStore, store: StoreLocation | None = None):
    """Inverse of `encode`; a store reference becomes `store` (the decoding driver's own location)."""
    if isinstance(tree, list):
        return [decode(v, artifacts, store) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if "__json__" in tree:
        return decode(artifacts.get_json(tree["__json__"]), artifacts, store)
    if "__store__" in tree:
        if store is None:
            raise InvalidInputError("a stored store reference can only be resolved by a workflow driver")
        return StoreLocation(store)
    if "__array__" in tree:
        return artifacts.get_array(tree["__array__"])
    if "__tensor__" in tree:
        return artifacts.get_tensors(tree["__tensor__"])["tensor"]
    if "__tuple__" in tree:
        return tuple(decode(v, artifacts, store) for v in tree["__tuple__"])
    if "__float__" in tree:
        return float(tree["__float__"])
    if "__dataclass__" in tree:
        return _dataclass(tree["__dataclass__"])(**{k: decode(v, artifacts, store) for k, v in tree["fields"].items()})
    return {key: decode(v, artifacts, store) for key, v in tree.items()}


def _is_tensor(value) -> bool:
    module = type(value).__module__
    return module.startswith("torch") and type(value).__name__ in ("Tensor", "Parameter")


def _dataclass(ref: str):
    module_name, _, qualname = ref.partition(":")
    if not module_name.startswith("alloyml."):
        raise InvalidInputError(f"refusing to rebuild {ref!r}: only alloyml dataclasses are decoded")
    target = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    if not (isinstance(target, type) and dataclasses.is_dataclass(target)):
        raise InvalidInputError(f"{ref!r} is not a dataclass")
    return target
