"""Nodes that share no disk: a two-node Ray cluster on this machine whose nodes (and the driver, and the
process that resumes) each have their own ALLOYML_HOME, with PostgreSQL (a fresh database) as the store and
an S3 server (moto, 127.0.0.1) for artifacts. The built-in `valuation`, `merge` and `demo` workflows run
with their steps pinned to both nodes by custom resources; the driver is killed (SIGKILL) mid-run and
`alloyml workflow resume` from a third process finishes them. Then: the results match the libraries run
here, every step ran where it was pinned, nothing went to a node's local artifact folder, and the S3
secret is in no table, no log and no output."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from tests.conftest import PG_ADMIN_URL, S3_TEST_SECRET
from tests.waiting import wait_until
from tests.workflows.test_cluster import RAY_START, _free_port

pytestmark = [pytest.mark.ray, pytest.mark.postgres, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
NODE_A = {"value_rows": 1, "prepare_data": 1, "value_knn": 1, "value_banzhaf": 1, "value_tracin": 1,
          "clean_and_retrain": 1, "build_cascade": 1}
NODE_B = {"merge_and_record": 1, "train_small": 1, "train_large": 1, "finetune_increment": 1, "finetune_reverse": 1,
          "merge_specialists": 1, "tune_merged": 1, "serve_cascade": 1}

DRIVER = """
import json, sys, tempfile
from pathlib import Path
import numpy as np, torch
from safetensors.torch import save_file
from alloyml.platform.client import Platform
from alloyml.workflows import submit
from alloyml.workflows.builtin import get_builtin
from alloyml.workflows.builtin.demo import DEMO_CONFIGS
from alloyml.workflows.recording import store_location
plan = json.loads(sys.argv[1])
with Platform(upgrade=True) as platform:
    g = torch.Generator().manual_seed(0)
    keys = {}
    for name in ("a", "b"):  # two checkpoints stored as artifact folders: no path on this disk travels
        folder = Path(tempfile.mkdtemp()) / name
        folder.mkdir()
        tensors = {"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g)}
        save_file(tensors, str(folder / "model.safetensors"))
        keys[name] = platform.artifacts.put_directory(folder)
    data = {k: np.asarray(v) for k, v in plan["valuation"].items()}
    inputs = {
        "valuation": {**data, "method": "tmc_shapley", "samples": plan["samples"], "seed": 0, "flipped": None},
        "merge": {"config": {"merge_method": "linear",
                             "models": [{"model": keys["a"], "parameters": {"weight": 0.25}},
                                        {"model": keys["b"], "parameters": {"weight": 0.75}}]},
                  "out_dir": None},
        "demo": {"config": {**DEMO_CONFIGS["quick"], "serve_port": plan["serve_port"]}},
    }
    handles = {}
    for name in plan["workflows"]:
        workflow = get_builtin(name).build()
        for step_name in workflow.nodes:
            node = "node_a" if step_name in plan["node_a"] else "node_b" if step_name in plan["node_b"] else None
            if node:
                workflow.place(step_name, resources={node: 1})
        handles[name] = submit(platform, workflow, {"store": store_location(platform), **inputs[name]})
    print(json.dumps({"ids": {n: h.id for n, h in handles.items()}, "models": keys}), flush=True)
    for handle in handles.values():
        handle.wait()
"""


@pytest.fixture
def fresh_database():
    name = "alloyml_cluster_" + uuid.uuid4().hex[:10]
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield str(sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False))
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _start_node(env: dict, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", RAY_START, "start", "--node-ip-address", "127.0.0.1", "--num-cpus", "2",
         "--disable-usage-stats", "--block", "--dashboard-agent-listen-port", str(_free_port()),
         "--metrics-export-port", str(_free_port()), *args],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _stop(processes) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    wait_until(lambda: all(p.poll() is not None for p in processes), 20, interval=0.2, required=False)
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _steps(db_url: str) -> dict[int, dict[str, str]]:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT workflow_id, name, state FROM workflow_step")).all()
    finally:
        engine.dispose()
    found: dict[int, dict[str, str]] = {}
    for workflow_id, name, state in rows:
        found.setdefault(workflow_id, {})[name] = state
    return found


def _everything_in(db_url: str) -> str:
    engine = sa.create_engine(db_url)
    parts = []
    with engine.connect() as connection:
        for table in sa.inspect(connection).get_table_names():
            parts.append(repr(connection.execute(sa.text(f'SELECT * FROM "{table}"')).all()))
    engine.dispose()
    return "\n".join(parts)


def _files_text(root: Path) -> str:
    return "\n".join(p.read_bytes().decode("latin-1") for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def test_workflows_survive_a_killed_driver_on_nodes_that_share_no_disk(s3_artifacts, s3_server, fresh_database,
                                                                       tmp_path):
    from sklearn.datasets import make_classification

    _, s3_env = s3_server
    homes = {role: tmp_path / f"home-{role}" for role in ("a", "b", "driver", "resumer")}
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="rsd", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ALLOYML_", "AWS_"))}
    base.update(RAY_AUTH_MODE="disabled", PYTHONPATH=str(REPO), ALLOYML_DB_URL=fresh_database,
                ALLOYML_ARTIFACTS=s3_artifacts, **s3_env)
    nodes = [_start_node({**base, "ALLOYML_HOME": str(homes["a"])}, "--head", "--port", str(port),
                         "--include-dashboard=false", "--temp-dir", temp_dir, "--resources", json.dumps({"node_a": 4})),
             _start_node({**base, "ALLOYML_HOME": str(homes["b"])}, "--address", f"127.0.0.1:{port}",
                         "--resources", json.dumps({"node_b": 4}))]
    client = {**base, "ALLOYML_RAY_ADDRESS": f"127.0.0.1:{port}"}
    x, y = make_classification(n_samples=60, n_features=4, n_informative=3, n_redundant=0, random_state=0)
    plan = {"workflows": ["valuation", "merge", "demo"], "samples": 40, "serve_port": _free_port(),
            "node_a": sorted(NODE_A), "node_b": sorted(NODE_B),
            "valuation": {"x_train": x[:30].tolist(), "y_train": y[:30].tolist(), "x_test": x[30:].tolist(),
                          "y_test": y[30:].tolist()}}
    outputs = []
    started = time.monotonic()
    try:
        driver_log = tmp_path / "driver.log"
        with open(driver_log, "w") as log:
            driver = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(plan)], cwd=REPO, stdout=log,
                                      stderr=subprocess.STDOUT, env={**client, "ALLOYML_HOME": str(homes["driver"])})
        def submitted_line():
            return next((line for line in driver_log.read_text().splitlines() if line.startswith('{"ids"')), None)

        wait_until(lambda: submitted_line() or driver.poll() is not None, 120, interval=0.2)
        assert driver.poll() is None, driver_log.read_text()[-3000:]
        submitted = json.loads(submitted_line())
        ids = submitted["ids"]

        def mid_run():  # the demo has finished a step and is running others; valuation is running
            steps = _steps(fresh_database)
            demo = steps.get(ids["demo"], {}).values()
            valuing = steps.get(ids["valuation"], {}).get("value_rows")
            return "done" in demo and "running" in demo and valuing == "running"

        wait_until(mid_run, 240, interval=0.2)
        driver.kill()  # SIGKILL: no cleanup, the lease and the running steps are left behind
        driver.wait()
        outputs.append(driver_log.read_text())
        before = _steps(fresh_database)
        assert before[ids["demo"]] != {} and set(before[ids["demo"]].values()) != {"done"}

        resumers = [subprocess.run([sys.executable, "-m", "alloyml.cli", "workflow", "resume", str(i), "--quiet"],
                                   cwd=REPO, env={**client, "ALLOYML_HOME": str(homes["resumer"])},
                                   capture_output=True, text=True, timeout=400)
                    for i in ids.values()]
        for done in resumers:
            outputs += [done.stdout, done.stderr]
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    finally:
        _stop(nodes)
        ray_logs = _files_text(Path(temp_dir)) if Path(temp_dir).exists() else ""
        shutil.rmtree(temp_dir, ignore_errors=True)
    elapsed = time.monotonic() - started

    after = _steps(fresh_database)
    assert all(state == "done" for i in ids.values() for state in after[i].values()), after
    # steps ran where they were pinned: the resources are in the stored spec (kept by resume), and the
    # folders each node fetched sit in that node's own cache
    from alloyml.platform.client import Platform

    with Platform(db_url=fresh_database, home=tmp_path / "home-check", artifacts=s3_artifacts) as platform:
        for name, workflow_id in ids.items():
            record = platform.store.get_workflow(workflow_id)
            assert record.status == "done"
            for item in record.spec["steps"]:
                pinned = item["options"]["resources"]
                assert pinned == ({"node_a": 1} if item["name"] in NODE_A else
                                  {"node_b": 1} if item["name"] in NODE_B else {}), (name, item)
        from alloyml.workflows import WorkflowHandle

        valued = WorkflowHandle(platform, ids["valuation"]).result()
        merged = WorkflowHandle(platform, ids["merge"]).result()
        summary = WorkflowHandle(platform, ids["demo"]).result()
        values = platform.store.all_values(valued["run_id"])
        merged_dir = platform.artifacts.get_directory(merged["output_path"])
        sources = {k: platform.artifacts.get_directory(v) for k, v in submitted["models"].items()}
        models = {m.name: m for m in platform.store.list_models()}

    # the libraries, run here on the same inputs
    from safetensors.torch import load_file

    from alloyml.workflows.builtin.valuation import compute_values

    expected = compute_values("tmc_shapley", x[:30], y[:30], x[30:], y[30:], plan["samples"], 0)
    np.testing.assert_allclose(values.values, expected.values, rtol=1e-9, atol=1e-12)
    a, b = (load_file(str(sources[k] / "model.safetensors")) for k in ("a", "b"))
    out = {}
    for shard in merged_dir.glob("*.safetensors"):
        out.update(load_file(str(shard)))
    for key in a:
        np.testing.assert_allclose(out[key].numpy(), (0.25 * a[key] + 0.75 * b[key]).numpy(), rtol=1e-6)
    assert merged["output_path"].startswith("model/") and summary["serving"]["requests"] > 0
    assert {"demo-small", "demo-merged", "merged-linear"} <= set(models)
    assert all(m.artifact.startswith("model/") for n, m in models.items() if n.startswith(("demo-", "merged-")))

    # nothing was shared by accident: no node kept artifacts locally; each fetched folders into its own cache
    for home in homes.values():
        assert not (home / "artifacts").exists() and not (home / "models").exists()
    assert (homes["a"] / "cache" / "dirs").is_dir() and (homes["b"] / "cache" / "dirs").is_dir()
    assert not (homes["driver"] / "cache" / "dirs").exists()

    # the S3 secret is nowhere: not in the store, not in Ray's logs, not in any output
    haystack = "\n".join([_everything_in(fresh_database), ray_logs, *outputs,
                          *(_files_text(h) for h in homes.values() if h.exists())])
    assert S3_TEST_SECRET not in haystack
    print(f"cluster test body: {elapsed:.1f} s")
