"""AutoML: a tuning run's trials, score against cost with the Pareto front, progress, and which parameters
mattered (share of score variance each explains)."""

import altair as alt
import pandas as pd
import streamlit as st

from alloyml.ui import analysis, layout, queries

key = queries.current_store()
st.title("AutoML")

runs = queries.recent_runs(key, kind="tune", limit=100)
layout.stop_unless(runs, "No tuning runs yet — tune a pipeline with `alloyml.automl` (or run `alloyml demo`).")
run = layout.pick("Tuning run", runs, lambda r: f"#{r.id} {r.name or ''} ({r.status})")
trials = analysis.flatten_trials(queries.trials(key, run.id))
metric_columns = [c for c in trials.columns if c.startswith("metric.")]
layout.stop_unless(not trials.empty and metric_columns, f"Run #{run.id} has no scored trials yet.")

preferred = f"metric.{run.params.get('metric', 'score')}"
metric = st.selectbox("Score", metric_columns, index=metric_columns.index(preferred) if preferred in metric_columns
                      else 0, format_func=lambda c: c.removeprefix("metric."))
maximize = run.params.get("mode", "max") == "max"
cost_column = "cost" if trials["cost"].notna().any() else "seconds"
scored = trials.dropna(subset=[metric])
best = scored.loc[scored[metric].idxmax() if maximize else scored[metric].idxmin()]

columns = st.columns(4)
columns[0].metric("Trials", len(trials))
columns[1].metric(f"Best {metric.removeprefix('metric.')}", f"{best[metric]:.4g}")
columns[2].metric("Best trial", int(best["trial"]))
columns[3].metric(f"Total {cost_column}", f"{trials[cost_column].sum():.4g}")
st.dataframe(trials, hide_index=True)

left, right = st.columns(2)
# Vega-Lite reads dots in field names as nested access: the plots get plain column names.
plot = pd.DataFrame({"trial": scored["trial"], "cost": scored[cost_column], "score": scored[metric]})
costed = plot.dropna(subset=["cost"])
if not costed.empty:
    costed = costed.assign(front=analysis.pareto_mask(costed["cost"], costed["score"], maximize))
    points = alt.Chart(costed).mark_circle(size=70).encode(
        x=alt.X("cost:Q", title=cost_column), y=alt.Y("score:Q", title=metric.removeprefix("metric."),
                                                     scale=alt.Scale(zero=False)),
        color=alt.Color("front:N", title="Pareto front"), tooltip=["trial", "cost", "score"])
    front = alt.Chart(costed[costed["front"]].sort_values("cost")).mark_line(interpolate="step-after").encode(
        x="cost:Q", y="score:Q")
    left.altair_chart((points + front).properties(height=280, title=f"Score vs {cost_column}"), width="stretch")
progress = plot.sort_values("trial").assign(best=lambda t: t["score"].cummax() if maximize else t["score"].cummin())
right.altair_chart(
    (alt.Chart(progress).mark_circle(opacity=0.5).encode(x="trial:Q", y=alt.Y("score:Q", scale=alt.Scale(zero=False)))
     + alt.Chart(progress).mark_line(color="#e53935").encode(x="trial:Q", y="best:Q"))
    .properties(height=280, title="Best so far"),
    width="stretch")

param_columns = [c for c in scored.columns if c.startswith("param.")]
if param_columns and len(scored) >= 3:
    st.subheader("Parameter importance")
    st.caption("Share of the score's variance each parameter explains on its own (η²; numeric parameters in "
               "quartile bins).")
    importance = analysis.param_importance(scored[param_columns].rename(columns=lambda c: c.removeprefix("param.")),
                                           scored[metric])
    st.altair_chart(
        alt.Chart(pd.DataFrame({"parameter": importance.index, "importance": importance.values})).mark_bar().encode(
            x=alt.X("importance:Q", scale=alt.Scale(domain=[0, 1])), y=alt.Y("parameter:N", sort="-x", title=None),
            tooltip=["parameter", alt.Tooltip("importance:Q", format=".3f")])
        .properties(height=90 + 34 * len(importance)),
        width="stretch")
