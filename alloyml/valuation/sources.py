"""Values of the source tuples behind a training table built by joins and forks (the DataScope setting,
Karlaš et al. 2023), beyond the row-wise pipelines of `pipeline.py`.

A `Provenance` records, for every training row, the row of each source table it came from: a
`pandas.merge` of a fact table with side tables (`merge_with_provenance`, chainable), or a fork where one
source row feeds several training rows (`fork_provenance`). The players are the source tuples of all tables;

    U_src(T) = U({training rows r : every source tuple of r is in T})

is the source-tuple game — a training row exists iff all the tuples it was built from do. Its values:

- `exact_source_semivalues`: enumeration of the source game (<= 20 source tuples), e.g. exact KNN-Shapley over
  sources with `KNNUtility` as U; the oracle for the rest.
- `SourceUtility`: U_src as a utility, so every sampled method (tmc_shapley, msr_banzhaf, beta_shapley,
  data-free games) runs through any join/fork pipeline by evaluating U on the induced training rows.
- `aggregate_to_sources`: the DataScope-style aggregate, value(s) = Σ of the values of the rows s feeds.
  Exact for the source game only when every training row has exactly one source tuple and the row game is
  additive over the source tuples' groups of rows (U(S) = Σ_s U_s(S ∩ rows(s))) — e.g. a one-to-one table.
  With a join (a row needs two tuples at once) or an interacting utility such as k-NN it is an approximation
  (the source game's values are not a linear function of the row game's); the tests show both cases.

Exact KNN-Shapley of the source game in polynomial time needs DataScope's circuit (ADD) compilation, which
is not implemented here; for more than 20 source tuples use the sampled methods on `SourceUtility`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alloyml.errors import InvalidInputError
from alloyml.valuation.checks import check_features, check_labels
from alloyml.valuation.result import ValuationResult

_ROW = "__alloyml_row_{}"


@dataclass(frozen=True)
class Provenance:
    """rows[r, t]: the row of source table t that training row r came from (-1: none, e.g. a left join
    without a match — such a row does not depend on table t). tables: names; sizes: rows per table."""

    rows: np.ndarray
    tables: tuple[str, ...]
    sizes: tuple[int, ...]

    @property
    def n_sources(self) -> int:
        return int(sum(self.sizes))

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)

    def source_ids(self) -> np.ndarray:
        """[n_rows, n_tables] global source-tuple ids (table offset + row), -1 where absent."""
        return np.where(self.rows >= 0, self.rows + self.offsets, -1)

    def source_name(self, source: int) -> tuple[str, int]:
        """(table, row) of a global source-tuple id."""
        table = int(np.searchsorted(self.offsets, source, side="right") - 1)
        return self.tables[table], int(source - self.offsets[table])

    def induced_rows(self, present: np.ndarray) -> np.ndarray:
        """Training rows all of whose source tuples are in `present` (a boolean mask [n_sources])."""
        ids = self.source_ids()
        ok = np.where(ids >= 0, present[np.maximum(ids, 0)], True)
        return np.flatnonzero(ok.all(axis=1))


def _as_provenance(frame, name: str):
    """(frame, Provenance) from a source table (a DataFrame) or an already tracked (frame, Provenance)."""
    if isinstance(frame, tuple) and len(frame) == 2 and isinstance(frame[1], Provenance):
        return frame
    n = len(frame)
    return frame, Provenance(np.arange(n, dtype=np.int64)[:, None], (name,), (n,))


def merge_with_provenance(left, right, *, on, how: str = "inner", left_name: str = "fact",
                          right_name: str = "side", **merge_kwargs):
    """`pandas.merge(left, right, on=on, how=how)` and the provenance of every output row.

    left: a DataFrame (a source table named `left_name`) or the (frame, Provenance) of an earlier merge, so
    joins chain; right: a DataFrame (a source table named `right_name`). how: "inner" or "left" (an
    unmatched left row has no side tuple and does not depend on that table). Returns (frame, Provenance)."""
    import pandas as pd

    if how not in ("inner", "left"):
        raise InvalidInputError(f"how must be 'inner' or 'left' for provenance, got {how!r}")
    frame, provenance = _as_provenance(left, left_name)
    if right_name in provenance.tables:
        raise InvalidInputError(f"right_name {right_name!r} is already a table of this provenance "
                                f"{provenance.tables}; name each source table once")
    left_col, right_col = _ROW.format("left"), _ROW.format("right")
    merged = pd.merge(frame.assign(**{left_col: np.arange(len(frame))}),
                      right.assign(**{right_col: np.arange(len(right))}), on=on, how=how, **merge_kwargs)
    left_rows = merged.pop(left_col).to_numpy(np.int64)
    right_rows = merged.pop(right_col).fillna(-1).to_numpy(np.int64)
    rows = np.concatenate([provenance.rows[left_rows], right_rows[:, None]], axis=1)
    return merged.reset_index(drop=True), Provenance(rows, (*provenance.tables, right_name),
                                                     (*provenance.sizes, len(right)))


def fork_provenance(source_rows, n_sources: int | None = None, name: str = "source") -> Provenance:
    """Provenance of a fork: training row r came from source row source_rows[r] (one source row may feed
    several training rows, e.g. a row split into several samples or a one-to-many explode)."""
    rows = np.asarray(source_rows)
    if rows.ndim != 1 or rows.dtype.kind not in "iu" or (rows.size and rows.min() < 0):
        raise InvalidInputError("source_rows must be a 1-d array of non-negative source row indices")
    n = int(rows.max()) + 1 if n_sources is None and rows.size else int(n_sources or 0)
    if rows.size and rows.max() >= n:
        raise InvalidInputError(f"source_rows reach row {int(rows.max())} but n_sources is {n}")
    return Provenance(rows.astype(np.int64)[:, None], (name,), (n,))


class SourceUtility:
    """The source-tuple game of a training-row utility: U_src(T) = row_utility(rows induced by T).

    row_utility: a `Utility` (or game) over the training rows of the provenance. The result follows the
    utility protocol (`n`, `fits`, call), so the sampling methods value source tuples through any join or
    fork; the row utility's cache, seeding and failure counting are used as they are."""

    def __init__(self, provenance: Provenance, row_utility):
        if not isinstance(provenance, Provenance):
            raise InvalidInputError(f"provenance must be a Provenance, got {type(provenance).__name__}")
        if getattr(row_utility, "n", None) != len(provenance.rows):
            raise InvalidInputError(f"row_utility has n={getattr(row_utility, 'n', None)} rows but the provenance "
                                    f"describes {len(provenance.rows)} training rows")
        self.provenance, self.row_utility, self.n = provenance, row_utility, provenance.n_sources

    @property
    def fits(self) -> int:
        return self.row_utility.fits

    @property
    def fit_failures(self) -> int:
        return getattr(self.row_utility, "fit_failures", 0)

    def reseed(self, entropy: int) -> None:
        if hasattr(self.row_utility, "reseed"):
            self.row_utility.reseed(entropy)

    def __call__(self, subset) -> float:
        present = np.zeros(self.n, dtype=bool)
        present[np.asarray(subset, dtype=np.int64)] = True
        return self.row_utility(self.provenance.induced_rows(present))


