"""Built-in library workflows record their results in the store."""

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.preprocessing import StandardScaler

from alloyml.platform.client import Platform
from alloyml.valuation import flip_labels, knn_shapley
from alloyml.workflows.builtin import get_builtin
from alloyml.workflows.recording import store_location


@pytest.mark.ray
def test_valuation_workflow_records_knn_shapley_values(alloy_home, ray_session):
    x, y = load_breast_cancer(return_X_y=True)
    x_train, y_train, x_test, y_test = x[:300], y[:300], x[300:400], y[300:400]
    noisy, flipped = flip_labels(y_train, 0.1, seed=0)
    with Platform() as platform:
        handle = platform.submit(get_builtin("valuation").build(), store=store_location(platform),
                                 x_train=x_train, y_train=noisy, x_test=x_test, y_test=y_test,
                                 method="knn_shapley", samples=0, seed=0, flipped=flipped)
        result = handle.result(timeout=300)
        stored = platform.store.all_values(result["run_id"])
        run = platform.store.get_run(result["run_id"])
    scaler = StandardScaler().fit(x_train)  # the pipeline's preprocessing, applied by hand
    expected = knn_shapley(scaler.transform(x_train), noisy, scaler.transform(x_test), y_test, k=5)
    np.testing.assert_allclose(stored.values, expected.values, rtol=1e-6, atol=1e-12)
    assert run.params["method"] == "pipeline_knn_shapley" and run.metrics["noise_auc"] > 0.9
    np.testing.assert_array_equal(result["lowest"], expected.lowest(10))
