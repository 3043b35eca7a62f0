"""A two-node Ray cluster on this machine (`ray start --head` + a second `ray start --address ...` node with
a custom resource), joined through ALLOYML_RAY_ADDRESS by a driver subprocess: each step lands on the
node that has the resource it asks for. Every Ray process binds to 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.waiting import wait_until

pytestmark = [pytest.mark.ray, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]

# `ray start` rewrites 127.0.0.1 (as --node-ip-address or in --address) to the machine's outward IP, and
# with that rewrite switched off it refuses to add a second node; skipping only the rewrite keeps every
# node, and every port, on 127.0.0.1.
RAY_START = ("import sys, ray._private.services as s; s.resolve_ip_for_localhost = lambda host: host; "
             "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()")

DRIVER = """
import json, sys
import ray
from alloyml.platform.client import Platform
from alloyml.workflows import Workflow, submit
from tests.workflows import steps_for_tests as steps
wf = Workflow("placement")
wf.add(steps.on_special, tag="special")
wf.add(steps.on_head, tag="head")
wf.add(steps.node_of, tag="anywhere")
with Platform(db_url=sys.argv[1], home=sys.argv[2], upgrade=True) as platform:
    handle = submit(platform, wf)
    assert handle.wait(timeout=180) == "done", platform.store.get_workflow(handle.id).error
    placed = {s.name: handle.output(s.name) for s in handle.steps()}
nodes = {n["NodeID"]: {"resources": n["Resources"], "ip": n["NodeManagerAddress"]} for n in ray.nodes() if n["Alive"]}
print(json.dumps({"placed": placed, "nodes": nodes, "gcs": ray.get_runtime_context().gcs_address}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_steps_are_placed_by_their_resources_on_a_two_node_cluster(tmp_path):
    port = _free_port()
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONPATH=str(REPO))
    temp_dir = tempfile.mkdtemp(prefix="rtn", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes

    def start_node(*args):
        return subprocess.Popen(
            [sys.executable, "-c", RAY_START, "start", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
             "--disable-usage-stats", "--block", "--dashboard-agent-listen-port", str(_free_port()),
             "--metrics-export-port", str(_free_port()), *args],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    nodes = [start_node("--head", "--port", str(port), "--include-dashboard=false", "--temp-dir", temp_dir,
                        "--resources", json.dumps({"head_only": 1}))]
    nodes.append(start_node("--address", f"127.0.0.1:{port}", "--resources", json.dumps({"special": 1})))
    try:
        done = subprocess.run(
            [sys.executable, "-c", DRIVER, f"sqlite:///{tmp_path / 'store.db'}", str(tmp_path / "home")],
            cwd=REPO, env=dict(env, ALLOYML_RAY_ADDRESS=f"127.0.0.1:{port}"), capture_output=True, text=True,
            timeout=300)
        assert done.returncode == 0, done.stderr[-4000:]
        report = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        for node in nodes:
            os.killpg(node.pid, signal.SIGTERM)
        wait_until(lambda: all(node.poll() is not None for node in nodes), 15, interval=0.2, required=False)
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
            node.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)
    nodes_by_id, placed = report["nodes"], report["placed"]
    assert len(nodes_by_id) == 2 and report["gcs"] == f"127.0.0.1:{port}"
    assert {n["ip"] for n in nodes_by_id.values()} == {"127.0.0.1"}
    assert "special" in nodes_by_id[placed["on_special"]]["resources"]
    assert "head_only" in nodes_by_id[placed["on_head"]]["resources"]
    assert placed["on_special"] != placed["on_head"] and placed["node_of"] in nodes_by_id
