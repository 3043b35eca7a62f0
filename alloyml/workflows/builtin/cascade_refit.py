"""Built-in `cascade-refit`: refit a stored cascade on its labelled request log plus the responses its
current version was fitted on, and deploy the new plan only if the promotion rule says so — the workflow a
schedule runs to keep a production cascade fresh.

Inputs: store, cascade (name; its latest version is the old plan). Settings are constants of the built
workflow (`refit_workflow(...)` builds one with others): seed, test_fraction, tolerance, rollout_timeout_s.

1. Data. The labelled served requests of every version (`served_rows`, as `alloyml cascade fit --from-log`
   reads them), restricted to the models of the old plan's chosen chain (the ones production calls:
   there is no served evidence on the others), keeping the requests that have a labelled answer of
   every one of them. Requests the old version was itself fitted on are set aside for training only;
   the rest — new traffic — are sorted by request id, permuted by `numpy.random.default_rng(seed)`, and
   the first round(test_fraction x n) are held out. Training = the old version's training responses
   (kept by `save_cascade_plan`) + the other new requests.
2. Fit. `FrugalCascade(budget=<the stored budget>, seed=seed)` with its defaults; the old plan's
   model specs (of those models) are kept, so the same models are served.
3. Evaluate the old and the new plan's chosen points on the held-out requests (accuracy, mean cost).
4. Decide by `alloyml.routing.promotion`: promote iff new accuracy >= old accuracy - tolerance and new
   mean cost <= 1.05 x budget; otherwise the old version stays.
5. Deploy a promoted plan: save it as the next version (with its training responses). A running
   `alloyml serve cascade NAME` rolls over to it by its safe rollout (new stages up first, the ingress
   drained, no request dropped); when an ingress of NAME runs on this Ray cluster the step waits up to
   `rollout_timeout_s` for it to serve the new version and records what it serves.

One run of kind "refit" records it all: params (cascade, old version, settings, both chains, artifacts of the
new plan and of the held-out request ids), metrics (`old_accuracy`, `old_mean_cost`, `new_accuracy`,
`new_mean_cost`, `accuracy_diff_se`, `promoted` 1/0, `new_version` and `rollout_seconds` when deployed,
query counts, stage shares) and tags (`cascade`, `decision` promoted/kept, `reason`, `served_version`).
The Cascades page lists them. Bad input (unknown cascade, no usable labelled request) fails before any
fitting with an AlloyError naming the cascade.
"""

from __future__ import annotations

import math
import time

import numpy as np

from alloyml.errors import InvalidInputError
from alloyml.workflows.builtin import register_builtin
from alloyml.workflows.graph import Input, Workflow
from alloyml.workflows.recording import open_platform, save_cascade_plan, served_rows, training_responses
from alloyml.workflows.steps import step

RUN_KIND = "refit"
DEFAULTS = {"seed": 0, "test_fraction": 0.3, "tolerance": 0.0, "rollout_timeout_s": 120.0}


def _check_settings(seed, test_fraction, tolerance, rollout_timeout_s) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidInputError(f"seed must be an integer, got {seed!r}")
    if not isinstance(test_fraction, int | float) or not 0.0 < test_fraction < 1.0:
        raise InvalidInputError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    if not isinstance(tolerance, int | float) or not math.isfinite(tolerance) or not 0.0 <= tolerance < 1.0:
        raise InvalidInputError(f"tolerance must be a fraction of queries in [0, 1), got {tolerance!r}")
    if not isinstance(rollout_timeout_s, int | float) or not math.isfinite(rollout_timeout_s) or rollout_timeout_s < 0:
        raise InvalidInputError(f"rollout_timeout_s must be a number of seconds >= 0, got {rollout_timeout_s!r}")


def refit_data(name: str, models: list[str], original, log_rows, seed: int, test_fraction: float, folds: int):
    """(train, held_out, counts) as `LoggedResponses` over `models`; see the module docstring. `original`:
    long table the old version was fitted on, or None; `log_rows`: the long table of `served_rows`."""
    import pandas as pd

    from alloyml.routing.responses import load_responses

    rows = log_rows[log_rows["model"].isin(models)]
    answered = rows.groupby("query_id")["model"].nunique()
    complete = set(answered.index[answered == len(models)])
    if not complete:
        raise InvalidInputError(
            f"cascade {name!r}: no labelled request has a labelled answer of every model {models}; a refit "
            f"needs them (label each stage's answer with the `model` column of `alloyml cascade label`)")
    seen = set() if original is None else set(original["query_id"].astype(str))
    fresh = sorted(q for q in complete if str(q) not in seen)
    n_test = int(round(test_fraction * len(fresh)))
    if n_test < 1 or n_test == len(fresh):
        raise InvalidInputError(
            f"cascade {name!r}: {len(fresh)} labelled request(s) with every model's answer that version was not "
            f"fitted on; test_fraction={test_fraction} needs at least one held out and one to train on")
    order = np.random.default_rng(seed).permutation(len(fresh))
    held_ids = {fresh[i] for i in order[:n_test]}
    held_out = load_responses(rows[rows["query_id"].isin(held_ids)])
    parts = [rows[rows["query_id"].isin(set(fresh) - held_ids)]]
    if original is not None:
        parts.insert(0, original[original["model"].isin(models)])
    train = load_responses(pd.concat(parts, ignore_index=True), missing="drop")
    if train.n_queries < folds:
        raise InvalidInputError(f"cascade {name!r}: {train.n_queries} training queries; the refit's "
                                f"{folds}-fold scorer needs at least {folds}")
    counts = {"held_out_queries": held_out.n_queries, "train_queries": train.n_queries, "new_log_queries": len(fresh),
              "original_queries": 0 if original is None else int(original["query_id"].nunique())}
    return train, held_out, counts


