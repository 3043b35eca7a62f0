"""Merges: the lineage graph of models (parents → merged), each merge's method and full config, and the
per-task scores of the parents next to the merged model."""

import altair as alt
import pandas as pd
import streamlit as st

from alloyml.ui import graphs, layout, queries

# Beyond this many edges the whole-store lineage graph is unreadable; the merge's own ancestry is shown.
MAX_GRAPH_EDGES = 300

key = queries.current_store()
st.title("Merges")

merges = queries.merges(key)
layout.stop_unless(merges, "No merges yet — merge models with `alloyml.merging` (or run `alloyml demo`).")
models = queries.models(key)


def model_name(model_id: int | None) -> str:
    return f"{models[model_id].name} (#{model_id})" if model_id in models else f"#{model_id}"


merge = layout.pick("Merge", merges[::-1], lambda m: f"merge #{m.id}: {m.method} → {model_name(m.output_model_id)}")

columns = st.columns(3)
columns[0].metric("Method", merge.method)
columns[1].metric("Inputs", len(merge.inputs))
columns[2].metric("Merged model", model_name(merge.output_model_id))

st.subheader("Lineage")
all_edges = queries.lineage(key)
whole = len(all_edges) <= MAX_GRAPH_EDGES and st.toggle("Whole lineage graph", value=False)
if whole:
    edges = all_edges
elif merge.output_model_id is not None:
    edges = queries.lineage(key, merge.output_model_id)
else:
    edges = []
st.graphviz_chart(graphs.lineage_dot(edges, models, highlight=merge.output_model_id))

left, right = st.columns(2)
with left:
    st.subheader("Inputs")
    st.dataframe(pd.DataFrame({"model": [model_name(i.model_id) for i in merge.inputs],
                               "weight": [i.weight for i in merge.inputs]}), hide_index=True)
with right:
    st.subheader("Configuration")
    st.json(merge.config, expanded=1)

st.subheader("Scores per task")
compared = [(f"input {model_name(i.model_id)}", i.model_id) for i in merge.inputs]
if merge.output_model_id is not None:
    compared.append((f"merged {model_name(merge.output_model_id)}", merge.output_model_id))
scores = pd.DataFrame([{"model": label, "task": task, "score": float(value)}
                       for label, model_id in compared if model_id in models
                       for task, value in models[model_id].metrics.items()
                       if isinstance(value, int | float) and not isinstance(value, bool)],
                      columns=["model", "task", "score"])
layout.stop_unless(not scores.empty, "No per-task scores recorded on these models yet.")
st.altair_chart(
    alt.Chart(scores).mark_bar().encode(
        x=alt.X("task:N", title=None, axis=alt.Axis(labelAngle=0)), xOffset="model:N", y=alt.Y("score:Q"),
        color=alt.Color("model:N"),
        tooltip=["model", "task", alt.Tooltip("score:Q", format=".4f")]).properties(height=280),
    width="stretch")
table = scores.pivot(index="task", columns="model", values="score")
merged_columns = [c for c in table.columns if c.startswith("merged ")]
input_columns = [c for c in table.columns if c.startswith("input ")]
if merged_columns and input_columns:
    table["merged − best input"] = table[merged_columns[0]] - table[input_columns].max(axis=1)
st.dataframe(table.round(4))
