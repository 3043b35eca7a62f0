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
    found = _run(["runs", "list", "--filter", "metrics.loss < 0.3"], tmp_path, ALLOYML_DB_URL=url, COLUMNS="200")
    assert found.returncode == 0 and "visible-run" in found.stdout
    none = _run(["runs", "list", "--filter", "metrics.loss > 0.3"], tmp_path, ALLOYML_DB_URL=url, COLUMNS="200")
    assert none.returncode == 0 and "visible-run" not in none.stdout
    bad = _run(["runs", "list", "--filter", "metrics.loss >"], tmp_path, ALLOYML_DB_URL=url)
    assert bad.returncode == 2 and "run filter" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("url", ["mysql+nonsense:/x", "bogus"])
def test_malformed_url_is_a_clean_error(tmp_path, url):
    result = _run(["runs", "list"], tmp_path, ALLOYML_DB_URL=url)
    assert result.returncode == 2 and "ALLOYML_DB_URL" in result.stderr and "Traceback" not in result.stderr


def _no_traceback(result, code=2):
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return result.stderr


def test_cli_errors_are_one_line_not_tracebacks(tmp_path):
    import numpy as np

    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not an sqlite database" * 100)
    err = _no_traceback(_run(["db", "upgrade"], tmp_path, ALLOYML_DB_URL=f"sqlite:///{corrupt}"))
    assert "not a database" in err
    err = _no_traceback(_run(["db", "upgrade"], tmp_path,
                             ALLOYML_DB_URL="postgresql+psycopg://root@127.0.0.1:5432/no_such_db_alloyml"))
    assert "no_such_db_alloyml" in err
    err = _no_traceback(_run(["runs", "list"], tmp_path, ALLOYML_DB_URL="mysql://u@h/db"))
    assert "ALLOYML_DB_URL" in err and "mysql" in err
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    err = _no_traceback(_run(["db", "upgrade"], tmp_path, ALLOYML_DB_URL=f"sqlite:///{blocker}/sub/x.db"))
    assert "cannot create the folder" in err
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for path, message in ((tmp_path / "missing.npy", "does not exist"), (tmp_path / "pickled.npy", "not a plain")):
        err = _no_traceback(_run(["workflow", "run", "sklearn-train-score", "--input", f"x_train=@{path}"],
                                 tmp_path))
        assert message in err


def test_newer_revision_is_explained_and_db_check_and_downgrade(tmp_path):
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'store.db'}"
    assert _run(["db", "upgrade"], tmp_path, ALLOYML_DB_URL=url).returncode == 0
    checked = _run(["db", "check"], tmp_path, ALLOYML_DB_URL=url, COLUMNS="200")
    assert checked.returncode == 0 and checked.stdout.count(" ok ") >= 4, checked.stdout
    down = _run(["db", "downgrade", "0001"], tmp_path, ALLOYML_DB_URL=url)
    assert down.returncode == 0 and "revision 0001" in down.stdout
    behind = _run(["db", "check"], tmp_path, ALLOYML_DB_URL=url, COLUMNS="200")
    assert behind.returncode == 1 and "behind" in behind.stdout
    assert _run(["db", "upgrade"], tmp_path, ALLOYML_DB_URL=url).returncode == 0
    engine = sa.create_engine(url)
    with engine.begin() as connection:  # as a newer alloyml would leave it
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    err = _no_traceback(_run(["runs", "list"], tmp_path, ALLOYML_DB_URL=url))
    assert "newer alloyml" in err and "db upgrade" not in err
    err = _no_traceback(_run(["db", "upgrade"], tmp_path, ALLOYML_DB_URL=url))
    assert "newer alloyml" in err


def test_db_check_finds_a_truncated_artifact(tmp_path):
    from alloyml.platform.client import Platform

    url = f"sqlite:///{tmp_path / 'store.db'}"
    with Platform(db_url=url, home=tmp_path, upgrade=True) as platform:
        key = platform.artifacts.put_array(list(range(1000)))
        path = platform.artifacts.path_of(key)
    path.write_bytes(path.read_bytes()[:200])
    checked = _run(["db", "check"], tmp_path, ALLOYML_DB_URL=url, COLUMNS="300")
    assert checked.returncode == 1 and "1 of 1 damaged" in checked.stdout, checked.stdout


def test_ui_stops_on_sigterm_and_leaves_no_streamlit_behind(tmp_path):
    import signal
    import socket

    with socket.socket() as probe:  # a free port on the loopback interface
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # 127.0.0.2 is loopback too, but not the default: the no-authentication warning must be printed
    ui = subprocess.Popen([ALLOYML, "ui", "--port", str(port), "--address", "127.0.0.2"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env={**os.environ, "ALLOYML_HOME": str(tmp_path)})
    try:
        line = ui.stdout.readline()
        child = int(line.rsplit("pid ", 1)[1].rstrip(")\n"))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # until Streamlit serves
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.2", port)) == 0:
                    break
            time.sleep(0.2)
        else:
            pytest.fail("the dashboard never started listening")
        start = time.monotonic()
        ui.send_signal(signal.SIGTERM)
        ui.wait(timeout=15)
        assert time.monotonic() - start < 10
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)
        err = ui.stderr.read()
        assert "no authentication" in err and "Traceback" not in err
    finally:
        if ui.poll() is None:
            ui.kill()
