"""The main job behind `alloyml demo`.

At this stage it exercises the store end to end: it records a dataset, a run with data values and a model
with lineage, then prints what it stored. Later stages replace the body with the full platform workflow.
"""

from __future__ import annotations

import numpy as np
from rich.console import Console


def run_demo(quick: bool = False) -> dict:
    from sklearn.datasets import load_breast_cancer
    from sklearn.neighbors import KNeighborsClassifier

    from alloyml.platform.client import Platform

    console = Console()
    with Platform() as platform:
        x, y = load_breast_cancer(return_X_y=True)
        dataset = platform.register_dataset("breast_cancer", x, y, version="sklearn")
        rng = np.random.default_rng(0)
        train = rng.permutation(len(x))[: len(x) // 2]
        with platform.run("valuation", name="leave-one-out knn", params={"k": 5},
                          dataset_id=dataset.id) as run:
            base = KNeighborsClassifier(5).fit(x[train], y[train]).score(x, y)
            values = np.array([
                base - KNeighborsClassifier(5).fit(np.delete(x[train], i, 0), np.delete(y[train], i)).score(x, y)
                for i in range(len(train) if not quick else 40)
            ])
            platform.save_data_values(run.id, type("R", (), {"values": values})())
            run.log_metrics(base_accuracy=base)
        parent = platform.register_model("knn-base", "sklearn:KNeighborsClassifier", metrics={"accuracy": base})
        child = platform.register_model("knn-refit", "sklearn:KNeighborsClassifier", parents=[(parent.id, "base")])
        lowest = platform.store.lowest_values(run.id, 5)
        console.print(f"[bold]store[/bold] {platform.settings.db_url}")
        console.print(f"dataset #{dataset.id} {dataset.name} ({dataset.n_rows} rows, "
                      f"fingerprint {dataset.fingerprint[:12]})")
        console.print(f"run #{run.id} valuation: {len(values)} values; lowest points {lowest.indices.tolist()}")
        console.print(f"model #{child.id} {child.name} <- parent #{parent.id}")
        return {"dataset_id": dataset.id, "run_id": run.id, "model_id": child.id}
