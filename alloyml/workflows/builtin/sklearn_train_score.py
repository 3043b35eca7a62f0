"""Built-in `sklearn-train-score`: fit a scikit-learn pipeline (standard scaling + logistic regression), then
score it on held-out rows.

The fitted pipeline travels between the steps, and into the store, as its learned arrays (every `*_`
attribute of each pipeline stage), never as a pickled estimator; `restore_pipeline` rebuilds the same
pipeline from them.

Inputs: x_train [n, d], y_train [n], x_test [m, d], y_test [m]. Result: {"accuracy", "log_loss", "n_test"}.
"""

from __future__ import annotations

import numpy as np

from alloyml.workflows.builtin import register_builtin
from alloyml.workflows.graph import Input, Workflow
from alloyml.workflows.steps import step


def make_pipeline(C: float, max_iter: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(C=C, max_iter=max_iter))])


@step(num_cpus=1, max_retries=1, retry_backoff_s=1.0)
def train_pipeline(x, y, C: float = 1.0, max_iter: int = 500) -> dict:
    """Fit the pipeline; returns {"params": {...}, "state": {"<stage>.<attr>_": array or scalar}}."""
    pipeline = make_pipeline(C, max_iter).fit(np.asarray(x), np.asarray(y))
    state = {f"{stage}.{attr}": value for stage, estimator in pipeline.steps
             for attr, value in vars(estimator).items()
             if attr.endswith("_") and not attr.startswith("_") and value is not None}
    return {"params": {"C": C, "max_iter": max_iter}, "state": state}


def restore_pipeline(model: dict):
    """The fitted pipeline that `train_pipeline` described."""
    pipeline = make_pipeline(**model["params"])
    for key, value in model["state"].items():
        stage, attr = key.split(".", 1)
        setattr(pipeline.named_steps[stage], attr, value)
    return pipeline


@step(num_cpus=1)
def score_pipeline(model: dict, x, y) -> dict:
    from sklearn.metrics import accuracy_score, log_loss

    pipeline = restore_pipeline(model)
    x, y = np.asarray(x), np.asarray(y)
    proba = pipeline.predict_proba(x)
    return {"accuracy": float(accuracy_score(y, pipeline.classes_[proba.argmax(axis=1)])),
            "log_loss": float(log_loss(y, proba, labels=pipeline.classes_)), "n_test": int(len(y))}


@register_builtin("sklearn-train-score", "fit StandardScaler + LogisticRegression, then score it on held-out rows")
def build() -> Workflow:
    workflow = Workflow("sklearn-train-score")
    model = workflow.add(train_pipeline, x=Input("x_train"), y=Input("y_train"), C=1.0, max_iter=500)
    workflow.add(score_pipeline, model=model, x=Input("x_test"), y=Input("y_test"))
    return workflow
