"""8 processes write runs and data values at once: zero lost rows, zero "database is locked" errors."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np

from alloyml.platform.client import Platform

WRITERS, RUNS_EACH, VALUES_EACH = 8, 6, 2_000


def _writer(db_url: str, home: str, worker: int, errors) -> None:
    try:
        with Platform(db_url=db_url, home=home) as platform:
            for i in range(RUNS_EACH):
                run = platform.store.start_run("valuation", name=f"w{worker}-{i}")
                values = np.random.default_rng(worker * 100 + i).normal(size=VALUES_EACH)
                platform.store.write_data_values(run.id, values)
                platform.store.log_metrics(run.id, {"worker": worker})
                platform.store.finish_run(run.id)
    except Exception as err:  # reported to the parent, which fails the test with it
        errors.put(f"worker {worker}: {type(err).__name__}: {err}")


def test_eight_concurrent_writers_lose_nothing(db_url, tmp_path):
    Platform(db_url=db_url, home=tmp_path, upgrade=True).close()
    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(db_url, str(tmp_path), w, errors)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    messages = []
    while not errors.empty():
        messages.append(errors.get())
    assert messages == []
    assert all(p.exitcode == 0 for p in procs)
    with Platform(db_url=db_url, home=tmp_path) as platform:
        runs = platform.store.list_runs(limit=1000)
        assert len(runs) == WRITERS * RUNS_EACH
        assert all(r.status == "done" for r in runs)
        for run in runs:
            worker, i = (int(part) for part in run.name[1:].split("-"))
            expected = np.random.default_rng(worker * 100 + i).normal(size=VALUES_EACH)
            stored = platform.store.all_values(run.id)
            np.testing.assert_allclose(stored.values, expected)
