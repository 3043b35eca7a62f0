"""16.9: the routing estimators are scikit-learn estimators: clone, get_params, set_params, repr, the
fitted check, and the scikit-learn estimator checks that apply to estimators fitted on logged responses."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.naive_bayes import BernoulliNB
from sklearn.utils.estimator_checks import (
    check_estimator_repr,
    check_get_params_invariance,
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
    check_set_params,
)

from alloyml.errors import InvalidInputError
from alloyml.routing.cascade import FrugalCascade
from alloyml.routing.estimator import NotFittedError
from alloyml.routing.router import LearnedRouter
from alloyml.routing.scorer import CallableScorer, FoldScorer, HashedLinearScorer, TextScorer
from alloyml.routing.synthetic import make_logged_responses

ESTIMATORS = [
    FrugalCascade(budget=5.0, n_thresholds=8, folds=3, scorer=TextScorer(BernoulliNB())),
    LearnedRouter(budget=5.0, folds=3),
    LearnedRouter(strong_share=0.2),
    TextScorer(BernoulliNB(alpha=0.5), n_features=64),
    CallableScorer(np.ones_like),
    FoldScorer([TextScorer(), TextScorer()], seed=3),
]


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("check", [check_get_params_invariance, check_set_params, check_no_attributes_set_in_init,
                                   check_parameters_default_constructible, check_estimator_repr])
def test_sklearn_checks(estimator, check):
    check(type(estimator).__name__, estimator)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_clone_keeps_every_parameter(estimator):
    copy = clone(estimator)
    assert type(copy) is type(estimator) and copy is not estimator
    for key, value in estimator.get_params(deep=False).items():
        other = copy.get_params(deep=False)[key]
        assert repr(other) == repr(value)  # estimators among the params are cloned, so compare by repr
    assert type(estimator).__name__ in repr(estimator)


def test_restored_scorer_params_rebuild_it():
    scorer = HashedLinearScorer(8, [1, 5], [0.5, -2.0], 0.25)
    copy = clone(scorer)
    assert copy.get_params() == {"n_features": 8, "index": [1, 5], "weight": [0.5, -2.0], "intercept": 0.25}
    np.testing.assert_array_equal(copy.coef_, scorer.coef_)


@pytest.fixture(scope="module")
def logs():
    return make_logged_responses(300, 3, seed=0)


def test_unfitted_estimators_raise_not_fitted(logs):
    for call in (lambda: FrugalCascade(budget=5.0).predict(logs), lambda: FrugalCascade(budget=5.0).evaluate(logs),
                 lambda: LearnedRouter(budget=5.0).predict(["q"]), lambda: LearnedRouter(budget=5.0).evaluate(logs),
                 lambda: TextScorer().predict_proba(["q"], ["a"], ["m"])):
        with pytest.raises(NotFittedError, match="not fitted"):
            call()
    assert issubclass(NotFittedError, InvalidInputError)


def test_fit_does_not_change_parameters_and_clone_refits_alike(logs):
    cascade = FrugalCascade(budget=8.0, n_thresholds=8, folds=3)
    before = cascade.get_params()
    cascade.fit(logs)
    assert cascade.get_params() == before
    again = clone(cascade).fit(logs)
    assert again.plan_ == cascade.plan_


def test_cascade_predict_is_the_model_each_query_stops_at(logs):
    cascade = FrugalCascade(budget=8.0, n_thresholds=8, folds=3).fit(logs)
    chosen = cascade.predict(logs)
    result = cascade.evaluate(logs)
    chain = [logs.model_index(m) for m in cascade.plan_.point.models]
    np.testing.assert_array_equal(chosen, np.asarray(chain)[result.stage])
    np.testing.assert_array_equal(logs.correct[np.arange(logs.n_queries), chosen], result.correct)
