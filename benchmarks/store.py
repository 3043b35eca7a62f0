"""Data values at scale: one run's 1,000,000 values written in one bulk call, then the dashboard's queries
(lowest-100, highest-100, values of 1,000 given indices, a 50-bin histogram), on the embedded SQLite and on
the local PostgreSQL. Peer: the same write as plain SQLAlchemy ORM inserts (`session.add_all`), the way
an ORM user would write it, on a 100,000-row slice (its time scales linearly). Metric history: 100,000
points of one run's curve in one `log_metric_series` call, and reading a 10,000-point curve back; peer:
one `log_metrics(..., step=i)` call per point (timed on 2,000 points, scaled).

    python benchmarks/store.py [--quick] [--pg postgresql+psycopg://root@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ratio, row, write_results  # noqa: E402

from alloyml.platform import orm  # noqa: E402
from alloyml.platform.client import Platform  # noqa: E402


def _median_ms(fn, repeats=7) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure(platform: Platform, n: int, orm_slice: int) -> dict:
    rng = np.random.default_rng(0)
    values, stderr = rng.normal(size=n), rng.random(n)
    counts = rng.integers(1, 100, n)
    run = platform.store.start_run("valuation", name="bench")
    start = time.perf_counter()
    platform.store.write_data_values(run.id, values, stderr, counts)
    write_s = time.perf_counter() - start
    lowest = platform.store.lowest_values(run.id, 100)
    assert np.array_equal(lowest.indices, np.argsort(values, kind="stable")[:100])
    probe = rng.choice(n, 1000, replace=False)
    out = {
        "write_s": write_s,
        "lowest100_ms": _median_ms(lambda: platform.store.lowest_values(run.id, 100)),
        "highest100_ms": _median_ms(lambda: platform.store.highest_values(run.id, 100)),
        "values_at_1000_ms": _median_ms(lambda: platform.store.values_at(run.id, probe)),
        "histogram_ms": _median_ms(lambda: platform.store.value_histogram(run.id, 50), repeats=3),
    }
    # The ORM way, for comparison: one object per row.
    orm_run = platform.store.start_run("valuation", name="bench-orm")
    session = platform.store._writer()
    start = time.perf_counter()
    session.add_all([orm.DataValueRow(run_id=orm_run.id, point_index=i, value=float(values[i]),
                                      stderr=float(stderr[i]), count=int(counts[i])) for i in range(orm_slice)])
    session.commit()
    session.close()
    out["orm_write_s_scaled"] = (time.perf_counter() - start) * n / orm_slice
    out.update(measure_metrics(platform))
    return out


def measure_metrics(platform: Platform, points: int = 100_000, curve: int = 10_000, per_call: int = 2_000) -> dict:
    store = platform.store
    run = store.start_run("train", name="bench-metrics")
    losses = np.random.default_rng(1).random(points)
    start = time.perf_counter()
    store.log_metric_series(run.id, "loss", losses)
    write_s = time.perf_counter() - start
    store.log_metric_series(run.id, "val_loss", losses[:curve])
    history = store.metric_history(run.id, "val_loss")
    assert np.array_equal(history.values, losses[:curve]) and np.array_equal(history.steps, np.arange(curve))
    slow = store.start_run("train", name="bench-metrics-per-call")
    start = time.perf_counter()
    for i in range(per_call):
        store.log_metrics(slow.id, {"loss": float(losses[i])}, step=i)
    per_call_s = (time.perf_counter() - start) * points / per_call
    return {"metric_write_s": write_s, "metric_per_call_s_scaled": per_call_s,
            "metric_read_ms": _median_ms(lambda: store.metric_history(run.id, "val_loss"))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="100,000 values instead of 1,000,000")
    parser.add_argument("--pg", default="postgresql+psycopg://root@127.0.0.1:5432/test")
    args = parser.parse_args()
    n = 100_000 if args.quick else 1_000_000
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        backends = {"sqlite": f"sqlite:///{tmp}/bench.db"}
        schema = "bench_" + uuid.uuid4().hex[:8]
        try:
            import sqlalchemy as sa

            engine = sa.create_engine(args.pg)
            with engine.begin() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
            backends["postgres"] = f"{args.pg}?options=-csearch_path%3D{schema}"
        except Exception as err:  # noqa: BLE001 — a missing server is reported, not fatal
            print(f"PostgreSQL unavailable: {err}")
            engine = None
        try:
            for name, url in backends.items():
                with Platform(db_url=url, home=tmp, upgrade=True) as platform:
                    m = measure(platform, n, orm_slice=min(n, 100_000))
                print(name, {k: round(v, 4) for k, v in m.items()})
                rows += [
                    row(f"{name}: write {n:,} values", "seconds", round(m["write_s"], 3),
                        {"sqlalchemy-orm add_all (scaled)": round(m["orm_write_s_scaled"], 3)},
                        ratio(m["write_s"], m["orm_write_s_scaled"]),
                        "<= 3 s" if name == "sqlite" else None,
                        m["write_s"] <= 3 if name == "sqlite" else None,
                        "ORM timed on 100,000 rows and scaled linearly"),
                    row(f"{name}: lowest-100 of {n:,}", "ms", round(m["lowest100_ms"], 2), {}, None,
                        "<= 50 ms" if name == "sqlite" else None,
                        m["lowest100_ms"] <= 50 if name == "sqlite" else None, "median of 7"),
                    row(f"{name}: highest-100 of {n:,}", "ms", round(m["highest100_ms"], 2), {}, None, None, None,
                        "median of 7"),
                    row(f"{name}: values of 1,000 given indices", "ms", round(m["values_at_1000_ms"], 2), {}, None,
                        None, None, "median of 7"),
                    row(f"{name}: 50-bin histogram in SQL", "ms", round(m["histogram_ms"], 2), {}, None, None, None,
                        "median of 3"),
                    row(f"{name}: write 100,000 metric points (one run)", "seconds", round(m["metric_write_s"], 3),
                        {"log_metrics per point (scaled)": round(m["metric_per_call_s_scaled"], 3)},
                        ratio(m["metric_write_s"], m["metric_per_call_s_scaled"]), "<= 2 s",
                        m["metric_write_s"] <= 2, "per-point peer timed on 2,000 calls and scaled linearly"),
                    row(f"{name}: read a 10,000-point metric curve", "ms", round(m["metric_read_ms"], 2), {}, None,
                        "<= 50 ms", m["metric_read_ms"] <= 50, "median of 7"),
                ]
        finally:
            if engine is not None:
                with engine.begin() as conn:
                    conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    write_results("store", rows)


if __name__ == "__main__":
    main()
