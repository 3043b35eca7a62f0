"""Migrations keep every row: a database holding every entity goes down through every revision and back up,
and each table's rows (on the columns both revisions have) are unchanged at every stop. On SQLite this
used to lose rows, because rebuilding a table in batch mode DROPs it and the DROP cascaded."""

from __future__ import annotations

import datetime as dt
import textwrap

import numpy as np
import pytest
import sqlalchemy as sa

from alloyml.errors import StoreError
from alloyml.platform import entities as e
from alloyml.platform import schema
from alloyml.platform.client import Platform


def _populate(platform: Platform) -> None:
    """One or more rows in every table."""
    store = platform.store
    dataset = platform.register_dataset("d", np.arange(6.0).reshape(3, 2), [0, 1, 0])
    base = platform.register_model("base", "gla", n_params=10, metrics={"acc": 0.5})
    child = platform.register_model("child", "gla", n_params=10, parents=[(base.id, "fine-tune", 0.5)])
    workflow = store.create_workflow("wf", {"n": 3}, {"steps": []}, [
        {"name": "a"}, {"name": "b", "depends_on": ["a"], "resources": {"num_cpus": 1}}])
    store.claim_workflow(workflow.id, "host:1:tok", expected=None)
    store.update_step(workflow.id, "a", state="done", output_artifact="k" * 64, increment_attempts=True)
    run = store.start_run("valuation", name="v", params={"k": 5}, workflow_id=workflow.id,
                          dataset_id=dataset.id, model_id=child.id)
    store.log_metrics(run.id, {"loss": 0.25, "acc": 0.75})
    store.set_tags(run.id, {"owner": "ana", "team.name": "ml"})
    store.write_data_values(run.id, np.array([0.3, -0.1, 0.2]), np.array([0.01, 0.02, 0.03]),
                            np.array([3, 4, 5]), np.array([10, 20, 30]))
    store.finish_run(run.id, metrics={"auc": 0.5})
    store.record_merge("linear", {"w": [0.5, 0.5]}, [e.MergeInput(base.id, 0.5), e.MergeInput(child.id, 0.5)],
                       child.id, run_id=run.id)
    cascade = store.save_cascade("c", ["a", "b"], [0.5], [1.0, 2.0], 1.5, plan={"p": 1})
    store.log_cascade_requests(cascade.id, [
        e.CascadeRequest(1, 2.0, 3.0, [0.1, 0.9], 0, dt.datetime(2026, 1, 1)),  # as logged before revision 0004
        e.CascadeRequest(1, 3.0, 4.0, [0.2], 0, dt.datetime(2026, 1, 2), request_id="r1", query_id="q1", query="hi",
                         answer="yes", model="b", calls=[{"model": "a", "answer": "no", "cost": 1.0, "score": 0.2},
                                                         {"model": "b", "answer": "yes", "cost": 2.0, "score": None}],
                         errors=[{"model": "a", "error": "timeout"}])])
    store.label_cascade_requests("c", [("r1", None, True), ("r1", "a", False)])
    store.add_trial(run.id, 0, {"lr": 0.1}, {"acc": 0.5}, cost=1.0, seconds=2.0)
    schedule = store.add_schedule("nightly", "demo", "0 3 * * *", "Europe/Berlin", {"config": "quick"}, "latest")
    firing = store.claim_firing(schedule.id, dt.datetime(2026, 1, 1, 2, 0))
    store.finish_firing(firing, "submitted", workflow_id=workflow.id)


def _snapshot(engine) -> dict[str, list[dict]]:
    """Every table's rows (alembic's own table aside), in a stable order, values made comparable."""
    tables = {}
    with engine.connect() as connection:
        inspector = sa.inspect(connection)  # on this connection: a second one would wait for its write lock
        for table in inspector.get_table_names():
            if table == "alembic_version":
                continue
            columns = [c["name"] for c in inspector.get_columns(table)]
            rows = connection.execute(sa.text(f'SELECT * FROM "{table}"')).mappings().all()
            tables[table] = sorted((dict(row) for row in rows), key=repr)
            tables[table + ".columns"] = columns
    return tables


def _assert_rows_kept(before: dict, after: dict, where: str, kept: dict | None = None) -> None:
    """Rows of `after` equal those of `before` on their common columns; `kept` (table -> columns, updated
    here) narrows that to columns that existed at every revision visited so far: a column a downgrade
    dropped comes back empty."""
    kept = {} if kept is None else kept
    for table in [t for t in before if not t.endswith(".columns")]:
        if table not in after or kept.get(table, ()) is None:  # a table a downgrade dropped is rebuilt
            kept[table] = None  # from what the older schema kept, so it is checked through the store instead
            continue
        common = [c for c in kept.get(table, before[table + ".columns"]) if c in after[table + ".columns"]]
        kept[table] = common
        assert len(after[table]) == len(before[table]), f"{where}: {table} has {len(after[table])} rows"
        assert _project(after[table], common) == _project(before[table], common), f"{where}: rows of {table} changed"


def _project(rows: list[dict], columns: list[str]) -> list[dict]:
    return sorted(({c: row[c] for c in columns} for row in rows), key=repr)


