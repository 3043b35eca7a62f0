"""Loading and validating logged responses."""

import numpy as np
import pandas as pd
import pytest

from alloyml.errors import InvalidInputError
from alloyml.routing.responses import load_responses
from alloyml.routing.synthetic import make_logged_responses


def _frame():
    return pd.DataFrame({
        "query_id": ["a", "a", "b", "b"],
        "query": ["2+2?", "2+2?", "capital of France?", "capital of France?"],
        "model": ["small", "big", "small", "big"],
        "answer": ["5", "4", "Paris", "Paris"],
        "correct": ["false", "true", 1, "yes"],
        "cost": [1, 10, 1.5, "12.5"],
    })


def test_dense_matrices_match_long_table():
    r = load_responses(_frame())
    assert r.models == ("small", "big")
    assert list(r.query_ids) == ["a", "b"]
    assert r.correct.tolist() == [[False, True], [True, True]]
    assert r.cost.tolist() == [[1.0, 10.0], [1.5, 12.5]]
    assert r.answers[0, 0] == "5" and r.queries[1] == "capital of France?"


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_file_round_trip(tmp_path, suffix):
    original = make_logged_responses(30, 3, seed=4)
    back = load_responses(original.save(tmp_path / f"logs{suffix}"))
    assert back.models == original.models
    np.testing.assert_array_equal(back.correct, original.correct)
    np.testing.assert_allclose(back.cost, original.cost)
    assert back.answers.tolist() == original.answers.tolist()
    assert back.queries.tolist() == original.queries.tolist()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda f: f.drop(columns="cost"), "lacks columns \\['cost'\\]"),
        (lambda f: f.assign(cost=[1, "cheap", 2, 3]), "'cost' must be numeric.*'cheap'"),
        (lambda f: f.assign(cost=[1, -1, 2, 3]), "'cost' must be >= 0"),
        (lambda f: f.assign(correct=[1, "maybe", 0, 1]), "'correct' must be boolean.*'maybe'"),
        (lambda f: f.drop(index=3), "query_id 'b' lacks \\['big'\\]"),
        (lambda f: pd.concat([f, f.iloc[[0]]]), "duplicate \\(query_id, model\\).*query_id='a' model='small'"),
        (lambda f: f.assign(query=["x", "y", "z", "z"]), "query_id 'a' has different query texts"),
        (lambda f: f.iloc[:0], "has no rows"),
    ],
)
def test_invalid_tables_name_the_problem(edit, message):
    with pytest.raises(InvalidInputError, match=message):
        load_responses(edit(_frame()))


def test_missing_file_and_bad_suffix(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_responses(tmp_path / "nope.csv")
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(InvalidInputError, match=".csv or .parquet"):
        load_responses(tmp_path / "x.txt")


def test_synthetic_models_trade_cost_for_accuracy():
    r = make_logged_responses(3000, 5, seed=1)
    accuracy, cost = r.correct.mean(axis=0), r.cost.mean(axis=0)
    assert np.all(np.diff(cost) > 0) and np.all(np.diff(accuracy) > 0)
    # Shared difficulty: the cheapest and dearest models are right together more often than chance.
    both = (r.correct[:, 0] & r.correct[:, -1]).mean()
    assert both > accuracy[0] * accuracy[-1] + 0.02


def test_wide_format_equals_long_format():
    original = make_logged_responses(20, 3, seed=6)
    long = original.to_frame()
    wide = long.pivot(index=["query_id", "query"], columns="model", values=["correct", "cost", "answer"])
    wide.columns = [f"{model}|{field}" for field, model in wide.columns]
    wide = wide.reset_index()
    back = load_responses(wide)
    assert set(back.models) == set(original.models)
    order = [back.model_index(m) for m in original.models]
    rows = [list(back.query_ids).index(q) for q in original.query_ids]
    np.testing.assert_array_equal(back.correct[np.ix_(rows, order)], original.correct)
    np.testing.assert_allclose(back.cost[np.ix_(rows, order)], original.cost)
    assert back.answers[np.ix_(rows, order)].tolist() == original.answers.tolist()


def test_sparse_logs_refused_by_default_or_dropped():
    frame = pd.concat([_frame(), pd.DataFrame({"query_id": ["c"], "query": ["3+3?"], "model": ["small"],
                                               "answer": ["6"], "correct": [True], "cost": [1.0]})])
    with pytest.raises(InvalidInputError, match="query_id 'c' lacks \\['big'\\].*missing='drop'"):
        load_responses(frame)
    kept = load_responses(frame, missing="drop")
    assert list(kept.query_ids) == ["a", "b"] and kept.correct.tolist() == [[False, True], [True, True]]
    # the same sparse log in wide format: an empty cell is a response that was not given
    wide = pd.DataFrame({"query_id": ["a", "c"], "query": ["2+2?", "3+3?"], "small|correct": [0, 1],
                         "small|cost": [1, 1], "big|correct": [1, None], "big|cost": [10, None]})
    assert list(load_responses(wide, missing="drop").query_ids) == ["a"]
    with pytest.raises(InvalidInputError, match="no query has answers from all"):
        load_responses(frame[(frame["query_id"] == "c") | (frame["model"] == "big")].iloc[[0, 2]], missing="drop")
    with pytest.raises(InvalidInputError, match="missing must be one of"):
        load_responses(frame, missing="ignore")


def test_empty_and_malformed_files_are_clear_errors(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(InvalidInputError, match="is empty"):
        load_responses(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("query_id,query,model,answer,correct,cost\n")
    with pytest.raises(InvalidInputError, match="has no rows"):
        load_responses(tmp_path / "header.csv")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(InvalidInputError, match="cannot be read as parquet"):
        load_responses(tmp_path / "bad.parquet")
