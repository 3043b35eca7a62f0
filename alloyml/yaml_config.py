"""Reading a YAML (or already parsed) configuration into a pydantic model, with one error format.

Every config alloyml reads (merge configs, tuning configs) comes through `load_yaml_model`, so a bad one
always fails the same way, before any work starts: a `ConfigError` that names the file, each bad field by
its dotted path, and what was expected there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from alloyml.errors import ConfigError

Model = TypeVar("Model", bound=BaseModel)


def validation_problems(err: ValidationError, skip: int = 0) -> str:
    """`field.path: what was expected` per error, joined by "; "; rules over several fields (a model
    validator, so no path) name their fields themselves. `skip` drops leading path parts (a union's tag)."""

    def message(e) -> str:
        if e["type"] == "extra_forbidden":
            return "unknown key"
        if e["type"] == "union_tag_not_found":
            return f"missing the key {e['ctx']['discriminator']} that says which form this is"
        return e["msg"].removeprefix("Value error, ")

    def where(e) -> str:
        return ".".join(str(p) for p in e["loc"][skip:])

    return "; ".join(f"{where(e)}: {message(e)}" if where(e) else message(e) for e in err.errors())


def describe_error(err: Exception) -> str:
    """`validation_problems` for a pydantic error, the message otherwise."""
    return validation_problems(err) if isinstance(err, ValidationError) else str(err)


def read_yaml(source: dict | str | os.PathLike, what: str) -> tuple[Any, str, Path | None]:
    """(parsed data, label for messages, the file's folder or None)."""
    if isinstance(source, dict):
        return source, "<dict>", None
    if isinstance(source, str) and "\n" in source:
        text, label, folder = source, "<yaml text>", None
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"{what} file {path} does not exist")
        text, label, folder = path.read_text(), str(path), path.parent
    else:
        raise ConfigError(f"{what}: expected a file path, YAML text or a mapping, got {type(source).__name__}")
    try:
        return yaml.safe_load(text), label, folder
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {label} is not valid YAML: {err}") from None


def load_yaml_model(source: Model | dict | str | os.PathLike, model: type[Model], *, what: str = "config") -> Model:
    """Validate `source` (an instance, a mapping, a YAML file path or YAML text) as `model`.

    `what` names the kind of config in messages ("merge config"). Validators see the config file's
    folder as `info.context["base_dir"]` (None for text or a mapping), to read relative paths from it."""
    if isinstance(source, model):
        return source
    data, label, folder = read_yaml(source, what)
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {label}: expected a mapping of keys, got {type(data).__name__}")
    try:
        return model.model_validate(data, context={"base_dir": folder})
    except ValidationError as err:
        raise ConfigError(f"{what} {label} is invalid: {validation_problems(err)}") from None
