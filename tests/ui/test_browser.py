"""One real-browser check: `alloyml ui` serves the seeded store and headless Chromium sees two pages."""

from __future__ import annotations

import pytest

from tests.ui import browser

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not browser.CHROMIUM.is_file(), reason="needs Debian's chromium (make browser-deps)"),
]


def metric_values(page) -> list[str]:
    return [text.strip() for text in page.locator('[data-testid="stMetricValue"]').all_inner_texts()]


def test_dashboard_in_chromium(seeded_store, tmp_path):
    pytest.importorskip("playwright")
    s = seeded_store
    with browser.running_dashboard({"ALLOYML_HOME": str(s.home)}) as base, browser.chromium_page() as page:
        browser.open_page(page, base, "Recent runs")
        # Tables draw on a canvas; metrics are text. Seeded: 6 runs, 0 running, 5 done, 1 failed.
        assert metric_values(page) == ["6", "0", "5", "1"]
        page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)

        browser.open_page(page, f"{base}/data_values", "Lowest- and highest-valued points")
        assert metric_values(page)[:2] == [str(len(s.x)), "knn_shapley"]
        page.screenshot(path=str(tmp_path / "data_values.png"), full_page=True)
    assert (tmp_path / "overview.png").stat().st_size > 10_000
    assert (tmp_path / "data_values.png").stat().st_size > 10_000
