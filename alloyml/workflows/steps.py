"""`@step`: mark a plain function as a workflow step, with its Ray resources and retry policy.

A step is stored by reference (`module:qualname`), never by value, and a stored reference only ever
resolves to an object that `@step` produced: a tampered database cannot make a driver call an arbitrary
function such as `os:system`. Nor can it make the driver import an arbitrary module for its side
effects: a module that is not imported yet is first located without running it, and imported only if
its source defines the named function as a step (`@step` on the `def`, or `name = step(...)`).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from alloyml.errors import InvalidInputError


class StepOptions(BaseModel):
    """Resources a step asks Ray for and how often it is retried when it raises."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved on the node (Ray `num_cpus`).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved on the node (Ray `num_gpus`).")
    memory: int | None = Field(None, gt=0, description="Bytes of memory reserved (Ray `memory`).")
    resources: dict[str, float] = Field(default_factory=dict, description="Custom Ray resources.")
    max_retries: int = Field(0, ge=0, description="Extra attempts after the step raises before it fails.")
    retry_backoff_s: float = Field(1.0, ge=0, description="Wait before retry k is retry_backoff_s * 2**(k-1).")
    max_infra_retries: int = Field(3, ge=0, description="Extra attempts after an infrastructure failure (the "
                                   "Ray worker or node died), counted apart from max_retries.")
    timeout_s: float | None = Field(None, gt=0, description="Stop the step after this many seconds; it counts "
                                    "as a failed attempt (retried under max_retries).")

    def ray_options(self) -> dict:
        options = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "max_retries": 0}
        if self.memory is not None:
            options["memory"] = self.memory
        if self.resources:
            options["resources"] = dict(self.resources)
        return options


class Step:
    """A plain function plus its `StepOptions`; calling it calls the function."""

    def __init__(self, fn: Callable, options: StepOptions):
        self.fn = fn
        self.options = options
        self.__name__ = fn.__name__
        self.__qualname__ = fn.__qualname__
        self.__module__ = fn.__module__
        self.__doc__ = fn.__doc__

    @property
    def ref(self) -> str:
        """`module:qualname`, how the workflow spec names this step."""
        return f"{self.fn.__module__}:{self.fn.__qualname__}"

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Step({self.ref})"

    def __reduce__(self):
        # Ray ships steps to workers by reference when their module is importable there; a step defined in
        # a script (`__main__`) travels by value, which is what Ray does for such functions anyway.
        if self.fn.__module__ == "__main__":
            return Step, (self.fn, self.options)
        return resolve_step, (self.ref,)


def step(fn: Callable | None = None, /, **options) -> Step | Callable[[Callable], Step]:
    """Mark `fn` as a workflow step: `@step` or `@step(num_cpus=2, max_retries=3, retry_backoff_s=0.5)`.

    Options are those of `StepOptions`: num_cpus, num_gpus, memory (bytes), resources ({"name": amount}),
    max_retries, retry_backoff_s, max_infra_retries, timeout_s. A step returns arrays, tensors, JSON-able
    values, alloyml result dataclasses, or dicts / lists / tuples of those (see `alloyml.workflows.codec`).
    """
    parsed = StepOptions.model_validate(options)

    def wrap(function: Callable) -> Step:
        if not callable(function):
            raise InvalidInputError(f"@step expects a function; got {type(function).__name__}")
        return Step(function, parsed)

    return wrap(fn) if fn is not None else wrap


def resolve_step(ref: str) -> Step:
    """The `Step` named `module:qualname`; refuses anything that is not a step."""
    module_name, _, qualname = ref.partition(":")
    if not module_name or not qualname:
        raise InvalidInputError(f"step reference {ref!r} must look like 'package.module:function'")
    if module_name not in sys.modules:
        _refuse_unless_defines_step(ref, module_name, qualname)
    try:
        target = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as err:
        hint = (" It was defined in the script that submitted the workflow; define steps in an importable "
                "module to resume from another process." if module_name == "__main__" else "")
        raise InvalidInputError(f"cannot import step {ref!r}: {err}.{hint}") from err
    if not isinstance(target, Step):
        raise InvalidInputError(f"{ref!r} is a {type(target).__name__}, not a function decorated with @step")
    return target


def _refuse_unless_defines_step(ref: str, module_name: str, qualname: str) -> None:
    """Read the module's source without executing the module (parent packages are imported, as for any
    lookup) and require that it defines `qualname`'s last part as a step."""
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError) as err:
        raise InvalidInputError(f"cannot import step {ref!r}: {err}") from err
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise InvalidInputError(f"cannot import step {ref!r}: no Python source for module {module_name!r}")
    name = re.escape(qualname.rsplit(".", 1)[-1])
    source = Path(spec.origin).read_text(errors="replace")
    decorated = re.search(rf"^[ \t]*@(?:[\w.]+\.)?step\b.*\n(?:[ \t]*@.*\n)*[ \t]*(?:async[ \t]+)?def[ \t]+{name}\b",
                          source, re.MULTILINE)
    assigned = re.search(rf"^[ \t]*{name}[ \t]*=[ \t]*(?:[\w.]+\.)?step\b", source, re.MULTILINE)
    if not (decorated or assigned):
        raise InvalidInputError(f"refusing to import {module_name!r} for step {ref!r}: its source defines no "
                                f"step named {qualname!r}")
