"""Owen and antithetic samplers and the least core against exact values on small games."""

import itertools

import numpy as np
import pytest

from alloyml.errors import ConfigError, InvalidInputError
from alloyml.valuation import (
    AdditiveGame,
    AirportGame,
    AntitheticPermutationSampler,
    Banzhaf,
    Beta,
    MaxSamples,
    OwenSampler,
    PermutationSampler,
    Shapley,
    VotingGame,
    exact_semivalues,
    least_core,
    sampled_semivalues,
)

AIRPORT = AirportGame(np.random.default_rng(3).uniform(0, 1, 8))


def _within_stderr(result, exact, z=4.0):
    assert np.all(result.stderr > 0)
    assert np.all(np.abs(result.values - exact) <= z * result.stderr), (result.values - exact) / result.stderr


@pytest.mark.parametrize("semivalue", [Shapley(), Banzhaf(), Beta(4, 2), Beta(16, 1)])
def test_owen_sampler_within_stderr_of_enumeration(semivalue):
    exact = exact_semivalues(AIRPORT, semivalue).values
    result = sampled_semivalues(AIRPORT, semivalue, OwenSampler(n_q=6), MaxSamples(300), seed=1)
    _within_stderr(result, exact)
    assert result.utility_evaluations == 300 * 6 * 9


def test_owen_on_the_voting_game_is_close_to_the_closed_form():
    game = VotingGame(8)
    result = sampled_semivalues(game, Shapley(), OwenSampler(n_q=10), MaxSamples(400), seed=0)
    np.testing.assert_allclose(result.values, game.shapley_values(), atol=0.02)


def test_antithetic_permutations_within_stderr_and_tighter_than_plain():
    exact = exact_semivalues(AIRPORT, Shapley()).values
    anti = sampled_semivalues(AIRPORT, Shapley(), AntitheticPermutationSampler(), MaxSamples(200), seed=2)
    _within_stderr(anti, exact)
    plain = sampled_semivalues(AIRPORT, Shapley(), PermutationSampler(), MaxSamples(400), seed=2)  # same evals
    assert anti.utility_evaluations == plain.utility_evaluations
    assert np.mean(anti.stderr) < np.mean(plain.stderr)


def _least_core_by_enumeration(game, values):
    """max over proper coalitions of U(S) - x(S): the subsidy `values` needs."""
    n = game.n
    worst = -np.inf
    for size in range(1, n):
        for subset in itertools.combinations(range(n), size):
            worst = max(worst, game(list(subset)) - values[list(subset)].sum())
    return worst


def test_least_core_of_a_voting_game_has_the_closed_form_subsidy():
    game = VotingGame(6)
    result = least_core(game)
    # by symmetry the uniform split is optimal: e = 1 - (n/2 + 1)/n = 1/2 - 1/n
    assert result.params["subsidy"] == pytest.approx(0.5 - 1 / 6, abs=1e-9)
    assert result.values.sum() == pytest.approx(1.0)
    assert _least_core_by_enumeration(game, result.values) <= result.params["subsidy"] + 1e-9


def test_least_core_of_an_additive_game_is_its_weights():
    game = AdditiveGame([0.5, -1.0, 2.0, 0.25])
    result = least_core(game)
    np.testing.assert_allclose(result.values, game.weights, atol=1e-9)
    assert result.params["subsidy"] == pytest.approx(0.0, abs=1e-9)


def test_sampled_least_core_satisfies_its_sampled_constraints_and_refuses_large_exact():
    result = least_core(AIRPORT, n_subsets=60, seed=0)
    assert result.values.sum() == pytest.approx(AIRPORT([*range(8)]))
    exact = least_core(AIRPORT)
    assert result.params["subsidy"] <= exact.params["subsidy"] + 1e-9  # fewer constraints: no larger
    with pytest.raises(InvalidInputError, match="n <= 16"):
        least_core(VotingGame(18))


def test_owen_refuses_a_semivalue_without_a_q_form():
    from alloyml.valuation.semivalues import Semivalue

    class Odd(Semivalue):
        name = "odd"

        def log_weight(self, n, k):
            return np.zeros(np.shape(k))

    with pytest.raises(ConfigError, match="OwenSampler"):
        sampled_semivalues(AIRPORT, Odd(), OwenSampler(), MaxSamples(1))


def test_progress_reports_every_batch_and_the_bar_leaves_values_unchanged():
    import torch
    import torch.nn.functional as F

    from alloyml.valuation import knn_shapley, msr_banzhaf
    from alloyml.valuation.influence import TrainingCheckpoint, tracin

    seen = []
    plain = msr_banzhaf(AIRPORT, MaxSamples(40), seed=0, batch_size=8)
    hooked = msr_banzhaf(AIRPORT, MaxSamples(40), seed=0, batch_size=8, progress=lambda s: seen.append(s.samples))
    barred = msr_banzhaf(AIRPORT, MaxSamples(40), seed=0, batch_size=8, progress=True)
    assert seen == [8, 16, 24, 32, 40]
    np.testing.assert_array_equal(hooked.values, plain.values)
    np.testing.assert_array_equal(barred.values, plain.values)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 2)), rng.integers(0, 2, 30)
    np.testing.assert_array_equal(knn_shapley(x, y, x[:5], y[:5], progress=True, block_size=2).values,
                                  knn_shapley(x, y, x[:5], y[:5]).values)
    model = torch.nn.Linear(2, 2).double()
    data = (torch.as_tensor(x), torch.as_tensor(y))
    checkpoints = [TrainingCheckpoint(model.state_dict(), 0.1)]
    np.testing.assert_array_equal(tracin(model, checkpoints, data, data, F.cross_entropy, progress=True,
                                         chunk_size=7).scores,
                                  tracin(model, checkpoints, data, data, F.cross_entropy, chunk_size=7).scores)


