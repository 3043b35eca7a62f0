"""Class-wise Shapley (Schoch, Xu & Ji 2022, "CS-Shapley"; pyDVL's ClasswiseShapleyValuation).

A point of class c is judged by how it helps its own class without hurting the others. For a training
subset, with a_in the fraction of test rows of class c predicted correctly and a_out the fraction of the
other test rows predicted correctly (both over all test rows), the utility is

    U_c(S | T) = a_in(S ∪ T) * exp(a_out(S ∪ T)),    S ⊆ D_c (the in-class rows), T ⊆ D_{-c}.

The value of point i of class c is its Shapley value in the game S -> U_c(S | T) over the in-class rows,
averaged over every out-of-class context T with equal weight (T uniform over the subsets of D_{-c}):

    phi_i = 2^-|D_-c| * sum_T  sum_{S ⊆ D_c \\ {i}}  (U_c(S+i | T) - U_c(S | T)) / (|D_c| * C(|D_c|-1, |S|)).

`exact_classwise_shapley` enumerates this (n <= 16); `classwise_shapley` samples it as the paper does: per
sample and class, a uniform random T and a random permutation of D_c walked from the empty set.
Values are not normalised (pyDVL optionally rescales them per class by the in-class accuracy).
"""

from __future__ import annotations

from math import comb

import numpy as np

from alloyml.errors import InvalidInputError
from alloyml.valuation.progress import counted_progress
from alloyml.valuation.result import ValuationResult
from alloyml.valuation.runner import run_entropy, sample_rng
from alloyml.valuation.utility import Utility, _digest, report_failures

MAX_EXACT_CLASSWISE_POINTS = 16


class ClasswiseUtility:
    """U_c(subset) = in-class accuracy * exp(out-of-class accuracy) of the model fitted on subset, with the
    fitting, seeding, one-class and failure policy of the wrapped `Utility`.

    The correct/incorrect vector on the test rows is cached per subset, so one fit serves every class."""

    def __init__(self, utility: Utility):
        if not isinstance(utility, Utility) or not utility.is_classifier:
            raise InvalidInputError("classwise Shapley needs a Utility over a scikit-learn classifier, "
                                    f"got {type(utility).__name__}")
        self.utility = utility
        self.n = utility.n
        self.labels = utility.y_train
        self._correct: dict[bytes, np.ndarray] = {}
        self._seed = utility.fit_seed  # cached predictions belong to one fit seed (see Utility.reseed)

    @property
    def fits(self) -> int:
        return self.utility.fits

    @property
    def fit_failures(self) -> int:
        return self.utility.fit_failures

    def correct(self, subset) -> np.ndarray:
        """[n_test] bool: which test rows the model fitted on `subset` predicts correctly."""
        if self.utility.fit_seed != self._seed:
            self._correct, self._seed = {}, self.utility.fit_seed
        subset = np.sort(np.asarray(subset, dtype=np.int64))
        key = _digest(subset)
        hit = self._correct.get(key)
        if hit is not None:
            return hit
        u = self.utility
        wrong = np.zeros(len(u.y_test), dtype=bool)
        if len(subset) == 0:
            hit = wrong  # no model: nothing is predicted correctly
        else:
            u.fits += 1
            try:
                model = u.fit_subset(subset, random_state=u.subset_seed(key))
                hit = np.asarray(model.predict(u.x_test)) == u.y_test
            except Exception as err:  # same tolerance as Utility: a failed fit predicts nothing correctly
                u.record_failure(err, full=len(subset) == self.n)
                hit = wrong
        if len(self._correct) < u.cache_bytes // (160 + len(u.y_test)):
            self._correct[key] = hit
        return hit

    def __call__(self, subset, label) -> float:
        hit = self.correct(subset)
        in_class = self.utility.y_test == label
        total = len(hit)
        return float(np.sum(hit & in_class) / total * np.exp(np.sum(hit & ~in_class) / total))


