"""Built-in library workflows record their results in the store."""

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.preprocessing import StandardScaler

from alloyml.platform.client import Platform
from alloyml.valuation import flip_labels, knn_shapley
from alloyml.workflows import submit
from alloyml.workflows.builtin import get_builtin
from alloyml.workflows.recording import store_location


@pytest.mark.ray
def test_valuation_workflow_records_knn_shapley_values(alloy_home, ray_session):
    x, y = load_breast_cancer(return_X_y=True)
    x_train, y_train, x_test, y_test = x[:300], y[:300], x[300:400], y[300:400]
    noisy, flipped = flip_labels(y_train, 0.1, seed=0)
    with Platform() as platform:
        handle = submit(platform, get_builtin("valuation").build(), {
            "store": store_location(platform), "x_train": x_train, "y_train": noisy, "x_test": x_test,
            "y_test": y_test, "method": "knn_shapley", "samples": 0, "seed": 0, "flipped": flipped})
        result = handle.result(timeout=300)
        stored = platform.store.all_values(result["run_id"])
        run = platform.store.get_run(result["run_id"])
    scaler = StandardScaler().fit(x_train)  # the pipeline's preprocessing, applied by hand
    expected = knn_shapley(scaler.transform(x_train), noisy, scaler.transform(x_test), y_test, k=5)
    np.testing.assert_allclose(stored.values, expected.values, rtol=1e-6, atol=1e-12)
    assert run.params["method"] == "pipeline_knn_shapley" and run.metrics["noise_auc"] > 0.9
    np.testing.assert_array_equal(result["lowest"], expected.lowest(10))


@pytest.mark.ray
def test_merge_workflow_records_the_merge_and_lineage(alloy_home, ray_session, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    g = torch.Generator().manual_seed(0)
    paths = {}
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        save_file({"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g)},
                  str(folder / "model.safetensors"))
        paths[name] = str(folder)
    config = {"merge_method": "linear", "models": [{"model": paths["a"], "parameters": {"weight": 0.25}},
                                                   {"model": paths["b"], "parameters": {"weight": 0.75}}]}
    with Platform() as platform:
        known = platform.register_model("a", "mlp", artifact=paths["a"])  # already registered: reused
        out = submit(platform, get_builtin("merge").build(), {"store": store_location(platform), "config": config,
                                                             "out_dir": str(tmp_path / "merged")}).result(timeout=300)
        [merge] = platform.store.list_merges()
        edges = platform.store.lineage_edges(out["model_id"])
        models = {m.id: m for m in platform.store.list_models()}
    a, b = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("a", "b"))
    merged = {}
    for shard in (tmp_path / "merged").glob("*.safetensors"):
        merged.update(load_file(str(shard)))
    for key in ("w", "b"):  # a weighted average, normalised by the weights' sum (1.0 here)
        torch.testing.assert_close(merged[key], 0.25 * a[key] + 0.75 * b[key])
    assert merge.method == "linear" and merge.output_model_id == out["model_id"]
    assert {(i.model_id, i.weight) for i in merge.inputs} == {(known.id, 0.25), (merge.inputs[1].model_id, 0.75)}
    assert {(e.parent_id, e.weight) for e in edges} == {(i.model_id, i.weight) for i in merge.inputs}
    assert models[merge.inputs[1].model_id].artifact == paths["b"]
