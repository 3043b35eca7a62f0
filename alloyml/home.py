"""Where alloyml keeps its files: the one reading of ALLOYML_HOME, shared by the libraries (model cache,
tuning results) and the platform's `Settings` (database, artifacts)."""

from __future__ import annotations

import os
from pathlib import Path


def alloyml_home(home: str | Path | None = None) -> Path:
    """`home` if given, else $ALLOYML_HOME, else ~/.alloyml (user-expanded; not created)."""
    return Path(home or os.environ.get("ALLOYML_HOME") or Path.home() / ".alloyml").expanduser()