def _classwise(utility) -> ClasswiseUtility:
    return utility if isinstance(utility, ClasswiseUtility) else ClasswiseUtility(utility)


def exact_classwise_shapley(utility) -> ValuationResult:
    """Class-wise Shapley values by enumerating every (S, T) pair: the oracle for the sampler (n <= 16)."""
    game = _classwise(utility)
    n = game.n
    if n > MAX_EXACT_CLASSWISE_POINTS:
        raise InvalidInputError(f"exact class-wise Shapley needs n <= {MAX_EXACT_CLASSWISE_POINTS}, got {n}")
    fits_before, failures_before = game.fits, game.fit_failures
    game.correct(np.arange(n))  # a model that cannot fit every row raises FitFailureError here
    values = np.zeros(n)
    masks = np.arange(2**n)
    bits = ((masks[:, None] >> np.arange(n)) & 1).astype(bool)
    for label in np.unique(game.labels):
        members = game.labels == label
        m, rest = int(members.sum()), int((~members).sum())
        scores = np.array([game(np.flatnonzero(row), label) for row in bits])
        in_size = bits[:, members].sum(1)
        weight = np.array([1.0 / (m * comb(m - 1, s)) if s < m else 0.0 for s in range(m + 1)])[in_size]
        for i in np.flatnonzero(members):
            without = masks[~bits[:, i]]
            values[i] = np.sum(weight[without] * (scores[without | (1 << i)] - scores[without])) / 2.0**rest
    failures = game.fit_failures - failures_before
    report_failures(game.utility, failures, game.fits - fits_before, "exact_classwise_shapley")
    return ValuationResult(values, np.zeros(n), np.ones(n, dtype=np.int64), "exact_classwise_shapley", {},
                           utility_evaluations=game.fits - fits_before, fit_failures=failures)


def classwise_shapley(utility, n_samples: int, *, seed: int | None = None, progress=False) -> ValuationResult:
    """Monte Carlo class-wise Shapley: `n_samples` draws per class of (uniform out-of-class subset T,
    random in-class permutation); each draw gives one marginal contribution for every in-class point.

    Each draw uses its own generator derived from (seed, draw), so values depend only on the seed.
    progress: True shows a rich bar over the draws."""
    game = _classwise(utility)
    if not isinstance(n_samples, int) or n_samples < 2:
        raise InvalidInputError(f"n_samples must be an int >= 2 (for a standard error), got {n_samples!r}")
    n = game.n
    entropy = run_entropy(seed)
    game.utility.reseed(entropy)
    fits_before, failures_before = game.fits, game.fit_failures
    game.correct(np.arange(n))  # a model that cannot fit every row raises FitFailureError here
    total, squares = np.zeros(n), np.zeros(n)
    labels = np.unique(game.labels)
    with counted_progress(progress, "classwise_shapley", n_samples) as advance:
        for draw in range(n_samples):
            rng = sample_rng(entropy, draw)
            for label in labels:
                inside = np.flatnonzero(game.labels == label)
                outside = np.flatnonzero(game.labels != label)
                context = outside[rng.random(len(outside)) < 0.5]
                order = rng.permutation(inside)
                previous = game(context, label)
                for step in range(len(order)):
                    score = game(np.concatenate([context, order[: step + 1]]), label)
                    total[order[step]] += score - previous
                    squares[order[step]] += (score - previous) ** 2
                    previous = score
            advance(1)
    values = total / n_samples
    stderr = np.sqrt(np.maximum(squares / n_samples - values**2, 0.0) / (n_samples - 1))
    failures = game.fit_failures - failures_before
    report_failures(game.utility, failures, game.fits - fits_before, "classwise_shapley")
    return ValuationResult(values, stderr, np.full(n, n_samples), "classwise_shapley",
                           {"n_samples": n_samples, "seed": seed},
                           utility_evaluations=game.fits - fits_before, fit_failures=failures)
