"""Cascades: versions, the cost–accuracy frontier with the chosen point and planned vs served spend, and —
from the request log — live stage hit rates, cost, latency and the budget guard's state."""

import altair as alt
import pandas as pd
import streamlit as st

from alloyml.ui import analysis, layout, queries

key = queries.current_store()
st.title("Cascades")

cascades = queries.cascades(key)
layout.stop_unless(cascades, "No cascades yet — fit one with `alloyml.routing` (or run `alloyml demo`).")


def stage_name(stage) -> str:
    return str(stage.get("name", stage)) if isinstance(stage, dict) else str(stage)


name = st.selectbox("Cascade", sorted({c.name for c in cascades}))
versions = {c.version: c for c in cascades if c.name == name}
st.dataframe(pd.DataFrame({
    "version": list(versions), "stages": [" → ".join(map(stage_name, c.stages)) for c in versions.values()],
    "thresholds": [", ".join(f"{t:g}" for t in c.thresholds) for c in versions.values()],
    "costs": [", ".join(f"{x:g}" for x in c.costs) for c in versions.values()],
    "budget": [c.budget for c in versions.values()], "created": [c.created_at for c in versions.values()],
}), hide_index=True)

refits = queries.cascade_refits(key, name)
if not refits.empty:
    st.subheader("Refits")
    latest = refits.iloc[0]
    verdict = (f"promoted to version {latest['new version']}" if latest["decision"] == "promoted"
               else f"kept version {latest['old version']}" if latest["decision"] == "kept" else latest["status"])
    st.caption(f"Latest refit (run {latest['run']}): {verdict} — {latest['reason']}. Rule: promote iff the new "
               "plan's held-out accuracy ≥ the old one's − tolerance and its held-out mean cost ≤ 1.05 × budget.")
    st.dataframe(refits, hide_index=True)

cascade = versions[st.selectbox("Version", sorted(versions, reverse=True))]
chosen = cascade.plan.get("chosen")

st.subheader("Cost–accuracy frontier")
frontier = analysis.frontier_frame(cascade.plan)
served = queries.cascade_requests(key, cascade.id)
if frontier.empty:
    st.info("This version's plan holds no frontier.")
else:
    tooltip = ["point", "cascade", alt.Tooltip("cost:Q", format=".4g"), alt.Tooltip("accuracy:Q", format=".4f")]
    line = alt.Chart(frontier).mark_line(point=True).encode(
        x=alt.X("cost:Q", title="mean cost per query"), y=alt.Y("accuracy:Q", scale=alt.Scale(zero=False)),
        tooltip=tooltip)
    marker = alt.Chart(frontier[frontier["chosen"]]).mark_point(size=250, color="#e53935", filled=True).encode(
        x="cost:Q", y="accuracy:Q", tooltip=tooltip)
    # Vertical rules: the budget (dashed) and, once requests are logged, what serving really spent.
    spend = pd.DataFrame({"spend": ["budget"], "cost": [cascade.budget]})
    if not served.empty:
        spend = pd.concat([spend, pd.DataFrame({"spend": ["served"], "cost": [float(served["cost"].mean())]})])
    rules = alt.Chart(spend).mark_rule(strokeDash=[4, 4]).encode(
        x="cost:Q", color=alt.Color("spend:N", scale=alt.Scale(domain=["budget", "served"],
                                                                range=["#555555", "#fb8c00"])),
        tooltip=["spend", alt.Tooltip("cost:Q", format=".4g")])
    st.altair_chart((line + marker + rules).properties(height=280), width="stretch")
    if chosen is not None and 0 <= chosen < len(frontier):
        point = frontier.iloc[chosen]
        st.caption(f"Chosen point {chosen}: {point['cascade']}, cost {point['cost']:g}, "
                   f"accuracy {point['accuracy']:.4f} (budget {cascade.budget:g}).")
        columns = st.columns(3)
        margin = "" if pd.isna(point["cost_se"]) else f" ± {point['cost_se']:.2g}"
        columns[0].metric("Planned spend", f"{point['cost']:.4g}", help="training mean cost per query" + margin)
        columns[1].metric("Served spend", f"{served['cost'].mean():.4g}" if not served.empty else "—",
                          delta=None if served.empty else f"{served['cost'].mean() - point['cost']:+.4g} vs planned",
                          delta_color="inverse", help="mean cost of the latest logged requests of this version")
        columns[2].metric("Budget", f"{cascade.budget:g}")
    st.dataframe(frontier.drop(columns="chosen"), hide_index=True)

live = st.toggle("Refresh every 5 s", value=False)


@st.fragment(run_every="5s" if live else None)
def request_log() -> None:
    st.subheader("Requests")
    requests = queries.cascade_requests(key, cascade.id)  # again: this part refreshes on its own
    if requests.empty:
        st.info("No requests logged for this version yet — serve it with `alloyml.routing`.")
        return
    state = analysis.budget_state(requests, cascade.budget, chosen)
    columns = st.columns(4)
    columns[0].metric("Requests (latest)", f"{len(requests):,}")
    columns[1].metric("Mean cost", f"{state.mean_cost:.4g}", delta=f"{state.mean_cost - cascade.budget:+.4g} vs budget",
                      delta_color="inverse")
    columns[2].metric("Latency p50", f"{requests['latency_ms'].quantile(0.5):.1f} ms")
    columns[3].metric("Latency p95", f"{requests['latency_ms'].quantile(0.95):.1f} ms")
    guard = (f"Budget guard: mean cost of the last {state.window:,} requests is {state.mean_cost:.4g} "
             f"against a budget of {state.budget:g}; frontier point in force: {state.frontier_point}"
             f" (planned: {state.chosen_point}).")
    if state.over_budget:
        st.error("Over budget. " + guard)
    elif state.fallen_back:
        st.warning("Fallen back to a cheaper point. " + guard)
    else:
        st.success("Within budget. " + guard)

    rates = analysis.stage_hit_rates(requests["stage"].to_numpy(), len(cascade.stages))
    hits = pd.DataFrame({"stage": [f"{i}: {stage_name(s)}" for i, s in enumerate(cascade.stages)],
                         "hit rate": rates})
    left, right = st.columns(2)
    left.altair_chart(
        alt.Chart(hits).mark_bar().encode(
            x=alt.X("hit rate:Q", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])),
            y=alt.Y("stage:N", sort=None, title=None), tooltip=["stage", alt.Tooltip("hit rate:Q", format=".1%")])
        .properties(height=220, title="Where requests were answered"),
        width="stretch")
    window = max(1, min(200, len(requests) // 20))
    trend = pd.DataFrame({"request": range(len(requests)),
                          "mean cost": requests["cost"].rolling(window, min_periods=1).mean()})
    right.altair_chart(
        (alt.Chart(trend).mark_line().encode(x="request:Q", y="mean cost:Q")
         + alt.Chart(pd.DataFrame({"budget": [cascade.budget]})).mark_rule(color="#e53935", strokeDash=[4, 4])
         .encode(y="budget:Q")).properties(height=220, title=f"Cost (rolling mean of {window})"),
        width="stretch")
    st.dataframe(hits.assign(**{"hit rate": (rates * 100).round(2)}).rename(columns={"hit rate": "hit rate %"}),
                 hide_index=True)


request_log()
