import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ALLOYML = str(Path(sys.executable).parent / "alloyml")


def _run(args, home, **env):
    return subprocess.run([ALLOYML, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "ALLOYML_HOME": str(home), **env})


def test_help_answers_under_a_second(tmp_path):
    _run(["--help"], tmp_path)  # warm the filesystem cache
    start = time.perf_counter()
    result = _run(["--help"], tmp_path)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0 and "db" in result.stdout and "runs" in result.stdout
    assert elapsed < 1.0, f"alloyml --help took {elapsed:.2f} s"


def test_db_upgrade_then_runs_list(tmp_path):
    url = f"sqlite:///{tmp_path / 'explicit.db'}"
    refused = _run(["runs", "list"], tmp_path, ALLOYML_DB_URL=url)
    assert refused.returncode == 2 and "alloyml db upgrade" in refused.stderr
    upgraded = _run(["db", "upgrade"], tmp_path, ALLOYML_DB_URL=url)
    assert upgraded.returncode == 0 and "revision" in upgraded.stdout
    from alloyml.platform.client import Platform

    with Platform(db_url=url, home=tmp_path) as platform:
        run = platform.store.start_run("train", name="visible-run")
        platform.store.finish_run(run.id, metrics={"loss": 0.25})
    listed = _run(["runs", "list"], tmp_path, ALLOYML_DB_URL=url, COLUMNS="200")
    assert listed.returncode == 0 and "visible-run" in listed.stdout and "loss=0.25" in listed.stdout


@pytest.mark.parametrize("url", ["mysql+nonsense:/x", "bogus"])
def test_malformed_url_is_a_clean_error(tmp_path, url):
    result = _run(["runs", "list"], tmp_path, ALLOYML_DB_URL=url)
    assert result.returncode == 2 and "ALLOYML_DB_URL" in result.stderr and "Traceback" not in result.stderr
