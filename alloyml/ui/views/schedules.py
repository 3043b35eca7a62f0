"""Schedules: each schedule's timetable, paused state, next and last firing, and its recent firings with
their outcomes and the status of the workflows they submitted. Times are UTC, as the store keeps them."""

import pandas as pd
import streamlit as st

from alloyml.cron import next_slot
from alloyml.ui import layout, queries

key = queries.current_store()
st.title("Schedules")

schedules = queries.schedules(key)
layout.stop_unless(schedules, "No schedules yet — add one with `alloyml schedule add NAME --workflow WF --cron ...`.")
now = pd.Timestamp.now("UTC").tz_localize(None).to_pydatetime()
rows = []
for schedule in schedules:
    last = queries.schedule_firings(key, schedule.id, limit=1)
    rows.append({
        "schedule": schedule.name, "workflow": schedule.workflow, "cron": schedule.cron,
        "timezone": schedule.timezone, "catch-up": schedule.catch_up,
        "state": "paused" if schedule.paused else "active",
        "next firing (UTC)": None if schedule.paused else next_slot(schedule.cron, schedule.timezone, now),
        "last slot (UTC)": last[0].slot if last else None, "last outcome": last[0].outcome if last else None,
        "last workflow": last[0].workflow_id if last else None,
        "workflow status": last[0].workflow_status if last else None,
    })
columns = st.columns(3)
columns[0].metric("Schedules", len(schedules))
columns[1].metric("Paused", sum(s.paused for s in schedules))
firings = queries.schedule_firings(key, limit=200)
columns[2].metric("Failed firings (recent)", sum(f.outcome == "failed" for f in firings))
st.dataframe(pd.DataFrame(rows), hide_index=True)

st.subheader("Recent firings")
names = {s.id: s.name for s in schedules}
st.dataframe(pd.DataFrame({
    "schedule": [names.get(f.schedule_id) for f in firings], "slot (UTC)": [f.slot for f in firings],
    "manual": [f.manual for f in firings], "outcome": [f.outcome for f in firings],
    "missed": [f.missed for f in firings], "workflow": [f.workflow_id for f in firings],
    "workflow status": [f.workflow_status for f in firings], "error": [f.error for f in firings],
}), hide_index=True)
