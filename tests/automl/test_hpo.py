"""Hyperparameter search: the sklearn objective against a hand-rolled fit/score loop, prior sampling
against its closed-form moments, and one Ray Tune run with ASHA, TPE and priors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from alloyml.automl.hpo import hyperparameter_search
from alloyml.automl.objectives import CrossValObjective, LMTrainingObjective, SklearnObjective
from alloyml.automl.space import Choice, IntUniform, Prior, Uniform, parse_space, sample_prior
from alloyml.errors import InvalidInputError


def test_sklearn_objective_matches_manual_learning_curve():
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = make_classification(120, 6, random_state=0)
    pipe = make_pipeline(StandardScaler(), LogisticRegression())
    objective = SklearnObjective(pipe, X, y, steps=3, val_fraction=0.25, seed=4)
    reports = []
    objective({"logisticregression__C": 0.05}, reports.append)

    order = np.random.default_rng(4).permutation(120)
    val, train = order[:30], order[30:]
    expected, cost = [], 0
    for rows in (30, 60, 90):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05)).fit(X[train][:rows], y[train][:rows])
        cost += rows
        expected.append({"score": float((model.predict(X[val]) == y[val]).mean()), "cost": float(cost)})
    assert reports == expected


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_cross_val_objective_reports_running_means_of_cross_val_score(task):
    from sklearn.datasets import make_classification, make_regression
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.model_selection import cross_val_score

    if task == "classification":  # sorted labels: only stratified folds keep both classes in every fold
        X, y = make_classification(90, 5, random_state=1)
        order = np.argsort(y, kind="stable")
        X, y, estimator, config = X[order], y[order], LogisticRegression(), {"C": 0.3}
    else:
        X, y = make_regression(90, 5, noise=5.0, random_state=1)
        estimator, config = Ridge(), {"alpha": 2.0}
    reports = []
    CrossValObjective(estimator, X, y, scoring=None, cv=4)(config, reports.append)
    folds = cross_val_score(estimator.set_params(**config), X, y, cv=4)
    assert [r["score"] for r in reports] == pytest.approx([folds[: k + 1].mean() for k in range(4)], rel=1e-12)
    test_rows = [23, 23, 22, 22]  # 90 rows in 4 folds
    assert [r["cost"] for r in reports] == np.cumsum([90 - n for n in test_rows]).tolist()  # rows fitted so far
    with pytest.raises(InvalidInputError, match="cv"):
        CrossValObjective(estimator, X, y, cv=1)(config, reports.append)


def test_prior_samples_follow_the_prior():
    space = {
        "lr": Uniform(low=1e-4, high=1.0, log=True),
        "depth": IntUniform(low=1, high=9),
        "act": Choice(values=["relu", "tanh", "gelu"]),
        "free": Uniform(low=0.0, high=1.0),
    }
    priors = {"lr": Prior(center=1e-2, width=0.05), "depth": Prior(center=5, width=0.1), "act": Prior(center="tanh")}
    draws = sample_prior(space, priors, 4000, seed=0)
    log_lr = np.log([d["lr"] for d in draws])
    # Normal in log space, sd = width * log-range; clipping is negligible this far from the bounds.
    assert log_lr.mean() == pytest.approx(math.log(1e-2), abs=0.02)
    assert log_lr.std() == pytest.approx(0.05 * math.log(1e4), rel=0.05)
    assert all(isinstance(d["depth"], int) and 1 <= d["depth"] <= 9 for d in draws)
    assert np.mean([d["act"] == "tanh" for d in draws]) == pytest.approx(0.7, abs=0.03)
    free = np.array([d["free"] for d in draws])
    assert free.mean() == pytest.approx(0.5, abs=0.02) and free.var() == pytest.approx(1 / 12, rel=0.08)
    with pytest.raises(InvalidInputError, match="not in the space"):
        sample_prior(space, {"nope": Prior(center=1)}, 1)
    with pytest.raises(InvalidInputError, match="outside"):
        sample_prior(space, {"lr": Prior(center=5.0)}, 1)
    with pytest.raises(ValueError):
        parse_space({"x": {"kind": "uniform", "low": 2, "high": 1}})


def _bowl(config, report):
    """Score rises with steps; a trial's final score is -|x - 3|, its step-1 score is 1 lower."""
    for k in range(1, 5):
        report({"score": -abs(config["x"] - 3.0) - (4 - k) / 3, "cost": float(k)})


