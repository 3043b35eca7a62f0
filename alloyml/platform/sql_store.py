"""`Store` on SQLAlchemy 2: SQLite (embedded default) or PostgreSQL.

One managed session per public call: it commits, or rolls back and raises one of our errors, so a call
that fails half-way leaves nothing behind. Data values bypass the ORM: a million rows go in as one
executemany (SQLite) or one COPY (PostgreSQL) inside the same transaction.

Concurrent writers: SQLite write transactions hold the database's write lock from their first statement
(`BEGIN IMMEDIATE`), so any read-modify-write inside one is atomic. PostgreSQL runs READ COMMITTED, so
every read-modify-write here either locks the row it changes (`SELECT ... FOR UPDATE`), takes a
transaction-scoped advisory lock (the next cascade version), or is a single atomic statement (metric
upserts, lease compare-and-swap).
"""

from __future__ import annotations

import hashlib
import math
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from sqlalchemy import case, delete, func, insert, literal, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from alloyml.errors import AlloyError, InvalidInputError, NotFoundError, StoreError
from alloyml.platform import entities as e
from alloyml.platform import orm, schema
from alloyml.platform.search import parse_filter
from alloyml.platform.store import Store, WorkflowLease

SUMMARY_BINS = 50
RANKED_EXTREMES = 10_000  # lowest and highest ranks stored per run
_WORKFLOW_FIELDS = {"status", "error", "result_artifact"}
_STEP_FIELDS = {"state", "error", "output_artifact", "started_at", "finished_at", "attempts"}


