"""Shared fixtures: a private ALLOYML_HOME per test, store URLs for SQLite and PostgreSQL, and one Ray
for the whole test session (ray.init costs ~9 s and ~0.8 GB, so it is started once)."""

from __future__ import annotations

import os
import uuid

import pytest

# litellm fetches a price map from GitHub at import unless told to use its bundled copy.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

PG_ADMIN_URL = os.environ.get("ALLOYML_TEST_PG", "postgresql+psycopg://root@127.0.0.1:5432/test")


@pytest.fixture
def alloy_home(tmp_path, monkeypatch):
    """A fresh ALLOYML_HOME with the embedded SQLite default."""
    home = tmp_path / "alloyml-home"
    monkeypatch.setenv("ALLOYML_HOME", str(home))
    monkeypatch.delenv("ALLOYML_DB_URL", raising=False)
    return home


def _pg_schema_url():
    """A fresh schema in the `test` database; the URL pins the search_path to it."""
    import sqlalchemy as sa

    schema = "t_" + uuid.uuid4().hex[:12]
    engine = sa.create_engine(PG_ADMIN_URL)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    return f"{PG_ADMIN_URL}?options=-csearch_path%3D{schema}", schema


def _drop_pg_schema(schema):
    import sqlalchemy as sa

    engine = sa.create_engine(PG_ADMIN_URL)
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """A migrated-nothing database URL, once for SQLite and once for PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    url, schema = _pg_schema_url()
    try:
        yield url
    finally:
        _drop_pg_schema(schema)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session."""
    import ray

    from alloyml.raycluster import ensure_ray

    ensure_ray(num_cpus=2)
    yield ray


# An S3-compatible server for the object-storage artifact store: moto in server mode on 127.0.0.1, a real
# HTTP server spoken to by s3fs/botocore. Credentials are test values read from the environment only.
S3_TEST_SECRET = "alloyml-test-secret-" + uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def s3_server():
    """(endpoint URL, credentials env) of a moto S3 server bound to 127.0.0.1 for the session."""
    import logging
    import socket

    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        yield endpoint, {"AWS_ACCESS_KEY_ID": "alloyml-test-key", "AWS_SECRET_ACCESS_KEY": S3_TEST_SECRET,
                         "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
    finally:
        server.stop()


@pytest.fixture
def s3_artifacts(s3_server, monkeypatch):
    """A fresh bucket on the session's S3 server; the credentials are set in this process's environment.
    Returns the `s3://bucket/prefix` URL for ALLOYML_ARTIFACTS."""
    import s3fs

    _, env = s3_server
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bucket = "alloyml-" + uuid.uuid4().hex[:12]
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(bucket)
    return f"s3://{bucket}/artifacts"
