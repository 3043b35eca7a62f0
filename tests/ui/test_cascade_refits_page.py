"""The Cascades page's refit table on a small store of its own: both held-out evaluations and the decision of
each `cascade-refit` run of the selected cascade, as the test recorded them; other cascades' refits left out."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from alloyml.commands.ui import APP
from alloyml.platform.client import Platform

PLAN = {"frontier": [{"stages": [{"model": "a", "threshold": None}], "accuracy": 0.7, "mean_cost": 1.0}], "chosen": 0}


def _refit(platform, cascade, old_version, old, new, decision, new_version=None):
    with platform.run("refit", name=f"refit {cascade}", params={"cascade": cascade, "old_version": old_version,
                                                                "budget": 2.0}) as run:
        run.log_metrics(old_accuracy=old[0], old_mean_cost=old[1], new_accuracy=new[0], new_mean_cost=new[1],
                        held_out_queries=30, **({} if new_version is None else {"new_version": new_version}))
        run.set_tags(cascade=cascade, decision=decision, reason=f"because {decision}", served_version="not served")
    return run.id


def test_cascades_page_lists_refit_decisions_with_both_evaluations(alloy_home):
    with Platform() as platform:
        platform.store.save_cascade("aa", ["a"], [], [1.0], 2.0, PLAN)
        platform.store.save_cascade("zz", ["a"], [], [1.0], 2.0, PLAN)
        kept = _refit(platform, "aa", 1, (0.7, 1.5), (0.6, 2.5), "kept")
        promoted = _refit(platform, "aa", 1, (0.7, 1.5), (0.8, 1.9), "promoted", new_version=2)
        _refit(platform, "zz", 1, (0.1, 0.1), (0.2, 0.2), "promoted", new_version=2)
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    at.switch_page("views/cascades.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox[0].value == "aa"
    table = next(d.value for d in at.dataframe if "decision" in d.value.columns)
    assert table["run"].tolist() == [promoted, kept]  # newest first, cascade zz's refit not shown
    assert table["decision"].tolist() == ["promoted", "kept"]
    assert table["new version"].tolist()[0] == 2 and str(table["new version"].tolist()[1]) == "<NA>"
    assert table[["old accuracy", "new accuracy", "old mean cost", "new mean cost"]].astype(float).values.tolist() == [
        [0.7, 0.8, 1.5, 1.9], [0.7, 0.6, 1.5, 2.5]]
    assert table["budget"].astype(float).tolist() == [2.0, 2.0] and table["reason"].tolist()[1] == "because kept"
    assert any(f"Latest refit (run {promoted}): promoted to version 2" in c.value for c in at.caption)
