"""Where results are kept, never how they are computed: settings, the SQL metadata store (SQLAlchemy 2 +
Alembic), the content-addressed artifact store, and the `Platform` client that ties them together."""
