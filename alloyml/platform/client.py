"""The `Platform` client: the one object users and the workflow layer talk to.

`Platform()` opens the embedded default (SQLite under ALLOYML_HOME, WAL mode, busy timeout) or whatever
ALLOYML_DB_URL names. A brand-new embedded database is created at the current schema — there is nothing
in it to migrate — but an existing database that is un-migrated or older is refused with the hint to run
`alloyml db upgrade`.
"""

from __future__ import annotations

import hashlib
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from alloyml.errors import InvalidInputError, NotFoundError
from alloyml.platform import entities as e
from alloyml.platform import schema
from alloyml.platform.settings import Settings


def upgrade_database(db_url: str | None = None, home: str | Path | None = None) -> str:
    """Create or migrate the database to this alloyml's schema; returns the revision."""
    settings = Settings.from_env(home=home, db_url=db_url)
    write_engine, read_engine = schema.make_engines(settings.db_url)
    try:
        return schema.upgrade(write_engine)
    finally:
        write_engine.dispose()
        read_engine.dispose()


class RunHandle:
    """What `Platform.run(...)` yields: the run's id plus metric logging."""

    def __init__(self, platform: Platform, run: e.Run):
        self.platform = platform
        self.id = run.id
        self.metrics: dict = {}

    def log_metrics(self, step: int | None = None, **metrics) -> None:
        """Log metrics (at `step`, for curves: `run.log_metrics(loss=0.3, step=100)`)."""
        self.platform.store.log_metrics(self.id, metrics, step=step)
        self.metrics.update(metrics)

    def set_tags(self, tags: dict[str, str] | None = None, /, **more: str) -> dict[str, str]:
        """Tag the run (`run.set_tags(owner="ana")`, or a dict for keys such as 'team.name'); returns all tags."""
        return self.platform.store.set_tags(self.id, tags, **more)


class Platform:
    """Client over the metadata store and the artifact store."""

    def __init__(self, db_url: str | None = None, home: str | Path | None = None, *, upgrade: bool = False,
                 artifacts: str | None = None):
        from alloyml.platform.sql_store import SqlStore

        self.settings = Settings.from_env(home=home, db_url=db_url, artifacts=artifacts)
        self.settings.home.mkdir(parents=True, exist_ok=True)
        fresh_embedded = self.settings.is_embedded_sqlite and not (self.settings.home / "alloyml.db").exists()
        if upgrade or fresh_embedded:
            upgrade_database(self.settings.db_url, self.settings.home)
        self.store = SqlStore(self.settings.db_url)
        self.artifacts = self.settings.open_artifacts()

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Platform:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- runs ---------------------------------------------------------------------------------------------
    @contextmanager
    def run(self, kind: str, name: str | None = None, params: dict | None = None, **links) -> Iterator[RunHandle]:
        """Record a run around a block: done on success, failed with the traceback on error (re-raised)."""
        handle = RunHandle(self, self.store.start_run(kind, name=name, params=params, **links))
        try:
            yield handle
        except BaseException:
            self.store.finish_run(handle.id, status="failed", error=traceback.format_exc())
            raise
        self.store.finish_run(handle.id, status="done")

    def save_data_values(self, run_id: int, result) -> int:
        """Store a valuation result (anything with `.values`, and optionally `.stderr`, `.counts` and the
        point ids `.indices`, which are kept: a result for rows 10, 20, 30 is stored under 10, 20, 30).
        The one write path for data values; `workflows.recording.record_valuation` uses it too."""
        return self.store.write_data_values(
            run_id, result.values, getattr(result, "stderr", None), getattr(result, "counts", None),
            getattr(result, "indices", None))

    # -- datasets -----------------------------------------------------------------------------------------
    def register_dataset(self, name: str, x, y=None, *, version: str = "1",
                         columns: Sequence[str] | None = None) -> e.Dataset:
        """Store the rows (as .npy artifacts) and register them with a content fingerprint."""
        x = np.asarray(x)
        if x.ndim != 2:
            raise InvalidInputError(f"dataset {name!r}: x must be 2-d (rows × features); got shape {x.shape}")
        arrays = {"x": x} if y is None else {"x": x, "y": np.asarray(y)}
        if y is not None and len(arrays["y"]) != len(x):
            raise InvalidInputError(f"dataset {name!r}: y has {len(arrays['y'])} rows, x has {len(x)}")
        if columns is not None and len(columns) != x.shape[1]:
            raise InvalidInputError(f"dataset {name!r}: {len(columns)} column names for {x.shape[1]} columns")
        digest = hashlib.sha256()
        keys = {}
        for part, array in arrays.items():
            keys[part] = self.artifacts.put_array(array, kind="dataset")
            digest.update(keys[part].encode())
        manifest = self.artifacts.put_json(keys, kind="dataset")
        schema_info = {"columns": list(columns) if columns is not None else [f"x{i}" for i in range(x.shape[1])],
                       "dtype": str(x.dtype), "has_labels": y is not None}
        return self.store.add_dataset(name, version, len(x), schema_info, digest.hexdigest(), manifest)

    def load_dataset(self, dataset_id: int, *, mmap: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """(x, y or None) of a registered dataset; `mmap=True` maps the arrays read-only instead of reading them."""
        dataset = self.store.get_dataset(dataset_id)
        if dataset.artifact is None:
            raise NotFoundError(f"dataset {dataset_id} has no stored rows")
        keys = self.artifacts.get_json(dataset.artifact)  # {"x": key, "y": key}, as register_dataset writes it
        y = self.artifacts.get_array(keys["y"], mmap=mmap) if "y" in keys else None
        return self.artifacts.get_array(keys["x"], mmap=mmap), y

    # -- models -------------------------------------------------------------------------------------------
    def register_model(self, name: str, architecture: str, *, tensors: dict | None = None,
                       artifact: str | None = None, n_params: int | None = None, metrics: dict | None = None,
                       parents: Sequence[tuple[int, str] | tuple[int, str, float]] = ()) -> e.Model:
        """Register a model; `tensors` (a state dict) are stored as safetensors, or pass an `artifact`
        key / directory. `parents` are (model_id, role[, weight]) lineage edges."""
        if tensors is not None:
            artifact = self.artifacts.put_tensors(tensors, kind="model")
            if n_params is None:
                n_params = int(sum(t.numel() for t in tensors.values()))
        edges = [e.LineageEdge(0, p[0], p[1], p[2] if len(p) > 2 else None) for p in parents]
        return self.store.add_model(name, architecture, n_params or 0, artifact, metrics, edges)