class SqlStore(Store):
    """Opens `url`; refuses a database whose schema is not current (see `schema.check_current`)."""

    def __init__(self, url: str, *, check_schema: bool = True):
        self.url = url
        self._write_engine, self._read_engine = schema.make_engines(url)
        if check_schema:
            schema.check_current(self._read_engine, url)
        self._writer = sessionmaker(self._write_engine, expire_on_commit=False)
        self._reader = sessionmaker(self._read_engine, expire_on_commit=False)

    def close(self) -> None:
        self._write_engine.dispose()
        self._read_engine.dispose()

    @contextmanager
    def _session(self, write: bool = False) -> Iterator[Session]:
        session = (self._writer if write else self._reader)()
        try:
            yield session
            session.commit()
        except AlloyError:
            session.rollback()
            raise
        except IntegrityError as err:
            session.rollback()
            raise InvalidInputError(f"the store refused the write: {err.orig}") from err
        except SQLAlchemyError as err:
            session.rollback()
            raise StoreError(f"store operation failed and was rolled back: {err}") from err
        except Exception as err:  # raw driver errors (the bulk paths use the DBAPI cursor directly)
            session.rollback()
            if type(err).__module__.split(".")[0] in ("sqlite3", "psycopg", "psycopg2"):
                raise StoreError(f"store operation failed and was rolled back: {type(err).__name__}: {err}") from err
            raise
        finally:
            session.close()

    @staticmethod
    def _get(session: Session, row_type, row_id: int, what: str):
        row = session.get(row_type, row_id)
        if row is None:
            raise NotFoundError(f"{what} id {row_id!r} does not exist")
        return row

    @staticmethod
    def _locked(session: Session, row_type, row_id: int, what: str):
        """The row, locked until the transaction ends (FOR UPDATE; SQLite already holds the write lock)."""
        row = session.get(row_type, row_id, with_for_update=True, populate_existing=True)
        if row is None:
            raise NotFoundError(f"{what} id {row_id!r} does not exist")
        return row

    # -- datasets and models ----------------------------------------------------------------------------
    def add_dataset(self, name, version, n_rows, schema, fingerprint, artifact=None):
        with self._session(write=True) as s:
            row = _checked(orm.DatasetRow(name=name, version=str(version), n_rows=n_rows, schema=schema,
                                 fingerprint=fingerprint, artifact=artifact))
            s.add(row)
            s.flush()
            return _dataset(row)

    def get_dataset(self, dataset_id):
        with self._session() as s:
            return _dataset(self._get(s, orm.DatasetRow, dataset_id, "dataset"))

    def list_datasets(self):
        with self._session() as s:
            return [_dataset(r) for r in s.scalars(select(orm.DatasetRow).order_by(orm.DatasetRow.id))]

    def add_model(self, name, architecture, n_params=0, artifact=None, metrics=None, parents=()):
        with self._session(write=True) as s:
            for edge in parents:
                self._get(s, orm.ModelRow, edge.parent_id, "parent model")
                if edge.role not in e.LINEAGE_ROLES:
                    raise InvalidInputError(f"lineage role {edge.role!r} is not one of {e.LINEAGE_ROLES}")
            row = _checked(orm.ModelRow(name=name, architecture=architecture, n_params=n_params,
                               artifact=artifact, metrics=_json_metrics(metrics or {}, "model metrics")))
            s.add(row)
            s.flush()
            for edge in parents:
                s.add(_checked(orm.LineageRow(child_id=row.id, parent_id=edge.parent_id, role=edge.role,
                                     weight=edge.weight)))
            return _model(row)

    def get_model(self, model_id):
        with self._session() as s:
            return _model(self._get(s, orm.ModelRow, model_id, "model"))

    def list_models(self):
        with self._session() as s:
            return [_model(r) for r in s.scalars(select(orm.ModelRow).order_by(orm.ModelRow.id))]

    def update_model_metrics(self, model_id, metrics):
        metrics = _json_metrics(metrics, "model metrics")
        with self._session(write=True) as s:
            row = self._locked(s, orm.ModelRow, model_id, "model")
            row.metrics = {**row.metrics, **metrics}
            return _model(row)

    def lineage_edges(self, model_id=None):
        with self._session() as s:
            rows = list(s.scalars(select(orm.LineageRow).order_by(orm.LineageRow.id)))
            if model_id is not None:
                self._get(s, orm.ModelRow, model_id, "model")
        edges = [e.LineageEdge(r.child_id, r.parent_id, r.role, r.weight) for r in rows]
        if model_id is None:
            return edges
        wanted, frontier, kept = {model_id}, [model_id], []
        while frontier:
            child = frontier.pop()
            for edge in edges:
                if edge.child_id == child:
                    kept.append(edge)
                    if edge.parent_id not in wanted:
                        wanted.add(edge.parent_id)
                        frontier.append(edge.parent_id)
        return kept

    # -- runs ---------------------------------------------------------------------------------------------
    def start_run(self, kind, name=None, params=None, workflow_id=None, dataset_id=None, model_id=None):
        if not kind or not isinstance(kind, str):
            raise InvalidInputError(f"run kind {kind!r} must be a non-empty string such as 'valuation'")
        with self._session(write=True) as s:
            for row_type, row_id, what in ((orm.WorkflowRow, workflow_id, "workflow"),
                                           (orm.DatasetRow, dataset_id, "dataset"),
                                           (orm.ModelRow, model_id, "model")):
                if row_id is not None:
                    self._get(s, row_type, row_id, what)
            row = _checked(orm.RunRow(kind=kind, name=name, params=_json_safe(dict(params or {})),
                             workflow_id=workflow_id, dataset_id=dataset_id, model_id=model_id))
            s.add(row)
            s.flush()
            return _run(row, {}, {})

    def finish_run(self, run_id, status="done", metrics=None, error=None):
        if status not in e.RUN_STATUSES:
            raise InvalidInputError(f"run status {status!r} is not one of {e.RUN_STATUSES}")
        items = _metric_items(metrics or {}, "metrics")
        with self._session(write=True) as s:
            row = self._locked(s, orm.RunRow, run_id, "run")
            row.status = status
            row.error = error
            row.finished_at = orm.utcnow()
            _checked(row)
            _log_metrics(s, run_id, items, 0)
            [run] = _runs(s, [row])
            return run

    def log_metrics(self, run_id, metrics, step=None):
        items, step = _metric_items(metrics, "metrics"), _metric_step(step)
        with self._session(write=True) as s:
            row = self._get(s, orm.RunRow, run_id, "run")
            _log_metrics(s, run_id, items, step)
            [run] = _runs(s, [row])
            return run

    def log_metric_series(self, run_id, key, values, steps=None):
        _metric_key(key)
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 1 or values.size == 0:
            raise InvalidInputError(f"metric {key!r}: values must be a non-empty 1-d array; got shape {values.shape}")
        steps = np.arange(values.size) if steps is None else np.asarray(steps)
        if steps.shape != values.shape or not np.issubdtype(steps.dtype, np.integer) or steps.min() < 0:
            raise InvalidInputError(f"metric {key!r}: steps must be {values.size} non-negative integers")
        now = orm.utcnow()
        stamp = now.strftime("%Y-%m-%d %H:%M:%S.%f")
        finite = np.isfinite(values)
        column = values.tolist() if finite.all() else np.where(finite, values, None).tolist()  # NaN, inf -> NULL
        last = int(len(steps) - 1 - np.argmax(steps[::-1]))  # the latest value: highest step, last logged
        with self._session(write=True) as s:
            self._get(s, orm.RunRow, run_id, "run")
            n = values.size
            _bulk_insert(s.connection(), "metric", ("run_id", "key", "step", "value", "time"),
                         ([run_id] * n, [key] * n, steps.astype(np.int64).tolist(), column, [stamp] * n),
                         field=_copy_field)
            _upsert_latest(s, [{"run_id": run_id, "key": key, "step": int(steps[last]),
                                "value": column[last], "number": column[last], "time": now}])
            return n

    def metric_history(self, run_id, key):
        m = orm.MetricRow
        with self._session() as s:
            self._get(s, orm.RunRow, run_id, "run")
            rows = s.execute(select(m.step, m.value, m.time).where(m.run_id == run_id, m.key == key)
                             .order_by(m.step, m.id)).all()
        steps = np.array([r[0] for r in rows], dtype=np.int64)
        values = np.array([np.nan if r[1] is None else r[1] for r in rows], dtype=np.float64)
        return e.MetricHistory(run_id, key, steps, values, [r[2] for r in rows])

    def get_run(self, run_id):
        with self._session() as s:
            row = self._get(s, orm.RunRow, run_id, "run")
            [run] = _runs(s, [row])
            return run

    def list_runs(self, kind=None, status=None, limit=50, offset=0, filter=None):
        query = select(orm.RunRow).order_by(orm.RunRow.started_at.desc(), orm.RunRow.id.desc())
        clauses = parse_filter(filter)  # refused before any SQL runs
        dialect = self._read_engine.dialect.name
        for clause in clauses:
            query = query.where(_search_condition(clause, dialect))
        if kind is not None:
            query = query.where(orm.RunRow.kind == kind)
        if status is not None:
            query = query.where(orm.RunRow.status == status)
        with self._session() as s:
            return _runs(s, list(s.scalars(query.limit(limit).offset(offset))))

    def set_tags(self, run_id, tags=None, /, **more):
        if tags is not None and not isinstance(tags, dict):
            raise InvalidInputError(f"tags must be a dict of name -> string; got {type(tags).__name__}")
        items = _tag_items({**(tags or {}), **more})
        with self._session(write=True) as s:
            self._get(s, orm.RunRow, run_id, "run")
            if items:
                _upsert(s, orm.RunTagRow.__table__, [{"run_id": run_id, "key": k, "value": v} for k, v in items],
                        ("run_id", "key"), ("value",))
            return _tags_of(s, [run_id])[run_id]

    def tags(self, run_id):
        with self._session() as s:
            self._get(s, orm.RunRow, run_id, "run")
            return _tags_of(s, [run_id])[run_id]

    def delete_tag(self, run_id, key):
        t = orm.RunTagRow
        with self._session(write=True) as s:
            self._get(s, orm.RunRow, run_id, "run")
            deleted = s.execute(delete(t).where(t.run_id == run_id, t.key == key)).rowcount
            if not deleted:
                raise NotFoundError(f"run {run_id} has no tag {key!r}")

    def run_counts(self):
        query = select(orm.RunRow.kind, orm.RunRow.status, func.count()).group_by(
            orm.RunRow.kind, orm.RunRow.status)
        with self._session() as s:
            return {(kind, status): n for kind, status, n in s.execute(query)}

    # -- data values ----------------------------------------------------------------------------------------
    def write_data_values(self, run_id, values, stderr=None, counts=None, indices=None):
        indices, values, stderr, counts = _value_columns(values, stderr, counts, indices)  # in point order
        by_value = np.argsort(values, kind="stable")
        histogram_counts, edges = np.histogram(values, bins=SUMMARY_BINS)
        with self._session(write=True) as s:
            self._get(s, orm.RunRow, run_id, "run")
            if s.get(orm.DataValueSummaryRow, run_id) is not None:
                raise InvalidInputError(f"run {run_id} already has data values; each run writes them once")
            s.add(orm.DataValueSummaryRow(
                run_id=run_id, n=len(values), min=float(values.min()), max=float(values.max()),
                mean=float(values.mean()),
                histogram={"counts": histogram_counts.tolist(), "edges": edges.tolist()}))
            s.flush()
            point_rows = (np.full(len(values), run_id), indices, values, stderr, counts)
            # Only the extremes are ranked: "lowest/highest k" asks for a handful of rows, and ranking all n
            # would double the write.
            n = len(values)
            ranks = np.arange(n) if n <= 2 * RANKED_EXTREMES else np.concatenate(
                [np.arange(RANKED_EXTREMES), np.arange(n - RANKED_EXTREMES, n)])
            rank_rows = (np.full(len(ranks), run_id), ranks, indices[by_value[ranks]])
            _bulk_insert(s.connection(), "data_value", ("run_id", "point_index", "value", "stderr", "count"),
                         point_rows)
            _bulk_insert(s.connection(), "data_value_rank", ("run_id", "rank", "point_index"), rank_rows)
            return len(values)

    def _values_query(self, run_id, query) -> e.DataValues:
        with self._session() as s:
            self._get(s, orm.RunRow, run_id, "run")
            rows = s.execute(query).all()
        array = np.array(rows, dtype=np.float64).reshape(-1, 4)
        return e.DataValues(run_id=run_id, indices=array[:, 0].astype(np.int64), values=array[:, 1],
                            stderr=array[:, 2], counts=array[:, 3].astype(np.int64))

    def _select_values(self, run_id):
        v = orm.DataValueRow
        return select(v.point_index, v.value, v.stderr, v.count).where(v.run_id == run_id)

    def _ranked(self, run_id, k, descending: bool):
        v, r = orm.DataValueRow, orm.DataValueRankRow
        k = _k(k)
        if k > RANKED_EXTREMES:  # beyond the ranked extremes: sort in the database
            order = v.value.desc() if descending else v.value.asc()
            return self._values_query(run_id, self._select_values(run_id).order_by(order, v.point_index).limit(k))
        order = r.rank.desc() if descending else r.rank.asc()
        query = (self._select_values(run_id)
                 .join(r, (r.run_id == v.run_id) & (r.point_index == v.point_index))
                 .where(r.run_id == run_id).order_by(order).limit(k))
        return self._values_query(run_id, query)

    def lowest_values(self, run_id, k):
        return self._ranked(run_id, k, descending=False)

    def highest_values(self, run_id, k):
        return self._ranked(run_id, k, descending=True)

    def values_at(self, run_id, indices):
        wanted = [int(i) for i in np.asarray(indices, dtype=np.int64).ravel()]
        v = orm.DataValueRow
        parts = [self._values_query(run_id, self._select_values(run_id).where(v.point_index.in_(chunk)))
                 # Chunked IN lists keep each statement's bound parameters under SQLite's limit.
                 for chunk in (wanted[i:i + 10_000] for i in range(0, len(wanted), 10_000))]
        found = {name: np.concatenate([getattr(p, name) for p in parts]) if parts else np.zeros(0)
                 for name in ("indices", "values", "stderr", "counts")}
        position = {idx: pos for pos, idx in enumerate(found["indices"].astype(np.int64).tolist())}
        missing = [i for i in wanted if i not in position]
        if missing:
            raise NotFoundError(f"run {run_id} has no data value for point indices {missing[:10]}")
        order = np.array([position[i] for i in wanted], dtype=np.int64)
        return e.DataValues(run_id=run_id, indices=np.asarray(wanted, dtype=np.int64),
                            values=found["values"][order].astype(np.float64),
                            stderr=found["stderr"][order].astype(np.float64),
                            counts=found["counts"][order].astype(np.int64))

    def all_values(self, run_id):
        return self._values_query(run_id, self._select_values(run_id).order_by(orm.DataValueRow.point_index))

    def value_histogram(self, run_id, bins=SUMMARY_BINS):
        with self._session() as s:
            self._get(s, orm.RunRow, run_id, "run")
            summary = s.get(orm.DataValueSummaryRow, run_id)
            if summary is None:
                return np.zeros(bins, dtype=np.int64), np.linspace(0.0, 1.0, bins + 1)
            if bins == len(summary.histogram["counts"]):
                return np.asarray(summary.histogram["counts"]), np.asarray(summary.histogram["edges"])
            return self._histogram_in_sql(s, run_id, bins, summary.min, summary.max)

    @staticmethod
    def _histogram_in_sql(s, run_id, bins, low, high):
        """Any other bin count: one GROUP BY in the database (numpy's convention: last bin closed)."""
        v = orm.DataValueRow
        width = (high - low) / bins or 1.0
        raw_bin = func.floor((v.value - low) / width)
        bin_index = case((raw_bin >= bins, bins - 1), else_=raw_bin)
        rows = s.execute(select(bin_index, func.count()).where(v.run_id == run_id).group_by(bin_index)).all()
        counts = np.zeros(bins, dtype=np.int64)
        for index, n in rows:
            counts[int(index)] = n
        return counts, low + width * np.arange(bins + 1)

    def value_summary(self, run_id):
        with self._session() as s:
            self._get(s, orm.RunRow, run_id, "run")
            summary = s.get(orm.DataValueSummaryRow, run_id)
            if summary is None:
                return None
            return {"n": summary.n, "min": summary.min, "max": summary.max, "mean": summary.mean}

    # -- merges ---------------------------------------------------------------------------------------------
    def record_merge(self, method, config, inputs, output_model_id, run_id=None):
        with self._session(write=True) as s:
            for item in inputs:
                self._get(s, orm.ModelRow, item.model_id, "merge input model")
            if output_model_id is not None:
                self._get(s, orm.ModelRow, output_model_id, "merged model")
            row = _checked(orm.MergeRow(method=method, config=config, output_model_id=output_model_id, run_id=run_id))
            s.add(row)
            s.flush()
            for item in inputs:
                s.add(_checked(orm.MergeInputRow(merge_id=row.id, model_id=item.model_id, weight=item.weight)))
            return _merge(row, list(inputs))

    def list_merges(self):
        with self._session() as s:
            rows = list(s.scalars(select(orm.MergeRow).order_by(orm.MergeRow.id)))
            inputs = s.scalars(select(orm.MergeInputRow).order_by(orm.MergeInputRow.id)).all()
        by_merge: dict[int, list[e.MergeInput]] = {}
        for i in inputs:
            by_merge.setdefault(i.merge_id, []).append(e.MergeInput(i.model_id, i.weight))
        return [_merge(r, by_merge.get(r.id, [])) for r in rows]

    # -- cascades ---------------------------------------------------------------------------------------------
    def save_cascade(self, name, stages, thresholds, costs, budget, plan=None):
        if len(stages) == 0 or len(costs) != len(stages) or len(thresholds) not in (len(stages) - 1, len(stages)):
            raise InvalidInputError(
                f"cascade {name!r}: expected >= 1 stage, one cost per stage and a threshold per stage but "
                f"the last; got {len(stages)} stages, {len(costs)} costs, {len(thresholds)} thresholds"
            )
        with self._session(write=True) as s:
            _serialize(s, "cascade version", name)  # two writers must not both read the same latest version
            latest = s.scalar(select(func.max(orm.CascadeRow.version)).where(orm.CascadeRow.name == name))
            row = _checked(orm.CascadeRow(name=name, version=(latest or 0) + 1, stages=list(stages),
                                 thresholds=[float(t) for t in thresholds], costs=[float(c) for c in costs],
                                 budget=float(budget), plan=dict(plan or {})))
            s.add(row)
            s.flush()
            return _cascade(row)

    def get_cascade(self, name, version=None):
        query = select(orm.CascadeRow).where(orm.CascadeRow.name == name)
        query = query.where(orm.CascadeRow.version == version) if version is not None else query
        with self._session() as s:
            row = s.scalars(query.order_by(orm.CascadeRow.version.desc()).limit(1)).first()
            if row is None:
                raise NotFoundError(f"cascade {name!r}" + (f" version {version}" if version else "")
                                    + " does not exist")
            return _cascade(row)

    def list_cascades(self):
        with self._session() as s:
            return [_cascade(r) for r in s.scalars(
                select(orm.CascadeRow).order_by(orm.CascadeRow.name, orm.CascadeRow.version))]

    def log_cascade_requests(self, cascade_id, requests):
        with self._session(write=True) as s:
            self._get(s, orm.CascadeRow, cascade_id, "cascade")
            s.add_all([_checked(orm.CascadeRequestRow(
                cascade_id=cascade_id, stage_reached=r.stage_reached, scores=[float(x) for x in r.scores],
                cost=float(r.cost), latency_ms=float(r.latency_ms), frontier_point=r.frontier_point,
                created_at=r.created_at or orm.utcnow(), request_id=r.request_id, query_id=r.query_id,
                query=r.query, answer=r.answer, model=r.model, score=r.score, calls=list(r.calls),
                errors=list(r.errors))) for r in requests])
            return len(requests)

    def cascade_requests(self, cascade_id, limit=10_000):
        r = orm.CascadeRequestRow
        with self._session() as s:
            rows = list(s.scalars(select(r).where(r.cascade_id == cascade_id).order_by(r.id.desc()).limit(limit)))
            return _cascade_requests(s, rows)

    def label_cascade_requests(self, name, labels, where=None):
        labels = list(labels)
        where = list(where) if where is not None else [f"label {i}" for i in range(len(labels))]
        if len(where) != len(labels):
            raise InvalidInputError(f"got {len(labels)} labels but {len(where)} origins in `where`")
        for (request_id, model, correct), at in zip(labels, where, strict=True):
            if not isinstance(request_id, str) or not request_id:
                raise InvalidInputError(f"{at}: request_id must be a non-empty string, got {request_id!r}")
            if model is not None and not isinstance(model, str):
                raise InvalidInputError(f"{at}: model must be a string, got {model!r}")
            if not isinstance(correct, bool | np.bool_):
                raise InvalidInputError(f"{at}: correct must be a boolean, got {correct!r}")
        r = orm.CascadeRequestRow
        with self._session(write=True) as s:
            versions = select(orm.CascadeRow.id).where(orm.CascadeRow.name == name)
            if s.scalar(select(func.count()).select_from(versions.subquery())) == 0:
                raise NotFoundError(f"cascade {name!r} does not exist")
            rows = {}
            ids = sorted({request_id for request_id, _, _ in labels})
            for start in range(0, len(ids), 500):  # bounded IN lists
                chunk = ids[start:start + 500]
                rows.update((x.request_id, x) for x in s.scalars(
                    select(r).where(r.request_id.in_(chunk), r.cascade_id.in_(versions))))
            chosen: dict[tuple[int, str], bool] = {}
            for (request_id, model, correct), at in zip(labels, where, strict=True):
                row = rows.get(request_id)
                if row is None:
                    raise NotFoundError(f"{at}: request_id {request_id!r} is not a logged request of cascade "
                                        f"{name!r}")
                answered = [c.get("model") for c in (row.calls or [])] or [row.model]
                model = row.model if model is None else model
                if model not in answered:
                    raise InvalidInputError(f"{at}: model {model!r} did not answer request {request_id!r}; "
                                            f"these did: {answered}")
                chosen[(row.id, model)] = bool(correct)  # a later line for the same answer wins
            label = orm.CascadeLabelRow
            for (row_id, model) in chosen:  # relabelling replaces the earlier label
                s.execute(label.__table__.delete().where(label.request_id == row_id, label.model == model))
            now = orm.utcnow()
            s.add_all([_checked(label(request_id=row_id, model=model, correct=correct, created_at=now))
                       for (row_id, model), correct in chosen.items()])
            return len(chosen)

    def labelled_cascade_requests(self, name):
        r, label = orm.CascadeRequestRow, orm.CascadeLabelRow
        versions = select(orm.CascadeRow.id).where(orm.CascadeRow.name == name)
        with self._session() as s:
            if s.scalar(select(func.count()).select_from(versions.subquery())) == 0:
                raise NotFoundError(f"cascade {name!r} does not exist")
            labelled = select(label.request_id)
            rows = list(s.scalars(select(r).where(r.cascade_id.in_(versions), r.id.in_(labelled)).order_by(r.id)))
            return _cascade_requests(s, rows)

    # -- trials ---------------------------------------------------------------------------------------------
    def add_trial(self, run_id, number, config, metrics=None, cost=None, seconds=None, status="done"):
        with self._session(write=True) as s:
            self._get(s, orm.RunRow, run_id, "run")
            row = _checked(orm.TrialRow(run_id=run_id, number=number, config=_json_safe(config),
                               metrics=_json_safe(dict(metrics or {})),
                               cost=cost, seconds=seconds, status=status))
            s.add(row)
            s.flush()
            return _trial(row)

    def list_trials(self, run_id):
        with self._session() as s:
            return [_trial(r) for r in s.scalars(
                select(orm.TrialRow).where(orm.TrialRow.run_id == run_id).order_by(orm.TrialRow.number))]

    # -- workflows --------------------------------------------------------------------------------------------
    def create_workflow(self, name, inputs, spec, steps):
        names = [step["name"] for step in steps]
        if len(set(names)) != len(names):
            raise InvalidInputError(f"workflow {name!r} has duplicate step names: {names}")
        with self._session(write=True) as s:
            row = _checked(orm.WorkflowRow(name=name, status="pending", inputs=inputs, spec=spec))
            s.add(row)
            s.flush()
            s.add_all([_checked(orm.WorkflowStepRow(workflow_id=row.id, name=step["name"], state="pending",
                                           depends_on=list(step.get("depends_on", [])),
                                           resources=dict(step.get("resources", {})))) for step in steps])
            return _workflow(row)

    def get_workflow(self, workflow_id):
        with self._session() as s:
            return _workflow(self._get(s, orm.WorkflowRow, workflow_id, "workflow"))

    def list_workflows(self, limit=50, status=None):
        query = select(orm.WorkflowRow).order_by(orm.WorkflowRow.id.desc()).limit(limit)
        if status is not None:
            query = query.where(orm.WorkflowRow.status == status)
        with self._session() as s:
            return [_workflow(r) for r in s.scalars(query)]

    def update_workflow(self, workflow_id, **fields):
        _check_fields(fields, _WORKFLOW_FIELDS, "workflow")
        with self._session(write=True) as s:
            row = self._locked(s, orm.WorkflowRow, workflow_id, "workflow")
            for key, value in fields.items():
                setattr(row, key, value)
            row.updated_at = orm.utcnow()
            return _workflow(_checked(row))

    def workflow_steps(self, workflow_id):
        with self._session() as s:
            self._get(s, orm.WorkflowRow, workflow_id, "workflow")
            rows = s.scalars(select(orm.WorkflowStepRow).where(orm.WorkflowStepRow.workflow_id == workflow_id)
                             .order_by(orm.WorkflowStepRow.id))
            return [_step(r) for r in rows]

    def update_step(self, workflow_id, name, *, increment_attempts=False, **fields):
        _check_fields(fields, _STEP_FIELDS, "workflow step")
        with self._session(write=True) as s:
            row = s.scalars(select(orm.WorkflowStepRow).where(
                orm.WorkflowStepRow.workflow_id == workflow_id, orm.WorkflowStepRow.name == name)
                .with_for_update()).first()
            if row is None:
                raise NotFoundError(f"workflow {workflow_id} has no step named {name!r}")
            for key, value in fields.items():
                setattr(row, key, value)
            if increment_attempts:
                row.attempts += 1
            return _step(_checked(row))

    def workflow_lease(self, workflow_id):
        with self._session() as s:
            row = self._get(s, orm.WorkflowRow, workflow_id, "workflow")
            return WorkflowLease(row.driver, row.heartbeat_at)

    def claim_workflow(self, workflow_id, driver, expected, *, unless_status=()):
        w = orm.WorkflowRow
        holder = w.driver.is_(None) if expected is None else w.driver == expected
        if unless_status:
            holder = holder & w.status.not_in(list(unless_status))
        with self._session(write=True) as s:
            self._get(s, w, workflow_id, "workflow")
            result = s.execute(update(w).where(w.id == workflow_id, holder).values(
                driver=driver, heartbeat_at=orm.utcnow() if driver else None).execution_options(
                synchronize_session=False))
            return result.rowcount == 1

    def heartbeat_workflow(self, workflow_id, driver):
        w = orm.WorkflowRow
        with self._session(write=True) as s:
            result = s.execute(update(w).where(w.id == workflow_id, w.driver == driver).values(
                heartbeat_at=orm.utcnow()).execution_options(synchronize_session=False))
            return result.rowcount == 1

    def request_workflow_cancel(self, workflow_id):
        w = orm.WorkflowRow
        with self._session(write=True) as s:
            s.execute(update(w).where(w.id == workflow_id, w.status.in_(("pending", "running"))).values(
                status="cancelling", updated_at=orm.utcnow()).execution_options(synchronize_session=False))
            return _workflow(self._get(s, w, workflow_id, "workflow"))

    def settle_workflow(self, workflow_id, status, *, steps_from=(), steps_to=None, step_error=None, error=None,
                        result_artifact=None):
        if steps_from and steps_to not in e.STEP_STATES:
            raise InvalidInputError(f"step state {steps_to!r} is not one of {e.STEP_STATES}")
        with self._session(write=True) as s:
            row = self._locked(s, orm.WorkflowRow, workflow_id, "workflow")
            row.status, row.error, row.updated_at = status, error, orm.utcnow()
            if result_artifact is not None:
                row.result_artifact = result_artifact
            _checked(row)
            steps = s.scalars(select(orm.WorkflowStepRow).where(
                orm.WorkflowStepRow.workflow_id == workflow_id, orm.WorkflowStepRow.state.in_(list(steps_from))))
            for step in steps:
                step.state = steps_to
                if step_error is not None:
                    step.error = step_error
            return _workflow(row)

    # -- schedules ------------------------------------------------------------------------------------------
    def add_schedule(self, name, workflow, cron, timezone, inputs, catch_up, now=None):
        if catch_up not in e.CATCH_UP_POLICIES:
            raise InvalidInputError(f"catch-up policy {catch_up!r} is not one of {e.CATCH_UP_POLICIES}")
        if not isinstance(name, str) or not name.strip():
            raise InvalidInputError(f"schedule name {name!r} must be a non-empty string")
        with self._session(write=True) as s:
            if s.scalar(select(orm.ScheduleRow.id).where(orm.ScheduleRow.name == name)) is not None:
                raise InvalidInputError(f"a schedule named {name!r} already exists; remove it first or pick "
                                        "another name")
            row = _checked(orm.ScheduleRow(name=name, workflow=workflow, cron=cron, timezone=timezone,
                                           inputs=dict(inputs), catch_up=catch_up, paused=False,
                                           active_since=now or orm.utcnow()))
            s.add(row)
            s.flush()
            return _schedule(row)

    def _schedule_row(self, s, name, *, lock=False):
        query = select(orm.ScheduleRow).where(orm.ScheduleRow.name == name)
        row = s.scalars(query.with_for_update() if lock else query).first()
        if row is None:
            raise NotFoundError(f"no schedule named {name!r}; see `alloyml schedule list`")
        return row

    def get_schedule(self, name):
        with self._session() as s:
            return _schedule(self._schedule_row(s, name))

    def list_schedules(self):
        with self._session() as s:
            return [_schedule(r) for r in s.scalars(select(orm.ScheduleRow).order_by(orm.ScheduleRow.name))]

    def set_schedule_paused(self, name, paused, now=None):
        with self._session(write=True) as s:
            row = self._schedule_row(s, name, lock=True)
            if row.paused and not paused:
                row.active_since = now or orm.utcnow()
            row.paused = bool(paused)
            return _schedule(row)

    def remove_schedule(self, name):
        with self._session(write=True) as s:
            row = self._schedule_row(s, name, lock=True)
            s.execute(orm.ScheduleFiringRow.__table__.delete().where(orm.ScheduleFiringRow.schedule_id == row.id))
            s.delete(row)

    def last_slot(self, schedule_id):
        f = orm.ScheduleFiringRow
        with self._session() as s:
            return s.scalar(select(func.max(f.slot)).where(f.schedule_id == schedule_id, f.manual.is_(False)))

    def claim_firing(self, schedule_id, slot, *, outcome="claimed", missed=0, manual=False):
        if outcome not in e.FIRING_OUTCOMES:
            raise InvalidInputError(f"firing outcome {outcome!r} is not one of {e.FIRING_OUTCOMES}")
        table = orm.ScheduleFiringRow.__table__
        with self._session(write=True) as s:
            self._get(s, orm.ScheduleRow, schedule_id, "schedule")
            # One statement that cannot fail on a taken slot (no exception, no aborted PostgreSQL
            # transaction): the row comes back only when this insert made it.
            statement = _dialect_insert(s)(table).values(
                schedule_id=schedule_id, slot=slot, manual=manual, outcome=outcome, missed=int(missed),
                fired_at=orm.utcnow()).on_conflict_do_nothing(
                index_elements=[table.c.schedule_id, table.c.slot]).returning(table.c.id)
            return s.execute(statement).scalar()

    def finish_firing(self, firing_id, outcome, workflow_id=None, error=None):
        if outcome not in e.FIRING_OUTCOMES:
            raise InvalidInputError(f"firing outcome {outcome!r} is not one of {e.FIRING_OUTCOMES}")
        with self._session(write=True) as s:
            row = self._locked(s, orm.ScheduleFiringRow, firing_id, "schedule firing")
            row.outcome, row.workflow_id, row.error = outcome, workflow_id, error
            return _firing(_checked(row))

    def list_firings(self, schedule_id=None, limit=100):
        f, w = orm.ScheduleFiringRow, orm.WorkflowRow
        query = select(f, w.status).outerjoin(w, w.id == f.workflow_id).order_by(f.slot.desc(), f.id.desc())
        if schedule_id is not None:
            query = query.where(f.schedule_id == schedule_id)
        with self._session() as s:
            return [_firing(row, status) for row, status in s.execute(query.limit(limit))]


