"""Run tags and the MLflow-style search language, on SQLite and PostgreSQL.

Every expected search result is computed here in Python from the rows the test wrote (a brute-force
filter over plain dicts, with LIKE as a regular expression), never by the store."""

from __future__ import annotations

import re

import numpy as np
import pytest
import sqlalchemy as sa

from alloyml.errors import InvalidInputError, NotFoundError
from alloyml.platform import schema
from alloyml.platform.client import Platform
from tests.platform.test_cli import _run as _cli
from tests.platform.test_concurrency import _run_processes


@pytest.fixture
def platform(db_url, tmp_path):
    with Platform(db_url=db_url, home=tmp_path, upgrade=True) as p:
        yield p


# -- tags -------------------------------------------------------------------------------------------------------
def test_tags_set_replace_delete_and_show_on_runs(platform):
    store = platform.store
    with platform.run("train", name="tagged") as run:
        assert run.set_tags(owner="ana", stage="dev") == {"owner": "ana", "stage": "dev"}
        assert run.set_tags({"team.name": "ml", "stage": "prod"}) == {"owner": "ana", "stage": "prod",
                                                                      "team.name": "ml"}
    other = store.start_run("train")
    store.set_tags(other.id, owner="bo")
    assert store.tags(run.id) == {"owner": "ana", "stage": "prod", "team.name": "ml"}
    assert store.get_run(run.id).tags == store.tags(run.id)
    assert {r.id: r.tags for r in store.list_runs()} == {run.id: store.tags(run.id), other.id: {"owner": "bo"}}
    store.delete_tag(run.id, "stage")
    assert store.tags(run.id) == {"owner": "ana", "team.name": "ml"}
    with pytest.raises(NotFoundError, match="no tag 'stage'"):
        store.delete_tag(run.id, "stage")
    with pytest.raises(NotFoundError, match="run id 999"):
        store.set_tags(999, owner="x")
    assert store.set_tags(other.id) == {"owner": "bo"}  # nothing to set: a read
    with pytest.raises(InvalidInputError, match="tags must be a dict"):
        store.set_tags(other.id, [("owner", "x")])


@pytest.mark.parametrize(("tags", "message"), [
    ({"": "v"}, "tag name ''"),
    ({"a=b": "v"}, "without '='"),
    ({"a`b": "v"}, "without '='"),
    ({"k" * 251: "v"}, "at most 250"),
    ({"n": 1}, "must be a string; got int"),
    ({"n": None}, "must be a string; got NoneType"),
    ({"n": "line\nbreak"}, "control character '\\\\n'"),
    ({"n": "\x1b[31mred"}, "control character '\\\\x1b'"),
    ({"a\x00": "v"}, "name contains the control character"),
    ({"n": "v" * 5001}, "at most 5000 fit"),
])
def test_bad_tags_are_refused_and_nothing_is_written(platform, tags, message):
    run = platform.store.start_run("train")
    with pytest.raises(InvalidInputError, match=message):
        platform.store.set_tags(run.id, {"good": "kept?", **tags})
    assert platform.store.tags(run.id) == {}
    assert platform.store.set_tags(run.id, {"k" * 250: "v" * 5000, "ünï cødé": "ñ"}) == {
        "k" * 250: "v" * 5000, "ünï cødé": "ñ"}  # the limits themselves fit, on both backends


TAGGERS, TAGS_EACH = 2, 40


def _tagger(db_url: str, home: str, worker: int, run_id: int, errors) -> None:
    try:
        with Platform(db_url=db_url, home=home) as platform:
            for i in range(TAGS_EACH):  # one call per tag, so the two writers interleave
                platform.store.set_tags(run_id, {f"w{worker}.t{i}": str(i), f"shared.{i}": f"w{worker}"})
    except Exception as err:
        errors.put(f"worker {worker}: {type(err).__name__}: {err}")


