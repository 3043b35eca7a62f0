"""Built-in `revalue`: value the rows of a dataset's newest version and record how its lowest-valued rows
changed against the previous version's valuation — the workflow a schedule runs when new rows arrive.

Inputs: store, dataset (name; its newest registered version is valued), x_test [m, d], y_test [m], method
(see `valuation.METHODS`), samples, seed, k (how many lowest rows to compare). Rows of two versions are
matched by content (features and label), since versions need not keep row positions.

The new valuation run's metrics hold `previous_run_id`, `lowest_change` = {"stayed", "entered"} (row
indices of the new version among its k lowest: also among the previous version's k lowest, or not) and
"left" (row indices of the previous version that were among its k lowest and are not now), and
`lowest_k_overlap` = len(stayed) / k. Without a previous valuation of the same method, only the values
are recorded. Result: {"run_id", "previous_run_id", "lowest_change", "lowest_k_overlap"}.
"""

from __future__ import annotations

import hashlib

import numpy as np

from alloyml.errors import InvalidInputError, NotFoundError
from alloyml.workflows.builtin import register_builtin
from alloyml.workflows.builtin.valuation import METHODS, compute_values
from alloyml.workflows.graph import Input, Workflow
from alloyml.workflows.recording import open_platform, record_valuation
from alloyml.workflows.steps import step


def row_keys(x: np.ndarray, y: np.ndarray) -> list[str]:
    """One content digest per row (features and label), to match rows across versions."""
    x, y = np.ascontiguousarray(x), np.asarray(y)
    return [hashlib.sha256(x[i].tobytes() + np.asarray(y[i]).tobytes()).hexdigest() for i in range(len(x))]


def lowest_change(old_keys: list[str], old_lowest, new_keys: list[str], new_lowest) -> dict:
    old_set = {old_keys[i] for i in old_lowest}
    new_set = {new_keys[i] for i in new_lowest}
    return {"stayed": [int(i) for i in new_lowest if new_keys[i] in old_set],
            "entered": [int(i) for i in new_lowest if new_keys[i] not in old_set],
            "left": [int(i) for i in old_lowest if old_keys[i] not in new_set]}


@step(num_cpus=1)
def revalue_dataset(store: dict, dataset: str, x_test, y_test, method: str, samples: int, seed: int,
                    k: int) -> dict:
    if method not in METHODS:
        raise InvalidInputError(f"method {method!r} is not one of {METHODS}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidInputError(f"k={k!r} must be a positive integer (how many lowest rows to compare)")
    with open_platform(store) as platform:
        versions = [d for d in platform.store.list_datasets() if d.name == dataset]
        if not versions:
            raise NotFoundError(f"no dataset named {dataset!r}")
        newest = versions[-1]  # list_datasets is in id order: the newest registration last
        x, y = platform.load_dataset(newest.id)
        if y is None:
            raise InvalidInputError(f"dataset {dataset!r} version {newest.version} has no labels to value against")
        result = compute_values(method, x, y, np.asarray(x_test), np.asarray(y_test), samples, seed)
        older = {d.id: d for d in versions[:-1]}
        previous = next((r for r in platform.store.list_runs(kind="valuation", status="done", limit=10_000)
                         if r.dataset_id in older and r.params.get("method") == result.method), None)
        change, overlap = None, None
        new_lowest = np.argsort(result.values, kind="stable")[:k]
        if previous is not None:
            old_x, old_y = platform.load_dataset(previous.dataset_id)
            old_lowest = platform.store.lowest_values(previous.id, k).indices
            change = lowest_change(row_keys(old_x, old_y), old_lowest, row_keys(x, y), new_lowest)
            overlap = len(change["stayed"]) / min(k, len(new_lowest))
        metrics = {} if change is None else {"lowest_k_overlap": overlap, "lowest_change": change,
                                             "previous_run_id": previous.id}
        run_id = record_valuation(platform, result, dataset_id=newest.id, metrics=metrics,
                                  name=f"revalue {dataset} v{newest.version}")
    return {"run_id": run_id, "previous_run_id": previous.id if previous else None, "lowest_change": change,
            "lowest_k_overlap": overlap}


@register_builtin("revalue", "value a dataset's newest version and record how its lowest-valued rows changed")
def build() -> Workflow:
    wf = Workflow("revalue")
    wf.add(revalue_dataset, **{name: Input(name) for name in ("store", "dataset", "x_test", "y_test", "method",
                                                              "samples", "seed", "k")})
    return wf