# -- helpers ---------------------------------------------------------------------------------------------------
_INT_RANGE = {"Integer": 2**31, "BigInteger": 2**63}  # PostgreSQL's integer and bigint; SQLite stores either


def _checked(row):
    """Check an ORM row against its table before the database sees it, so both backends refuse the same
    inputs with the same error (SQLite would store an over-long string or a NaN count; PostgreSQL would
    raise a driver error): strings fit their column, integers are integers in the column's range, floats
    are real numbers (NaN/inf become NULL where the column allows it), JSON columns hold JSON."""
    for column in row.__table__.columns:
        value = getattr(row, column.key)
        if value is None:
            continue
        where = f"{row.__tablename__}.{column.key}"
        kind = type(column.type).__name__
        if kind in ("String", "Text"):
            if not isinstance(value, str):
                raise InvalidInputError(f"{where} must be a string; got {type(value).__name__} {value!r:.60}")
            if column.type.length is not None and len(value) > column.type.length:
                raise InvalidInputError(f"{where} is {len(value)} characters long; at most {column.type.length} fit")
        elif kind in _INT_RANGE:
            if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
                raise InvalidInputError(f"{where} must be an integer; got {type(value).__name__} {value!r:.60}")
            if not -_INT_RANGE[kind] <= int(value) < _INT_RANGE[kind]:
                raise InvalidInputError(f"{where}={value} is out of range; it must fit a signed "
                                        f"{'32' if kind == 'Integer' else '64'}-bit integer")
            setattr(row, column.key, int(value))
        elif kind == "Float":
            if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
                raise InvalidInputError(f"{where} must be a number; got {type(value).__name__} {value!r:.60}")
            if not math.isfinite(value):
                if not column.nullable:
                    raise InvalidInputError(f"{where} is {value}; it must be a finite number")
                value = None
            setattr(row, column.key, None if value is None else float(value))
        elif kind == "JSON":
            setattr(row, column.key, _json_value(value, where))
    return row


