"""Small computations the pages show, kept apart from Streamlit so they can be tested on their own.

Inputs are the plain arrays and frames that `queries.py` returns; nothing here touches the store.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


def step_seconds(step) -> float | None:
    """Wall time of a workflow step, None until it has both started and finished."""
    if step.started_at is None or step.finished_at is None:
        return None
    return (step.finished_at - step.started_at).total_seconds()


# -- data values ------------------------------------------------------------------------------------------
def detection_curve(counts: np.ndarray, edges: np.ndarray, flipped_values: np.ndarray) -> pd.DataFrame:
    """How many flipped (noisy-label) points one finds by inspecting points from the lowest value up.

    counts: [bins] points per value bin and edges: [bins + 1] bin edges (the store's `value_histogram`; bin i
    holds values in [edges[i], edges[i + 1]), the last bin also its right edge).
    flipped_values: [f] values of the flipped points (all of them, or a random sample).
    Returns, at each bin's right edge: fraction_inspected (points with a lower value ÷ all points), found
    (flipped points with a lower value ÷ flipped points) and random (what inspecting that many random points
    finds on average, = fraction_inspected).
    """
    inspected = np.cumsum(counts) / max(int(np.sum(counts)), 1)
    found = np.searchsorted(np.sort(flipped_values), edges[1:], side="left") / max(len(flipped_values), 1)
    found[-1] = 1.0 if len(flipped_values) else 0.0
    return pd.DataFrame({"fraction_inspected": np.concatenate([[0.0], inspected]),
                         "found": np.concatenate([[0.0], found]),
                         "random": np.concatenate([[0.0], inspected])})


def removal_frame(curve: dict) -> pd.DataFrame:
    """A run's `removal_curve` metric ({"fraction", "low_first", "high_first"}) in long form for plotting."""
    fraction = curve.get("fraction", [])
    parts = [pd.DataFrame({"fraction removed": fraction, "score": curve[order], "order": order.replace("_", " ")})
             for order in ("low_first", "high_first") if order in curve]
    if not parts:
        return pd.DataFrame(columns=["fraction removed", "score", "order"])
    return pd.concat(parts, ignore_index=True)


def rank_correlations(paired: pd.DataFrame) -> pd.DataFrame:
    """Spearman rank correlation between every pair of columns (methods) of `paired` (points × runs)."""
    return paired.rank().corr(method="pearson")


# -- cascades ---------------------------------------------------------------------------------------------
def stage_hit_rates(stage_reached: np.ndarray, n_stages: int) -> np.ndarray:
    """[n_stages] fraction of requests answered at each stage (0 where there were no requests)."""
    counts = np.bincount(np.asarray(stage_reached, dtype=np.int64), minlength=n_stages)[:n_stages]
    return counts / max(len(stage_reached), 1)


def frontier_frame(plan: dict) -> pd.DataFrame:
    """The cost–accuracy frontier of a stored plan (`CascadePlan.model_dump()`): one row per point with
    point, cost (training mean cost per query), cost_se, accuracy, cascade (the chain as text) and chosen."""
    rows = []
    for i, point in enumerate(plan.get("frontier") or []):
        stages = point.get("stages") or []
        chain = " → ".join(str(s.get("model")) + (f" (≥ {s['threshold']:.3f})" if s.get("threshold") is not None
                                                  else "") for s in stages)
        cost_se = point.get("cost_se")
        rows.append({"point": i, "cost": float(point["mean_cost"]), "accuracy": float(point["accuracy"]),
                     "cost_se": np.nan if cost_se is None else float(cost_se), "cascade": chain})
    frame = pd.DataFrame(rows, columns=["point", "cost", "cost_se", "accuracy", "cascade"])
    frame["chosen"] = frame["point"] == plan.get("chosen")
    return frame


@dataclass(frozen=True)
class BudgetState:
    """Where a cascade's spending stands against its budget, over the last `window` requests."""

    window: int
    mean_cost: float
    budget: float
    frontier_point: int | None
    chosen_point: int | None

    @property
    def over_budget(self) -> bool:
        return self.window > 0 and self.mean_cost > self.budget

    @property
    def fallen_back(self) -> bool:
        """True when the guard has moved off the planned frontier point (to a cheaper one)."""
        return None not in (self.frontier_point, self.chosen_point) and self.frontier_point != self.chosen_point


