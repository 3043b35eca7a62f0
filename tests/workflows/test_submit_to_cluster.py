"""A laptop submits to a cluster: a real Ray head (its own temp dir, 127.0.0.1, token authentication on)
with a Ray Client server and the dashboard's Jobs API, PostgreSQL (a fresh database) as the store and the
moto S3 server for artifacts. `alloyml workflow run valuation` is submitted from another process with its
own ALLOYML_HOME, once through `--address ray://...` (that process drives, the head runs the steps) and
once through `--address http://...` (the Jobs API: the head drives too, with its own settings; the
submitting process has no store settings at all). Both runs are recorded in the store, finish, and hold
the values the library computes here; Ray's token is in no table, no output and no job entrypoint; a
wrong token is refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import S3_TEST_SECRET
from tests.waiting import wait_until
from tests.workflows.test_cluster import _free_port
from tests.workflows.test_cluster_storage import _everything_in, _start_node, _stop
from tests.workflows.test_cluster_storage import fresh_database as fresh_database  # the fixture

pytestmark = [pytest.mark.ray, pytest.mark.postgres, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def _cli(env: dict, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alloyml.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _workflow_id(output: str) -> int:
    line = next(line for line in output.splitlines() if line.startswith("workflow ") and "submitted" in line)
    return int(line.split()[1])


def test_a_laptop_submits_through_ray_client_and_the_jobs_api(s3_artifacts, s3_server, fresh_database, tmp_path):
    from sklearn.datasets import make_classification

    from alloyml.platform.client import Platform
    from alloyml.workflows import WorkflowHandle
    from alloyml.workflows.builtin.valuation import compute_values

    _, s3_env = s3_server
    token = "alloyml-ray-token-" + uuid.uuid4().hex  # what `ray get-auth-token --generate` would make
    temp_dir = tempfile.mkdtemp(prefix="rsj", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    gcs, client_port, dashboard_port = _free_port(), _free_port(), _free_port()
    plain = {k: v for k, v in os.environ.items() if not k.startswith(("ALLOYML_", "AWS_", "RAY_"))}
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    # One node: Ray's rewrite of 127.0.0.1 to the outward IP can be switched off outright, which keeps the
    # processes the Ray Client server starts per client on loopback too.
    # A job's entrypoint runs `python` from the head's PATH: this interpreter, as on a cluster image.
    head_env = {**plain, **auth, **s3_env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONPATH": str(REPO),
                "PATH": f"{Path(sys.executable).parent}:{plain.get('PATH', '')}", "ALLOYML_DB_URL": fresh_database,
                "ALLOYML_ARTIFACTS": s3_artifacts, "ALLOYML_HOME": str(tmp_path / "home-head")}
    with Platform(db_url=fresh_database, home=tmp_path / "home-setup", artifacts=s3_artifacts, upgrade=True):
        pass  # the schema, as `alloyml db upgrade` makes it on a new cluster
    head = _start_node(head_env, "--head", "--port", str(gcs), "--temp-dir", temp_dir,
                       "--ray-client-server-port", str(client_port), "--include-dashboard=true",
                       "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port))
    x, y = make_classification(n_samples=40, n_features=4, n_informative=3, n_redundant=0, random_state=1)
    split = {"x_train": x[:24], "y_train": y[:24], "x_test": x[24:], "y_test": y[24:]}
    for name, array in split.items():
        np.save(tmp_path / f"{name}.npy", array)
    outputs = []
    try:
        # Jobs API: the laptop knows only the address and the token.
        wait_until(lambda: _reachable(client_port) and _reachable(dashboard_port), 120, interval=0.5)
        submitter = {**plain, **auth, "PYTHONPATH": str(REPO), "ALLOYML_HOME": str(tmp_path / "home-submitter")}
        jobs = f"http://127.0.0.1:{dashboard_port}"
        json_inputs = [f"--input={n}={json.dumps(a.tolist())}" for n, a in split.items()]
        through_jobs = _cli(submitter, "workflow", "run", "valuation", "--address", jobs, *json_inputs,
                            "--input=method=tmc_shapley", "--input=samples=20", "--input=seed=3",
                            "--input=flipped=null")
        outputs += [through_jobs.stdout, through_jobs.stderr]
        assert through_jobs.returncode == 0, through_jobs.stdout[-3000:] + through_jobs.stderr[-3000:]
        assert "succeeded" in through_jobs.stdout

        # Ray Client: the laptop has the store settings and drives; the arrays go up from its disk.
        laptop = {**plain, **auth, **s3_env, "PYTHONPATH": str(REPO), "ALLOYML_DB_URL": fresh_database,
                  "ALLOYML_ARTIFACTS": s3_artifacts, "ALLOYML_HOME": str(tmp_path / "home-laptop")}
        through_client = _cli(laptop, "workflow", "run", "valuation", "--address", f"ray://127.0.0.1:{client_port}",
                              *(f"--input={n}=@{tmp_path / n}.npy" for n in split),
                              "--input=method=knn_shapley", "--input=samples=1", "--input=seed=0",
                              "--input=flipped=null")
        outputs += [through_client.stdout, through_client.stderr]
        assert through_client.returncode == 0, through_client.stdout[-2000:] + through_client.stderr[-3000:]

        wrong = _cli({**submitter, "RAY_AUTH_TOKEN": "not-" + token}, "workflow", "run", "valuation", "--address",
                     jobs, *json_inputs, "--input=method=knn_shapley", "--input=samples=1", "--input=seed=0",
                     "--input=flipped=null", timeout=120)
        outputs += [wrong.stdout, wrong.stderr]
        assert wrong.returncode != 0 and "Ray Jobs API" in wrong.stderr, wrong.stderr[-2000:]

        # The jobs the head keeps, read with the token like the CLI did (Ray reads its auth mode once per
        # process, so in a child of its own).
        listing = subprocess.run(
            [sys.executable, "-c", "import json, sys; from ray.job_submission import JobSubmissionClient; "
             "print(json.dumps([j.entrypoint for j in JobSubmissionClient(sys.argv[1]).list_jobs()]))", jobs],
            env=submitter, capture_output=True, text=True, timeout=120)
        assert listing.returncode == 0, listing.stderr[-2000:]
        entrypoints = json.loads(listing.stdout.strip().splitlines()[-1])
    finally:
        _stop([head])
        ray_logs = "\n".join(p.read_bytes().decode("latin-1") for p in Path(temp_dir).rglob("*.log")
                             if p.is_file()) if Path(temp_dir).exists() else ""
        shutil.rmtree(temp_dir, ignore_errors=True)

    ids = {"client": _workflow_id(through_client.stdout), "jobs": _workflow_id(through_jobs.stdout)}
    with Platform(db_url=fresh_database, home=tmp_path / "home-check", artifacts=s3_artifacts) as platform:
        results = {}
        for how, workflow_id in ids.items():
            assert platform.store.get_workflow(workflow_id).status == "done"
            results[how] = WorkflowHandle(platform, workflow_id).result()
            assert platform.store.get_run(results[how]["run_id"]).status == "done"
        values = {how: platform.store.all_values(r["run_id"]).values for how, r in results.items()}
    arrays = [split[n] for n in ("x_train", "y_train", "x_test", "y_test")]
    np.testing.assert_allclose(values["client"], compute_values("knn_shapley", *arrays, 1, 0).values, atol=1e-12)
    np.testing.assert_allclose(values["jobs"], compute_values("tmc_shapley", *arrays, 20, 3).values, atol=1e-12)
    # one job submitted through the Jobs API (the wrong token's was refused); the Ray Client session is a job too
    assert sum("alloyml.cli workflow run valuation" in e for e in entrypoints) == 1, entrypoints
    # The token was sent, never kept: not in the store, the job entrypoints, the outputs or Ray's logs.
    haystack = "\n".join([_everything_in(fresh_database), *entrypoints, *outputs, ray_logs])
    assert token not in haystack and S3_TEST_SECRET not in haystack


def _reachable(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0
