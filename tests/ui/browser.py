"""Drive the running dashboard in a real browser: the browser test (tests/ui/test_browser.py) and the README
screenshot (benchmarks/ui.py) use this; a test harness, so it lives with the tests, not in the package.

The browser is Debian's headless Chromium (`apt-get install chromium`), driven by Playwright for Python;
Playwright never downloads a browser of its own here.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alloyml.commands.ui import stop_process_group
from alloyml.errors import AlloyError, NotFoundError
from tests.waiting import wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_dashboard(env: dict[str, str], port: int | None = None, timeout: float = 60.0) -> Iterator[str]:
    """Start `alloyml ui` on 127.0.0.1 with `env` added to the environment; yields its base URL once
    Streamlit's health endpoint answers, and stops the server on exit."""
    port = port or free_port()
    command = [sys.executable, "-m", "alloyml.cli", "ui", "--port", str(port)]
    # Its own process group: `alloyml ui` runs Streamlit as a child, and both must stop together.
    server = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def healthy() -> bool:
            if server.poll() is not None:
                raise AlloyError(f"`alloyml ui` exited with {server.returncode}: {server.stdout.read().decode()}")
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as answer:
                    return answer.status == 200
            except OSError:
                return False

        wait_until(healthy, timeout, interval=0.25, message=f"the dashboard answering {base}/_stcore/health")
        yield base
    finally:
        stop_process_group(server, 10.0)
        server.stdout.close()



@contextmanager
def chromium_page(width: int = 1400, height: int = 1000):
    """A Playwright page in Debian's headless Chromium."""
    if not CHROMIUM.is_file():
        raise NotFoundError(f"{CHROMIUM} is missing; install it with `apt-get install -y chromium`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def open_page(page, url: str, expect_text: str, timeout_ms: float = 60_000) -> None:
    """Load `url`, wait for the Streamlit app and for `expect_text` to appear, and for rendering to settle."""
    page.goto(url, timeout=timeout_ms)
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout_ms)
    page.get_by_text(expect_text, exact=False).first.wait_for(timeout=timeout_ms)
    # Streamlit shows a status widget while the script runs, and skeletons until lazily loaded elements
    # (charts, graphs, code) have drawn; wait for both to go.
    page.wait_for_function(
        '!document.querySelector(\'[data-testid="stStatusWidget"], [data-testid^="stSkeleton"]\')',
        timeout=timeout_ms)
