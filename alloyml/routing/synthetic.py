"""Synthetic logged responses for tests and benchmarks.

Models differ in price and skill (the expensive ones are better on average); each model also has its
own strengths per topic word. Query difficulty is drawn from the words of the query, so it is partly
predictable from the query text (what a learned router uses); answers carry a confidence word that is
more often "sure" when the answer is right (what a cascade scorer uses). Whether two models answer a
query correctly is correlated through the shared difficulty.
"""

from __future__ import annotations

import numpy as np

from alloyml.errors import InvalidInputError
from alloyml.routing.responses import LoggedResponses


def make_logged_responses(
    n_queries: int = 1000,
    n_models: int = 4,
    *,
    vocabulary: int = 200,
    words_per_query: tuple[int, int] = (4, 12),
    seed: int = 0,
) -> LoggedResponses:
    """Responses of `n_models` models (named m0.. from cheapest to dearest) to `n_queries` queries."""
    if n_queries < 1 or n_models < 1:
        raise InvalidInputError(f"need n_queries >= 1 and n_models >= 1, got {n_queries}, {n_models}")
    lo, hi = words_per_query
    if not 1 <= lo <= hi:
        raise InvalidInputError(f"words_per_query must be (lo, hi) with 1 <= lo <= hi, got {words_per_query}")
    rng = np.random.default_rng(seed)
    word_difficulty = rng.normal(0.0, 1.0, vocabulary)
    affinity = rng.normal(0.0, 0.6, (n_models, vocabulary))  # per-model topic strengths
    price = np.geomspace(1.0, 30.0, n_models) if n_models > 1 else np.ones(1)
    skill = np.linspace(-0.6, 1.2, n_models) if n_models > 1 else np.zeros(1)

    lengths = rng.integers(lo, hi + 1, n_queries)
    words = [rng.integers(0, vocabulary, k) for k in lengths]
    queries = np.array([" ".join(f"w{w}" for w in ws) for ws in words], dtype=object)
    difficulty = np.array([word_difficulty[ws].mean() for ws in words]) * 1.5 + rng.normal(0, 0.5, n_queries)
    topic_skill = np.stack([affinity[:, ws].mean(axis=1) for ws in words])  # [Q, M]
    logit = 2.0 * (skill[None, :] + topic_skill - difficulty[:, None]) + rng.normal(0, 0.7, (n_queries, n_models))
    correct = rng.random((n_queries, n_models)) < 1.0 / (1.0 + np.exp(-logit))

    gold = rng.integers(0, 50, n_queries)
    wrong = (gold[:, None] + rng.integers(1, 50, (n_queries, n_models))) % 50
    sure = rng.random((n_queries, n_models)) < np.where(correct, 0.75, 0.3)
    value = np.where(correct, gold[:, None], wrong)
    words = np.where(sure, "sure", "maybe").astype(object)
    answers = words + " a" + value.astype(str).astype(object)
    cost = price[None, :] * (1.0 + lengths[:, None] / 10.0)
    return LoggedResponses(
        query_ids=np.array([f"q{i}" for i in range(n_queries)], dtype=object),
        queries=queries,
        models=tuple(f"m{i}" for i in range(n_models)),
        answers=answers,
        correct=correct,
        cost=cost,
    )
