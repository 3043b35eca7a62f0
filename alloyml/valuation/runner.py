"""Runs sampling batches in-process or as Ray tasks, merging their samples as they arrive.

Sample s (permutation, subset or bag) draws its randomness from `SeedSequence(entropy, spawn_key=(s,))`,
never from a worker id or a batch; a batch is just samples [b * batch_size, (b + 1) * batch_size).
Samples are merged one at a time, strictly in sample order (batches that arrive early wait in a buffer),
and the stopping criterion is checked after every sample, so a run stops at the same sample — and gives
bit-identical values — for any number of workers and any batch size. Batches still running when the
criterion fires are cancelled and their samples dropped.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import numpy as np

from alloyml.errors import ConfigError
from alloyml.valuation.stats import PointStats
from alloyml.valuation.stopping import Stopping

# batch_fn(rngs) -> one PointStats per generator (one sample each), in order
BatchFn = Callable[[list[np.random.Generator]], list[PointStats]]


def sample_rng(entropy: int, sample: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(sample,)))


def run_entropy(seed: int | None) -> int:
    """The entropy every random draw of a run derives from (fresh when seed is None)."""
    return int(np.random.SeedSequence(seed).entropy)


def _run_one(batch_fn: BatchFn, entropy: int, batch: int, batch_size: int) -> list[PointStats]:
    first = batch * batch_size
    return batch_fn([sample_rng(entropy, s) for s in range(first, first + batch_size)])


def run_batches(batch_fn: BatchFn, n_points: int, stopping: Stopping, *, two_groups: bool = False,
                batch_size: int = 8, n_jobs: int = 1, entropy: int | None = None, evaluations_before: int = 0,
                progress: Callable[[PointStats], None] | None = None) -> tuple[PointStats, dict]:
    """Merge samples until `stopping` fires. Returns (stats, info) where info has the seed entropy,
    number of batches computed and whether the run was interrupted (Ctrl-C returns what was merged).

    batch_fn(rngs) -> [PointStats of one sample per rng]; it must be picklable for n_jobs != 1.
    n_jobs: 1 runs in this process; k > 1 keeps k Ray tasks in flight; -1 uses every Ray CPU.
    progress: called with the merged statistics after each batch.
    evaluations_before: utility values the method already asked for (counted against MaxEvaluations).
    """
    if not isinstance(stopping, Stopping):
        raise ConfigError(f"stopping must be a Stopping criterion (e.g. MaxSamples(100)), got {stopping!r}")
    if batch_size < 1 or n_jobs == 0 or n_jobs < -1:
        raise ConfigError(f"need batch_size >= 1 and n_jobs >= 1 or -1, got {batch_size}, {n_jobs}")
    entropy = run_entropy(None) if entropy is None else entropy
    stopping = stopping.reset()
    stats = PointStats.zeros(n_points, two_groups)
    stats.evaluations = evaluations_before
    state = {"stats": stats, "batches": 0, "interrupted": False}
    start = time.perf_counter()

    def merge(samples: list[PointStats]) -> bool:
        state["batches"] += 1
        try:
            for sample in samples:
                state["stats"] = state["stats"].merge(sample)
                if stopping(state["stats"], time.perf_counter() - start):
                    return True
            return False
        finally:
            if progress is not None:
                progress(state["stats"])

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
    done: dict[int, list[PointStats]] = {}
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
