"""Submit a workflow from Python, follow it, read its result — then do the same with a built-in one.

    python examples/submit_workflow.py

Everything lands in the store under ALLOYML_HOME (default ~/.alloyml): `alloyml workflow list` and
`alloyml workflow show ID` show it afterwards; if this script is killed mid-way, `alloyml workflow
resume ID` finishes it without re-running the steps that had completed.
"""

from __future__ import annotations

import numpy as np

from alloyml.platform.client import Platform
from alloyml.workflows import Input, Workflow, step, submit
from alloyml.workflows.builtin import get_builtin


@step(num_cpus=1)
def normalise(x):
    """x: [n, d] -> column-standardised [n, d]."""
    x = np.asarray(x, dtype=np.float64)
    return (x - x.mean(axis=0)) / x.std(axis=0)


@step(num_cpus=1)
def column_norms(x):
    return {"norms": np.linalg.norm(x, axis=0), "rows": int(len(x))}


@step(num_cpus=1, max_retries=2, retry_backoff_s=0.5)
def gram_trace(x):
    return float(np.trace(x.T @ x))


def main() -> None:
    x = np.random.default_rng(0).normal(size=(500, 8))
    workflow = Workflow("normalise-and-summarise")
    z = workflow.add(normalise, x=Input("x"))
    workflow.add(column_norms, x=z)  # column_norms and gram_trace are independent: they run in parallel
    trace = workflow.add(gram_trace, x=z)
    workflow.output = trace

    with Platform() as platform:
        handle = submit(platform, workflow, {"x": x})  # returns at once
        print(f"workflow {handle.id}: {handle.status()}")
        print("trace of Z^T Z =", handle.result(timeout=300), "(expected", x.shape[0] * x.shape[1], ")")
        print("column norms:", handle.output("column_norms")["norms"].round(3))
        for s in handle.steps():
            print(f"  {s.name:14s} {s.state:8s} attempts={s.attempts}")

        rng = np.random.default_rng(1)
        features = rng.normal(size=(400, 5))
        labels = (features[:, 0] + 0.5 * features[:, 1] > 0).astype(np.int64)
        scores = submit(platform, get_builtin("sklearn-train-score").build(),
                        {"x_train": features[:300], "y_train": labels[:300],
                         "x_test": features[300:], "y_test": labels[300:]})
        print("sklearn-train-score:", scores.result(timeout=300))


if __name__ == "__main__":
    main()
