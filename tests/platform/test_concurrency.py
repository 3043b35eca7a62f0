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


def _run_processes(target, args_of_each: list[tuple]) -> None:
    """Start one spawned process per args tuple (each gets an error queue last), wait, fail on any error."""
    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, errors)) for args in args_of_each]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    messages = []
    while not errors.empty():
        messages.append(errors.get())
    assert messages == []
    assert all(p.exitcode == 0 for p in procs)


def test_eight_concurrent_writers_lose_nothing(db_url, tmp_path):
    Platform(db_url=db_url, home=tmp_path, upgrade=True).close()
    _run_processes(_writer, [(db_url, str(tmp_path), w) for w in range(WRITERS)])
    with Platform(db_url=db_url, home=tmp_path) as platform:
        runs = platform.store.list_runs(limit=1000)
        assert len(runs) == WRITERS * RUNS_EACH
        assert all(r.status == "done" for r in runs)
        for run in runs:
            worker, i = (int(part) for part in run.name[1:].split("-"))
            expected = np.random.default_rng(worker * 100 + i).normal(size=VALUES_EACH)
            stored = platform.store.all_values(run.id)
            np.testing.assert_allclose(stored.values, expected)


KEY_WRITERS, KEYS_EACH = 8, 8


def _metric_writer(db_url: str, home: str, worker: int, run_id: int, errors) -> None:
    try:
        with Platform(db_url=db_url, home=home) as platform:
            for k in range(KEYS_EACH):
                platform.store.log_metrics(run_id, {f"w{worker}k{k}": worker * 100 + k})
            platform.store.update_model_metrics(1, {f"w{worker}": worker})
            platform.store.save_cascade("shared", ["a"], [], [1.0], 1.0, plan={"worker": worker})
    except Exception as err:
        errors.put(f"worker {worker}: {type(err).__name__}: {err}")


def test_concurrent_writers_to_one_run_keep_every_metric_and_get_consecutive_versions(db_url, tmp_path):
    """8 processes x 8 keys into one run: 64/64 kept (PostgreSQL kept 45-50 when metrics were one JSON
    object merged in Python); model metrics likewise; 8 concurrent save_cascade calls get versions 1..8."""
    with Platform(db_url=db_url, home=tmp_path, upgrade=True) as platform:
        run_id = platform.store.start_run("train").id
        platform.store.add_model("m", "gla")
    _run_processes(_metric_writer, [(db_url, str(tmp_path), w, run_id) for w in range(KEY_WRITERS)])
    expected = {f"w{w}k{k}": w * 100 + k for w in range(KEY_WRITERS) for k in range(KEYS_EACH)}
    with Platform(db_url=db_url, home=tmp_path) as platform:
        assert platform.store.get_run(run_id).metrics == expected
        assert platform.store.get_model(1).metrics == {f"w{w}": w for w in range(KEY_WRITERS)}
        versions = sorted(c.version for c in platform.store.list_cascades())
        assert versions == list(range(1, KEY_WRITERS + 1))
        assert sorted(c.plan["worker"] for c in platform.store.list_cascades()) == list(range(KEY_WRITERS))
