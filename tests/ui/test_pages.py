"""Every dashboard page rendered with Streamlit's AppTest on the seeded store: the numbers the pages show
are recomputed here from what the fixture wrote."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from alloyml.commands.ui import APP

PAGES = ("overview", "data_values", "merges", "cascades", "workflows", "models", "automl")


def render(page: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    for chart in at.get("vega_lite_chart"):
        # Vega-Lite reads "a.b" as nested field access: such a chart draws nothing.
        assert not [f for f in chart_fields(json.loads(chart.proto.spec)) if "." in f], page
    return at


def chart_fields(spec) -> list[str]:
    if isinstance(spec, dict):
        own = [spec["field"]] if isinstance(spec.get("field"), str) else []
        return own + [f for value in spec.values() for f in chart_fields(value)]
    if isinstance(spec, list):
        return [f for value in spec for f in chart_fields(value)]
    return []


def chart_frames(chart) -> list[pd.DataFrame]:
    """The data sets a chart element ships (Arrow IPC streams in the proto)."""
    import pyarrow as pa

    return [pa.ipc.open_stream(d.data.data).read_pandas() for d in chart.proto.datasets]


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def frame_with(at: AppTest, column: str) -> pd.DataFrame:
    frames = [d.value for d in at.dataframe if column in d.value.columns or column == d.value.index.name]
    assert frames, f"no table with column {column!r}"
    return frames[0]


def graphviz_specs(at: AppTest) -> list[str]:
    return [element.proto.spec for element in at.get("graphviz_chart")]


def spearman_closed_form(a: np.ndarray, b: np.ndarray) -> float:
    """1 - 6 Σ d² / (n (n² - 1)) for data without ties."""
    ranks_a, ranks_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    n = len(a)
    return 1 - 6 * float(((ranks_a - ranks_b) ** 2).sum()) / (n * (n * n - 1))


def test_overview_counts_and_lists_runs(seeded_env):
    at = render("overview")
    shown = metrics(at)
    # Seeded: 2 valuation, 2 train (one raised), 1 merge, 1 tune.
    assert shown["Runs"] == "6" and shown["Failed"] == "1" and shown["Done"] == "5"
    runs = frame_with(at, "kind")
    assert set(runs["name"]) >= {"tmc_shapley toy", "diverged", "knn search"}
    assert runs.loc[runs["name"] == "diverged", "status"].item() == "failed"
    workflows = frame_with(at, "created")
    assert workflows.loc[workflows["name"] == "value-and-merge", "status"].item() == "failed"


def test_data_values_page_shows_seeded_values(seeded_env):
    s = seeded_env
    at = render("data_values")
    at.selectbox[0].set_value(s.run_ids["tmc_shapley"]).run()
    assert not at.exception
    shown = metrics(at)
    assert shown["Points"] == "40" and shown["Method"] == "tmc_shapley"
    assert shown["Noisy-label AUC"] == f"{0.8125:.3f}"

    tmc = s.values["tmc_shapley"]
    lowest, highest = (at.dataframe[0].value, at.dataframe[1].value)
    order = np.argsort(tmc)
    assert lowest["point"].tolist() == order[:10].tolist()
    assert highest["point"].tolist() == order[::-1][:10].tolist()
    np.testing.assert_allclose(lowest["value"], tmc[order[:10]])
    # Raw rows joined from the stored dataset.
    np.testing.assert_allclose(lowest["f0"], s.x[order[:10], 0])
    assert lowest["label"].tolist() == s.y[order[:10]].tolist()

    # 3 of the 4 flipped points are among the 4 lowest (the fixture flipped ranks 0, 1, 2 and 5).
    assert shown["Flipped points among the lowest-valued |flipped|"] == "75.0%"

    correlation = frame_with(at, f"#{s.run_ids['knn_shapley']} knn_shapley")
    expected = spearman_closed_form(tmc, s.values["knn_shapley"])
    assert correlation.iloc[0, 1] == pytest.approx(round(expected, 4))
    assert expected < 1


def test_merges_page_shows_lineage_and_task_scores(seeded_env):
    s = seeded_env
    at = render("merges")
    assert metrics(at)["Method"] == "ties"
    (dot,) = graphviz_specs(at)
    assert dot.count("merge input (0.5)") == 2 and "merged-ab" in dot and "base-a" in dot
    assert any('"density": 0.6' in j.proto.body or '"density":0.6' in j.proto.body for j in at.json)
    table = frame_with(at, "merged − best input")
    for task in ("task_a", "task_b"):
        best_input = max(s.model_scores["base-a"][task], s.model_scores["base-b"][task])
        assert table.loc[task, "merged − best input"] == pytest.approx(
            round(s.model_scores["merged-ab"][task] - best_input, 4))


def test_cascades_page_hit_rates_cost_and_guard(seeded_env):
    s = seeded_env
    at = render("cascades")
    versions = frame_with(at, "version")
    assert versions["version"].tolist() == [1, 2]
    hits = frame_with(at, "hit rate %")
    expected = [100 * float(np.mean(s.stages == stage)) for stage in range(3)]
    np.testing.assert_allclose(hits["hit rate %"], expected)
    mean_cost = float(np.mean(s.request_costs))
    assert metrics(at)["Mean cost"] == f"{mean_cost:.4g}"
    assert mean_cost > 4.0 and any("Over budget" in e.value for e in at.error)
    assert "Chosen point 1: small (≥ 0.850) → medium, cost 3" in " ".join(c.value for c in at.caption)


def test_cascades_page_draws_the_frontier_with_planned_and_served_spend(seeded_env):
    s = seeded_env
    at = render("cascades")
    drawn = frame_with(at, "accuracy")  # the frontier's table, what the chart is drawn from
    assert list(zip(drawn["cost"], drawn["accuracy"], strict=True)) == s.frontier
    assert np.isfinite(drawn["cost"]).all()
    [chart] = [c for c in at.get("vega_lite_chart") if "accuracy" in chart_fields(json.loads(c.proto.spec))]
    data = chart_frames(chart)  # what the chart is drawn from: the line, the chosen point, the spend rules
    line = [d for d in data if "accuracy" in d.columns and len(d) == 3]
    assert len(line) == 1 and list(zip(line[0]["cost"], line[0]["accuracy"], strict=True)) == s.frontier
    chosen = [d for d in data if "accuracy" in d.columns and len(d) == 1]
    assert len(chosen) == 1 and (chosen[0]["cost"].item(), chosen[0]["accuracy"].item()) == s.frontier[1]
    [rules] = [d for d in data if "spend" in d.columns]
    assert dict(zip(rules["spend"], rules["cost"], strict=True)) == pytest.approx(
        {"budget": 4.0, "served": float(np.mean(s.request_costs))})
    shown = metrics(at)
    assert shown["Planned spend"] == f"{s.frontier[1][0]:.4g}"
    assert shown["Served spend"] == f"{float(np.mean(s.request_costs)):.4g}"
    assert shown["Budget"] == "4"


def test_workflows_page_dag_timings_and_traceback(seeded_env):
    at = render("workflows")
    shown = metrics(at)
    assert shown["Retries"] == "2" and shown["Steps done"] == "2 / 3" and shown["Status"] == "failed"
    steps = frame_with(at, "step")
    assert steps["seconds"].tolist() == pytest.approx([2.0, 7.5, 1.0])
    (dot,) = graphviz_specs(at)
    assert "s0 -> s1" in dot and "s1 -> s2" in dot and "failed · 1.0s · 3 attempts" in dot
    assert any("shapes differ: 64 vs 60" in c.value for c in at.code)


def test_models_page_loss_expert_load_and_benchmarks(seeded_env, tmp_path, monkeypatch):
    from alloyml.ui import queries

    (tmp_path / "kernels.json").write_text(json.dumps({"when": "2026-01-01T00:00:00Z", "machine": {"gpu": None},
                                                        "rows": [{"case": "gla chunk T=2048", "metric": "seconds",
                                                                  "alloyml": 0.25, "ratio": 3.5, "met": True}]}))
    monkeypatch.setattr(queries, "BENCHMARK_RESULTS", tmp_path)
    at = render("models")
    assert metrics(at)["Busiest expert ÷ uniform share"] == f"{0.4 / np.mean([0.4, 0.2, 0.2, 0.2]):.2f}"
    assert frame_with(at, "final loss")["final loss"].tolist() == [1.125]
    assert set(frame_with(at, "architecture")["name"]) == {"base-a", "base-b", "merged-ab"}
    kernels = frame_with(at, "case")
    assert kernels["case"].tolist() == ["gla chunk T=2048"] and kernels["ratio"].tolist() == [3.5]
    assert any("generation" in i.value for i in at.info)


def test_automl_page_best_trial_and_totals(seeded_env):
    s = seeded_env
    at = render("automl")
    shown = metrics(at)
    scores = [t["score"] for t in s.trials]
    assert shown["Trials"] == str(len(s.trials))
    assert shown["Best score"] == f"{max(scores):.4g}" and shown["Best trial"] == str(int(np.argmax(scores)))
    assert shown["Total cost"] == f"{sum(t['cost'] for t in s.trials):.4g}"
    table = frame_with(at, "param.weights")
    assert table["metric.score"].tolist() == scores


def test_every_page_explains_an_empty_store(alloy_home, tmp_path, monkeypatch):
    from alloyml.ui import queries

    monkeypatch.setattr(queries, "BENCHMARK_RESULTS", tmp_path)  # no benchmark files either
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    for page in PAGES:
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert at.info and "yet" in at.info[0].value, page
        assert not at.dataframe and not at.metric, page


def test_bad_store_url_is_reported_not_raised(monkeypatch, tmp_path):
    monkeypatch.setenv("ALLOYML_DB_URL", "oracle://nowhere/db")
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.exception
    assert "Cannot open the store" in at.error[0].value and "oracle" in at.error[0].value


def test_benchmark_folder_is_configurable_and_its_absence_is_explained(seeded_env, tmp_path, monkeypatch):
    from alloyml.ui import queries

    assert queries.benchmark_results_dir(["--benchmarks", str(tmp_path)]) == tmp_path
    checkout = Path(queries.__file__).resolve().parents[2] / "benchmarks"
    assert queries.benchmark_results_dir([]) == (checkout / "results" if (checkout / "_common.py").is_file() else None)
    monkeypatch.setattr(queries, "BENCHMARK_RESULTS", None)  # an installed package: no benchmarks folder
    at = render("models")
    assert not at.exception
    assert [i.value for i in at.info if "benchmark" in i.value][0].startswith("No kernels benchmark results yet")
    assert any("--benchmarks DIR" in i.value for i in at.info)
