"""`revalue`: a dataset's new version is valued and the change of its lowest-valued rows against the
previous version's valuation is recorded; checked against values computed here directly and rows matched
by hand."""

from __future__ import annotations

import numpy as np
import pytest

from alloyml.errors import NotFoundError
from alloyml.workflows.builtin import get_builtin
from alloyml.workflows.builtin.revalue import revalue_dataset
from alloyml.workflows.builtin.valuation import compute_values
from alloyml.workflows.recording import record_valuation, store_location


def _lowest_rows(x, y, x_test, y_test, k):
    values = compute_values("knn_shapley", x, y, x_test, y_test, 0, 0).values
    order = np.argsort(values, kind="stable")[:k]
    return [(tuple(x[i]), int(y[i])) for i in order], order


def test_revalue_records_how_the_lowest_rows_changed(sqlite_platform):
    rng = np.random.default_rng(3)
    x1 = np.round(rng.normal(size=(30, 2)), 3)
    y1 = (x1[:, 0] > 0).astype(np.int64)
    x_test = np.round(rng.normal(size=(20, 2)), 3)
    y_test = (x_test[:, 0] > 0).astype(np.int64)
    # v2: v1's rows in another order, 3 labels flipped, 10 new rows
    order = rng.permutation(30)
    x2, y2 = x1[order].copy(), y1[order].copy()
    y2[:3] = 1 - y2[:3]
    extra = np.round(rng.normal(size=(10, 2)), 3)
    x2, y2 = np.vstack([x2, extra]), np.concatenate([y2, (extra[:, 0] > 0).astype(np.int64)])

    old = sqlite_platform.register_dataset("rows", x1, y1, version="1")
    record_valuation(sqlite_platform, compute_values("knn_shapley", x1, y1, x_test, y_test, 0, 0), dataset_id=old.id)
    sqlite_platform.register_dataset("rows", x2, y2, version="2")
    k = 8
    result = revalue_dataset(store_location(sqlite_platform), "rows", x_test, y_test, "knn_shapley", 0, 0, k)

    old_rows, _ = _lowest_rows(x1, y1, x_test, y_test, k)
    new_rows, new_order = _lowest_rows(x2, y2, x_test, y_test, k)
    stayed = [int(i) for i, row in zip(new_order, new_rows, strict=True) if row in old_rows]
    entered = [int(i) for i, row in zip(new_order, new_rows, strict=True) if row not in old_rows]
    left_rows = [row for row in old_rows if row not in new_rows]
    change = result["lowest_change"]
    assert change["stayed"] == stayed and change["entered"] == entered
    assert [(tuple(x1[i]), int(y1[i])) for i in change["left"]] == left_rows
    assert result["lowest_k_overlap"] == pytest.approx(len(stayed) / k)
    assert entered  # the flipped labels make some rows new and low-valued: the comparison is not trivial
    run = sqlite_platform.store.get_run(result["run_id"])
    assert run.metrics["lowest_change"] == change and run.metrics["previous_run_id"] == result["previous_run_id"]
    np.testing.assert_allclose(sqlite_platform.store.all_values(run.id).values,
                               compute_values("knn_shapley", x2, y2, x_test, y_test, 0, 0).values)
    assert set(get_builtin("revalue").inputs) == {"store", "dataset", "x_test", "y_test", "method", "samples",
                                                  "seed", "k"}


def test_revalue_without_a_previous_valuation_records_only_values(sqlite_platform):
    x = np.arange(20.0).reshape(10, 2)
    y = np.array([0, 1] * 5)
    sqlite_platform.register_dataset("fresh", x, y)
    result = revalue_dataset(store_location(sqlite_platform), "fresh", x, y, "knn_shapley", 0, 0, 3)
    assert result["previous_run_id"] is None and result["lowest_change"] is None
    assert sqlite_platform.store.value_summary(result["run_id"])["n"] == 10
    with pytest.raises(NotFoundError, match="no dataset named 'missing'"):
        revalue_dataset(store_location(sqlite_platform), "missing", x, y, "knn_shapley", 0, 0, 3)
