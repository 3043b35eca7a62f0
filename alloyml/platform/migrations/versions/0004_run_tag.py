"""run tags: free-form string key/value pairs per run

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 08:00:00

One row per (run, key); the composite primary key is what makes setting a tag a single atomic upsert.
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'run_tag',
        sa.Column('run_id', sa.Integer(), nullable=False),
        sa.Column('key', sa.String(length=250), nullable=False),
        sa.Column('value', sa.String(length=5000), nullable=False),
        sa.ForeignKeyConstraint(['run_id'], ['run.id'], name=op.f('fk_run_tag_run_id_run'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('run_id', 'key', name=op.f('pk_run_tag')),
    )


def downgrade() -> None:
    op.drop_table('run_tag')
