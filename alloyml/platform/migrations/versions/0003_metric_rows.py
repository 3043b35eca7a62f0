"""metric rows: history and latest value per key

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 07:00:00

`run.metrics` was one JSON object that every writer read, merged in Python and wrote back, so concurrent
writers lost each other's keys. Metrics become rows: `metric` (every logged numeric value, with its step
and time) and `metric_latest` (one row per run and key, upserted). Existing metrics move over at step 0;
the downgrade folds the latest values back into `run.metrics`.
"""

import datetime as dt
import json
import math

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def _numeric(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def upgrade() -> None:
    op.create_table(
        'metric',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('run_id', sa.Integer(), nullable=False),
        sa.Column('key', sa.String(length=200), nullable=False),
        sa.Column('step', sa.BigInteger(), nullable=False),
        sa.Column('value', sa.Float(), nullable=True),
        sa.Column('time', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['run_id'], ['run.id'], name=op.f('fk_metric_run_id_run'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_metric')),
    )
    with op.batch_alter_table('metric', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_metric_run_id_key_step'), ['run_id', 'key', 'step'], unique=False)
    latest = op.create_table(
        'metric_latest',
        sa.Column('run_id', sa.Integer(), nullable=False),
        sa.Column('key', sa.String(length=200), nullable=False),
        sa.Column('step', sa.BigInteger(), nullable=False),
        sa.Column('value', sa.JSON(), nullable=True),
        sa.Column('number', sa.Float(), nullable=True),
        sa.Column('time', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['run_id'], ['run.id'], name=op.f('fk_metric_latest_run_id_run'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('run_id', 'key', name=op.f('pk_metric_latest')),
    )
    history = sa.table('metric', sa.column('run_id'), sa.column('key'), sa.column('step'),
                       sa.column('value'), sa.column('time'))
    connection = op.get_bind()
    run = sa.table('run', sa.column('id'), sa.column('metrics', sa.JSON()),
                   sa.column('finished_at', sa.DateTime()), sa.column('started_at', sa.DateTime()))
    latest_rows, history_rows = [], []
    for run_id, metrics, finished, started in connection.execute(
            sa.select(run.c.id, run.c.metrics, run.c.finished_at, run.c.started_at)):
        when = finished or started or dt.datetime(1970, 1, 1)
        for key, value in (metrics or {}).items():
            number = float(value) if _numeric(value) and math.isfinite(value) else None
            latest_rows.append({'run_id': run_id, 'key': key, 'step': 0, 'value': value, 'number': number,
                                'time': when})
            if _numeric(value) or value is None:
                history_rows.append({'run_id': run_id, 'key': key, 'step': 0,
                                     'value': None if value is None or not math.isfinite(value) else value,
                                     'time': when})
    if latest_rows:
        op.bulk_insert(latest, latest_rows)
    if history_rows:
        op.bulk_insert(history, history_rows)
    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.drop_column('metrics')


def downgrade() -> None:
    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.add_column(sa.Column('metrics', sa.JSON(), nullable=True))
    connection = op.get_bind()
    metrics: dict[int, dict] = {}
    for run_id, key, value in connection.execute(sa.text('SELECT run_id, key, value FROM metric_latest')):
        metrics.setdefault(run_id, {})[key] = json.loads(value) if isinstance(value, str) else value
    run = sa.table('run', sa.column('id'), sa.column('metrics', sa.JSON()))
    for run_id in [r[0] for r in connection.execute(sa.select(run.c.id))]:
        connection.execute(run.update().where(run.c.id == run_id).values(metrics=metrics.get(run_id, {})))
    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.alter_column('metrics', existing_type=sa.JSON(), nullable=False)
    op.drop_table('metric_latest')
    with op.batch_alter_table('metric', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_metric_run_id_key_step'))
    op.drop_table('metric')
