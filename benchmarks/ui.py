"""Dashboard first-render time at scale: 10,000 runs and a 1,000,000-point valuation in a SQLite store.

Seeds a store through the `Platform` API (data values with the bulk `write_data_values`), then renders each
page with Streamlit's `AppTest` on cold caches (both `st.cache_data` and `st.cache_resource` cleared, so
the store is reopened too) and records the median of `--repeats` renders. Target: < 3 s per page. There
is no peer: `ratio` is target ÷ measured (> 1 means under target).

    python benchmarks/ui.py            # 10,000 runs, 1,000,000 points
    python benchmarks/ui.py --quick    # 1,000 runs, 100,000 points
    python benchmarks/ui.py --quick --screenshot docs/dashboard.png
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import row, timer, write_results  # noqa: E402

TARGET_SECONDS = 3.0
PAGES = ("overview", "data_values", "merges", "cascades", "workflows", "models", "automl")


def seed(home: Path, n_runs: int, n_points: int, rng: np.random.Generator) -> dict:
    """A store that looks like months of use; the showcase records are written last (newest)."""
    from alloyml.platform import entities as e
    from alloyml.platform.client import Platform

    counts = {}
    with Platform(home=home) as platform:
        store = platform.store
        # Filler runs of every kind; statuses mostly done, some failed with a traceback, a few running.
        kinds = rng.choice(["train", "route", "valuation", "merge", "tune"], size=n_runs - 8,
                           p=[0.4, 0.3, 0.1, 0.1, 0.1])
        with timer() as t:
            for i, kind in enumerate(kinds):
                run = store.start_run(str(kind), name=f"{kind}-{i}", params={"seed": i})
                outcome = rng.random()
                if outcome < 0.07:
                    store.finish_run(run.id, "failed", error="Traceback (most recent call last):\nRuntimeError: oom")
                elif outcome < 0.97:
                    metrics = {"loss_curve": list(np.round(2.5 * np.exp(-np.arange(50) / 15) + 0.8, 4))} \
                        if kind == "train" else {"score": float(rng.random())}
                    store.finish_run(run.id, "done", metrics=metrics)
        counts["seed_runs_s"] = round(t(), 1)

        n_features = 8
        x = rng.normal(size=(n_points, n_features)).astype(np.float32)
        w = rng.normal(size=n_features)
        y = (x @ w > 0).astype(np.int64)
        flipped = rng.choice(n_points, n_points // 10, replace=False)
        y[flipped] = 1 - y[flipped]
        dataset = platform.register_dataset("synthetic-linear", x, y, version=str(n_points))
        flipped_key = platform.artifacts.put_array(np.sort(flipped), kind="flipped")
        is_flipped = np.zeros(n_points, dtype=bool)
        is_flipped[flipped] = True
        margin = np.abs(x @ w) / np.linalg.norm(w)
        tmc = 0.002 * np.tanh(margin) * np.where(is_flipped, -1.0, 1.0) + rng.normal(scale=4e-4, size=n_points)
        knn = tmc + rng.normal(scale=1e-3, size=n_points)
        with timer() as t:
            for method, values in (("knn_shapley", knn), ("tmc_shapley", tmc)):
                params = {"method": method, "dataset_id": dataset.id, "flipped_artifact": flipped_key}
                with platform.run("valuation", name=f"{method} synthetic", params=params,
                                  dataset_id=dataset.id) as run:
                    store.write_data_values(run.id, values, stderr=np.full(n_points, 2e-4),
                                            counts=np.full(n_points, 64))
                    run.log_metrics(noise_auc=_auc(-values, is_flipped),
                                    removal_curve=_removal_curve(values, x @ w > 0, y))
        counts["seed_values_s"] = round(t(), 1)

        # Models: three specialists per family, merged pairwise, with per-task scores.
        tasks = ("sentiment", "topic", "ner")
        bases = []
        for i in range(12):
            strengths = rng.uniform(0.45, 0.7, size=3)
            strengths[i % 3] = rng.uniform(0.85, 0.95)
            bases.append(platform.register_model(f"gla-170m-{tasks[i % 3]}-{i}", "gla", n_params=170_000_000,
                                                 metrics=dict(zip(tasks, np.round(strengths, 4).tolist(),
                                                                  strict=True))))
        for i, method in enumerate(("linear", "task_arithmetic", "ties", "dare", "slerp")):
            pair = (bases[3 * i % 12], bases[(3 * i + 1) % 12])
            with platform.run("merge", name=f"{method} merge", params={"method": method}) as run:
                scores = {t: round(0.97 * max(p.metrics[t] for p in pair), 4) for t in tasks}
                merged = platform.register_model(f"merged-{method}", "gla", n_params=170_000_000, metrics=scores,
                                                 parents=[(p.id, "merge input", 0.5) for p in pair])
                store.record_merge(method, {"method": method, "weights": [0.5, 0.5], "density": 0.5,
                                            "normalize": True, "dtype": "float32"},
                                   [e.MergeInput(p.id, 0.5) for p in pair], merged.id, run.id)

        costs = [0.2, 1.0, 6.0]
        frontier = [{"stages": [{"model": "gla-170m"}], "mean_cost": c, "accuracy": a}  # the stored plan's shape
                    for c, a in ((0.2, 0.71), (0.5, 0.80), (0.9, 0.86), (1.6, 0.89), (3.0, 0.905), (7.2, 0.91))]
        for version, chosen in ((1, 1), (2, 2), (3, 3)):
            cascade = store.save_cascade("support-bot", ["gla-170m", "gla-1b", "api-large"], [0.8, 0.7], costs, 1.8,
                                         {"frontier": frontier, "chosen": chosen, "version_note": f"v{version}"})
        stages = rng.choice(3, size=10_000, p=[0.62, 0.28, 0.10])
        cumulative = np.cumsum(costs)
        start = dt.datetime(2026, 1, 1)
        store.log_cascade_requests(cascade.id, [
            e.CascadeRequest(int(s), float(cumulative[s]), float(20 + 60 * s + rng.exponential(10)), [0.9],
                             3 if i < 9000 else 2, start + dt.timedelta(seconds=i))
            for i, s in enumerate(stages)])

        graph = [{"name": "load"}, {"name": "value", "depends_on": ["load"]},
                 {"name": "merge", "depends_on": ["load"]}, {"name": "report", "depends_on": ["value", "merge"]}]
        with timer() as t:
            for i in range(300):
                workflow = store.create_workflow(f"value-and-merge-{i}", {"dataset": dataset.id}, {}, graph)
                clock = start + dt.timedelta(hours=i)
                for step, seconds in zip(("load", "value", "merge", "report"), rng.uniform(1, 30, 4), strict=True):
                    failed = step == "merge" and i % 10 == 9
                    store.update_step(workflow.id, step, state="failed" if failed else "done",
                                      attempts=3 if failed else 1, started_at=clock,
                                      finished_at=clock + dt.timedelta(seconds=float(seconds)),
                                      error="Traceback (most recent call last):\nValueError: shapes differ"
                                      if failed else None)
                    clock += dt.timedelta(seconds=float(seconds))
                    if failed:
                        break
                store.update_workflow(workflow.id, status="failed" if i % 10 == 9 else "done")
        counts["seed_workflows_s"] = round(t(), 1)

        with platform.run("tune", name="gla pipeline search", params={"metric": "score", "mode": "max"}) as run:
            for number in range(150):
                lr, width = 10 ** rng.uniform(-4, -2), int(rng.choice([64, 128, 256]))
                score = 0.9 - 0.05 * (np.log10(lr) + 3) ** 2 + 0.02 * np.log2(width / 64) + rng.normal(0, 0.01)
                config = {"lr": lr, "width": width, "optimizer": str(rng.choice(["adam", "sgd"]))}
                store.add_trial(run.id, number, config,
                                {"score": float(score)}, cost=float(width / 64 * rng.uniform(0.8, 1.2)))
        with platform.run("train", name="moe-mamba 8 experts") as run:
            run.log_metrics(loss_curve=list(np.round(3.0 * np.exp(-np.arange(200) / 40) + 1.1, 4)),
                            expert_load=list(np.round(rng.dirichlet(np.full(8, 20.0)), 4)))
        counts["runs"] = sum(store.run_counts().values())
    return counts


def _auc(score: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of `score` for finding the positives (Mann–Whitney U)."""
    ranks = np.empty(len(score))
    ranks[np.argsort(score)] = np.arange(1, len(score) + 1)
    n_pos = positive.sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(score) - n_pos)))


