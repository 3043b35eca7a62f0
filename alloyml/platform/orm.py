"""SQLAlchemy 2 ORM rows of the metadata store. Rows never leave `alloyml.platform.sql_store`: callers get
the dataclasses of `entities.py`. Constraint names follow one convention so Alembic migrations are stable
on SQLite and PostgreSQL; indexes serve the dashboard's queries."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    """The store's clock: naive UTC, as every timestamp column holds (the one definition; workflows use it)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class DatasetRow(Base):
    __tablename__ = "dataset"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), doc="Dataset name, unique together with version.")
    version: Mapped[str] = mapped_column(String(64), doc="User-chosen version label.")
    n_rows: Mapped[int] = mapped_column(BigInteger, doc="Number of rows.")
    schema: Mapped[dict] = mapped_column(JSON, default=dict, doc="Column names and dtypes.")
    fingerprint: Mapped[str] = mapped_column(String(64), doc="SHA-256 of the content.")
    artifact: Mapped[str | None] = mapped_column(String(200), doc="Artifact key of the stored rows.")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class ModelRow(Base):
    __tablename__ = "model"
    __table_args__ = (Index(None, "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), doc="Model name (not unique: versions share it).")
    architecture: Mapped[str] = mapped_column(String(100), doc="e.g. 'gla', 'mamba', 'sklearn:Pipeline'.")
    n_params: Mapped[int] = mapped_column(BigInteger, default=0, doc="Parameter count.")
    artifact: Mapped[str | None] = mapped_column(String(500), doc="Artifact key or directory of weights.")
    metrics: Mapped[dict] = mapped_column(JSON, default=dict, doc="Scores, e.g. per-task accuracy.")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class LineageRow(Base):
    __tablename__ = "lineage"
    __table_args__ = (UniqueConstraint("child_id", "parent_id", "role"), Index(None, "parent_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    child_id: Mapped[int] = mapped_column(ForeignKey("model.id", ondelete="CASCADE"), doc="Derived model.")
    parent_id: Mapped[int] = mapped_column(ForeignKey("model.id", ondelete="CASCADE"), doc="Source model.")
    role: Mapped[str] = mapped_column(String(40), doc="base / fine-tune / merge input / expert / cascade stage.")
    weight: Mapped[float | None] = mapped_column(Float, doc="Merge weight of the parent, when one applies.")


class RunRow(Base):
    __tablename__ = "run"
    __table_args__ = (Index(None, "kind", "started_at"), Index(None, "started_at"), Index(None, "workflow_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(40), doc="train, valuation, merge, route, tune, ...")
    name: Mapped[str | None] = mapped_column(String(200), doc="Free-form label.")
    status: Mapped[str] = mapped_column(String(20), default="running", doc="running, done, failed.")
    params: Mapped[dict] = mapped_column(JSON, default=dict, doc="Inputs and settings of the run.")
    error: Mapped[str | None] = mapped_column(Text, doc="Traceback of a failed run.")
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    workflow_id: Mapped[int | None] = mapped_column(ForeignKey("workflow.id", ondelete="SET NULL"))
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("dataset.id", ondelete="SET NULL"))
    model_id: Mapped[int | None] = mapped_column(ForeignKey("model.id", ondelete="SET NULL"))


class MetricRow(Base):
    """Metric history: one row per logged numeric value, so a run keeps its curves (loss per step). Rows
    are only ever inserted, so concurrent writers never overwrite each other."""

    __tablename__ = "metric"
    __table_args__ = (Index(None, "run_id", "key", "step"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(200), doc="Metric name.")
    step: Mapped[int] = mapped_column(BigInteger, default=0, doc="Training step / iteration (0 when not given).")
    value: Mapped[float | None] = mapped_column(Float, doc="The value; NULL for NaN or inf.")
    time: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class MetricLatestRow(Base):
    """The latest value of each metric of a run (any JSON value: numbers, curves as lists, dicts), one
    row per (run, key) so reading a run's metrics is one primary-key range read. Written by an atomic
    upsert that keeps the value with the highest step."""

    __tablename__ = "metric_latest"

    run_id: Mapped[int] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger, default=0)
    value: Mapped[object] = mapped_column(JSON, doc="JSON-able value; null for NaN or inf.")
    number: Mapped[float | None] = mapped_column(Float, doc="The value when it is a finite number (for search).")
    time: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class RunTagRow(Base):
    """A tag on a run (free-form string key and value, as MLflow's run tags). One row per (run, key):
    the primary key makes "set a tag" one atomic upsert, so concurrent writers never lose each other's tags."""

    __tablename__ = "run_tag"

    run_id: Mapped[int] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(250), primary_key=True, doc="Tag name.")
    value: Mapped[str] = mapped_column(String(5000), doc="Tag value (a string).")


class DataValueRow(Base):
    """One row per (run, training point), clustered by point. Millions per run: written in bulk, never
    through the ORM. Rows are inserted in primary-key order, so the write is a sequential append."""

    __tablename__ = "data_value"
    __table_args__ = ({"sqlite_with_rowid": False},)

    run_id: Mapped[int] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"), primary_key=True)
    point_index: Mapped[int] = mapped_column(BigInteger, primary_key=True, doc="Row index in the train set.")
    value: Mapped[float] = mapped_column(Float, doc="Estimated data value.")
    stderr: Mapped[float] = mapped_column(Float, default=0.0, doc="Standard error of the estimate.")
    count: Mapped[int] = mapped_column(Integer, default=0, doc="Samples (utility evaluations) behind it.")


class DataValueRankRow(Base):
    """The lowest and highest points of a run in value order (rank 0 = lowest; the 10,000 at each end),
    clustered by rank.

    "Lowest/highest k" reads the first or last k ranks. An index on (run_id, value) would serve the same
    queries, but filling it takes a million random B-tree inserts per run; ranks computed by one numpy
    sort are appended in order instead, which keeps a million-value write within seconds."""

    __tablename__ = "data_value_rank"
    __table_args__ = ({"sqlite_with_rowid": False},)

    run_id: Mapped[int] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"), primary_key=True)
    rank: Mapped[int] = mapped_column(BigInteger, primary_key=True, doc="0 = lowest value of the run.")
    point_index: Mapped[int] = mapped_column(BigInteger, doc="The point holding this rank.")


class DataValueSummaryRow(Base):
    """Per-run distribution of values, computed from the same arrays in the same transaction as the
    write, so the dashboard never scans a million rows to draw a histogram."""

    __tablename__ = "data_value_summary"

    run_id: Mapped[int] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"), primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, doc="Number of valued points.")
    min: Mapped[float] = mapped_column(Float)
    max: Mapped[float] = mapped_column(Float)
    mean: Mapped[float] = mapped_column(Float)
    histogram: Mapped[dict] = mapped_column(JSON, doc='{"counts": [...], "edges": [...]} (50 bins).')


class MergeRow(Base):
    __tablename__ = "merge"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("run.id", ondelete="SET NULL"))
    method: Mapped[str] = mapped_column(String(40), doc="Registered merge method name.")
    config: Mapped[dict] = mapped_column(JSON, doc="The full merge configuration.")
    output_model_id: Mapped[int | None] = mapped_column(ForeignKey("model.id", ondelete="SET NULL"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class MergeInputRow(Base):
    __tablename__ = "merge_input"
    __table_args__ = (UniqueConstraint("merge_id", "model_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    merge_id: Mapped[int] = mapped_column(ForeignKey("merge.id", ondelete="CASCADE"))
    model_id: Mapped[int] = mapped_column(ForeignKey("model.id", ondelete="CASCADE"))
    weight: Mapped[float | None] = mapped_column(Float, doc="Weight (or density) given to this input.")


class CascadeRow(Base):
    __tablename__ = "cascade"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer, doc="1, 2, ... per name; the highest is current.")
    stages: Mapped[list] = mapped_column(JSON, doc="Ordered model names of the chain.")
    thresholds: Mapped[list] = mapped_column(JSON, doc="Score threshold per stage but the last.")
    costs: Mapped[list] = mapped_column(JSON, doc="Cost per call of each stage.")
    budget: Mapped[float] = mapped_column(Float, doc="Mean cost per query the plan was fitted for.")
    plan: Mapped[dict] = mapped_column(JSON, default=dict, doc="Full plan incl. the cost-accuracy frontier.")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class CascadeRequestRow(Base):
    __tablename__ = "cascade_request"
    __table_args__ = (Index(None, "cascade_id", "created_at"), Index(None, "request_id", unique=True))

    id: Mapped[int] = mapped_column(primary_key=True)
    cascade_id: Mapped[int] = mapped_column(ForeignKey("cascade.id", ondelete="CASCADE"))
    stage_reached: Mapped[int] = mapped_column(Integer, doc="0-based index of the stage that answered.")
    scores: Mapped[list] = mapped_column(JSON, default=list, doc="Scorer output at each stage visited.")
    cost: Mapped[float] = mapped_column(Float)
    latency_ms: Mapped[float] = mapped_column(Float)
    frontier_point: Mapped[int | None] = mapped_column(Integer, doc="Budget-guard frontier index in force.")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # Since revision 0004; NULL on older rows.
    request_id: Mapped[str | None] = mapped_column(String(64), doc="Id the ingress gave it (labels refer to it).")
    query_id: Mapped[str | None] = mapped_column(String(200), doc="The caller's query id, if it sent one.")
    query: Mapped[str | None] = mapped_column(Text, doc="Query text.")
    answer: Mapped[str | None] = mapped_column(Text, doc="Answer returned.")
    model: Mapped[str | None] = mapped_column(String(200), doc="Model whose answer was returned.")
    score: Mapped[float | None] = mapped_column(Float, doc="Scorer output for the returned answer.")
    calls: Mapped[list | None] = mapped_column(JSON, doc="Each stage that answered: model, answer, cost, score.")
    errors: Mapped[list | None] = mapped_column(JSON, doc="Stage failures met on the way: model, error.")


class CascadeLabelRow(Base):
    __tablename__ = "cascade_label"
    __table_args__ = (UniqueConstraint("request_id", "model"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("cascade_request.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(200), doc="Model whose answer to the request is labelled.")
    correct: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class WorkflowRow(Base):
    __tablename__ = "workflow"
    __table_args__ = (Index(None, "created_at"), Index(None, "status"))

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default="pending",
                                        doc="pending/running/cancelling/done/failed/cancelled")
    inputs: Mapped[dict] = mapped_column(JSON, default=dict, doc="Inputs (JSON) or artifact references.")
    spec: Mapped[dict] = mapped_column(JSON, default=dict, doc="Step graph: names, dependencies, options.")
    result_artifact: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    driver: Mapped[str | None] = mapped_column(
        String(200), doc="Lease holder 'host:pid:token' of the process driving the workflow; NULL when none.")
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime, doc="Last heartbeat of the driver.")


class WorkflowStepRow(Base):
    __tablename__ = "workflow_step"
    __table_args__ = (UniqueConstraint("workflow_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    workflow_id: Mapped[int] = mapped_column(ForeignKey("workflow.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(20), default="pending", doc="pending/running/done/failed/cancelled")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    depends_on: Mapped[list] = mapped_column(JSON, default=list, doc="Names of upstream steps.")
    resources: Mapped[dict] = mapped_column(JSON, default=dict, doc="CPUs, GPUs, memory, custom resources.")
    output_artifact: Mapped[str | None] = mapped_column(String(200), doc="Artifact key of the output.")
    error: Mapped[str | None] = mapped_column(Text, doc="Traceback of the last failure.")
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class TrialRow(Base):
    __tablename__ = "trial"
    __table_args__ = (UniqueConstraint("run_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer, doc="Trial number within the tuning run.")
    config: Mapped[dict] = mapped_column(JSON)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    cost: Mapped[float | None] = mapped_column(Float, doc="Cost unit of the search (tokens, CPU-seconds).")
    seconds: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(20), default="done")


class ScheduleRow(Base):
    """A built-in workflow run on a cron timetable (see `alloyml.workflows.schedules`)."""

    __tablename__ = "schedule"
    __table_args__ = (UniqueConstraint("name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), doc="Unique schedule name.")
    workflow: Mapped[str] = mapped_column(String(200), doc="Built-in workflow name.")
    cron: Mapped[str] = mapped_column(String(200), doc="Five-field cron expression, in `timezone`.")
    timezone: Mapped[str] = mapped_column(String(64), doc="IANA time zone of the cron's wall clock.")
    inputs: Mapped[dict] = mapped_column(JSON, default=dict, doc="Encoded inputs (store references, never URLs).")
    catch_up: Mapped[str] = mapped_column(String(10), doc="skip, latest or all: what fires after downtime.")
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    active_since: Mapped[dt.datetime] = mapped_column(
        DateTime, default=utcnow, doc="Created or last resumed: slots before it never come due.")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class ScheduleFiringRow(Base):
    """One slot of a schedule that came due. Inserting the row claims the slot: the unique constraint
    makes a second scheduler's insert fail, so a slot fires at most once."""

    __tablename__ = "schedule_firing"
    __table_args__ = (UniqueConstraint("schedule_id", "slot"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    schedule_id: Mapped[int] = mapped_column(ForeignKey("schedule.id", ondelete="CASCADE"))
    slot: Mapped[dt.datetime] = mapped_column(DateTime, doc="The cron slot (naive UTC); `run-now` time if manual.")
    manual: Mapped[bool] = mapped_column(Boolean, default=False, doc="Fired by `run-now`, not by the timetable.")
    outcome: Mapped[str] = mapped_column(String(20), doc="claimed, submitted, failed or skipped.")
    missed: Mapped[int] = mapped_column(Integer, default=0, doc="Earlier due slots this row stands for, unfired.")
    workflow_id: Mapped[int | None] = mapped_column(ForeignKey("workflow.id", ondelete="SET NULL"))
    error: Mapped[str | None] = mapped_column(Text, doc="Why the submission failed.")
    fired_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