METRIC_KEY_MAX = 200  # the key columns' width
_MAX_STEP = 2**63 - 1


def _metric_key(key) -> str:
    if not isinstance(key, str) or not key or len(key) > METRIC_KEY_MAX:
        raise InvalidInputError(f"metric name {key!r} must be a non-empty string of at most {METRIC_KEY_MAX} "
                                "characters")
    return key


def _metric_step(step) -> int:
    if step is None:
        return 0
    if isinstance(step, bool) or not isinstance(step, int | np.integer) or not 0 <= step <= _MAX_STEP:
        raise InvalidInputError(f"metric step {step!r} must be an integer in [0, 2**63)")
    return int(step)


def _metric_items(metrics, what: str) -> list[tuple[str, object, float | None, bool]]:
    """(key, JSON value, history value, has history) per metric, validated before the database: keys are
    short strings; values are JSON-able (numpy scalars and arrays converted; NaN/inf stored as null);
    numbers (not bools) also get a history row."""
    if not isinstance(metrics, dict):
        raise InvalidInputError(f"{what} must be a dict of name -> value; got {type(metrics).__name__}")
    items = []
    for key, raw in metrics.items():
        _metric_key(key)
        value = _json_value(raw, f"{what}[{key!r}]")
        numeric = isinstance(raw, int | float | np.integer | np.floating) and not isinstance(raw, bool | np.bool_)
        items.append((key, value, value if numeric else None, numeric))
    return items


