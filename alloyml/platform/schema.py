"""Engines and migrations: how alloyml connects to SQLite or PostgreSQL and keeps the schema current.

SQLite runs in WAL mode with a busy timeout, and write transactions start with `BEGIN IMMEDIATE`: a
deferred transaction that later needs the write lock fails at once with "database is locked" when another
process wrote in between, whatever the timeout, while an immediate one waits its turn.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url

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
    database = make_url(url).database
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
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
    from alembic.util import CommandError

    step = getattr(command, direction)
    with engine.connect() as connection:
        raw = connection.connection.driver_connection if engine.dialect.name == "sqlite" else None
        if raw is not None:
            raw.execute("PRAGMA foreign_keys=OFF")
        try:
            with connection.begin():
                try:
                    step(_alembic_config(connection), revision)
                except CommandError as err:  # unknown revision, nothing to downgrade to, ...
                    raise StoreError(f"cannot {direction} to {revision!r}: {err}") from err
                if raw is not None:
                    _refuse_broken_links(connection)
        finally:
            if raw is not None:
                raw.execute("PRAGMA foreign_keys=ON")
    return current_revision(engine)


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
    if revision != head:
        state = "has no alloyml schema" if revision is None else f"is at schema revision {revision!r}"
        raise SchemaOutdatedError(
            f"the database {engine.url!r} {state}, this alloyml needs {head!r}; run `alloyml db upgrade`"
            + (f" (with ALLOYML_DB_URL={display_url(url)!r})" if not is_sqlite(url) else "")
        )
