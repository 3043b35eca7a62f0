"""request log keeps what was asked and answered; correctness labels

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 08:00:00

A served request was stored as stage, scores, cost and latency only, so production traffic could not be
learned from. `cascade_request` gains the request's id (returned to the client, used to attach labels),
the caller's query id, the query text, the answer, the answering model and its score, every stage call
(model, answer, cost, score) and the stage errors; `cascade_label` holds the correctness labels attached
later (one per request and model). Old rows keep NULL in the new columns and stay readable.
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('cascade_request', schema=None) as batch_op:
        batch_op.add_column(sa.Column('request_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('query_id', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('query', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('answer', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('model', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('score', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('calls', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('errors', sa.JSON(), nullable=True))
        batch_op.create_index(batch_op.f('ix_cascade_request_request_id'), ['request_id'], unique=True)
    op.create_table(
        'cascade_label',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('request_id', sa.Integer(), nullable=False),
        sa.Column('model', sa.String(length=200), nullable=False),
        sa.Column('correct', sa.Boolean(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['request_id'], ['cascade_request.id'],
                                name=op.f('fk_cascade_label_request_id_cascade_request'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_cascade_label')),
        sa.UniqueConstraint('request_id', 'model', name=op.f('uq_cascade_label_request_id_model')),
    )


def downgrade() -> None:
    op.drop_table('cascade_label')
    with op.batch_alter_table('cascade_request', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_cascade_request_request_id'))
        for column in ('errors', 'calls', 'score', 'model', 'answer', 'query', 'query_id', 'request_id'):
            batch_op.drop_column(column)
