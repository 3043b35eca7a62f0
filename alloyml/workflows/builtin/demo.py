"""Built-in `demo`: the whole platform on real data, as one resumable workflow.

    data ─► KNN-Shapley ┐
         ├► Banzhaf ────┼► clean & retrain
         └► TracIn ─────┘
    small LM ─► increment specialist ─┐
             └► reverse specialist ───┴► merge ─┐
    large LM ────────────────────────────────────┴► cascade ─► serve
                                      merge ─► tune inference settings

Every step records what it made (datasets, runs, data values, models with lineage, merges, the cascade,
its requests, tuning trials) in the store. Sizes come from `DEMO_CONFIGS`: "full" for `alloyml demo`,
"quick" for the test suite's reduced demo — the same code path.
"""

from __future__ import annotations

from alloyml.workflows.builtin import register_builtin
from alloyml.workflows.builtin.demo_cascade import build_cascade, serve_cascade, tune_merged
from alloyml.workflows.builtin.demo_data import (
    clean_and_retrain,
    prepare_data,
    value_banzhaf,
    value_knn,
    value_tracin,
)
from alloyml.workflows.builtin.demo_models import finetune, merge_specialists, train_lm
from alloyml.workflows.graph import Input, Workflow
from alloyml.workflows.steps import step

_COMMON = {
    "seed": 0, "noise": 0.1, "knn_k": 5, "remove_fraction": 0.1, "serve_port": 8123,
    # Each method's merge weights are searched on the validation prompts: a list is searched, a scalar fixed
    # (`demo_models.merge_spec` says what each knob means for each method).
    "merge_methods": {"task_arithmetic": {"weight": [0.3, 0.5, 0.7]},
                      "ties": {"weight": 1.0, "lambda": [0.5, 0.75, 1.0], "density": 0.5},
                      "linear": {"t": [0.3, 0.4, 0.5]}, "slerp": {"t": [0.3, 0.4, 0.5]}},
    # Specialists: short, low-learning-rate fine-tunes of a base that already knows both formats.
    "finetune_steps": 60, "finetune_lr": 1e-3,
}
_SMALL = {"config": {"d_model": 64, "n_layers": 2, "n_heads": 4, "mixer": "retnet"}, "steps": 350}
DEMO_CONFIGS = {
    "full": {**_COMMON, "dataset": "breast_cancer", "banzhaf_samples": 600, "tracin_epochs": 30,
             "lm_sizes": {"small": _SMALL,
                          "large": {"config": {"d_model": 128, "n_layers": 3, "n_heads": 4, "mixer": "retnet"},
                                    "steps": 500}},
             "eval_n": 100, "cascade_queries": 400, "tune_examples": 32, "tune_budget_tokens": 16.0,
             "serve_requests": 40},
    # The test suite's: the same small LM and recipe (what the merge needs), fewer evaluations elsewhere.
    "quick": {**_COMMON, "dataset": "breast_cancer", "banzhaf_samples": 60, "tracin_epochs": 5,
              "lm_sizes": {"small": _SMALL,
                           "large": {"config": {"d_model": 96, "n_layers": 2, "n_heads": 4, "mixer": "retnet"},
                                     "steps": 350}},
              "eval_n": 50, "cascade_queries": 80, "tune_examples": 8, "tune_budget_tokens": 16.0,
              "serve_requests": 8},
}


@step(num_cpus=0)
def summarize(cleaned: dict, merged: dict, cascade: dict, tuned: dict, served: dict) -> dict:
    """The numbers `alloyml demo` prints at the end."""
    return {"cleaning": cleaned, "merge": {k: merged[k] for k in ("method", "setting", "reason", "scores", "methods",
                                                                   "trials", "specialists", "base", "searched",
                                                                   "scores_by_method")},
            "cascade": {k: cascade[k] for k in ("accuracy", "mean_cost", "planned_mean_cost", "planned_accuracy",
                                                "test_queries", "budget", "singles", "version")},
            "tuning": tuned, "serving": served}


@register_builtin("demo", "the whole platform on real data: value, clean, train, merge, cascade, tune, serve")
def build() -> Workflow:
    wf = Workflow("demo")
    store, config = Input("store"), Input("config")
    data = wf.add(prepare_data, store=store, config=config)
    knn = wf.add(value_knn, store=store, data=data, config=config)
    banzhaf = wf.add(value_banzhaf, store=store, data=data, config=config)
    tracin = wf.add(value_tracin, store=store, data=data, config=config)
    cleaned = wf.add(clean_and_retrain, store=store, data=data, knn=knn, banzhaf=banzhaf, tracin=tracin,
                     config=config)
    small = wf.add(train_lm, name="train_small", store=store, config=config, size="small")
    large = wf.add(train_lm, name="train_large", store=store, config=config, size="large")
    incrementer = wf.add(finetune, name="finetune_increment", store=store, base=small, task="increment",
                         config=config)
    reverser = wf.add(finetune, name="finetune_reverse", store=store, base=small, task="reverse", config=config)
    merged = wf.add(merge_specialists, store=store, base=small, first=incrementer, second=reverser, config=config)
    cascade = wf.add(build_cascade, store=store, small=small, merged=merged, large=large, config=config)
    tuned = wf.add(tune_merged, store=store, merged=merged, config=config)
    served = wf.add(serve_cascade, store=store, cascade=cascade, small=small, merged=merged, large=large,
                    config=config)
    wf.add(summarize, cleaned=cleaned, merged=merged, cascade=cascade, tuned=tuned, served=served)
    return wf
