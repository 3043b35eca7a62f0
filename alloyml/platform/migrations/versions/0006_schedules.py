"""schedules and their firings

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 08:00:00

`schedule` runs a built-in workflow on a cron timetable; `schedule_firing` records each slot that came due
(submitted, failed or skipped). UNIQUE(schedule_id, slot) is the claim: two schedulers that both see a
slot due both try to insert its row, and only one insert succeeds, so a slot fires at most once.
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'schedule',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('workflow', sa.String(length=200), nullable=False),
        sa.Column('cron', sa.String(length=200), nullable=False),
        sa.Column('timezone', sa.String(length=64), nullable=False),
        sa.Column('inputs', sa.JSON(), nullable=False),
        sa.Column('catch_up', sa.String(length=10), nullable=False),
        sa.Column('paused', sa.Boolean(), nullable=False),
        sa.Column('active_since', sa.DateTime(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_schedule')),
        sa.UniqueConstraint('name', name=op.f('uq_schedule_name')),
    )
    op.create_table(
        'schedule_firing',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('schedule_id', sa.Integer(), nullable=False),
        sa.Column('slot', sa.DateTime(), nullable=False),
        sa.Column('manual', sa.Boolean(), nullable=False),
        sa.Column('outcome', sa.String(length=20), nullable=False),
        sa.Column('missed', sa.Integer(), nullable=False),
        sa.Column('workflow_id', sa.Integer(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('fired_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['schedule_id'], ['schedule.id'], name=op.f('fk_schedule_firing_schedule_id_schedule'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['workflow_id'], ['workflow.id'], name=op.f('fk_schedule_firing_workflow_id_workflow'),
                                ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_schedule_firing')),
        sa.UniqueConstraint('schedule_id', 'slot', name=op.f('uq_schedule_firing_schedule_id_slot')),
    )


def downgrade() -> None:
    op.drop_table('schedule_firing')
    op.drop_table('schedule')
