"""Merge methods by name: a decorator records each method's parameters, base-model policy and reference.

A method is a pure tensor function `fn(base, tensors, **parameters) -> tensor`; the engine resolves the
parameters per tensor (filters, per-layer gradients) and handles all I/O. Adding a method is one
decorated function; nothing else dispatches on method names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from alloyml.errors import InvalidInputError

Scope = Literal["shared", "per_model"]


@dataclass(frozen=True)
class Parameter:
    """One parameter of a merge method.

    `scope="per_model"` parameters take one value per merged (non-base) model and reach the method as a
    list in model order; `"shared"` ones take one value. `default=None` means required. `kind` is the type
    every value is validated as (`parameters.coerce_value`); numbers outside `bounds` (inclusive) are refused.
    """

    name: str
    scope: Scope
    default: float | bool | str | None
    help: str
    kind: type = float
    bounds: tuple[float, float] | None = None


@dataclass(frozen=True)
class MergeMethod:
    name: str
    fn: Callable
    parameters: tuple[Parameter, ...]
    reference: str
    uses_base: bool
    min_models: int
    max_models: int | None
    stochastic: bool
    # Refuses one tensor's resolved parameters (returns what is wrong, or None), e.g. weights summing to 0
    # that the method would divide by; called at planning, before anything is read.
    check: Callable[[dict], str | None] | None = None
    # With `uses_base`: the base model may also be left out (the method then merges the models themselves).
    base_optional: bool = False
    # Optional row-block variant for tensors too large to hold once per model:
    # `blocks(read_base, reads, shape, dtype, block_rows, **parameters)` returns an iterator of the merged
    # rows in order (each `read(start, stop)` gives those rows of one input), or None where these
    # parameters need whole tensors (the engine then calls `fn`). See `methods.task_vector_merge_blocks`.
    blocks: Callable | None = None

    @property
    def requires_base(self) -> bool:
        return self.uses_base and not self.base_optional

    def parameter(self, name: str) -> Parameter:
        for p in self.parameters:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.parameters)
        raise InvalidInputError(f"merge method {self.name!r} has no parameter {name!r}; known: {known}")

    def __call__(self, base, tensors, **parameters):
        """Run the method; parameters left out take their declared defaults."""
        return self.fn(base, tensors, **self._with_defaults(parameters, len(tensors)))

    def _with_defaults(self, parameters: dict, n_models: int) -> dict:
        for p in self.parameters:
            if p.name not in parameters and p.default is not None:
                parameters[p.name] = p.default if p.scope == "shared" else [p.default] * n_models
        return parameters

    def run_blocks(self, read_base, reads, shape, dtype, block_rows, **parameters):
        """The merged rows block by block (see `blocks`), or None where this method or these parameters
        need whole tensors."""
        if self.blocks is None:
            return None
        parameters = self._with_defaults(parameters, len(reads))
        return self.blocks(read_base, reads, shape, dtype, block_rows, **parameters)


_METHODS: dict[str, MergeMethod] = {}


def merge_method(
    name: str,
    *,
    reference: str,
    parameters: tuple[Parameter, ...],
    uses_base: bool,
    min_models: int = 1,
    max_models: int | None = None,
    stochastic: bool = False,
    check: Callable[[dict], str | None] | None = None,
    base_optional: bool = False,
    blocks: Callable | None = None,
) -> Callable[[Callable], Callable]:
    """Register `fn` under `name`. Stochastic methods also receive `generator=` (a seeded
    `torch.Generator`, derived per tensor by the engine so results do not depend on tensor order)."""

    def register(fn: Callable) -> Callable:
        if name in _METHODS:
            raise ValueError(f"merge method {name!r} is already registered")
        _METHODS[name] = MergeMethod(
            name, fn, parameters, reference, uses_base, min_models, max_models, stochastic, check, base_optional,
            blocks,
        )
        return fn

    return register


def get_method(name: str) -> MergeMethod:
    """The method registered as `name`; an unknown name raises with the list of known ones."""
    _load_builtin_methods()
    try:
        return _METHODS[name]
    except KeyError:
        raise InvalidInputError(f"unknown merge method {name!r}; known methods: {', '.join(known_methods())}") from None


def known_methods() -> list[str]:
    _load_builtin_methods()
    return sorted(_METHODS)


def _load_builtin_methods() -> None:
    # Importing the module runs its decorators; kept lazy so the registry itself imports no torch.
    import alloyml.merging.geometric_methods  # noqa: F401
    import alloyml.merging.methods  # noqa: F401