def _json_metrics(metrics, what: str) -> dict:
    return {key: value for key, value, _, _ in _metric_items(metrics, what)}


def _json_value(value, where: str):
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list | tuple):
        return [_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): _json_value(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise InvalidInputError(f"{where} is a {type(value).__name__}; metrics must be numbers, strings, bools, "
                            "None, or lists/dicts of those")


def _log_metrics(s, run_id: int, items, step: int) -> None:
    if not items:
        return
    now = orm.utcnow()
    history = [{"run_id": run_id, "key": k, "step": step, "value": h, "time": now} for k, _, h, has in items if has]
    if history:
        s.execute(insert(orm.MetricRow), history)
    _upsert_latest(s, [{"run_id": run_id, "key": k, "step": step, "value": v, "number": h if has else None,
                        "time": now} for k, v, h, has in items])


def _dialect_insert(s):
    """The backend's INSERT, which has ON CONFLICT (both PostgreSQL and SQLite support it)."""
    if s.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def _upsert(s, table, rows: list[dict], keys: tuple[str, ...], columns: tuple[str, ...], where=None) -> None:
    """One atomic INSERT ... ON CONFLICT DO UPDATE (both backends): insert each row, or set `columns` of
    the row with the same `keys` (only where `where(excluded)` holds, when given)."""
    statement = _dialect_insert(s)(table).values(rows)
    statement = statement.on_conflict_do_update(
        index_elements=[table.c[k] for k in keys], set_={c: statement.excluded[c] for c in columns},
        where=None if where is None else where(statement.excluded))
    s.execute(statement)


def _upsert_latest(s, rows: list[dict]) -> None:
    """Insert each (run, key), or replace it unless it holds a higher step."""
    table = orm.MetricLatestRow.__table__
    _upsert(s, table, rows, ("run_id", "key"), ("step", "value", "number", "time"),
            where=lambda excluded: excluded.step >= table.c.step)


TAG_KEY_MAX, TAG_VALUE_MAX = 250, 5000  # the run_tag columns' widths (MLflow's limits)


def _tag_items(tags: dict) -> list[tuple[str, str]]:
    """Validated (key, value) pairs: both strings without control characters (they would garble the CLI
    table and the terminal), keys non-empty and free of `=` (the CLI's KEY=VALUE) and backticks (search
    quotes names with them), each within its column's width."""
    items = []
    for key, value in tags.items():
        if not isinstance(key, str) or not key.strip() or len(key) > TAG_KEY_MAX or any(c in key for c in "=`"):
            raise InvalidInputError(f"tag name {key!r} must be a non-empty string of at most {TAG_KEY_MAX} "
                                    "characters without '=' or '`'")
        if not isinstance(value, str):
            raise InvalidInputError(f"tag {key!r} must be a string; got {type(value).__name__} {value!r:.60} "
                                    "(write str(value) to store its text)")
        if len(value) > TAG_VALUE_MAX:
            raise InvalidInputError(f"tag {key!r} is {len(value)} characters long; at most {TAG_VALUE_MAX} fit")
        for where, text_ in (("name", key), ("value", value)):
            bad = [c for c in text_ if unicodedata.category(c) == "Cc"]
            if bad:
                raise InvalidInputError(f"tag {key!r}: the {where} contains the control character {bad[0]!r}")
        items.append((key, value))
    return items


def _tags_of(s, run_ids: list[int]) -> dict[int, dict]:
    tags = {run_id: {} for run_id in run_ids}
    if run_ids:
        t = orm.RunTagRow
        for run_id, key, value in s.execute(select(t.run_id, t.key, t.value).where(t.run_id.in_(run_ids))
                                            .order_by(t.run_id, t.key)):
            tags[run_id][key] = value
    return tags


def _runs(s, rows) -> list[e.Run]:
    """Entities for run rows: their latest metrics and tags in one query each."""
    ids = [r.id for r in rows]
    metrics, tags = _latest_metrics(s, ids), _tags_of(s, ids)
    return [_run(r, metrics[r.id], tags[r.id]) for r in rows]


def _latest_metrics(s, run_ids: list[int]) -> dict[int, dict]:
    latest = {run_id: {} for run_id in run_ids}
    if run_ids:
        m = orm.MetricLatestRow
        for run_id, key, value in s.execute(select(m.run_id, m.key, m.value).where(m.run_id.in_(run_ids))
                                            .order_by(m.run_id, m.time, m.key)):
            latest[run_id][key] = value
    return latest


def _compare(column, op: str, value):
    return {"=": column == value, "!=": column != value, "<": column < value, "<=": column <= value,
            ">": column > value, ">=": column >= value}[op]


def _like(column, op: str, pattern: str, dialect: str):
    """LIKE with one meaning on both backends: `%` and `_` are the wildcards, everything else literal;
    LIKE is case-sensitive and ILIKE is not. SQLite's LIKE ignores ASCII case, so there LIKE becomes
    the equivalent GLOB; PostgreSQL's LIKE treats a backslash as an escape, so it is doubled."""
    if dialect == "postgresql":
        pattern = pattern.replace("\\", "\\\\")
        return column.ilike(pattern) if op == "ILIKE" else column.like(pattern)
    if op == "ILIKE":
        return func.lower(column).like(func.lower(pattern))
    glob = "".join({"%": "*", "_": "?", "*": "[*]", "?": "[?]", "[": "[[]"}.get(c, c) for c in pattern)
    return column.op("GLOB")(glob)


def _match(column, clause, dialect: str):
    if clause.op in ("LIKE", "ILIKE"):
        return _like(column, clause.op, clause.value, dialect)
    return _compare(column, clause.op, clause.value)


def _param(clause, dialect: str):
    """A run's param `clause.name` as a number or a string (NULL when it is missing or of the other JSON
    type), so a clause matches only params of its value's type."""
    params, want_number = orm.RunRow.params, isinstance(clause.value, float)
    if dialect == "postgresql":
        kind = func.json_typeof(params[clause.name])
        value = params[clause.name].as_float() if want_number else params[clause.name].as_string()
        return case((kind == ("number" if want_number else "string"), value))
    path = literal('$."' + clause.name + '"')  # a bound parameter; search refuses names holding '"'
    kind = func.json_type(params, path)
    return case((kind.in_(("integer", "real")) if want_number else kind == "text", func.json_extract(params, path)))


def _search_condition(clause, dialect: str):
    """One parsed filter clause as a SQL condition; names and values are bound parameters."""
    run = orm.RunRow
    if clause.scope == "metrics":
        m = orm.MetricLatestRow
        return select(m.run_id).where(m.run_id == run.id, m.key == clause.name,
                                      _compare(m.number, clause.op, clause.value)).exists()
    if clause.scope == "tags":
        t = orm.RunTagRow
        return select(t.run_id).where(t.run_id == run.id, t.key == clause.name,
                                      _match(t.value, clause, dialect)).exists()
    if clause.scope == "params":
        return _match(_param(clause, dialect), clause, dialect)
    return _match(getattr(run, clause.name), clause, dialect)


def _serialize(s, *what: str) -> None:
    """Hold a lock named by `what` until the transaction ends (PostgreSQL advisory lock; SQLite's write
    transactions are serialized already)."""
    if s.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256("\0".join(what).encode()).digest()[:8], "big", signed=True)
        s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def _copy_field(value) -> str:
    return "\\N" if value is None else value if isinstance(value, str) else repr(value)