@pytest.mark.ray
def test_tune_search_with_asha_tpe_and_priors(ray_session, tmp_path, monkeypatch):
    import optuna

    from alloyml.automl import searchers

    built, build = [], searchers.build_searcher
    monkeypatch.setattr(searchers, "build_searcher", lambda *a, **k: built.append(build(*a, **k)) or built[-1])
    seen = []
    result = hyperparameter_search(
        _bowl,
        {"x": Uniform(low=0.0, high=10.0)},
        max_iterations=4,
        num_samples=8,
        priors={"x": Prior(center=3.0, width=0.02)},
        prior_fraction=0.25,
        seed=1,
        storage_path=tmp_path,
        on_trial=seen.append,
    )
    assert seen == result.trials and len(result.trials) == 8
    assert Path(result.storage_path).parent == tmp_path
    for t in result.trials:  # every recorded score is the objective's value at the step the trial reached
        steps = t.extra["iterations"]
        assert t.metrics["score"] == pytest.approx(-abs(t.config["x"] - 3.0) - (4 - steps) / 3)
        assert t.cost == steps and (t.status == "completed") == (steps == 4)
    assert any(t.status == "stopped_early" for t in result.trials)  # ASHA cut some trials short
    xs = sorted(t.config["x"] for t in result.trials)
    assert sum(abs(x - 3.0) < 0.2 * 4 for x in xs) >= 2  # the two prior draws (sd 0.2) landed near 3
    completed = [t for t in result.trials if t.status == "completed"]
    best = max(completed, key=lambda t: t.metrics["score"])
    assert result.best_config == best.config and result.best_score == best.metrics["score"]
    assert abs(result.best_config["x"] - 3.0) < 0.8
    # What the searcher was told: ASHA's stops as pruned, full trials with their final score.
    [search] = built
    study = {t.number: t for t in search._ot_study.trials}
    for t in result.trials:
        told = study[search._ot_trials[t.trial_id].number]
        if t.status == "completed":
            assert told.state == optuna.trial.TrialState.COMPLETE and told.value == pytest.approx(t.metrics["score"])
        else:
            assert told.state == optuna.trial.TrialState.PRUNED


def test_search_rejects_bad_arguments():
    with pytest.raises(InvalidInputError, match="searcher"):
        hyperparameter_search(_bowl, {"x": Uniform(low=0, high=1)}, max_iterations=1, searcher="grid")
    with pytest.raises(InvalidInputError, match="mode"):
        hyperparameter_search(_bowl, {"x": Uniform(low=0, high=1)}, max_iterations=1, mode="up")
    with pytest.raises(InvalidInputError, match="space"):
        hyperparameter_search(_bowl, {}, max_iterations=1)


def test_lm_training_objective_matches_a_direct_trainer_run():
    import torch

    from alloyml.models import LinearLM, ModelConfig, Trainer, batches, make_task

    base = {"d_model": 32, "n_layers": 1, "n_heads": 2, "mixer": "linear_attn", "ffn": "none"}
    objective = LMTrainingObjective(
        "mqar",
        task_kwargs={"n_pairs": 2, "n_keys": 8, "n_values": 8},
        base_model=base,
        steps=4,
        report_every=2,
        batch_size=4,
        eval_batches=2,
        seed=3,
    )
    reports = []
    objective({"lr": 1e-2, "d_model": 16, "warmup_steps": 0}, reports.append)
    assert [r["cost"] for r in reports] == [2 * 4 * 8, 4 * 4 * 8]  # steps x batch x sequence length

    task = make_task("mqar", n_pairs=2, n_keys=8, n_values=8)
    torch.manual_seed(3)
    model = LinearLM(ModelConfig(**{**base, "d_model": 16, "vocab_size": task.vocab_size}))
    Trainer(steps=4, lr=1e-2, warmup_steps=0).fit(model, batches(task, 4, seed=3))
    model.eval()
    with torch.no_grad():
        held = batches(task, 4, seed=4)
        expected = float(np.mean([model(held(i)[0], targets=held(i)[1]).loss.item() for i in range(2)]))
    assert reports[-1]["loss"] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(InvalidInputError, match="learning_rate"):
        objective({"learning_rate": 1.0}, reports.append)


