"""The store knows where results are kept, never how work is run: no module of `alloyml.platform` imports
the workflow engine or the dashboard, not even inside a function (a lazy import is still a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

import alloyml.platform

PLATFORM_DIR = Path(alloyml.platform.__file__).resolve().parent
FORBIDDEN = ("alloyml.workflows", "alloyml.ui", "alloyml.commands")


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_platform_imports_no_workflow_engine_or_ui():
    files = sorted(PLATFORM_DIR.rglob("*.py"))
    assert len(files) >= 8  # the walk really sees the package
    offending = {str(f.relative_to(PLATFORM_DIR)): sorted(m for m in _imported_modules(f)
                                                          if m.startswith(FORBIDDEN))
                 for f in files}
    assert {f: m for f, m in offending.items() if m} == {}


def test_submission_lives_in_workflows():
    from alloyml.platform.client import Platform
    from alloyml.workflows import submit

    assert not hasattr(Platform, "submit") and callable(submit)