def _revisions() -> list[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(schema._alembic_config(None))
    return [r.revision for r in reversed(list(script.walk_revisions()))]  # base first


def test_every_revision_down_and_up_keeps_every_row(db_url, tmp_path):
    with Platform(db_url=db_url, home=tmp_path, upgrade=True) as platform:
        _populate(platform)
    engine, _ = schema.make_engines(db_url)
    try:
        at_head = _snapshot(engine)
        assert all(at_head[t] for t in at_head if not t.endswith(".columns")), "a table was left empty"
        revisions, kept = _revisions(), {}
        assert len(revisions) >= 2
        for target in reversed(revisions[:-1]):
            assert schema.downgrade(engine, target) == target
            _assert_rows_kept(at_head, _snapshot(engine), f"downgraded to {target}", kept)
            assert schema.foreign_key_problems(engine) == []
        assert kept["workflow"] and kept["run"]  # the comparison still covers the core columns
        for target in revisions[1:]:
            assert schema.upgrade(engine, target) == target
            _assert_rows_kept(at_head, _snapshot(engine), f"upgraded to {target}", kept)
        with Platform(db_url=db_url, home=tmp_path) as platform:  # back at head: the store reads it all
            [run] = platform.store.list_runs()
            assert run.metrics == {"loss": 0.25, "acc": 0.75, "auc": 0.5}  # carried through run.metrics
            np.testing.assert_array_equal(platform.store.all_values(run.id).indices, [10, 20, 30])
            [cascade] = platform.store.list_cascades()  # both request rows readable; what 0004 added was
            logged = platform.store.cascade_requests(cascade.id)  # dropped on the way down, so it reads empty
            assert [(r.stage_reached, r.cost, r.request_id, r.labels) for r in logged] == [(1, 3.0, None, {}),
                                                                                          (1, 2.0, None, {})]
    finally:
        engine.dispose()


def _test_revision(revision: str, doc: str, upgrade: str, downgrade: str = "pass") -> str:
    """The text of a test-only Alembic revision that follows this alloyml's head ({head})."""
    return (f'"""test only: {doc}\n\nRevision ID: {revision}\nRevises: {{head}}\n"""\n'
            "import sqlalchemy as sa\nfrom alembic import op\n\n"
            f'revision = "{revision}"\ndown_revision = "{{head}}"\nbranch_labels = None\ndepends_on = None\n\n\n'
            f"def upgrade():\n{textwrap.indent(upgrade, '    ')}\n\n\ndef downgrade():\n"
            f"{textwrap.indent(downgrade, '    ')}\n")


REBUILD_RUN = _test_revision(
    "test_rebuild_run", "rebuild `run` (widen name), as a future migration that alters it would",
    'with op.batch_alter_table("run") as batch_op:  # SQLite: copy, drop, rename\n'
    '    batch_op.alter_column("name", type_=sa.String(400), existing_type=sa.String(200))',
    'with op.batch_alter_table("run") as batch_op:\n'
    '    batch_op.alter_column("name", type_=sa.String(200), existing_type=sa.String(400))')


@pytest.fixture
def extra_migration(tmp_path, monkeypatch):
    """Adds the revision `text` (formatted with {head}) after this alloyml's head."""
    folder = tmp_path / "extra_versions"
    folder.mkdir()
    head = schema.head_revision()
    original = schema._alembic_config

    def with_extra(connection):
        config = original(connection)
        config.set_main_option("path_separator", "space")
        config.set_main_option("version_locations", f"{schema.MIGRATIONS_DIR / 'versions'} {folder}")
        return config

    def add(text: str) -> None:
        (folder / "extra.py").write_text(text.replace("{head}", head))
        monkeypatch.setattr(schema, "_alembic_config", with_extra)

    return add


def test_a_migration_that_rebuilds_run_keeps_the_rows_that_point_at_it(db_url, tmp_path, extra_migration):
    with Platform(db_url=db_url, home=tmp_path, upgrade=True) as platform:
        _populate(platform)
    engine, _ = schema.make_engines(db_url)
    try:
        before = _snapshot(engine)
        head = schema.head_revision()
        extra_migration(REBUILD_RUN)
        assert schema.upgrade(engine) == "test_rebuild_run"
        _assert_rows_kept(before, _snapshot(engine), "after rebuilding run")
        assert schema.downgrade(engine, head) == head
        _assert_rows_kept(before, _snapshot(engine), "after rebuilding run back")
        assert schema.foreign_key_problems(engine) == []
    finally:
        engine.dispose()


BREAK_LINKS = _test_revision("test_break_links", "a migration that leaves a run pointing at no dataset",
                             'op.execute("UPDATE run SET dataset_id = 999")')


def test_sqlite_migration_that_breaks_a_foreign_key_is_rolled_back(tmp_path, extra_migration):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with Platform(db_url=url, home=tmp_path, upgrade=True) as platform:
        _populate(platform)
    engine, _ = schema.make_engines(url)
    try:
        before = _snapshot(engine)
        extra_migration(BREAK_LINKS)
        with pytest.raises(StoreError, match="pointing at rows that do not exist"):
            schema.upgrade(engine)
        assert schema.current_revision(engine) != "test_break_links"
        _assert_rows_kept(before, _snapshot(engine), "after the refused migration")
    finally:
        engine.dispose()
