"""Data values: one valuation run's value distribution, its lowest- and highest-valued points with their raw
rows, noisy-label detection and point-removal curves, and rank agreement with other methods."""

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from alloyml.errors import NotFoundError
from alloyml.ui import analysis, layout, queries

key = queries.current_store()
st.title("Data values")

runs = queries.recent_runs(key, kind="valuation", limit=200)
layout.stop_unless(runs, "No valuation runs yet — run `alloyml demo`.")


def describe(run) -> str:
    return f"#{run.id} {run.name or ''} ({run.params.get('method', 'unknown method')}, {run.status})"


def dataset_of(run) -> int | None:
    return run.dataset_id if run.dataset_id is not None else run.params.get("dataset_id")


by_id = {run.id: run for run in runs}
run = layout.pick("Valuation run", runs, describe)
histogram = queries.value_histogram(key, run.id)  # the store keeps this one precomputed
n_points = int(histogram["points"].sum())
layout.stop_unless(n_points, f"Run #{run.id} has no stored data values yet.")

columns = st.columns(4)
columns[0].metric("Points", f"{n_points:,}")
columns[1].metric("Method", run.params.get("method", "—"))
columns[2].metric("Dataset", f"#{dataset_of(run)}" if dataset_of(run) is not None else "—")
if "noise_auc" in run.metrics:
    columns[3].metric("Noisy-label AUC", f"{run.metrics['noise_auc']:.3f}")

st.subheader("Distribution")
st.altair_chart(
    alt.Chart(histogram).mark_bar().encode(
        x=alt.X("start:Q", bin="binned", title="data value"), x2="end:Q", y=alt.Y("points:Q", title="points"),
        tooltip=["start", "end", "points"]).properties(height=240),
    width="stretch")

st.subheader("Lowest- and highest-valued points")
k = st.slider("Points per table", min_value=5, max_value=100, value=10, step=5)


def points_table(lowest: bool) -> pd.DataFrame:
    values = queries.extreme_values(key, run.id, k, lowest)
    table = pd.DataFrame({"value": values.values, "stderr": values.stderr, "samples": values.counts},
                         index=pd.Index(values.indices, name="point"))
    if dataset_of(run) is None:
        return table.reset_index()
    try:
        rows = queries.dataset_rows(key, int(dataset_of(run)), values.indices)
    except NotFoundError:
        return table.reset_index()
    return table.join(rows).reset_index()


low_tab, high_tab = st.tabs(["Lowest", "Highest"])
low_tab.dataframe(points_table(lowest=True), hide_index=True)
high_tab.dataframe(points_table(lowest=False), hide_index=True)

flipped_key = run.params.get("flipped_artifact")
if flipped_key:
    st.subheader("Noisy-label detection")
    values, n_flipped = queries.flipped_values(key, run.id, flipped_key)
    edges = np.append(histogram["start"].to_numpy(), histogram["end"].iloc[-1])
    curve = analysis.detection_curve(histogram["points"].to_numpy(), edges, values)
    found = float(np.interp(n_flipped / n_points, curve["fraction_inspected"], curve["found"]))
    st.metric("Flipped points among the lowest-valued |flipped|", f"{found:.1%}",
              help=f"{n_flipped:,} labels were flipped; a random pick would find {n_flipped / n_points:.1%}.")
    if len(values) < n_flipped:
        st.caption(f"Estimated from a random sample of {len(values):,} of the {n_flipped:,} flipped points.")
    long = curve.melt(id_vars=["fraction_inspected"], value_vars=["found", "random"], var_name="ranking",
                      value_name="flipped points found")
    st.altair_chart(
        alt.Chart(long).mark_line().encode(
            x=alt.X("fraction_inspected:Q", title="fraction of points inspected (lowest value first)",
                    axis=alt.Axis(format="%")),
            y=alt.Y("flipped points found:Q", axis=alt.Axis(format="%")),
            strokeDash="ranking:N", color="ranking:N").properties(height=260),
        width="stretch")

if "removal_curve" in run.metrics:
    st.subheader("Point removal")
    st.caption("Model score after removing the lowest- or highest-valued points first: "
               "a good valuation keeps the score when low values go and drops it when high values go.")
    st.altair_chart(
        alt.Chart(analysis.removal_frame(run.metrics["removal_curve"])).mark_line(point=True).encode(
            x=alt.X("fraction removed:Q", axis=alt.Axis(format="%")), y=alt.Y("score:Q", scale=alt.Scale(zero=False)),
            color="order:N").properties(height=260),
        width="stretch")

st.subheader("Methods side by side")
peers = {r.id: r for r in runs if r.id != run.id and dataset_of(r) == dataset_of(run) and dataset_of(run) is not None}
layout.stop_unless(peers, "No other valuation run on this dataset yet — value it with another method to compare "
                          "rankings.")
chosen = st.multiselect("Compare with", list(peers), default=list(peers)[:3], format_func=lambda i: describe(peers[i]))
if chosen:
    try:
        paired = queries.paired_values(key, [run.id, *chosen], n_points)
    except NotFoundError as err:
        st.warning(f"These runs did not value the same points: {err}")
        st.stop()
    names = {i: f"#{i} {by_id[i].params.get('method', '?')}" for i in [run.id, *chosen]}
    correlation = analysis.rank_correlations(paired.rename(columns=names))
    if len(paired) < n_points:
        st.caption(f"Spearman rank correlation on a random sample of {len(paired):,} of {n_points:,} points.")
    else:
        st.caption(f"Spearman rank correlation over all {len(paired):,} points.")
    cells = correlation.reset_index(names="run a").melt(id_vars="run a", var_name="run b", value_name="spearman")
    base = alt.Chart(cells).encode(x=alt.X("run a:N", title=None), y=alt.Y("run b:N", title=None))
    st.altair_chart(
        (base.mark_rect().encode(color=alt.Color("spearman:Q", scale=alt.Scale(domain=[-1, 1], scheme="redblue")))
         + base.mark_text().encode(text=alt.Text("spearman:Q", format=".2f"))).properties(height=220),
        width="stretch")
    st.dataframe(correlation.round(4))