def test_two_processes_tagging_one_run_lose_no_tag(db_url, tmp_path):
    """Both processes insert the same `shared.i` keys at about the same moment: an upsert, not a
    read-then-insert, so neither fails on the unique key and no tag is lost."""
    with Platform(db_url=db_url, home=tmp_path, upgrade=True) as platform:
        run_id = platform.store.start_run("train").id
    _run_processes(_tagger, [(db_url, str(tmp_path), w, run_id) for w in range(TAGGERS)])
    with Platform(db_url=db_url, home=tmp_path) as platform:
        tags = platform.store.tags(run_id)
    own = {k: v for k, v in tags.items() if not k.startswith("shared.")}
    assert own == {f"w{w}.t{i}": str(i) for w in range(TAGGERS) for i in range(TAGS_EACH)}
    shared = {k: v for k, v in tags.items() if k.startswith("shared.")}
    assert set(shared) == {f"shared.{i}" for i in range(TAGS_EACH)}
    assert set(shared.values()) <= {f"w{w}" for w in range(TAGGERS)}


def test_cli_tags_a_run_and_lists_its_tags(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    with Platform(db_url=url, home=tmp_path, upgrade=True) as platform:
        run_id = platform.store.start_run("train", name="cli-run").id
    tagged = _cli(["runs", "tag", str(run_id), "owner=ana", "note=a=b"], tmp_path, ALLOYML_DB_URL=url)
    assert tagged.returncode == 0, tagged.stderr
    with Platform(db_url=url, home=tmp_path) as platform:
        assert platform.store.tags(run_id) == {"owner": "ana", "note": "a=b"}  # split at the first '='
    listed = _cli(["runs", "list", "--filter", "tags.owner = 'ana'"], tmp_path, ALLOYML_DB_URL=url, COLUMNS="250")
    assert listed.returncode == 0 and "cli-run" in listed.stdout and "owner=ana" in listed.stdout
    removed = _cli(["runs", "tag", str(run_id), "--delete", "note"], tmp_path, ALLOYML_DB_URL=url)
    assert removed.returncode == 0 and "note" not in removed.stdout
    for args, message in ((["runs", "tag", str(run_id), "novalue"], "not KEY=VALUE"),
                          (["runs", "tag", "99", "a=b"], "run id 99"),
                          (["runs", "tag", str(run_id), "a=\x1b[2J"], "control character")):
        bad = _cli(args, tmp_path, ALLOYML_DB_URL=url)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr


# -- search -----------------------------------------------------------------------------------------------------
METHODS = ("knn", "KNN_shapley", "data_oob", "it's", 'say "hi"', "a\\b", "50%_off", "loo")
KS = (5, 5.0, 3, -2.5, "5", True, 12, None)  # None: the param is absent
OWNERS = ("ana", "Ana", "bo", None)


def _populate(store) -> list[dict]:
    """40 runs with every kind of value the language distinguishes; returns them as plain dicts."""
    rng = np.random.default_rng(17)
    rows = []
    for i in range(40):
        params = {"method": METHODS[i % len(METHODS)]}
        if KS[i % len(KS)] is not None:
            params["k"] = KS[i % len(KS)]
        kind, status = ("train", "valuation")[i % 2], ("done", "failed", "running")[i % 3]
        run = store.start_run(kind, name=f"r{i}", params=params)
        auc = None if i % 9 == 4 else float(np.round(rng.random(), 3))  # some runs never log it
        if auc is not None:
            store.log_metrics(run.id, {"auc": auc})
        if i % 13 == 6:
            store.log_metrics(run.id, {"auc": float("nan")}, step=5)  # stored as null: matches nothing
            auc = None
        tags = {}
        if OWNERS[i % len(OWNERS)] is not None:
            tags["owner"] = OWNERS[i % len(OWNERS)]
        if i % 5 == 0:
            tags["team.name"] = f"ml-{i}"
        if tags:
            store.set_tags(run.id, tags)
        if status != "running":
            store.finish_run(run.id, status=status)
        rows.append({"id": run.id, "kind": kind, "status": status, "name": f"r{i}", "params": params,
                     "auc": auc, "tags": tags})
    return rows


def _like(value, pattern: str, insensitive: bool = False) -> bool:
    """SQL LIKE as a regular expression: % any run, _ one character, the rest literal."""
    if not isinstance(value, str):
        return False
    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.DOTALL | (re.IGNORECASE if insensitive else 0)) is not None


