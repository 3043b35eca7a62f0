"""`alloyml db check`: is the store whole? Database integrity, dangling foreign keys, the schema revision,
and every artifact file (size against its header always; the full hash on request)."""

from __future__ import annotations

from dataclasses import dataclass

from alloyml.errors import AlloyError
from alloyml.platform import schema
from alloyml.platform.artifacts import ArtifactStore
from alloyml.platform.settings import Settings

_MAX_LISTED = 5


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    details: str


def check_store(settings: Settings, *, full_hash: bool = False) -> list[CheckResult]:
    write_engine, read_engine = schema.make_engines(settings.db_url)
    try:
        return [_integrity(read_engine), _foreign_keys(read_engine), _revision(read_engine),
                _artifacts(settings.open_artifacts(), full_hash)]
    finally:
        write_engine.dispose()
        read_engine.dispose()


def _integrity(engine) -> CheckResult:
    if engine.dialect.name != "sqlite":
        return CheckResult("integrity", True, "checked by the PostgreSQL server itself")
    try:
        with engine.connect() as connection:
            rows = [r[0] for r in connection.exec_driver_sql("PRAGMA integrity_check").fetchall()]
    except Exception as err:  # noqa: BLE001 — a file that is not a database is the finding itself
        return CheckResult("integrity", False, f"cannot read the database: {getattr(err, 'orig', err)}")
    return CheckResult("integrity", rows == ["ok"], "PRAGMA integrity_check: " + "; ".join(rows[:_MAX_LISTED]))


def _foreign_keys(engine) -> CheckResult:
    try:
        problems = schema.foreign_key_problems(engine)
    except Exception as err:  # noqa: BLE001
        return CheckResult("foreign keys", False, f"cannot check: {getattr(err, 'orig', err)}")
    if not problems:
        return CheckResult("foreign keys", True, "every reference points at an existing row")
    listed = ", ".join(f"{table} row {rowid} -> {parent}" for table, rowid, parent, _ in problems[:_MAX_LISTED])
    return CheckResult("foreign keys", False, f"{len(problems)} dangling: {listed}")


def _revision(engine) -> CheckResult:
    head = schema.head_revision()
    try:
        current = schema.current_revision(engine)
    except Exception as err:  # noqa: BLE001
        return CheckResult("schema revision", False, f"cannot read it: {getattr(err, 'orig', err)}")
    if current == head:
        return CheckResult("schema revision", True, f"{current} (this alloyml's head)")
    if current is None:
        return CheckResult("schema revision", False, "no alloyml schema; run `alloyml db upgrade`")
    if current not in schema.known_revisions():
        return CheckResult("schema revision", False, f"{current} is newer than this alloyml's {head}")
    return CheckResult("schema revision", False, f"{current}, behind {head}; run `alloyml db upgrade`")


def _artifacts(artifacts: ArtifactStore, full_hash: bool) -> CheckResult:
    keys, bad = artifacts.keys(), []
    for key in keys:
        try:
            artifacts.verify(key) if full_hash else artifacts.get_bytes(key)
        except AlloyError as err:
            bad.append(f"{key}: {err}")
    what = "size and hash" if full_hash else "size"
    if bad:
        return CheckResult("artifacts", False, f"{len(bad)} of {len(keys)} damaged ({what}): " + "; ".join(bad[:3]))
    return CheckResult("artifacts", True, f"{len(keys)} files, {what} checked")
