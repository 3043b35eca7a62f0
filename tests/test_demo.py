"""The reduced demo: the same workflow as `alloyml demo` at smaller sizes, checked through the store."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from alloyml.commands.demo import run_demo
from alloyml.platform.client import Platform
from alloyml.workflows.builtin.demo import DEMO_CONFIGS
from alloyml.workflows.builtin.demo_models import MAX_ANSWER, PromptTask


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


def _greedy_answer(model, prompt: str) -> str:
    """The model's greedy answer, one full forward pass per token (no recurrent state, no stop handling
    but the newline): the naive reference for the demo's accuracies."""
    import torch

    ids = list(prompt.encode())
    answer = []
    with torch.no_grad():
        for _ in range(MAX_ANSWER):
            token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            if token == ord("\n"):
                break
            ids.append(token)
            answer.append(token)
    return bytes(answer).decode(errors="replace")


def test_demo_prompt_splits_are_disjoint_and_training_sees_only_its_own():
    """Held-out and validation prompts never reach training: every prompt in 50 training batches is a
    training prompt, and the evaluation draws come from their own split only."""
    from alloyml.workflows.builtin.demo_models import _mixed_batches, prompt_split

    batch = _mixed_batches(("increment", "reverse"), 32, seed=0)
    seen = set()
    for step in range(50):
        inputs, _ = batch(step)
        for row in inputs.tolist():
            text = bytes(row).decode()
            seen.add(text[:4])  # "348>" or "abc|"
    assert seen and all(prompt_split(p) == "train" for p in seen)
    for split in ("validation", "held_out"):
        for task in ("increment", "reverse"):
            drawn = {p for p, _ in PromptTask(task, split).examples(200, seed=1)}
            assert all(prompt_split(p) == split for p in drawn) and not drawn & seen
    # the split is a fixed function of the text: about 20% / 10% of the 2,000 prompts
    every = [f"{x}{y}{z}>" for x in range(10) for y in range(10) for z in range(10)] + [
        "".join(chr(97 + i) for i in (x, y, z)) + "|" for x in range(10) for y in range(10) for z in range(10)]
    shares = {s: sum(prompt_split(p) == s for p in every) / len(every) for s in ("held_out", "validation")}
    assert 0.15 < shares["held_out"] < 0.25 and 0.05 < shares["validation"] < 0.15


def test_merge_settings_and_specs():
    from alloyml.merging.config import load_merge_config
    from alloyml.workflows.builtin.demo_models import merge_settings, merge_spec, worst_fraction

    assert merge_settings({"weight": [0.5, 1.0], "density": 0.5}) == [{"weight": 0.5, "density": 0.5},
                                                                      {"weight": 1.0, "density": 0.5}]
    for method, grid in DEMO_CONFIGS["full"]["merge_methods"].items():
        for setting in merge_settings(grid):
            load_merge_config(merge_spec(method, setting))  # each is a valid merge config
    linear = merge_spec("linear", {"t": 0.25})
    assert [m["parameters"]["weight"] for m in linear["models"]] == [0.75, 0.25]
    assert worst_fraction({"increment": 0.9, "reverse": 0.4}, {"increment": 1.0, "reverse": 0.8}) == pytest.approx(0.5)


@pytest.mark.ray
def test_reduced_demo_leaves_everything_in_the_store(alloy_home, ray_session, capsys):
    summary = run_demo(quick=True)
    printed = capsys.readouterr().out.splitlines()
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
        specialists = {models["demo-increment-specialist"].id, models["demo-reverse-specialist"].id}
        assert {e.parent_id for e in edges if e.child_id == merged.id} == specialists
        assert {(e.child_id, e.parent_id) for e in edges if e.role == "fine-tune"} == {
            (s, models["demo-small"].id) for s in specialists}
        [merge] = store.list_merges()
        assert merge.output_model_id == merged.id and merge.method == summary["merge"]["method"]
        assert merged.n_params == models["demo-small"].n_params  # a merge keeps the base's shape

        # The merge target on the demo's held-out prompts: the chosen merge keeps >= 0.8 of each specialist.
        merge_summary = summary["merge"]
        chosen = merge_summary["methods"][merge_summary["method"]]
        held_out = {}
        for task in ("increment", "reverse"):
            examples = PromptTask(task, "held_out").examples(config["eval_n"], seed=10_000)
            held_out[task] = {name: np.mean([_greedy_answer(_load(platform, models[name]), p) == a
                                             for p, a in examples])
                              for name in ("demo-merged", f"demo-{task}-specialist")}
        for task, accuracy in held_out.items():
            # the demo's numbers are what an independent decode of the stored models gives
            assert chosen["held_out"][task] == pytest.approx(accuracy["demo-merged"])
            assert merge_summary["specialists"][task] == pytest.approx(accuracy[f"demo-{task}-specialist"])
            assert accuracy["demo-merged"] >= 0.8 * accuracy[f"demo-{task}-specialist"] > 0
        # chosen by validation alone: the method whose worse task keeps most of its specialist's accuracy
        assert merge_summary["method"] == max(merge_summary["methods"], key=lambda m: (
            merge_summary["methods"][m]["validation_worst_fraction"],
            sum(merge_summary["methods"][m]["validation"].values())))
        assert set(merge_summary["methods"]) == set(config["merge_methods"])
        assert models["demo-merged"].metrics == pytest.approx(chosen["held_out"])

        [cascade] = store.list_cascades()
        # The demo's cascade holds its budget on the demo's own held-out queries.
        planned = summary["cascade"]
        assert planned["mean_cost"] <= planned["budget"] == pytest.approx(cascade.budget)
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
        steps = store.workflow_steps(store.list_workflows()[0].id)

    # Off a terminal every table row is one line: each step's row holds its name, state and upstream
    # steps; each merge method's row its name and its held-out accuracies as the summary has them.
    for s in steps:
        assert any(line.split("│")[1].strip() == s.name and "done" in line and ", ".join(s.depends_on) in line
                   for line in printed if line.count("│") > 3), s.name
    for method, info in summary["merge"]["methods"].items():
        assert any(f"merge {method}" in line and all(f"{info['held_out'][t]:.2f}" in line for t in info["held_out"])
                   for line in printed), method
    assert max(len(line) for line in printed if "│" in line) <= 160  # the tables fit the fixed width
    # the last lines: the command that opens the dashboard on this store, then one URL per page showing what ran
    pages = ("workflows", "data_values", "models", "merges", "cascades", "automl")
    assert printed[-len(pages) - 2].endswith(f"run: ALLOYML_HOME={alloy_home} alloyml ui")
    for line, page in zip(printed[-len(pages):], pages, strict=True):
        assert f" http://127.0.0.1:8501/{page} " in line


def _load(platform, model):
    from alloyml.models.saving import load_model

    return load_model(platform.artifacts.get_directory(model.artifact)).eval()
