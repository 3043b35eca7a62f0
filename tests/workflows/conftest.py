"""Fixtures of the workflow tests: a migrated store (SQLite and PostgreSQL) and a side-effect log file."""

from __future__ import annotations

import pytest

from alloyml.platform.client import Platform


@pytest.fixture
def platform(db_url, tmp_path):
    with Platform(db_url=db_url, home=tmp_path / "home", upgrade=True) as client:
        yield client


@pytest.fixture
def sqlite_platform(tmp_path):
    """For behaviour that does not depend on the database (the store calls are the same on both)."""
    with Platform(db_url=f"sqlite:///{tmp_path / 'store.db'}", home=tmp_path / "home", upgrade=True) as client:
        yield client


@pytest.fixture
def log(tmp_path):
    return str(tmp_path / "steps.log")
