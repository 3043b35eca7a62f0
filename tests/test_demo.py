"""The reduced demo: the same workflow as `alloyml demo` at smaller sizes, checked through the store."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from alloyml.commands.demo import run_demo
from alloyml.platform.client import Platform
from alloyml.workflows.builtin.demo import DEMO_CONFIGS


def _walk_chain(plan, test) -> np.ndarray:
    """[Q] cost of each query, walking the chosen chain query by query with the plan's own scorer."""
    from alloyml.routing.scorer import scorer_from_dict

    scorer = scorer_from_dict(plan.scorer)
    paid = np.zeros(test.n_queries)
    for q in range(test.n_queries):
        for stage in plan.point.stages:
            m = test.model_index(stage.model)
            paid[q] += test.cost[q, m]
            if stage.threshold is None or scorer.predict_proba(
                    [test.queries[q]], [test.answers[q, m]], [stage.model])[0] >= stage.threshold:
                break
    return paid


@pytest.mark.parametrize("data_seed", range(5))
def test_demo_cascade_spends_within_its_budget_on_its_held_out_half(data_seed):
    """The demo's cascade fit (budget halfway between the merged and the large model, the demo's split of
    the demo's query count) on logged responses shaped like the demo's: held-out spend <= 1.05 x budget."""
    from alloyml.routing.responses import LoggedResponses
    from alloyml.routing.synthetic import make_logged_responses
    from alloyml.workflows.builtin.demo_cascade import fit_demo_cascade

    config = DEMO_CONFIGS["full"]
    logs = make_logged_responses(config["cascade_queries"], 3, seed=data_seed)
    logs = LoggedResponses(logs.query_ids, logs.queries, ("small", "merged", "large"), logs.answers, logs.correct,
                           logs.cost)
    fitted = fit_demo_cascade(logs, config["seed"])
    _, test = logs.split(0.5, seed=config["seed"])
    assert fitted["test_queries"] == test.n_queries == config["cascade_queries"] // 2
    assert fitted["mean_cost"] == pytest.approx(_walk_chain(fitted["plan"], test).mean())
    assert fitted["mean_cost"] <= 1.05 * fitted["budget"]
    assert fitted["planned_mean_cost"] + 1.645 * fitted["plan"].point.cost_se <= fitted["budget"] * (1 + 1e-9)


@pytest.mark.ray
def test_reduced_demo_leaves_everything_in_the_store(alloy_home, ray_session):
    summary = run_demo(quick=True)
    config = DEMO_CONFIGS["quick"]
    with Platform() as platform:
        store = platform.store
        [dataset] = store.list_datasets()
        x_train, y_train = platform.load_dataset(dataset.id)
        assert dataset.n_rows == len(x_train) == len(y_train)

        valuations = store.list_runs(kind="valuation")
        assert {r.params["method"] for r in valuations} == {"pipeline_knn_shapley", "msr_banzhaf",
                                                             "tracin_self_influence"}
        for run in valuations:
            values = store.all_values(run.id)
            assert len(values) == dataset.n_rows and run.status == "done"
            flipped = platform.artifacts.get_array(run.params["flipped_artifact"])
            assert len(flipped) == round(config["noise"] * dataset.n_rows)
            # the stored AUC is the one an independent computation gets from the stored values
            is_flipped = np.isin(values.indices, flipped)
            assert run.metrics["noise_auc"] == pytest.approx(roc_auc_score(is_flipped, -values.values))
        knn = next(r for r in valuations if r.params["method"] == "pipeline_knn_shapley")
        assert knn.metrics["noise_auc"] > 0.9  # KNN-Shapley finds flipped labels on breast_cancer

        [retrain] = [r for r in store.list_runs(kind="train") if r.name.startswith("retrain")]
        assert retrain.metrics["gain"] == pytest.approx(
            retrain.metrics["cleaned_accuracy"] - retrain.metrics["noisy_accuracy"])
        assert summary["cleaning"]["gain"] == pytest.approx(retrain.metrics["gain"])

        models = {m.name: m for m in store.list_models()}
        merged = models["demo-merged"]
        edges = store.lineage_edges(merged.id)
        specialists = {models["demo-add-specialist"].id, models["demo-reverse-specialist"].id}
        assert {e.parent_id for e in edges if e.child_id == merged.id} == specialists
        assert {(e.child_id, e.parent_id) for e in edges if e.role == "fine-tune"} == {
            (s, models["demo-small"].id) for s in specialists}
        [merge] = store.list_merges()
        assert merge.output_model_id == merged.id and merge.method == summary["merge"]["method"]
        assert merged.n_params == models["demo-small"].n_params  # a merge keeps the base's shape

        [cascade] = store.list_cascades()
        # The demo's cascade holds its budget on the demo's own held-out queries.
        planned = summary["cascade"]
        assert planned["mean_cost"] <= 1.05 * planned["budget"] == pytest.approx(1.05 * cascade.budget)
        [route] = store.list_runs(kind="route")
        assert route.metrics["mean_cost"] == pytest.approx(planned["mean_cost"])
        assert route.metrics["planned_mean_cost"] == pytest.approx(cascade.plan["frontier"][cascade.plan["chosen"]]
                                                                   ["mean_cost"])
        requests = store.cascade_requests(cascade.id)
        assert len(requests) == config["serve_requests"] == summary["serving"]["requests"]
        assert all(0 <= r.stage_reached < len(cascade.stages) for r in requests)
        assert np.mean([r.cost for r in requests]) == pytest.approx(summary["serving"]["mean_cost"])

        [tune] = store.list_runs(kind="tune")
        trials = store.list_trials(tune.id)
        best = summary["tuning"]["best"]
        # the best configuration's last (largest) evaluation is the utility the tuner reported
        chosen = max((t for t in trials if t.config == {**best, "stop": list(best["stop"])}),
                     key=lambda t: t.metrics["examples"])
        assert chosen.metrics["utility"] == pytest.approx(tune.metrics["best_utility"])
