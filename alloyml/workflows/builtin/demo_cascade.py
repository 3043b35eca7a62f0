"""The serving half of the demo: logged responses of the small, merged and large LMs, a budgeted
FrugalGPT cascade over them, budgeted inference tuning of the merged model, and a brief Ray Serve
deployment whose requests are logged to the store."""

from __future__ import annotations

from alloyml.workflows.builtin.demo_models import DEMO_TASKS, MAX_ANSWER, PromptTask
from alloyml.workflows.recording import StoreRequestLog, model_folder, open_platform, save_cascade_plan, trial_recorder
from alloyml.workflows.steps import step

CASCADE_NAME = "demo-cascade"
STAGES = ("small", "merged", "large")


def _load(store: dict, infos: dict) -> dict:
    from alloyml.models.saving import load_model

    return {name: load_model(model_folder(store, info["model"])) for name, info in infos.items()}


def _price(model):
    """Cost per token, proportional to the parameters that process it (per 100k parameters)."""
    from alloyml.lm import Price

    rate = model.num_params() / 1e5
    return Price(per_prompt_token=rate, per_completion_token=rate)


def _queries(n: int, seed: int) -> list[tuple[str, str]]:
    half = n // len(DEMO_TASKS)
    return [pair for i, task in enumerate(DEMO_TASKS) for pair in PromptTask(task).examples(half, seed + i)]


@step(num_cpus=1)
def build_cascade(store: dict, small: dict, merged: dict, large: dict, config: dict) -> dict:
    """Every model answers every query (the logged-responses setting); fit the cascade for a budget
    halfway between always calling the merged model and always calling the large one, and compare it
    with each model alone."""
    import pandas as pd

    from alloyml.lm import RecurrentLM
    from alloyml.routing import load_responses

    models = _load(store, {"small": small, "merged": merged, "large": large})
    queries = _queries(config["cascade_queries"], seed=20_000)
    rows = []
    for name in STAGES:
        price = _price(models[name])
        generations = RecurrentLM(models[name]).generate([q for q, _ in queries], max_tokens=MAX_ANSWER, stop=["\n"])
        rows += [{"query_id": i, "query": q, "model": name, "answer": g.text.strip(),
                  "correct": g.text.strip() == a, "cost": price.cost(g.prompt_tokens, g.completion_tokens)}
                 for i, ((q, a), g) in enumerate(zip(queries, generations, strict=True))]
    responses = load_responses(pd.DataFrame(rows))
    fitted = fit_demo_cascade(responses, config["seed"])
    budget, plan = fitted["budget"], fitted["plan"]
    with open_platform(store) as platform, platform.run("route", name="fit demo cascade",
                                                        params={"budget": budget, "queries": len(queries)}) as run:
        stored = save_cascade_plan(platform, CASCADE_NAME, plan, fitted["train"], budget)
        run.log_metrics(**{k: fitted[k] for k in ("accuracy", "mean_cost", "planned_mean_cost", "planned_accuracy",
                                                  "test_queries", "singles")},
                        chain=list(plan.point.models))
    return {"cascade_id": stored.id, "version": stored.version, "plan": plan.model_dump(),
            **{k: v for k, v in fitted.items() if k not in ("plan", "train")}}


def fit_demo_cascade(responses, seed: int) -> dict:
    """Fit the demo's cascade on half the queries and measure it on the other half: budget halfway
    between always calling the merged model and always calling the large one (training means), the
    calibrated fit (thresholds chosen on out-of-fold scores and served with the fold ensemble that
    produced them, the plan kept `COST_Z` standard errors of its training spend below the budget), and
    the held-out spend next to the planned one."""
    from alloyml.routing.cascade import COST_Z, FrugalCascade

    train, test = responses.split(0.5, seed=seed)
    mean_cost = train.cost.mean(axis=0)
    budget = float((mean_cost[train.model_index("merged")] + mean_cost[train.model_index("large")]) / 2)
    cascade = FrugalCascade(budget=budget, cost_z=COST_Z).fit(train)
    held_out = cascade.evaluate(test)
    singles = {m: {"accuracy": float(test.correct[:, i].mean()), "mean_cost": float(test.cost[:, i].mean())}
               for i, m in enumerate(test.models)}
    planned = cascade.plan_.point
    return {"budget": budget, "plan": cascade.plan_, "train": train, "accuracy": held_out.accuracy,
            "mean_cost": held_out.mean_cost, "planned_mean_cost": planned.mean_cost,
            "planned_accuracy": planned.accuracy, "test_queries": test.n_queries, "singles": singles}


@step(num_cpus=1)
def tune_merged(store: dict, merged: dict, config: dict) -> dict:
    """EcoOptiGen-style search over n, temperature and max_tokens for the merged model, against a
    token budget per query; every trial is recorded."""
    from alloyml.automl import InferenceSpace, tune_inference
    from alloyml.automl.prompting import Example
    from alloyml.lm import RecurrentLM

    [model] = _load(store, {"merged": merged}).values()
    examples = [Example(q, a) for q, a in _queries(config["tune_examples"], seed=30_000)]
    space = InferenceSpace(n=[1, 3], temperature=[0.0, 0.7], max_tokens=[4, MAX_ANSWER], stop=[["\n"]],
                           templates=["{input}"])
    budget = config["tune_budget_tokens"]
    with open_platform(store) as platform, platform.run("tune", name="tune merged model's inference",
                                                        params={"budget_tokens": budget}) as run:
        result = tune_inference(RecurrentLM(model), examples, space, budget=budget,
                                on_trial=trial_recorder(platform, run.id), seed=config["seed"])
        run.log_metrics(best_utility=result.best_utility, best_cost=result.best_cost,
                        tuning_cost=result.tuning_cost)
    return {"best": result.best.model_dump(), "best_utility": result.best_utility, "best_cost": result.best_cost}


@step(num_cpus=1)
def serve_cascade(store: dict, cascade: dict, small: dict, merged: dict, large: dict, config: dict) -> dict:
    """Deploy the stored cascade on Ray Serve (127.0.0.1) for a few requests, logged to the store."""
    from alloyml.lm import RecurrentLM
    from alloyml.routing.adapters import LMAnswerer, Stage
    from alloyml.routing.plan import CascadePlan
    from alloyml.routing.serve import CascadeService

    models = _load(store, {"small": small, "merged": merged, "large": large})
    stages = {name: Stage(name, LMAnswerer(RecurrentLM(model), max_tokens=MAX_ANSWER, stop=["\n"]),
                          _price(model)) for name, model in models.items()}
    log = StoreRequestLog(cascade["cascade_id"], store["db_url"], store["home"])
    service = CascadeService(CASCADE_NAME, budget=cascade["budget"], log_callback=log, log_batch_size=8,
                             port=config["serve_port"])
    try:
        handle = service.deploy(CascadePlan.from_dict(cascade["plan"]), cascade["version"], stages=stages)
        queries = _queries(config["serve_requests"], seed=40_000)
        replies = [handle.route.remote(q) for q, _ in queries]
        answers = [r.result() for r in replies]
        status = service.status()
    finally:
        service.delete()
    correct = sum(reply["answer"].strip() == a for reply, (_, a) in zip(answers, queries, strict=True))
    return {"requests": len(answers), "accuracy": correct / len(answers),
            "mean_cost": sum(r["cost"] for r in answers) / len(answers), "guard": status.get("guard")}
