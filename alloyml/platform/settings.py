"""The one settings object, read from environment variables with safe defaults."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from alloyml.errors import ConfigError
from alloyml.home import alloyml_home

_KNOWN_DB_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg", "postgresql+psycopg2")  # what is tested


@dataclass(frozen=True)
class Settings:
    """Where alloyml keeps its state.

    home: ALLOYML_HOME (default ~/.alloyml) — holds the embedded database and the artifact store.
    db_url: ALLOYML_DB_URL (default: SQLite file `alloyml.db` under home).
    ray_address: ALLOYML_RAY_ADDRESS (default None: start a local Ray bound to 127.0.0.1).
    artifacts: ALLOYML_ARTIFACTS (default None: the folder `artifacts` under home) — a folder, or an fsspec
        URL such as `s3://bucket/prefix` for nodes that share no disk (credentials from the environment).
    """

    home: Path
    db_url: str
    ray_address: str | None = None
    artifacts: str | None = None

    @property
    def artifact_root(self) -> Path:
        return self.home / "artifacts"

    @property
    def artifact_location(self) -> str:
        """Where artifacts live: ALLOYML_ARTIFACTS, else the local folder under home."""
        return self.artifacts or str(self.artifact_root)

    @property
    def cache_dir(self) -> Path:
        """This machine's read cache of artifacts (and folders materialized from them)."""
        return self.home / "cache"

    def open_artifacts(self):
        from alloyml.platform.artifacts import open_artifact_store

        return open_artifact_store(self.artifact_location, self.cache_dir)

    @property
    def is_embedded_sqlite(self) -> bool:
        return self.db_url == default_sqlite_url(self.home)

    @classmethod
    def from_env(cls, *, home: str | Path | None = None, db_url: str | None = None,
                 artifacts: str | None = None) -> Settings:
        home_path = alloyml_home(home)
        url = db_url or os.environ.get("ALLOYML_DB_URL") or default_sqlite_url(home_path)
        validate_db_url(url)
        location = artifacts or os.environ.get("ALLOYML_ARTIFACTS") or None
        if location is not None:
            validate_artifacts_url(location)
        return cls(home=home_path, db_url=url, ray_address=os.environ.get("ALLOYML_RAY_ADDRESS") or None,
                   artifacts=location)


def default_sqlite_url(home: Path) -> str:
    return f"sqlite:///{home / 'alloyml.db'}"


def display_url(url: str) -> str:
    """`url` with its password replaced by ***: the only form of a database URL that may be printed,
    logged or stored."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # not a URL SQLAlchemy reads: hide whatever sits between "user:" and "@"
        return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


def without_password(url: str) -> str:
    """`url` with its password removed (not masked): a URL that may travel to another node, which supplies
    the password from its own environment."""
    from sqlalchemy.engine import make_url

    return make_url(url)._replace(password=None).render_as_string(hide_password=False)


def db_password(url: str) -> str | None:
    from sqlalchemy.engine import make_url

    return make_url(url).password


def validate_db_url(url: str) -> None:
    """Reject a malformed database URL before any connection is tried."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError as err:
        raise ConfigError(
            f"ALLOYML_DB_URL {display_url(url)!r} is not a database URL; expected e.g. "
            "'sqlite:///path/alloyml.db' or 'postgresql+psycopg://user@host:5432/db'"
        ) from err
    if parsed.drivername not in _KNOWN_DB_SCHEMES:
        raise ConfigError(
            f"ALLOYML_DB_URL {display_url(url)!r} uses driver {parsed.drivername!r}; "
            f"expected one of {_KNOWN_DB_SCHEMES}"
        )
    if parsed.drivername == "sqlite" and not parsed.database:
        raise ConfigError(f"ALLOYML_DB_URL {display_url(url)!r} names no SQLite file; "
                          "in-memory databases are not shared")


def validate_artifacts_url(location: str) -> None:
    """Reject an artifact location that carries credentials (they belong in the environment) or is empty."""
    scheme, sep, rest = location.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        raise ConfigError(f"ALLOYML_ARTIFACTS ({scheme}://...) names credentials in its URL; give them through "
                          "the environment (e.g. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) instead")
    if sep and not rest.strip("/"):
        raise ConfigError(f"ALLOYML_ARTIFACTS {location!r} names no bucket; expected e.g. 's3://bucket/prefix'")