def _json_safe(value):
    """NaN and inf have no JSON form (PostgreSQL rejects them): store them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _k(k) -> int:
    if not isinstance(k, int | np.integer) or k < 0:
        raise InvalidInputError(f"k={k!r} must be a non-negative integer")
    return int(k)


def _check_fields(fields: dict, allowed: set, what: str) -> None:
    unknown = set(fields) - allowed
    if unknown:
        raise InvalidInputError(f"cannot set {sorted(unknown)} on a {what}; settable: {sorted(allowed)}")


def _value_columns(values, stderr, counts, indices) -> tuple[np.ndarray, ...]:
    """Validate the arrays of a bulk write before anything touches the database; return them in point order."""
    values = _numeric_array(values, "values")
    if values.ndim != 1 or values.size == 0:
        raise InvalidInputError(f"values must be a non-empty 1-d array; got shape {values.shape}")
    n = values.size

    def column(array, name, dtype, default, limit=None):
        if array is None:
            return np.full(n, default, dtype=dtype)
        array = _numeric_array(array, name)
        if array.shape != (n,):
            raise InvalidInputError(f"{name} has shape {array.shape}; expected ({n},) to match values")
        if limit is None:
            return array.astype(dtype)
        # Integer columns: NaN or 2.5 would be cast silently (NaN became -2**63 on SQLite).
        bad = np.flatnonzero(~np.isfinite(array) | (array != np.round(array)) | (array < 0) | (array >= limit))
        if bad.size:
            raise InvalidInputError(f"{name} must be whole numbers in [0, {limit}); positions {bad[:10].tolist()} "
                                    f"hold {array[bad[:3]].tolist()}")
        return array.astype(dtype)

    stderr = column(stderr, "stderr", np.float64, 0.0)
    counts = column(counts, "counts", np.int64, 0, limit=2**31)  # an integer column on PostgreSQL
    indices = (column(indices, "indices", np.int64, 0, limit=2**63) if indices is not None
               else np.arange(n, dtype=np.int64))
    for name, array in (("values", values), ("stderr", stderr)):
        bad = np.flatnonzero(~np.isfinite(array))
        if bad.size:
            raise InvalidInputError(f"{name} contains NaN or inf at positions {bad[:10].tolist()}")
    if n > 1 and not np.all(indices[1:] > indices[:-1]):  # not already in point order (the default is)
        order = np.argsort(indices, kind="stable")
        indices, values, stderr, counts = indices[order], values[order], stderr[order], counts[order]
        if np.any(indices[1:] == indices[:-1]):
            raise InvalidInputError("indices contain duplicates; each training point gets one value per run")
    return indices, values, stderr, counts


def _numeric_array(array, name: str) -> np.ndarray:
    try:
        out = np.asarray(array)
        if out.dtype.kind not in "biuf":
            out = out.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise InvalidInputError(f"{name} must be numbers; got {str(err)[:80]}") from err
    return out.astype(np.float64) if out.dtype.kind in "bf" else out


def _bulk_insert(connection, table: str, columns: tuple[str, ...], arrays, field=repr) -> None:
    """Append rows given as aligned columns (numpy arrays or lists): COPY on PostgreSQL (each value
    written by `field`), one executemany elsewhere."""
    arrays = [a.tolist() if isinstance(a, np.ndarray) else a for a in arrays]
    if connection.dialect.name == "postgresql":
        # One text block for COPY: repr() of a float parses back to the same double.
        lines = "\n".join("\t".join(map(field, row)) for row in zip(*arrays, strict=True))
        cursor = connection.connection.driver_connection.cursor()
        with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            copy.write(lines + "\n")
        return
    # Straight to the DBAPI cursor: SQLAlchemy's per-row parameter handling would double the time.
    placeholders = ", ".join("?" for _ in columns)
    cursor = connection.connection.driver_connection.cursor()
    cursor.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})",
                       zip(*arrays, strict=True))


def _dataset(r) -> e.Dataset:
    return e.Dataset(r.id, r.name, r.version, r.n_rows, r.schema, r.fingerprint, r.artifact, r.created_at)


def _model(r) -> e.Model:
    return e.Model(r.id, r.name, r.architecture, r.n_params, r.artifact, dict(r.metrics), r.created_at)


def _run(r, metrics: dict, tags: dict) -> e.Run:
    return e.Run(r.id, r.kind, r.name, r.status, dict(r.params), dict(metrics), r.error, r.started_at,
                 r.finished_at, r.workflow_id, r.dataset_id, r.model_id, dict(tags))


def _merge(r, inputs) -> e.Merge:
    return e.Merge(r.id, r.run_id, r.method, dict(r.config), r.output_model_id, list(inputs), r.created_at)


def _cascade_requests(session, rows) -> list[e.CascadeRequest]:
    """Request entities of `rows`, with their labels."""
    labels: dict[int, dict] = {}
    ids = [x.id for x in rows]
    label = orm.CascadeLabelRow
    for start in range(0, len(ids), 500):
        for x in session.scalars(select(label).where(label.request_id.in_(ids[start:start + 500]))
                                 .order_by(label.id)):
            labels.setdefault(x.request_id, {})[x.model] = bool(x.correct)
    return [e.CascadeRequest(x.stage_reached, x.cost, x.latency_ms, x.scores, x.frontier_point, x.created_at,
                             request_id=x.request_id, query_id=x.query_id, query=x.query, answer=x.answer,
                             model=x.model, score=x.score, calls=list(x.calls or []), errors=list(x.errors or []),
                             labels=labels.get(x.id, {})) for x in rows]


def _cascade(r) -> e.Cascade:
    return e.Cascade(r.id, r.name, r.version, list(r.stages), list(r.thresholds), list(r.costs), r.budget,
                     dict(r.plan), r.created_at)


def _trial(r) -> e.Trial:
    return e.Trial(r.id, r.run_id, r.number, dict(r.config), dict(r.metrics), r.cost, r.seconds, r.status)


def _workflow(r) -> e.Workflow:
    return e.Workflow(r.id, r.name, r.status, dict(r.inputs), dict(r.spec), r.result_artifact, r.error,
                      r.created_at, r.updated_at)


def _schedule(r) -> e.Schedule:
    return e.Schedule(r.id, r.name, r.workflow, r.cron, r.timezone, dict(r.inputs), r.catch_up, bool(r.paused),
                      r.active_since, r.created_at)


def _firing(r, workflow_status: str | None = None) -> e.ScheduleFiring:
    return e.ScheduleFiring(r.id, r.schedule_id, r.slot, bool(r.manual), r.outcome, r.missed, r.workflow_id,
                            r.error, r.fired_at, workflow_status)


def _step(r) -> e.WorkflowStep:
    return e.WorkflowStep(r.id, r.workflow_id, r.name, r.state, r.attempts, list(r.depends_on),
                          dict(r.resources), r.output_artifact, r.error, r.started_at, r.finished_at)


__all__ = ["SqlStore"]