def _num(value):
    """A param as the number clauses compare with (None for strings, bools and absent params)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _str(value):
    return value if isinstance(value, str) else None


def _queries(rows) -> list[tuple[str, object]]:
    exact = next(r["auc"] for r in rows if r["auc"] is not None)
    k, m = (lambda r: _num(r["params"].get("k"))), (lambda r: _str(r["params"].get("method")))
    sk = lambda r: _str(r["params"].get("k"))  # noqa: E731
    auc = lambda r: r["auc"]  # noqa: E731
    owner = lambda r: r["tags"].get("owner")  # noqa: E731
    return [
        ("metrics.auc > 0.5", lambda r: auc(r) is not None and auc(r) > 0.5),
        (f"metrics.auc = {exact!r}", lambda r: auc(r) == exact),
        (f"metrics.auc != {exact!r}", lambda r: auc(r) is not None and auc(r) != exact),
        ("metrics.auc<=0.3 and metric.auc>=.1", lambda r: auc(r) is not None and 0.1 <= auc(r) <= 0.3),
        ("metrics.auc < -1e-3", lambda r: auc(r) is not None and auc(r) < -1e-3),
        ("metrics.missing > 0", lambda r: False),
        ("params.k > 3", lambda r: k(r) is not None and k(r) > 3),
        ("params.k = 5", lambda r: k(r) == 5),
        ("params.k != 5", lambda r: k(r) is not None and k(r) != 5),
        ("param.k >= -2.5 AND params.k < 5", lambda r: k(r) is not None and -2.5 <= k(r) < 5),
        ("params.k = '5'", lambda r: sk(r) == "5"),
        ("params.k != '5'", lambda r: sk(r) is not None and sk(r) != "5"),
        ("params.method = 'knn'", lambda r: m(r) == "knn"),
        ("params.method != 'knn'", lambda r: m(r) is not None and m(r) != "knn"),
        ("params.method LIKE 'kn%'", lambda r: _like(m(r), "kn%")),
        ("params.method ILIKE 'kn%'", lambda r: _like(m(r), "kn%", True)),
        # No escape character: the backslash is literal (PostgreSQL's LIKE would read \_ as "_" and match 50%_off).
        ("params.method like '%\\_off'", lambda r: _like(m(r), "%\\_off")),
        ("params.method LIKE '50%'", lambda r: _like(m(r), "50%")),
        ("params.method = 'it''s'", lambda r: m(r) == "it's"),
        ("params.method = 'it\\'s'", lambda r: m(r) == "it's"),
        ("params.method = \"it's\"", lambda r: m(r) == "it's"),
        ("params.method = 'say \"hi\"'", lambda r: m(r) == 'say "hi"'),
        ("params.method = \"say \\\"hi\\\"\"", lambda r: m(r) == 'say "hi"'),
        ("params.method = 'a\\\\b'", lambda r: m(r) == "a\\b"),
        ("params.method LIKE 'a\\\\%'", lambda r: _like(m(r), "a\\%")),  # a backslash, literal, then anything
        ("params.method LIKE 'A\\\\%'", lambda r: _like(m(r), "A\\%")),  # LIKE is case-sensitive
        ("tags.owner = 'ana'", lambda r: owner(r) == "ana"),
        ("tags.owner != 'ana'", lambda r: owner(r) is not None and owner(r) != "ana"),
        ("tags.owner ILIKE 'ANA'", lambda r: _like(owner(r), "ANA", True)),
        ("tag.owner LIKE 'a%'", lambda r: _like(owner(r), "a%")),
        ("tags.`team.name` LIKE 'ml-_'", lambda r: _like(r["tags"].get("team.name"), "ml-_")),
        ("tags.team.name = 'ml-10'", lambda r: r["tags"].get("team.name") == "ml-10"),
        ("attributes.status = 'failed' AND kind = 'train'", lambda r: r["status"] == "failed" and r["kind"] == "train"),
        ("status != 'running'", lambda r: r["status"] != "running"),
        ("attributes.run_name LIKE 'r1%'", lambda r: _like(r["name"], "r1%")),
        ("name ILIKE 'R2_'", lambda r: _like(r["name"], "R2_", True)),
        ("attr.kind = 'valuation' and metrics.auc > 0.2 and tags.owner = 'bo' And params.k > 0",
         lambda r: r["kind"] == "valuation" and auc(r) is not None and auc(r) > 0.2 and owner(r) == "bo"
         and k(r) is not None and k(r) > 0),
        # Injection attempts that parse: whatever they hold is a bound value or name, so they match nothing.
        ("params.method = 'x'' OR ''1''=''1'", lambda r: False),
        ("tags.`owner'; DROP TABLE run_tag; --` = 'a'", lambda r: False),
        ("metrics.`auc') OR 1=1 --` > 0", lambda r: False),
    ]


def test_search_table_matches_a_python_filter(platform):
    store = platform.store
    rows = _populate(store)
    assert {r.id: r.tags for r in store.list_runs(limit=100)} == {r["id"]: r["tags"] for r in rows}
    for query, predicate in _queries(rows):
        expected = sorted(r["id"] for r in rows if predicate(r))
        got = sorted(r.id for r in store.list_runs(limit=100, filter=query))
        assert got == expected, query
    # The table is not vacuous: most queries select some runs but not all.
    sizes = [sum(map(p, rows)) for _, p in _queries(rows)]
    assert sum(0 < n < len(rows) for n in sizes) >= 30


@pytest.mark.parametrize(("query", "message"), [
    ("metrics.auc > 0.5 AND params.k LIKE 3", "clause 'params.k LIKE 3'"),
    ("metrics.auc > 0.5 and metrics.auc = 'a'", "clause \"metrics.auc = 'a'\""),
    ("tags.owner > 'a'", "clause \"tags.owner > 'a'\""),
    ("tags.owner = 5", "clause 'tags.owner = 5'"),
    ("status LIKE 3", "clause 'status LIKE 3'"),
    ("owner = 'me'", "attribute 'owner'"),
    ("foo.bar = 'x'", "'foo' is not one of"),
    ("metrics.auc >", "clause 'metrics.auc >' is not FIELD OP VALUE"),
    ("metrics.auc > 0.5 AND", "empty clause"),
    ("metrics.auc > 0.5 OR status = 'done'", "OR is not supported"),
    ("params.method = 'open", "never closed"),
    ("params.method = 'x'; DROP TABLE run; --", "unexpected ';'"),
    ("1; DROP TABLE run", "unexpected ';'"),
    ('params.`a"); DROP TABLE run; --` = \'x\'', "cannot contain"),
    ("metrics.auc > 1e999", "not a finite number"),
    ("status = done", "number or a quoted string"),
    ("metrics.auc < inf", "number or a quoted string"),
])
def test_bad_filters_name_the_clause_and_leave_the_tables_intact(platform, db_url, query, message):
    store = platform.store
    run = store.start_run("train", name="keep", params={"method": "x"})
    store.set_tags(run.id, owner="ana")
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        store.list_runs(filter=query)
    engine, _ = schema.make_engines(db_url)
    try:
        with engine.connect() as connection:
            counts = {t: connection.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar() for t in ("run", "run_tag")}
    finally:
        engine.dispose()
    assert counts == {"run": 1, "run_tag": 1}
    assert [r.tags for r in store.list_runs(filter="tags.owner = 'ana'")] == [{"owner": "ana"}]
