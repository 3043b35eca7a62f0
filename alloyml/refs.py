"""What a config refers to: Python objects named by dotted path, and files named relative to the config.

Shared by every validated config (tuning YAML, LM specs), so a name or a path means the same thing in each.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from pydantic import ValidationInfo

BASE_DIR = "base_dir"  # validation-context key: the folder relative paths are read from


def import_object(dotted: str) -> Any:
    """The object named `package.module.Name` (or `package.module:Name`); ValueError naming what failed."""
    module_name, _, attribute = dotted.partition(":") if ":" in dotted else dotted.rpartition(".")
    if not module_name or not attribute:
        raise ValueError(f"expected a dotted name like package.module.Name, got {dotted!r}")
    try:
        found = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import {module_name!r} (from {dotted!r}): {err}") from None
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise ValueError(f"{module_name!r} has no attribute {attribute!r}")
        found = getattr(found, part)
    return found


def resolve_path(path: Path, info: ValidationInfo) -> Path:
    """`path` read from the validation context's `base_dir` when it is relative (and a base was given)."""
    base = (info.context or {}).get(BASE_DIR)
    return path if path.is_absolute() or base is None else Path(base) / path
