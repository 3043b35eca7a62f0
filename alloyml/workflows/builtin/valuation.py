"""Built-in `valuation`: value the training rows of a scikit-learn pipeline and record the values.

Inputs: store (see `recording.store_location`), x_train [n, d], y_train [n], x_test [m, d], y_test [m],
method ("knn_shapley": pipeline-aware KNN-Shapley through StandardScaler; "data_oob": bagged decision
trees; "tmc_shapley" / "msr_banzhaf": logistic-regression pipeline refitted on sampled subsets),
samples (sampling budget), seed. Optional `flipped` [f]: rows known to be mislabelled, scored as
noisy-label detection. Result: {"run_id", "method", "n", "lowest"}.
"""

from __future__ import annotations

import numpy as np

from alloyml.errors import InvalidInputError
from alloyml.workflows.builtin import register_builtin
from alloyml.workflows.graph import Input, Workflow
from alloyml.workflows.recording import open_platform, record_valuation
from alloyml.workflows.steps import step

METHODS = ("knn_shapley", "data_oob", "tmc_shapley", "msr_banzhaf")


def scaled_logistic_pipeline():
    """StandardScaler + LogisticRegression: the pipeline whose training rows the built-ins value."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))


def compute_values(method: str, x_train, y_train, x_test, y_test, samples: int, seed: int):
    from alloyml import valuation as v

    if method == "knn_shapley":
        fitted = scaled_logistic_pipeline().fit(x_train, y_train)
        return v.pipeline_knn_shapley(fitted, x_train, y_train, x_test, y_test, k=5)
    if method == "data_oob":
        from sklearn.tree import DecisionTreeClassifier

        utility = v.Utility(DecisionTreeClassifier(random_state=seed), x_train, y_train, x_test, y_test)
        return v.data_oob(utility, v.MaxSamples(samples), seed=seed)
    utility = v.pipeline_utility(scaled_logistic_pipeline(), x_train, y_train, x_test, y_test)
    sampler = v.tmc_shapley if method == "tmc_shapley" else v.msr_banzhaf
    return sampler(utility, v.MaxSamples(samples), seed=seed)


@step(num_cpus=1)
def value_rows(store: dict, x_train, y_train, x_test, y_test, method: str, samples: int, seed: int,
               flipped=None) -> dict:
    if method not in METHODS:
        raise InvalidInputError(f"method {method!r} is not one of {METHODS}")
    result = compute_values(method, np.asarray(x_train), np.asarray(y_train), np.asarray(x_test),
                            np.asarray(y_test), samples, seed)
    metrics = {}
    if flipped is not None and len(flipped):
        from alloyml.valuation import noisy_label_detection

        detection = noisy_label_detection(result, flipped)
        metrics = {"noise_auc": detection.auc, "noise_f1": detection.f1}
    with open_platform(store) as platform:
        dataset = _input_dataset(platform, np.asarray(x_train), np.asarray(y_train))
        run_id = record_valuation(platform, result, dataset_id=dataset.id, flipped=flipped, metrics=metrics)
    return {"run_id": run_id, "method": result.method, "n": len(result), "lowest": result.lowest(10)}


def _input_dataset(platform, x_train: np.ndarray, y_train: np.ndarray):
    """The `valuation-input` dataset row of these rows, versioned by their content: a later run on the same
    rows reuses it, and runs on other rows never collide on (name, version)."""
    import hashlib

    digest = hashlib.sha256()
    for array in (x_train, y_train):
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    version = digest.hexdigest()[:16]
    for dataset in platform.store.list_datasets():
        if dataset.name == "valuation-input" and dataset.version == version:
            return dataset
    return platform.register_dataset("valuation-input", x_train, y_train, version=version)


@register_builtin("valuation", "value a pipeline's training rows (KNN-Shapley, Data-OOB, TMC, Banzhaf) and record them")
def build() -> Workflow:
    wf = Workflow("valuation")
    wf.add(value_rows, **{name: Input(name) for name in ("store", "x_train", "y_train", "x_test", "y_test",
                                                         "method", "samples", "seed", "flipped")})
    return wf
