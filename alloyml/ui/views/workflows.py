"""Workflows: the step DAG coloured by state, step timings and retries, and the tracebacks of failures."""

import altair as alt
import pandas as pd
import streamlit as st

from alloyml.ui import analysis, graphs, layout, queries

key = queries.current_store()
st.title("Workflows")

workflows = queries.recent_workflows(key, limit=100)
layout.stop_unless(workflows, "No workflows yet — submit one with `alloyml.workflows` (or run `alloyml demo`).")
workflow = layout.pick("Workflow", workflows, lambda w: f"#{w.id} {w.name} ({w.status})")
steps = queries.workflow_steps(key, workflow.id)
states = pd.Series([s.state for s in steps]).value_counts()
columns = st.columns(4)
columns[0].metric("Status", workflow.status)
columns[1].metric("Steps done", f"{states.get('done', 0)} / {len(steps)}")
columns[2].metric("Retries", sum(max(s.attempts - 1, 0) for s in steps))
columns[3].metric("Seconds", f"{(workflow.updated_at - workflow.created_at).total_seconds():.1f}")

st.subheader("Steps")
st.graphviz_chart(graphs.workflow_dot(steps))
table = pd.DataFrame({
    "step": [s.name for s in steps], "state": [s.state for s in steps], "attempts": [s.attempts for s in steps],
    "depends on": [", ".join(s.depends_on) for s in steps], "started": [s.started_at for s in steps],
    "finished": [s.finished_at for s in steps], "seconds": [analysis.step_seconds(s) for s in steps],
    "resources": [", ".join(f"{k}={v}" for k, v in s.resources.items()) for s in steps],
})
st.dataframe(table, hide_index=True, column_config={"seconds": st.column_config.NumberColumn(format="%.2f")})

now = pd.Timestamp.now("UTC").tz_localize(None)  # the store keeps naive UTC times; a running step ends "now"
timed = table.dropna(subset=["started"]).assign(finished=lambda t: t["finished"].fillna(now))
if not timed.empty:
    st.altair_chart(
        alt.Chart(timed).mark_bar().encode(
            x=alt.X("started:T", title=None, axis=alt.Axis(format="%H:%M:%S")), x2="finished:T",
            y=alt.Y("step:N", sort=None, title=None),
            color=alt.Color("state:N", scale=alt.Scale(domain=list(graphs.STATE_COLORS),
                                                       range=list(graphs.STATE_COLORS.values()))),
            tooltip=["step", "state", "attempts", "seconds"]).properties(height=90 + 34 * len(timed),
                                                                         title="Timeline"),
        width="stretch")

if workflow.error:
    st.subheader("Workflow error")
    st.code(workflow.error, language="text")
for step in steps:
    if step.error:
        with st.expander(f"Traceback of step {step.name} ({step.state}, attempt {step.attempts})",
                         expanded=step.state == "failed"):
            st.code(step.error, language="text")