def _removal_curve(values: np.ndarray, clean_rule: np.ndarray, y: np.ndarray) -> dict:
    """Agreement of the stored labels with the noise-free rule after removing the lowest / highest values."""
    order = np.argsort(values)
    agree = (clean_rule == y.astype(bool))[order]
    fractions = np.linspace(0, 0.3, 7)
    cut = (fractions * len(values)).astype(int)
    return {"fraction": fractions.round(3).tolist(),
            "low_first": [round(float(agree[c:].mean()), 4) for c in cut],
            "high_first": [round(float(agree[: len(agree) - c].mean()), 4) for c in cut]}


def render_seconds(page: str) -> float:
    """One cold-cache render of `page`, in seconds."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from alloyml.commands.ui import APP

    at = AppTest.from_file(str(APP), default_timeout=120)
    # The first run of a new AppTest also sets up Streamlit's runtime (seconds of scanning installed packages
    # for components), which a running server does once at start: it renders the entry page, untimed.
    at.run()
    at.switch_page(f"views/{page}.py")
    st.cache_data.clear()
    st.cache_resource.clear()
    start = time.perf_counter()
    at.run()
    seconds = time.perf_counter() - start
    if at.exception:
        raise RuntimeError(f"page {page} raised: {[x.value for x in at.exception]}")
    return seconds


def screenshot(home: Path, path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the browser harness lives with the tests
    from tests.ui import browser

    with browser.running_dashboard({"ALLOYML_HOME": str(home)}) as base, browser.chromium_page(1400, 1700) as page:
        browser.open_page(page, f"{base}/data_values", "Methods side by side")
        page.locator('[data-testid="stDataFrame"] canvas').first.wait_for(timeout=60_000)
        page.wait_for_timeout(1000)  # let the table grid paint its cells
        page.screenshot(path=str(path))
    print(f"wrote {path}")


def main() -> None:
    import os

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 runs and 100,000 points")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--screenshot", type=Path, help="also save a PNG of the Data values page here")
    args = parser.parse_args()
    n_runs, n_points = (1_000, 100_000) if args.quick else (10_000, 1_000_000)

    with tempfile.TemporaryDirectory(prefix="alloyml-ui-bench-") as tmp:
        home = Path(tmp) / "home"
        with timer() as t:
            seeded = seed(home, n_runs, n_points, np.random.default_rng(0))
        print(f"seeded {seeded['runs']:,} runs and {n_points:,} points in {t():.0f} s: {seeded}")
        os.environ["ALLOYML_HOME"] = str(home)
        os.environ.pop("ALLOYML_DB_URL", None)
        rows = []
        for page in PAGES:
            times = [render_seconds(page) for _ in range(args.repeats)]
            median = statistics.median(times)
            print(f"{page:12s} median {median:.2f} s  (all {', '.join(f'{x:.2f}' for x in times)})")
            rows.append(row(f"{page} page, {seeded['runs']:,} runs, {n_points:,}-point valuation",
                            "seconds (first render, cold caches)", round(median, 3), peers={"none": None},
                            ratio=round(TARGET_SECONDS / median, 2), target=f"< {TARGET_SECONDS:g} s (ratio = target ÷ "
                                                                            "measured)",
                            met=median < TARGET_SECONDS, runs=[round(x, 3) for x in times],
                            notes="no peer; SQLite store, AppTest render incl. store reopen; 2 shared cores"))
        write_results("ui", rows, seeding=seeded, n_runs=n_runs, n_points=n_points)
        if args.screenshot:
            screenshot(home, args.screenshot)


if __name__ == "__main__":
    main()
