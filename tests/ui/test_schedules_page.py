"""The Schedules page on a small store of its own: the next firing shown is recomputed here by hand, the
last firing, paused state and failure count come from what the test wrote."""

from __future__ import annotations

import datetime as dt

import pandas as pd
from streamlit.testing.v1 import AppTest

from alloyml.commands.ui import APP
from alloyml.platform.client import Platform


def test_schedules_page_shows_next_and_last_firings(alloy_home):
    with Platform() as platform:
        store = platform.store
        daily = store.add_schedule("daily", "demo", "0 3 * * *", "UTC", {"config": "quick"}, "latest")
        store.add_schedule("paused-one", "demo", "*/5 * * * *", "Europe/Berlin", {"config": "quick"}, "skip")
        store.set_schedule_paused("paused-one", True)
        workflow = store.create_workflow("demo", {}, {"steps": []}, [])
        ok = store.claim_firing(daily.id, dt.datetime(2026, 1, 1, 3))
        store.finish_firing(ok, "submitted", workflow_id=workflow.id)
        bad = store.claim_firing(daily.id, dt.datetime(2026, 1, 2, 3))
        store.finish_firing(bad, "failed", error="RuntimeError: cluster unreachable")
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    at.switch_page("views/schedules.py").run()
    assert not at.exception, [e.value for e in at.exception]
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    today_3 = now.replace(hour=3, minute=0, second=0, microsecond=0)
    expected_next = today_3 if now < today_3 else today_3 + dt.timedelta(days=1)
    table = next(d.value for d in at.dataframe if "next firing (UTC)" in d.value.columns).set_index("schedule")
    assert pd.Timestamp(table.loc["daily", "next firing (UTC)"]) == pd.Timestamp(expected_next)
    assert pd.isna(table.loc["paused-one", "next firing (UTC)"]) and table.loc["paused-one", "state"] == "paused"
    assert pd.Timestamp(table.loc["daily", "last slot (UTC)"]) == pd.Timestamp(2026, 1, 2, 3)
    assert table.loc["daily", "last outcome"] == "failed"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"Schedules": "2", "Paused": "1", "Failed firings (recent)": "1"}
    firings = next(d.value for d in at.dataframe if "slot (UTC)" in d.value.columns)
    assert list(firings["outcome"]) == ["failed", "submitted"]
    assert pd.isna(firings["workflow status"].iloc[0]) and firings["workflow status"].iloc[1] == "pending"
