"""workflow driver lease

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 14:00:00

The process driving a workflow holds a lease (`driver`, `heartbeat_at`) so a second driver cannot run it
at the same time, and `resume` can tell a live driver from a dead one.
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('workflow', schema=None) as batch_op:
        batch_op.add_column(sa.Column('driver', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('workflow', schema=None) as batch_op:
        batch_op.drop_column('heartbeat_at')
        batch_op.drop_column('driver')
