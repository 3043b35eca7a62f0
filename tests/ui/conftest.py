"""A small store seeded through the `Platform` API with numbers the dashboard tests look for."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest


@dataclass
class Seeded:
    """What was written, so tests can recompute what the pages must show."""

    home: Path
    x: np.ndarray
    y: np.ndarray
    values: dict[str, np.ndarray] = field(default_factory=dict)
    run_ids: dict[str, int] = field(default_factory=dict)
    flipped: np.ndarray | None = None
    model_scores: dict[str, dict] = field(default_factory=dict)
    cascade_costs: list[float] = field(default_factory=list)
    frontier: list[tuple[float, float]] = field(default_factory=list)
    stages: np.ndarray | None = None
    request_costs: np.ndarray | None = None
    trials: list[dict] = field(default_factory=list)
    n_runs: int = 0


def seed_store(home: Path) -> Seeded:
    from alloyml.platform import entities as e
    from alloyml.platform.client import Platform

    rng = np.random.default_rng(7)
    n = 40
    x = np.round(rng.normal(size=(n, 3)), 3)
    y = (x[:, 0] > 0).astype(np.int64)
    seeded = Seeded(home=home, x=x, y=y)
    with Platform(home=home) as platform:
        ds = platform.register_dataset("toy", x, y, columns=["f0", "f1", "f2"])
        # Distinct values (no ties), so Spearman has its closed form; tmc is a permutation of a ramp.
        tmc = (rng.permutation(n) - 20) / 100.0
        knn = tmc.copy()
        knn[[0, 1, 2, 3]] = knn[[3, 2, 1, 0]]  # a few swapped ranks: correlation < 1
        seeded.flipped = np.argsort(tmc)[[0, 1, 2, 5]]
        flipped_key = platform.artifacts.put_array(seeded.flipped, kind="flipped")
        for method, values in (("tmc_shapley", tmc), ("knn_shapley", knn)):
            params = {"method": method, "dataset_id": ds.id}
            if method == "tmc_shapley":
                params["flipped_artifact"] = flipped_key
            with platform.run("valuation", name=f"{method} toy", params=params, dataset_id=ds.id) as run:
                platform.store.write_data_values(run.id, values, stderr=np.full(n, 0.01), counts=np.full(n, 30))
                if method == "tmc_shapley":
                    run.log_metrics(noise_auc=0.8125, removal_curve={
                        "fraction": [0.0, 0.1, 0.2], "low_first": [0.80, 0.83, 0.85],
                        "high_first": [0.80, 0.71, 0.60]})
            seeded.values[method] = values
            seeded.run_ids[method] = run.id

        with platform.run("train", name="gla-tiny moe") as run:
            run.log_metrics(loss_curve=[2.5, 1.75, 1.25, 1.125], expert_load=[0.4, 0.2, 0.2, 0.2])
        seeded.run_ids["train"] = run.id
        with pytest.raises(RuntimeError), platform.run("train", name="diverged"):
            raise RuntimeError("loss is nan")

        scores = {"base-a": {"task_a": 0.91, "task_b": 0.55}, "base-b": {"task_a": 0.52, "task_b": 0.88}}
        parents = {name: platform.register_model(name, "gla", n_params=1000, metrics=m) for name, m in scores.items()}
        with platform.run("merge", name="ties a+b", params={"method": "ties"}) as run:
            merged = platform.register_model("merged-ab", "gla", n_params=1000,
                                             metrics={"task_a": 0.87, "task_b": 0.84},
                                             parents=[(p.id, "merge input", 0.5) for p in parents.values()])
            platform.store.record_merge("ties", {"density": 0.6, "normalize": True},
                                        [e.MergeInput(p.id, 0.5) for p in parents.values()], merged.id, run.id)
        seeded.run_ids["merge"] = run.id
        seeded.model_scores = {**scores, "merged-ab": {"task_a": 0.87, "task_b": 0.84}}

        seeded.cascade_costs = [1.0, 5.0, 20.0]
        # Stored as `save_cascade_plan` stores a fitted plan (`CascadePlan.model_dump()`).
        chains = [[("small", None)], [("small", 0.85), ("medium", None)],
                  [("small", 0.85), ("medium", 0.7), ("large", None)]]
        frontier = [{"stages": [{"model": m, "threshold": t} for m, t in chain], "accuracy": accuracy,
                     "mean_cost": cost, "cost_se": 0.25 * cost}
                    for chain, cost, accuracy in zip(chains, (1.0, 3.0, 8.0), (0.70, 0.82, 0.90), strict=True)]
        seeded.frontier = [(f["mean_cost"], f["accuracy"]) for f in frontier]
        platform.store.save_cascade("qa", ["small", "medium", "large"], [0.9, 0.8], seeded.cascade_costs, 4.0,
                                    {"frontier": frontier[:2], "chosen": 1})
        cascade = platform.store.save_cascade("qa", ["small", "medium", "large"], [0.85, 0.7],
                                              seeded.cascade_costs, 4.0, {"frontier": frontier, "chosen": 1})
        seeded.stages = np.array([0, 0, 0, 1, 1, 2, 0, 0, 1, 0])
        seeded.request_costs = np.cumsum(seeded.cascade_costs)[seeded.stages]
        platform.store.log_cascade_requests(cascade.id, [
            e.CascadeRequest(int(s), float(c), 10.0 + 5 * int(s), [0.5], 1)
            for s, c in zip(seeded.stages, seeded.request_costs, strict=True)])

        workflow = platform.store.create_workflow("value-and-merge", {"dataset": ds.id}, {}, [
            {"name": "load"}, {"name": "value", "depends_on": ["load"]},
            {"name": "merge", "depends_on": ["value"], "resources": {"cpus": 2}}])
        start = dt.datetime(2026, 1, 1, 12, 0, 0)

        def at(seconds):
            return start + dt.timedelta(seconds=seconds)

        platform.store.update_step(workflow.id, "load", state="done", increment_attempts=True,
                                   started_at=at(0), finished_at=at(2))
        platform.store.update_step(workflow.id, "value", state="done", increment_attempts=True,
                                   started_at=at(2), finished_at=at(9.5))
        platform.store.update_step(workflow.id, "merge", state="failed", attempts=3,
                                   started_at=at(10), finished_at=at(11),
                                   error="Traceback (most recent call last):\nValueError: shapes differ: 64 vs 60")
        platform.store.update_workflow(workflow.id, status="failed", error="step merge failed after 3 attempts")

        with platform.run("tune", name="knn search", params={"metric": "score", "mode": "max"}) as run:
            for number, (k, weights, score, cost) in enumerate([(1, "uniform", 0.70, 1.0), (3, "uniform", 0.78, 2.0),
                                                               (5, "distance", 0.86, 2.5), (7, "distance", 0.84, 4.0),
                                                               (9, "uniform", 0.80, 5.0), (11, "distance", 0.81, 6.0)]):
                config = {"k": k, "weights": weights}
                platform.store.add_trial(run.id, number, config, {"score": score}, cost=cost, seconds=cost / 10)
                seeded.trials.append({**config, "score": score, "cost": cost})
        seeded.run_ids["tune"] = run.id
        seeded.n_runs = sum(platform.store.run_counts().values())
    return seeded


@pytest.fixture(scope="session")
def seeded_store(tmp_path_factory) -> Seeded:
    return seed_store(tmp_path_factory.mktemp("ui-store") / "home")


@pytest.fixture
def seeded_env(seeded_store, monkeypatch) -> Seeded:
    """ALLOYML_HOME points at the seeded store for the duration of one test."""
    monkeypatch.setenv("ALLOYML_HOME", str(seeded_store.home))
    monkeypatch.delenv("ALLOYML_DB_URL", raising=False)
    return seeded_store
