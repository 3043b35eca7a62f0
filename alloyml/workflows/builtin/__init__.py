"""Built-in workflows, by name: `alloyml workflow run NAME` and `get_builtin(NAME)`.

Registering one is two small edits: write `alloyml/workflows/builtin/<name>.py` with a factory that builds
the `Workflow`, decorated with `@register_builtin("name", "one-line description")`, and add the module to
`BUILTIN_MODULES` below. Modules are imported only when the registry is first read, so `alloyml --help`
stays fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from alloyml.errors import NotFoundError

# One line per built-in workflow module.
BUILTIN_MODULES = (
    "alloyml.workflows.builtin.sklearn_train_score",
    "alloyml.workflows.builtin.demo",
    "alloyml.workflows.builtin.valuation",
    "alloyml.workflows.builtin.merge",
    "alloyml.workflows.builtin.revalue",
    "alloyml.workflows.builtin.cascade_refit",
)


@dataclass(frozen=True)
class Builtin:
    name: str
    description: str
    build: Callable  # () -> Workflow

    @property
    def inputs(self) -> list[str]:
        return sorted(self.build().inputs)


_REGISTRY: dict[str, Builtin] = {}


def register_builtin(name: str, description: str) -> Callable:
    """Register the decorated factory (returning a `Workflow`) as built-in workflow `name`."""

    def decorate(build: Callable) -> Callable:
        _REGISTRY[name] = Builtin(name, description, build)
        return build

    return decorate


def builtins() -> dict[str, Builtin]:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    return dict(sorted(_REGISTRY.items()))


def get_builtin(name: str) -> Builtin:
    known = builtins()
    if name not in known:
        raise NotFoundError(f"no built-in workflow named {name!r}; known: {sorted(known)}")
    return known[name]