# ---------------------------------------------------------------- stratified sampler (pyDVL's StratifiedSampler)
@pytest.mark.parametrize("sizes", ["uniform", "harmonic", -2.0])
@pytest.mark.parametrize("semivalue", [Shapley(), Banzhaf(), Beta(16, 1)])
def test_stratified_sampler_within_stderr_of_enumeration(semivalue, sizes):
    from alloyml.valuation import StratifiedSampler

    exact = exact_semivalues(AIRPORT, semivalue).values
    result = sampled_semivalues(AIRPORT, semivalue, StratifiedSampler(sizes), MaxSamples(150), seed=4)
    _within_stderr(result, exact)
    assert result.utility_evaluations == 150 * 2 * AIRPORT.n


def test_stratified_sampler_size_distribution_and_importance_weights():
    """The proposal over |S| follows pyDVL's strategies (1, 1/(1+k), (1+k)^a, normalised) and a marginal at
    size k is weighted by P_semivalue(k) / p(k): a game whose marginal is 1 at one size only pins both."""
    from alloyml.valuation import StratifiedSampler

    n = 6
    k = np.arange(n)
    for sizes, expected in [("uniform", np.ones(n)), ("harmonic", 1 / (1 + k)), (1.5, (1 + k) ** 1.5)]:
        np.testing.assert_allclose(StratifiedSampler(sizes).proposal(n), expected / expected.sum())

    class OneSize:  # U(S) = 1 iff |S| > 2: the marginal is 1 exactly when the other points number 2
        def __init__(self):
            self.n, self.fits = n, 0

        def __call__(self, subset):
            return float(len(subset) > 2)

    exact = exact_semivalues(OneSize(), Shapley()).values  # = 1/n each
    # p(2) = 27/441 under (1+k)^3: unweighted marginals would average 0.06, 8 of their stderrs below 1/6
    result = sampled_semivalues(OneSize(), Shapley(), StratifiedSampler(3.0), MaxSamples(1000), seed=0)
    _within_stderr(result, exact)
    np.testing.assert_allclose(result.values.mean(), 1 / n, atol=0.02)
    with pytest.raises(ConfigError, match="sizes"):
        sampled_semivalues(AIRPORT, Shapley(), StratifiedSampler("zipf"), MaxSamples(2))


def test_least_core_returns_the_egalitarian_payoff_among_the_optimal_ones():
    """U({0, 1}) = U(N) = 1, every other coalition 0: the optimal subsidy is 0 and every x = (a, 1 - a, 0)
    with 0 <= a <= 1 attains it (an LP returns a vertex, a in {0, 1}); the least-norm one — pyDVL's second
    stage — is (1/2, 1/2, 0)."""

    class Pair:
        n, fits = 3, 0

        def __call__(self, subset):
            return float({0, 1} <= set(np.asarray(subset).tolist()))

    result = least_core(Pair())
    assert result.params["subsidy"] == pytest.approx(0.0, abs=1e-9)
    assert result.params["egalitarian"] is True
    np.testing.assert_allclose(result.values, [0.5, 0.5, 0.0], atol=1e-6)
    assert _least_core_by_enumeration(Pair(), result.values) <= 1e-6


def test_sampled_least_core_matches_an_independent_two_stage_solve_on_the_same_coalitions():
    """A non-additive game, 150 sampled coalitions: the subsidy and the least-norm payoff equal those of a
    separate conic solve (cvxpy, pyDVL's formulation: min e, then min ||x|| at that e) of the same programme,
    rebuilt here from the game's values on the coalitions alloyml drew."""
    cp = pytest.importorskip("cvxpy")
    from alloyml.valuation.runner import run_entropy, sample_rng

    class Saturating:
        n, fits = 10, 0
        weights = np.random.default_rng(4).normal(size=10)

        def __call__(self, subset):
            subset = np.asarray(subset, dtype=np.int64)
            return 0.0 if subset.size == 0 else float(np.tanh(self.weights[subset].sum() / 2) + 0.05 * subset.size)

    game = Saturating()
    result = least_core(game, n_subsets=150, seed=7)
    members = sample_rng(run_entropy(7), 0).random((150, game.n)) < 0.5  # the coalitions least_core draws
    scores = np.array([game(np.flatnonzero(m)) for m in members])
    total = game(np.arange(game.n))
    x, e = cp.Variable(game.n), cp.Variable()
    cp.Problem(cp.Minimize(e), [cp.sum(x) == total, members @ x + e >= scores]).solve(solver=cp.CLARABEL)
    assert result.params["subsidy"] == pytest.approx(float(e.value), abs=1e-6)
    y = cp.Variable(game.n)
    cp.Problem(cp.Minimize(cp.sum_squares(y)), [cp.sum(y) == total, members @ y + float(e.value) + 1e-8 >= scores]
               ).solve(solver=cp.CLARABEL)
    assert result.params["egalitarian"] is True
    np.testing.assert_allclose(result.values, y.value, atol=1e-4)