@pytest.mark.slow
@pytest.mark.ray
def test_tune_search_over_alloyml_lm_training(ray_session, tmp_path):
    objective = LMTrainingObjective(
        "mqar",
        task_kwargs={"n_pairs": 2, "n_keys": 8, "n_values": 8},
        base_model={"n_layers": 1, "n_heads": 2, "mixer": "linear_attn", "ffn": "none"},
        steps=6,
        report_every=2,
        batch_size=8,
    )
    result = hyperparameter_search(
        objective,
        {"lr": Uniform(low=1e-4, high=3e-2, log=True), "d_model": Choice(values=[16, 32])},
        metric="loss",
        mode="min",
        max_iterations=3,
        num_samples=4,
        storage_path=tmp_path,
    )
    assert len(result.trials) == 4
    completed = [t for t in result.trials if t.status == "completed"]
    assert result.best_score == min(t.metrics["loss"] for t in completed)
    assert all(t.cost == 8 * 8 * 2 * t.extra["iterations"] for t in result.trials)


def _drive(search, space: dict, steps_per_trial: list[int], max_iterations: int, score):
    """Tune's calls to a searcher, without Tune: suggest, one result per step, then completion with the last
    result (what Tune passes when a trial ends or ASHA stops it). Returns the suggested configs."""
    from ray.tune.search.optuna import OptunaSearch  # noqa: F401  (the search needs Ray's Tune importable)

    from alloyml.automl.space import to_tune

    assert search.set_search_properties("score", "max", {k: to_tune(p) for k, p in parse_space(space).items()})
    configs = []
    for i, steps in enumerate(steps_per_trial):
        config = search.suggest(f"t{i}")
        configs.append(config)
        result = None
        for step in range(1, steps + 1):
            result = {"score": score(config, step), "training_iteration": step}
            search.on_trial_result(f"t{i}", result)
        search.on_trial_complete(f"t{i}", result=result)
    return configs


