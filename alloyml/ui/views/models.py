"""Models and training: registered models, loss curves, MoE expert load, kernel and generation benchmarks."""

import altair as alt
import pandas as pd
import streamlit as st

from alloyml.ui import layout, queries

key = queries.current_store()
st.title("Models & training")

models = queries.models(key)
st.subheader("Models")
if not models:
    st.info("No models registered yet — train one with `alloyml.models` (or run `alloyml demo`).")
else:
    st.dataframe(pd.DataFrame({
        "id": list(models), "name": [m.name for m in models.values()],
        "architecture": [m.architecture for m in models.values()],
        "parameters": [m.n_params for m in models.values()], "created": [m.created_at for m in models.values()],
        "metrics": [", ".join(f"{k}={v:.4g}" for k, v in m.metrics.items() if isinstance(v, int | float))
                    for m in models.values()],
    }).iloc[::-1], hide_index=True)

st.subheader("Training runs")
train_runs = [r for r in queries.recent_runs(key, kind="train", limit=100) if r.metrics.get("loss_curve")]
if not train_runs:
    st.info("No training runs with a loss curve yet.")
else:
    by_id = {r.id: r for r in train_runs}
    shown = st.multiselect("Runs", list(by_id), default=list(by_id)[:3],
                           format_func=lambda i: f"#{i} {by_id[i].name or ''}")
    curves = pd.concat([pd.DataFrame({"step": range(len(by_id[i].metrics["loss_curve"])),
                                      "loss": by_id[i].metrics["loss_curve"],
                                      "run": f"#{i} {by_id[i].name or ''}"}) for i in shown] or [pd.DataFrame()])
    if not curves.empty:
        st.altair_chart(
            alt.Chart(curves).mark_line().encode(
                x="step:Q", y=alt.Y("loss:Q", scale=alt.Scale(zero=False)), color="run:N",
                tooltip=["run", "step", alt.Tooltip("loss:Q", format=".4f")]).properties(height=280),
            width="stretch")
        st.dataframe(pd.DataFrame({"run": [f"#{i}" for i in shown],
                                   "final loss": [by_id[i].metrics["loss_curve"][-1] for i in shown],
                                   "steps": [len(by_id[i].metrics["loss_curve"]) for i in shown]}), hide_index=True)

    moe_runs = {r.id: r for r in train_runs if r.metrics.get("expert_load")}
    if moe_runs:
        st.subheader("Expert load (MoE)")
        run = layout.pick("MoE run", list(moe_runs.values()), lambda r: f"#{r.id} {r.name or ''}")
        load = pd.DataFrame({"expert": range(len(run.metrics["expert_load"])), "load": run.metrics["expert_load"]})
        uniform = float(load["load"].mean())
        st.metric("Busiest expert ÷ uniform share", f"{load['load'].max() / uniform:.2f}" if uniform else "—")
        st.altair_chart(
            (alt.Chart(load).mark_bar().encode(x=alt.X("expert:O", axis=alt.Axis(labelAngle=0)), y="load:Q",
                                               tooltip=["expert", "load"])
             + alt.Chart(pd.DataFrame({"uniform": [uniform]})).mark_rule(strokeDash=[4, 4]).encode(y="uniform:Q"))
            .properties(height=240),
            width="stretch")

for topic, title in (("kernels", "Kernel benchmarks"), ("generation", "Generation benchmarks")):
    st.subheader(title)
    if queries.BENCHMARK_RESULTS is None:
        st.info(f"No {topic} benchmark results yet — no benchmarks folder was found (the benchmark scripts ship "
                "with the source checkout); run them there, or start `alloyml ui --benchmarks DIR`.")
        continue
    rows = queries.benchmark_rows(topic, str(queries.BENCHMARK_RESULTS))
    if rows is None or rows.empty:
        st.info(f"No {topic} benchmark results yet in {queries.BENCHMARK_RESULTS} — run "
                f"`python benchmarks/{topic}.py --quick`.")
        continue
    st.caption(f"{queries.BENCHMARK_RESULTS / (topic + '.json')}, measured {rows.attrs.get('when')} on "
               f"{(rows.attrs.get('machine') or {}).get('gpu') or 'CPU'}.")
    shown_columns = [c for c in ("case", "metric", "alloyml", "ratio", "target", "met", "notes") if c in rows]
    st.dataframe(rows[shown_columns], hide_index=True)
    ratios = rows.dropna(subset=["ratio"]) if "ratio" in rows else rows.iloc[:0]
    if not ratios.empty:
        st.altair_chart(
            alt.Chart(ratios).mark_bar().encode(
                x=alt.X("ratio:Q", title="ratio (> 1: alloyml ahead)"), y=alt.Y("case:N", sort="-x", title=None),
                tooltip=[c for c in ("case", "ratio", "target", "met") if c in ratios])
            .properties(height=90 + 28 * len(ratios)),
            width="stretch")
