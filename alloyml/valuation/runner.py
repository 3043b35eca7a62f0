"""Runs sampling batches in-process or as Ray tasks, merging their statistics as they arrive.

Batch b draws its randomness from `SeedSequence(entropy(seed), spawn_key=(b,))`, never from a worker id,
and batches are merged and checked against the stopping criterion strictly in batch order (results that
arrive early wait in a buffer; batches still running when the criterion fires are cancelled and
dropped). So a given seed gives bit-identical values for any number of workers.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import numpy as np

from alloyml.errors import ConfigError
from alloyml.valuation.stats import PointStats
from alloyml.valuation.stopping import Stopping

BatchFn = Callable[[np.random.Generator, int], PointStats]


def batch_rng(entropy: int, batch: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(batch,)))


def _run_one(batch_fn: BatchFn, entropy: int, batch: int, batch_size: int) -> PointStats:
    return batch_fn(batch_rng(entropy, batch), batch_size)


def run_batches(batch_fn: BatchFn, n_points: int, stopping: Stopping, *, two_groups: bool = False,
                batch_size: int = 8, n_jobs: int = 1, seed: int | None = None,
                progress: Callable[[PointStats], None] | None = None) -> tuple[PointStats, dict]:
    """Merge batches until `stopping` fires. Returns (stats, info) where info has the seed entropy,
    number of batches merged and whether the run was interrupted (Ctrl-C returns what was merged).

    batch_fn(rng, batch_size) -> PointStats of one batch; it must be picklable for n_jobs != 1.
    n_jobs: 1 runs in this process; k > 1 keeps k Ray tasks in flight; -1 uses every Ray CPU.
    """
    if not isinstance(stopping, Stopping):
        raise ConfigError(f"stopping must be a Stopping criterion (e.g. MaxSamples(100)), got {stopping!r}")
    if batch_size < 1 or n_jobs == 0 or n_jobs < -1:
        raise ConfigError(f"need batch_size >= 1 and n_jobs >= 1 or -1, got {batch_size}, {n_jobs}")
    entropy = np.random.SeedSequence(seed).entropy
    stopping = stopping.reset()
    state = {"stats": PointStats.zeros(n_points, two_groups), "batches": 0, "interrupted": False}
    start = time.perf_counter()

    def merge(batch_stats) -> bool:
        state["stats"] = state["stats"].merge(batch_stats)
        state["batches"] += 1
        if progress is not None:
            progress(state["stats"])
        return stopping(state["stats"], time.perf_counter() - start)

    try:
        if n_jobs == 1:
            for b in itertools.count():
                if merge(_run_one(batch_fn, entropy, b, batch_size)):
                    break
        else:
            _run_on_ray(batch_fn, entropy, batch_size, n_jobs, merge)
    except KeyboardInterrupt:
        state["interrupted"] = True
    info = {"seed_entropy": str(entropy), "batches": state["batches"], "batch_size": batch_size,
            "interrupted": state["interrupted"], "stopping": repr(stopping)}
    return state["stats"], info


def _run_on_ray(batch_fn, entropy, batch_size, n_jobs, merge):
    import ray

    from alloyml.raycluster import ensure_ray

    ensure_ray()
    if n_jobs == -1:
        n_jobs = max(1, int(ray.cluster_resources().get("CPU", 1)))
    remote = ray.remote(num_cpus=1)(_run_one)
    fn_ref = ray.put(batch_fn)
    in_flight: dict = {}  # ObjectRef -> batch index
    done: dict[int, PointStats] = {}
    next_submit, next_merge = 0, 0
    try:
        while True:
            while len(in_flight) < n_jobs:
                in_flight[remote.remote(fn_ref, entropy, next_submit, batch_size)] = next_submit
                next_submit += 1
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                done[in_flight.pop(ref)] = ray.get(ref)
            while next_merge in done:
                if merge(done.pop(next_merge)):
                    return
                next_merge += 1
    finally:
        for ref in in_flight:
            ray.cancel(ref)