def budget_state(requests: pd.DataFrame, budget: float, chosen_point: int | None, window: int = 1000) -> BudgetState:
    """Budget-guard state from the request log (columns cost and frontier_point, oldest first)."""
    recent = requests.tail(window)
    points = recent["frontier_point"].dropna()
    return BudgetState(window=len(recent), mean_cost=float(recent["cost"].mean()) if len(recent) else 0.0,
                       budget=float(budget), frontier_point=int(points.iloc[-1]) if len(points) else None,
                       chosen_point=chosen_point)


# -- AutoML -----------------------------------------------------------------------------------------------
def trial_params(config: dict) -> dict:
    """A trial's parameters as flat columns. A merge search's trial config is a whole merge config: its
    searched values are shown as `<model>.<parameter>` (the model's folder name when those are unique)
    and shared `<parameter>`, with gradient anchors as `<name>[i]`; with `slices`, prefixed `slices[k].`."""
    if not isinstance(config.get("merge_method"), str):
        return config
    if isinstance(config.get("models"), list):
        groups = [("", config["models"], {})]
    elif isinstance(config.get("slices"), list) and all(isinstance(s, dict) for s in config["slices"]):
        groups = [(f"slices[{k}].", s.get("sources") or [], s.get("parameters") or {})
                  for k, s in enumerate(config["slices"])]
    else:
        return config
    paths = list(dict.fromkeys(str(m.get("model")) for _, models, _ in groups for m in models))
    short = [p.rstrip("/").rsplit("/", 1)[-1] for p in paths]
    names = dict(zip(paths, short if len(set(short)) == len(short) else paths, strict=True))
    flat = {"merge_method": config["merge_method"]}
    scoped = []
    for group, models, shared in groups:
        scoped += [(f"{group}{names[str(m.get('model'))]}.", m.get("parameters") or {}) for m in models]
        scoped.append((group, shared))
    for prefix, parameters in [*scoped, ("", config.get("parameters") or {})]:
        for key, value in parameters.items():
            if isinstance(value, list):
                flat.update({f"{prefix}{key}[{i}]": v for i, v in enumerate(value)})
            else:
                flat[f"{prefix}{key}"] = value
    return flat


def flatten_trials(trials) -> pd.DataFrame:
    """One row per trial: number, status, cost, seconds, then `param.<name>` and `metric.<name>` columns."""
    rows = []
    for t in trials:
        row = {"trial": t.number, "status": t.status, "cost": t.cost, "seconds": t.seconds}
        row.update({f"param.{k}": v for k, v in trial_params(t.config).items()})
        row.update({f"metric.{k}": v for k, v in t.metrics.items() if isinstance(v, int | float)})
        rows.append(row)
    return pd.DataFrame(rows)


def param_importance(params: pd.DataFrame, score: pd.Series, bins: int = 4) -> pd.Series:
    """Share of the score's variance that each parameter explains on its own (eta squared, 0 .. 1).

    Numeric parameters with more than `bins` distinct values are cut into `bins` quantile bins; others are
    grouped by value. eta² = Σ_groups n_g (mean_g - mean)² / Σ (score - mean)².
    """
    score = score.astype(float)
    total = float(((score - score.mean()) ** 2).sum())
    importance = {}
    for name in params.columns:
        column = params[name]
        if pd.api.types.is_numeric_dtype(column) and column.nunique() > bins:
            groups = pd.qcut(column, bins, duplicates="drop")
        else:
            groups = column.astype(str)
        grouped = score.groupby(groups, observed=True)
        between = float((grouped.count() * (grouped.mean() - score.mean()) ** 2).sum())
        importance[name] = between / total if total > 0 else 0.0
    return pd.Series(importance, dtype=float).sort_values(ascending=False)


def pareto_mask(cost: np.ndarray, score: np.ndarray, maximize: bool = True) -> np.ndarray:
    """[n] True on the score-vs-cost Pareto front: no other trial is as cheap and as good, and better in one.

    Of trials tied at the same (cost, score) one is marked.
    """
    cost = np.asarray(cost, dtype=float)
    signed = np.asarray(score, dtype=float) * (1 if maximize else -1)
    order = np.lexsort((-signed, cost))
    mask = np.zeros(len(cost), dtype=bool)
    best = -np.inf
    for i in order:
        if signed[i] > best:
            mask[i] = True
            best = signed[i]
    return mask