class KNNUtility:
    """U(S) = mean over test points of (1/k) · #{the min(k, |S|) nearest rows of S with the test label}:
    the k-NN utility whose Shapley values `knn_shapley` gives in closed form (squared Euclidean distance of
    direct float64 differences, ties broken by training index), as a game for enumeration and sampling."""

    def __init__(self, x_train, y_train, x_test, y_test, k: int = 5):
        check_features(x_train, "x_train")
        check_features(x_test, "x_test")
        y_train = check_labels(y_train, "y_train", classifier=True)
        y_test = check_labels(y_test, "y_test", classifier=True)
        if not 1 <= k <= len(x_train):
            raise InvalidInputError(f"k must be in 1..{len(x_train)} (the training rows), got {k}")
        distances = ((np.asarray(x_test, np.float64)[:, None, :]
                      - np.asarray(x_train, np.float64)[None, :, :]) ** 2).sum(-1)  # [m, n]
        self.order = np.argsort(distances, axis=1, kind="stable")  # stable: equal distances by index
        self.matches = (np.asarray(y_train)[self.order] == np.asarray(y_test)[:, None])  # [m, n] in order
        self.n, self.k, self.fits = len(x_train), k, 0

    def __call__(self, subset) -> float:
        self.fits += 1
        present = np.zeros(self.n, dtype=bool)
        present[np.asarray(subset, dtype=np.int64)] = True
        in_order = present[self.order]  # [m, n]
        first_k = in_order & (np.cumsum(in_order, axis=1) <= self.k)
        return float((first_k & self.matches).sum(axis=1).mean() / self.k)


def exact_source_semivalues(provenance: Provenance, row_utility, semivalue=None) -> ValuationResult:
    """The semivalue (default Shapley) of every source tuple by enumerating the source game; at most 20
    source tuples. With `KNNUtility` as `row_utility` this is exact KNN-Shapley over the join's sources."""
    from alloyml.valuation.methods import exact_semivalues
    from alloyml.valuation.semivalues import Shapley

    result = exact_semivalues(SourceUtility(provenance, row_utility), semivalue or Shapley())
    result.params["sources"] = [f"{t}[{r}]" for t, r in map(provenance.source_name, range(provenance.n_sources))]
    return result


def aggregate_to_sources(row_values, provenance: Provenance) -> np.ndarray:
    """[n_sources] value(s) = Σ of `row_values` over the training rows that source tuple s feeds — the
    DataScope-style aggregate (exact only in the cases the module docstring states)."""
    values = np.asarray(getattr(row_values, "values", row_values), dtype=np.float64)
    if values.shape != (len(provenance.rows),):
        raise InvalidInputError(f"row_values has shape {values.shape}; expected ({len(provenance.rows)},), "
                                "one value per training row")
    ids = provenance.source_ids()
    present = ids >= 0
    return np.bincount(ids[present], weights=np.broadcast_to(values[:, None], ids.shape)[present],
                       minlength=provenance.n_sources)
