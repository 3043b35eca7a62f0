"""Engines and migrations: how alloyml connects to SQLite or PostgreSQL and keeps the schema current.

SQLite runs in WAL mode with a busy timeout, and write transactions start with `BEGIN IMMEDIATE`: a
deferred transaction that later needs the write lock fails at once with "database is locked" when another
process wrote in between, whatever the timeout, while an immediate one waits its turn.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from alloyml.errors import SchemaOutdatedError, StoreError
from alloyml.platform.settings import display_url

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 60_000


def is_sqlite(url: str) -> bool:
    return make_url(url).drivername.startswith("sqlite")


def make_engines(url: str) -> tuple[Engine, Engine]:
    """(write engine, read engine). They are the same engine except on SQLite."""
    if not is_sqlite(url):
        engine = create_engine(url, pool_pre_ping=True)
        return engine, engine
    folder = Path(make_url(url).database).expanduser().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file in the way, no permission, read-only filesystem
        raise StoreError(f"cannot create the folder {str(folder)!r} for the SQLite database {url!r}: "
                         f"{err.strerror or err}") from err
    return _sqlite_engine(url, immediate=True), _sqlite_engine(url, immediate=False)


def _sqlite_engine(url: str, *, immediate: bool) -> Engine:
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # Let SQLAlchemy's "begin" event issue BEGIN itself instead of pysqlite's implicit one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _alembic_config(connection):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config(None)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Run every pending migration up to `revision`; returns the revision the database is now at."""
    return _migrate(engine, "upgrade", revision)


def downgrade(engine: Engine, revision: str) -> str:
    """Undo migrations down to `revision` (a revision id, or "base" for an empty database)."""
    return _migrate(engine, "downgrade", revision)


def _migrate(engine: Engine, direction: str, revision: str) -> str:
    """One transaction for the whole migration. On SQLite, foreign keys are off while it runs: Alembic's
    batch mode rebuilds a table by copy, drop and rename, and with foreign keys on the DROP cascades into
    every referencing table (rows deleted, links set to NULL). The PRAGMA is a no-op inside a transaction,
    so it is issued on the raw connection before BEGIN; `PRAGMA foreign_key_check` then has to come back
    empty or the migration is rolled back."""
    from alembic import command

    step = getattr(command, direction)
    try:
        with engine.connect() as connection:
            _migrate_on(connection, engine, step, direction, revision)
        return current_revision(engine)
    except (SQLAlchemyError, sqlite3.Error) as err:  # not a database, unknown database, refused connection
        raise StoreError(f"cannot {direction} the database {display_url(str(engine.url))}: "
                         f"{getattr(err, 'orig', None) or err}") from err


def _migrate_on(connection, engine: Engine, step, direction: str, revision: str) -> None:
    from alembic.util import CommandError

    raw = connection.connection.driver_connection if engine.dialect.name == "sqlite" else None
    if raw is not None:
        raw.execute("PRAGMA foreign_keys=OFF")
    try:
        with connection.begin():
            try:
                step(_alembic_config(connection), revision)
            except CommandError as err:  # unknown revision, nothing to downgrade to, ...
                raise StoreError(f"cannot {direction} to {revision!r}: {err}"
                                 + _newer_hint(connection)) from err
            if raw is not None:
                _refuse_broken_links(connection)
    finally:
        if raw is not None:
            raw.execute("PRAGMA foreign_keys=ON")


def known_revisions() -> list[str]:
    """This alloyml's revisions, oldest first."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config(None))
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def _newer_hint(connection) -> str:
    from alembic.runtime.migration import MigrationContext

    try:
        current = MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError:
        return ""
    if current is not None and current not in known_revisions():
        return (f" — the database is at revision {current!r}, which this alloyml does not know: it was migrated "
                "by a newer alloyml; use that version (or its `alloyml db downgrade`)")
    return ""


def _refuse_broken_links(connection) -> None:
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        tables = sorted({row[0] for row in broken})
        raise StoreError(f"the migration would leave {len(broken)} rows in {tables} pointing at rows that do "
                         "not exist; it was rolled back")


def foreign_key_problems(engine: Engine) -> list[tuple]:
    """(table, rowid, referenced table, fk index) of every row whose foreign key points nowhere (SQLite;
    PostgreSQL enforces foreign keys on every write, so it has none to report)."""
    if engine.dialect.name != "sqlite":
        return []
    with engine.connect() as connection:
        return [tuple(row) for row in connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()]


def check_current(engine: Engine, url: str) -> None:
    """Refuse a database whose schema is missing or not at this alloyml's head revision."""
    try:
        revision = current_revision(engine)
    except Exception as err:  # connection refused, bad credentials, unknown database, ...
        raise StoreError(f"cannot open the metadata store at {engine.url!r}: {err}") from err
    head = head_revision()
    if revision is not None and revision not in known_revisions():
        raise SchemaOutdatedError(
            f"the database {engine.url!r} is at schema revision {revision!r}, which this alloyml does not know: "
            f"a newer alloyml migrated it. Use that version, or run its `alloyml db downgrade {head}` first")
    if revision != head:
        state = "has no alloyml schema" if revision is None else f"is at schema revision {revision!r}"
        raise SchemaOutdatedError(
            f"the database {engine.url!r} {state}, this alloyml needs {head!r}; run `alloyml db upgrade`"
            + (f" (with ALLOYML_DB_URL={display_url(url)!r})" if not is_sqlite(url) else "")
        )