@step(num_cpus=1)
def refit_cascade(store: dict, cascade: str, seed: int = DEFAULTS["seed"],
                  test_fraction: float = DEFAULTS["test_fraction"], tolerance: float = DEFAULTS["tolerance"],
                  rollout_timeout_s: float = DEFAULTS["rollout_timeout_s"]) -> dict:
    from alloyml.routing.cascade import FrugalCascade, evaluate_plan
    from alloyml.routing.plan import CascadePlan
    from alloyml.routing.promotion import BUDGET_SLACK, decide_promotion
    from alloyml.routing.serve import served_version, wait_for_version

    if not isinstance(cascade, str) or not cascade:
        raise InvalidInputError(f"cascade must be the name of a stored cascade, got {cascade!r}")
    _check_settings(seed, test_fraction, tolerance, rollout_timeout_s)
    with open_platform(store) as platform:
        stored = platform.store.get_cascade(cascade)  # NotFoundError naming it
        old_plan = CascadePlan.from_dict(stored.plan)
        if old_plan.scorer is None:
            raise InvalidInputError(f"cascade {cascade!r} version {stored.version} has no saved scorer to "
                                    "evaluate it with")
        fitter = FrugalCascade(budget=stored.budget, seed=seed)
        train, held_out, counts = refit_data(cascade, old_plan.point.models, training_responses(platform, stored),
                                             served_rows(platform, cascade), seed, test_fraction, fitter.folds)
        fitted = fitter.fit(train).plan_
        specs = {m: spec for m, spec in old_plan.model_specs.items() if m in fitted.models}
        new_plan = CascadePlan.from_dict({**fitted.model_dump(), "model_specs": specs})
        old_eval, new_eval = evaluate_plan(old_plan, held_out), evaluate_plan(new_plan, held_out)
        decision = decide_promotion(old_eval.correct, new_eval.correct, old_eval.cost, new_eval.cost,
                                    stored.budget, tolerance)
        params = {"cascade": cascade, "old_version": stored.version, "seed": seed, "test_fraction": test_fraction,
                  "tolerance": tolerance, "budget": stored.budget, "budget_slack": BUDGET_SLACK,
                  "old_chain": old_plan.point.models, "new_chain": new_plan.point.models,
                  "new_plan_artifact": platform.artifacts.put_json(new_plan.model_dump(), kind="cascade-plan"),
                  "held_out_artifact": platform.artifacts.put_json(held_out.query_ids.astype(str).tolist(),
                                                                   kind="held-out")}
        with platform.run(RUN_KIND, name=f"refit {cascade}", params=params) as run:
            new_version = served = None
            deployed = {}
            if decision.promote:
                new_version = save_cascade_plan(platform, cascade, new_plan, train, stored.budget).version
                deployed["new_version"] = new_version
                if served_version(cascade) is not None:
                    saved_at = time.monotonic()
                    served = wait_for_version(cascade, new_version, rollout_timeout_s)
                    deployed["rollout_seconds"] = time.monotonic() - saved_at
            else:
                served = served_version(cascade)
            run.log_metrics(old_accuracy=decision.old_accuracy, old_mean_cost=decision.old_mean_cost,
                            new_accuracy=decision.new_accuracy, new_mean_cost=decision.new_mean_cost,
                            accuracy_diff_se=decision.accuracy_diff_se, promoted=float(decision.promote),
                            old_stage_share=old_eval.stage_share.tolist(),
                            new_stage_share=new_eval.stage_share.tolist(),
                            **counts, **deployed)
            run.set_tags(cascade=cascade, decision="promoted" if decision.promote else "kept",
                         reason=decision.reason, served_version="not served" if served is None else served)
    return {"run_id": run.id, "promoted": decision.promote, "reason": decision.reason,
            "old_version": stored.version, "new_version": new_version, "served_version": served,
            "decision": decision.to_dict(), "held_out_artifact": params["held_out_artifact"], **counts}


def refit_workflow(**settings) -> Workflow:
    """The `cascade-refit` workflow with other settings than `DEFAULTS` (seed, test_fraction, tolerance,
    rollout_timeout_s), checked here."""
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise InvalidInputError(f"cascade-refit settings are {sorted(DEFAULTS)}; unknown {unknown}")
    values = {**DEFAULTS, **settings}
    _check_settings(**values)
    wf = Workflow("cascade-refit")
    wf.add(refit_cascade, store=Input("store"), cascade=Input("cascade"), **values)
    return wf


@register_builtin("cascade-refit", "refit a stored cascade on its labelled request log; deploy it only if it "
                                   "is at least as accurate on held-out requests within the budget")
def build() -> Workflow:
    return refit_workflow()
