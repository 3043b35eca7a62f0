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

- `knn_source_shapley`: exact KNN-Shapley of the source game. Polynomial (a counting algorithm over source
  groups) when every training row has exactly one source tuple — forks, single tables, one-to-one tables —
  at any size; by enumeration for any other provenance (joins, where a row needs a fact and a side tuple at
  once) with <= 20 source tuples; otherwise it raises `NotExactError` rather than approximate. A join of
  more tuples needs DataScope's circuit (ADD) compilation, not implemented here: value it with the sampled
  methods on `SourceUtility`, which estimate.
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


# ---------------------------------------------------------------- exact KNN-Shapley of source groups
class NotExactError(InvalidInputError):
    """An exact value was asked for a pipeline shape that has no exact method here (see `knn_source_shapley`)."""


def _single_source(provenance: Provenance) -> np.ndarray | None:
    """[n_rows] the one source tuple of every row when each row has exactly one (a fork, a single table, a
    one-to-one table); None when some row depends on two or more tuples (a join) or on none."""
    ids = provenance.source_ids()
    present = ids >= 0
    if not np.all(present.sum(axis=1) == 1):
        return None
    return ids[present]


def _add_group(table: np.ndarray, c: int) -> np.ndarray:
    """table[j, s] = # subsets of size j and count sum s (< k); one more group contributing c rows."""
    k = table.shape[1]
    if c >= k:
        return table  # any subset with it reaches k: outside the window
    out = table.copy()
    out[1:, c:] += table[:-1, : k - c]
    return out


def _remove_group(table: np.ndarray, c: int) -> np.ndarray:
    """The inverse of `_add_group` (deconvolution by 1 + x y^c, solved in increasing size)."""
    k = table.shape[1]
    if c >= k:
        return table
    out = table.copy()
    for j in range(1, table.shape[0]):
        out[j, c:] -= out[j - 1, : k - c]
    return out


def _group_knn_shapley_one(groups: np.ndarray, match: np.ndarray, m: int, k: int) -> np.ndarray:
    """[m] exact Shapley values of the m source groups in one test point's k-NN game.

    groups, match: per training row in order of distance, its group and whether its label matches. By
    linearity U = (1/k) Σ_r match_r f_r, f_r(T) = 1[g_r ∈ T and Σ_{h ∈ T} c_h(r) < k] with c_h(r) the rows
    of group h nearer than r. Only g_r and the groups Q with c_h(r) >= 1 are players of f_r (the rest are
    dummies); counting the subsets of Q by size j and row sum (< k) in a [k, k] table, maintained as the
    walk adds rows and deconvolved to remove one group, gives
      own group:   + Σ_{j, s < k - c_g} N_Q[j, s] / ((q + 1) C(q, j))
      s ∈ Q:       - Σ_{j, k - c_g - c_s <= s < k - c_g} N_{Q∖s}[j, s] (j + 1) / (q (q + 1) C(q - 1, j)),
    and N_{Q∖s} depends on s only through min(c_s, k). Cost per row O(k^3 + m)."""
    counts = np.zeros(m, dtype=np.int64)
    table = np.zeros((k, k))
    table[0, 0] = 1.0
    positive = 0  # groups with at least one row walked
    phi = np.zeros(m)
    j = np.arange(k)
    sums = np.arange(k)
    from scipy.special import comb

    for g, hit in zip(groups, match, strict=True):
        cg = int(counts[g])
        if hit and cg < k:
            others = _remove_group(table, min(cg, k)) if cg else table
            q = positive - (cg > 0)
            own = np.where(j <= q, 1.0 / ((q + 1) * np.maximum(comb(q, j), 1.0)), 0.0)
            phi[g] += (others[:, sums < k - cg] * own[:, None]).sum() / k
            if q:
                shared = np.where(j <= q - 1, (j + 1) / (q * (q + 1) * np.maximum(comb(q - 1, j), 1.0)), 0.0)
                penalty = np.zeros(k + 1)
                for c in range(1, k + 1):
                    window = (sums >= k - cg - c) & (sums < k - cg)
                    penalty[c] = (_remove_group(others, c)[:, window] * shared[:, None]).sum() / k
                capped = np.minimum(counts, k)
                affected = capped >= 1
                affected[g] = False
                phi[affected] -= penalty[capped[affected]]
        if cg:
            table = _remove_group(table, min(cg, k))
        else:
            positive += 1
        table = _add_group(table, min(cg + 1, k))
        counts[g] += 1
    return phi


def knn_source_shapley(provenance: Provenance, x_train, y_train, x_test, y_test, k: int = 5) -> ValuationResult:
    """Exact KNN-Shapley of the source tuples of a pipeline, for the k-NN utility of `KNNUtility` (squared
    Euclidean distance of direct float64 differences, ties by training index).

    Exact shapes, and how:
    - every training row has exactly one source tuple — a fork (`fork_provenance`: one source row feeds
      several training rows), a single table, a one-to-one table: a counting algorithm over source groups
      (DataScope-style, `_group_knn_shapley_one`), O(m_test · n_rows · (k^3 + n_sources)), any size;
    - any other provenance (a join, where a training row needs a fact tuple and a side tuple at once) with at
      most 20 source tuples: enumeration of the source game (`exact_source_semivalues`).
    Anything else raises `NotExactError` before any work: value it with a sampled method on
    `SourceUtility(provenance, KNNUtility(...))` (e.g. `tmc_shapley`), which is an estimate, not exact."""
    if not isinstance(provenance, Provenance):
        raise InvalidInputError(f"provenance must be a Provenance, got {type(provenance).__name__}")
    utility = KNNUtility(x_train, y_train, x_test, y_test, k=k)  # validates the data, orders the neighbours
    if utility.n != len(provenance.rows):
        raise InvalidInputError(f"x_train has {utility.n} rows but the provenance describes "
                                f"{len(provenance.rows)} training rows")
    groups = _single_source(provenance)
    if groups is None:
        from alloyml.valuation.methods import MAX_EXACT_POINTS

        if provenance.n_sources > MAX_EXACT_POINTS:
            raise NotExactError(
                f"exact KNN-Shapley over these sources is not available: the provenance has training rows built "
                f"from {int((provenance.rows >= 0).sum(axis=1).max())} source tuples at once (a join of "
                f"{', '.join(provenance.tables)}) and {provenance.n_sources} source tuples, more than the "
                f"{MAX_EXACT_POINTS} enumeration allows; exact counting covers rows with one source tuple each "
                "(forks, single tables). Use a sampled method on SourceUtility(provenance, KNNUtility(...)).")
        result = exact_source_semivalues(provenance, utility)
        result.params.update({"k": int(k), "exact": "enumeration"})
        return result
    m = provenance.n_sources
    total = np.zeros(m)
    for order, match in zip(utility.order, utility.matches, strict=True):
        total += _group_knn_shapley_one(groups[order], match, m, k)
    n_test = len(utility.order)
    return ValuationResult(total / n_test, np.zeros(m), np.full(m, n_test), "knn_source_shapley",
                           {"k": int(k), "n_test": n_test, "exact": "group counting",
                            "sources": [f"{t}[{r}]" for t, r in map(provenance.source_name, range(m))]})
