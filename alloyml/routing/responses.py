"""Logged responses: every candidate model's answer to every training query (the FrugalGPT setting).

The long table has one row per (query, model) with columns `query_id, query, model, answer, correct,
cost`; the wide table has one row per query with columns `query_id, query` and, per model M,
`M|correct`, `M|cost` and optionally `M|answer`. `LoggedResponses` holds either as dense
`[n_queries, n_models]` matrices so the optimiser can work on arrays. Loading validates the table
before anything is computed. A sparse log (not every model answered every query: absent rows, or
empty wide cells) is refused by default, naming a query that lacks answers; `missing="drop"` keeps the
queries every model answered.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alloyml.errors import InvalidInputError

COLUMNS = ("query_id", "query", "model", "answer", "correct", "cost")
WIDE_SEPARATOR = "|"  # wide columns are f"{model}|correct", f"{model}|cost", f"{model}|answer"
MISSING = ("error", "drop")
TRUE_WORDS = {"1", "true", "t", "yes", "y", "1.0"}
FALSE_WORDS = {"0", "false", "f", "no", "n", "0.0"}


@dataclass(frozen=True)
class LoggedResponses:
    """Answers of `n_models` models to `n_queries` queries.

    query_ids, queries: [Q] str; models: [M] str (column order of the matrices);
    answers: [Q, M] str; correct: [Q, M] bool; cost: [Q, M] float64 (cost of calling that model on that
    query, >= 0).
    """

    query_ids: np.ndarray
    queries: np.ndarray
    models: tuple[str, ...]
    answers: np.ndarray
    correct: np.ndarray
    cost: np.ndarray

    @property
    def n_queries(self) -> int:
        return len(self.query_ids)

    def model_index(self, name: str) -> int:
        if name not in self.models:
            raise InvalidInputError(f"model {name!r} is not in the logged responses; known: {list(self.models)}")
        return self.models.index(name)

    def subset(self, rows: np.ndarray) -> LoggedResponses:
        """The responses of the queries at `rows` (indices or a boolean mask)."""
        return LoggedResponses(
            self.query_ids[rows], self.queries[rows], self.models, self.answers[rows],
            self.correct[rows], self.cost[rows],
        )

    def split(self, test_fraction: float = 0.5, seed: int = 0) -> tuple[LoggedResponses, LoggedResponses]:
        """A random (train, test) split of the queries."""
        if not 0.0 < test_fraction < 1.0:
            raise InvalidInputError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
        order = np.random.default_rng(seed).permutation(self.n_queries)
        n_test = int(round(test_fraction * self.n_queries))
        return self.subset(np.sort(order[n_test:])), self.subset(np.sort(order[:n_test]))

    def to_frame(self):
        """The long table (one row per query and model), as a pandas DataFrame."""
        import pandas as pd

        q, m = self.correct.shape
        return pd.DataFrame({
            "query_id": np.repeat(self.query_ids, m),
            "query": np.repeat(self.queries, m),
            "model": np.tile(np.asarray(self.models, dtype=object), q),
            "answer": self.answers.reshape(-1),
            "correct": self.correct.reshape(-1),
            "cost": self.cost.reshape(-1),
        })

    def save(self, path: str | Path) -> Path:
        """Write the long table as CSV or Parquet (by suffix)."""
        path = Path(path)
        frame = self.to_frame()
        if path.suffix == ".parquet":
            frame.to_parquet(path, index=False)
        else:
            frame.to_csv(path, index=False)
        return path


def load_responses(source, missing: str = "error") -> LoggedResponses:
    """Logged responses from a CSV or Parquet path, or a pandas DataFrame (long or wide), validated.

    missing: "error" (default) or "drop" (keep only the queries every model answered).
    Raises InvalidInputError naming the problem: an empty or unreadable file, missing columns, empty
    table, non-numeric or negative or missing cost, unreadable `correct`, duplicate (query_id, model)
    rows, a query whose text differs between rows, or queries that lack some models' answers.
    """
    import pandas as pd

    if missing not in MISSING:
        raise InvalidInputError(f"missing must be one of {list(MISSING)}, got {missing!r}")
    if isinstance(source, pd.DataFrame):
        frame, where = source, "responses DataFrame"
    else:
        path = Path(source)
        if not path.is_file():
            raise InvalidInputError(f"responses file {str(path)!r} does not exist")
        readers = {".csv": pd.read_csv, ".parquet": pd.read_parquet}
        if path.suffix not in readers:
            raise InvalidInputError(f"responses file {str(path)!r} must end in .csv or .parquet")
        where = f"responses file {str(path)!r}"
        if path.stat().st_size == 0:
            raise InvalidInputError(f"{where} is empty; expected a header row and one row per response")
        try:
            frame = readers[path.suffix](path)
        except Exception as err:  # noqa: BLE001  pandas/pyarrow raise many types for a malformed file
            raise InvalidInputError(
                f"{where} cannot be read as {path.suffix[1:]}: {type(err).__name__}: {err}"
            ) from err
    return _from_frame(frame, where, missing)


def _is_wide(frame) -> bool:
    return "model" not in frame.columns and any(str(c).endswith(f"{WIDE_SEPARATOR}correct") for c in frame.columns)


def _wide_to_long(frame, where: str):
    """The long table of a wide one; an empty `M|correct` cell is a response M did not give."""
    import pandas as pd

    for column in ("query_id", "query"):
        if column not in frame.columns:
            raise InvalidInputError(f"{where} (wide format) lacks column {column!r}")
    models = [str(c)[: -len("|correct")] for c in frame.columns if str(c).endswith(f"{WIDE_SEPARATOR}correct")]
    lacking = [f"{m}{WIDE_SEPARATOR}cost" for m in models if f"{m}{WIDE_SEPARATOR}cost" not in frame.columns]
    if lacking:
        raise InvalidInputError(f"{where} (wide format) lacks cost columns {lacking}")
    parts = []
    for m in models:
        answer = frame[f"{m}|answer"] if f"{m}|answer" in frame.columns else ""
        part = pd.DataFrame({"query_id": frame["query_id"], "query": frame["query"], "model": m, "answer": answer,
                             "correct": frame[f"{m}|correct"], "cost": frame[f"{m}|cost"]})
        parts.append(part[part["correct"].notna()])
    return pd.concat(parts, ignore_index=True) if parts else frame.iloc[:0]


def _from_frame(frame, where: str, missing: str = "error") -> LoggedResponses:
    import pandas as pd

    if _is_wide(frame):
        if len(frame) == 0:
            raise InvalidInputError(f"{where} has no rows")
        frame = _wide_to_long(frame, where)
    absent = [c for c in COLUMNS if c not in frame.columns]
    if absent:
        raise InvalidInputError(
            f"{where} lacks columns {absent}; expected {list(COLUMNS)} (long format) or query_id, query and "
            f"per model M the columns M|correct, M|cost, M|answer (wide format)"
        )
    if len(frame) == 0:
        raise InvalidInputError(f"{where} has no rows")
    frame = frame[list(COLUMNS)].copy()
    frame["query_id"] = frame["query_id"].astype(str)
    frame["model"] = frame["model"].astype(str)
    frame["query"] = frame["query"].fillna("").astype(str)
    frame["answer"] = frame["answer"].fillna("").astype(str)

    cost = pd.to_numeric(frame["cost"], errors="coerce")
    bad = frame.loc[cost.isna() | ~np.isfinite(cost.fillna(0)), "cost"]
    if len(bad):
        raise InvalidInputError(
            f"{where}: column 'cost' must be numeric and finite; {len(bad)} bad value(s), e.g. "
            f"{bad.iloc[0]!r} at row {bad.index[0]}"
        )
    if (cost < 0).any():
        row = int(np.flatnonzero(cost.to_numpy() < 0)[0])
        raise InvalidInputError(f"{where}: column 'cost' must be >= 0; row {row} has {cost.iloc[row]!r}")
    frame["cost"] = cost.astype(np.float64)
    frame["correct"] = _as_bool(frame["correct"], where)

    dup = frame.duplicated(["query_id", "model"], keep=False)
    if dup.any():
        first = frame.loc[dup].iloc[0]
        raise InvalidInputError(
            f"{where}: {int(dup.sum())} duplicate (query_id, model) rows, e.g. query_id="
            f"{first['query_id']!r} model={first['model']!r}"
        )
    texts = frame.groupby("query_id", sort=False)["query"].nunique()
    if (texts > 1).any():
        raise InvalidInputError(
            f"{where}: query_id {texts[texts > 1].index[0]!r} has different query texts in different rows"
        )

    models = tuple(dict.fromkeys(frame["model"]))
    query_ids = np.asarray(list(dict.fromkeys(frame["query_id"])), dtype=object)
    per_query = frame.groupby("query_id", sort=False)["model"].agg(set)
    incomplete = per_query[per_query.map(len) < len(models)]
    if len(incomplete) and missing == "drop":
        if len(incomplete) == len(per_query):
            raise InvalidInputError(f"{where}: no query has answers from all {len(models)} models {list(models)}")
        frame = frame[~frame["query_id"].isin(set(incomplete.index))]
        query_ids = np.asarray(list(dict.fromkeys(frame["query_id"])), dtype=object)
    elif len(incomplete):
        qid = incomplete.index[0]
        lacking = sorted(set(models) - incomplete.iloc[0])
        raise InvalidInputError(
            f"{where}: {len(incomplete)} quer(ies) lack answers from some models, e.g. query_id {qid!r} "
            f"lacks {lacking}; every query needs every model's answer (or load with missing='drop' to keep "
            "the queries every model answered)"
        )

    q_pos = pd.Index(query_ids).get_indexer(frame["query_id"])
    m_pos = pd.Index(models).get_indexer(frame["model"])
    shape = (len(query_ids), len(models))
    answers = np.empty(shape, dtype=object)
    correct = np.zeros(shape, dtype=bool)
    cost_m = np.zeros(shape, dtype=np.float64)
    answers[q_pos, m_pos] = frame["answer"].to_numpy()
    correct[q_pos, m_pos] = frame["correct"].to_numpy()
    cost_m[q_pos, m_pos] = frame["cost"].to_numpy()
    queries = np.empty(len(query_ids), dtype=object)
    queries[q_pos] = frame["query"].to_numpy()
    return LoggedResponses(query_ids, queries, models, answers, correct, cost_m)


def _as_bool(column, where: str):
    """`correct` as bool: booleans, 0/1, or true/false/yes/no strings."""
    if column.dtype == bool:
        return column
    text = column.astype(str).str.strip().str.lower()
    known = text.isin(TRUE_WORDS | FALSE_WORDS)
    if not known.all():
        bad = column[~known]
        raise InvalidInputError(
            f"{where}: column 'correct' must be boolean (true/false or 0/1); got {bad.iloc[0]!r} at row "
            f"{bad.index[0]}"
        )
    return text.isin(TRUE_WORDS)
