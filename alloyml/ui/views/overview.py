"""Overview: how many runs of each kind and status, the latest runs and workflows, and their timings."""

import altair as alt
import pandas as pd
import streamlit as st

from alloyml.ui import layout, queries

key = queries.current_store()
st.title("Overview")

counts = queries.run_counts(key)
layout.stop_unless(not counts.empty, "No runs yet — run `alloyml demo` to record some.")

by_status = counts.groupby("status")["runs"].sum()
columns = st.columns(4)
columns[0].metric("Runs", f"{int(by_status.sum()):,}")
for column, status in zip(columns[1:], ("running", "done", "failed"), strict=True):
    column.metric(status.capitalize(), f"{int(by_status.get(status, 0)):,}")

st.altair_chart(
    alt.Chart(counts).mark_bar().encode(
        x=alt.X("runs:Q", title="runs"), y=alt.Y("kind:N", sort="-x", title=None),
        color=alt.Color("status:N", scale=alt.Scale(domain=["done", "running", "failed"],
                                                   range=["#66bb6a", "#42a5f5", "#ef5350"])),
        tooltip=["kind", "status", "runs"]).properties(height=90 + 34 * counts["kind"].nunique()),
    width="stretch")

st.subheader("Recent runs")
runs = queries.run_rows(queries.recent_runs(key, limit=50))
st.dataframe(runs, hide_index=True, column_config={
    "seconds": st.column_config.NumberColumn(format="%.2f"),
    "started": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss")})
timed = runs.dropna(subset=["seconds"])
if not timed.empty:
    st.altair_chart(
        alt.Chart(timed).mark_bar().encode(
            x=alt.X("id:O", title="run", sort="ascending"), y=alt.Y("seconds:Q"), color="kind:N",
            tooltip=["id", "kind", "name", "status", "seconds"]).properties(height=220, title="Run durations"),
        width="stretch")

st.subheader("Recent workflows")
workflows = queries.recent_workflows(key, limit=20)
if not workflows:
    st.info("No workflows yet — submit one from Python with `alloyml.workflows`.")
else:
    st.dataframe(pd.DataFrame({
        "id": [w.id for w in workflows], "name": [w.name for w in workflows],
        "status": [w.status for w in workflows], "created": [w.created_at for w in workflows],
        "seconds": [(w.updated_at - w.created_at).total_seconds() for w in workflows],
    }), hide_index=True, column_config={"seconds": st.column_config.NumberColumn(format="%.1f")})
