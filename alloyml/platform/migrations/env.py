"""Alembic environment: runs migrations on the connection alloyml hands in (see `schema.py`)."""

from alembic import context

from alloyml.platform.orm import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # `alembic` command line: build an engine from the configured URL
    from sqlalchemy import create_engine

    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    connection = engine.connect()

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