def test_tpe_startup_trials_fit_the_example_budget(monkeypatch):
    """examples/tune_hpo.yaml's 8 trials: TPE must model the results for some of them (Optuna's default
    of 10 random startup trials would leave none)."""
    from optuna.samplers import TPESampler

    from alloyml.automl.config import HPOConfig, load_tune_config
    from alloyml.automl.hpo import describe_search, tpe_startup_trials, warm_start_count
    from alloyml.automl.searchers import build_searcher

    config = load_tune_config(Path(__file__).resolve().parents[2] / "examples" / "tune_hpo.yaml", HPOConfig)
    kwargs = config.search_kwargs()
    assert kwargs["searcher"] == "optuna"
    n = kwargs["num_samples"]
    n_warm = warm_start_count(n, kwargs["prior_fraction"], bool(kwargs["priors"]))
    points = sample_prior(config.space, config.priors, n_warm, seed=config.seed)
    search = build_searcher("optuna", num_samples=n, max_iterations=kwargs["max_iterations"], points=points,
                            seed=config.seed)
    assert search._sampler._n_startup_trials == max(2, min(10, n // 3)) == tpe_startup_trials(n) < n

    modelled = []  # TPE's own model runs only once the startup trials are done
    original = TPESampler._sample
    monkeypatch.setattr(TPESampler, "_sample", lambda self, *a, **k: modelled.append(1) or original(self, *a, **k))
    configs = _drive(search, config.space, [kwargs["max_iterations"]] * n, kwargs["max_iterations"],
                     lambda c, step: -abs(math.log(c["logisticregression__C"])))
    assert configs[:n_warm] == points  # the warm-start points come first, unchanged
    startup = max(search._sampler._n_startup_trials, n_warm)
    assert len(modelled) == n - startup > 0
    assert describe_search("optuna", n, n_warm) == (
        f"{n} trials: {n_warm} warm-start from the priors, {startup - n_warm} random startup, "
        f"{n - startup} guided by TPE")


def test_early_stopped_trials_are_pruned_for_optuna_not_final():
    """A score that falls with training: a trial stopped after step 1 has a partial score higher than any
    full trial's, which the searcher must not take for a result."""
    import optuna

    from alloyml.automl.searchers import build_searcher

    search = build_searcher("optuna", num_samples=6, max_iterations=4, points=[], seed=0)
    space = {"x": Uniform(low=0.0, high=1.0)}

    def score(config, step):
        return config["x"] - step  # step 1 beats step 4 by 3 for every x in [0, 1]

    configs = _drive(search, space, [4, 1, 4, 1, 2, 4], 4, score)
    trials = search._ot_study.trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE if s == 4 else optuna.trial.TrialState.PRUNED
                                         for s in [4, 1, 4, 1, 2, 4]]
    full = [i for i, s in enumerate([4, 1, 4, 1, 2, 4]) if s == 4]
    assert [trials[i].value for i in full] == pytest.approx([configs[i]["x"] - 4 for i in full])
    assert search._ot_study.best_value == pytest.approx(max(configs[i]["x"] - 4 for i in full))


def _fails(config, report):
    raise ValueError(f"objective broke at x={config['x']:.3f}")


@pytest.mark.ray
def test_when_every_trial_fails_the_error_carries_their_exceptions(ray_session, tmp_path):
    from alloyml.errors import AlloyError

    with pytest.raises(AlloyError) as caught:
        hyperparameter_search(_fails, {"x": Uniform(low=0.0, high=1.0)}, max_iterations=1, num_samples=2,
                              searcher="random", seed=0, storage_path=tmp_path)
    message = str(caught.value)
    assert "2 of 2 trials failed" in message and "ValueError: objective broke at x=" in message


def _quick(config, report):
    for k in range(1, 3):
        report({"score": -abs(config["x"] - 0.3) - abs(config["y"] - 2) / 10 - (2 - k), "cost": float(k)})


@pytest.mark.ray
def test_same_seed_same_trials_and_warm_start_points_are_the_prior_draws(ray_session, tmp_path):
    space = {"x": Uniform(low=0.0, high=1.0), "y": IntUniform(low=0, high=5)}
    priors = {"x": Prior(center=0.3, width=0.05)}

    def search(seed):
        result = hyperparameter_search(_quick, space, max_iterations=2, num_samples=7, priors=priors,
                                       prior_fraction=0.3, max_concurrent=1, seed=seed, storage_path=tmp_path)
        return [t.config for t in result.trials]

    first, again, other = search(5), search(5), search(6)
    assert first == again and first != other
    assert first[:2] == sample_prior(space, priors, round(7 * 0.3), seed=5)  # evaluated first, in order


def test_resumed_trials_are_told_to_the_study_before_it_suggests():
    import optuna

    from alloyml.automl.searchers import build_searcher

    evaluated = [({"x": 0.2}, -0.5, "completed"), ({"x": 0.9}, -2.0, "stopped_early"), ({"x": 0.4}, None, "error")]
    search = build_searcher("optuna", num_samples=6, max_iterations=4, points=[], seed=0, evaluated=evaluated)
    configs = _drive(search, {"x": Uniform(low=0.0, high=1.0)}, [4], 4, lambda c, step: -c["x"])
    told = search._ot_study.trials
    states = optuna.trial.TrialState
    assert [(t.params, t.state) for t in told[:3]] == [
        ({"x": 0.2}, states.COMPLETE), ({"x": 0.9}, states.PRUNED), ({"x": 0.4}, states.FAIL)]
    assert told[0].value == -0.5 and told[1].intermediate_values == {1: -2.0}
    assert told[3].params == configs[0] and told[3].value == pytest.approx(-configs[0]["x"])
