"""18.8: `alloyml serve cascade` that starts its own Ray (no ALLOYML_RAY_ADDRESS) drains on SIGTERM, exits 0
and leaves no process behind: neither one it spawned (Ray's GCS, raylet, dashboard agents, workers)
nor any member of its process group."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

psutil = pytest.importorskip("psutil")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int, created: float) -> bool:
    """The process `pid` that started at `created` still runs (a recycled pid is another process)."""
    try:
        proc = psutil.Process(pid)
        return proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _group_members(pgid: int) -> list[int]:
    """Pids in process group `pgid`, from /proc/<pid>/stat (field 5 is the process group)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


@pytest.mark.slow  # the command starts a Ray of its own (~30-60 s on the shared 2 cores)
def test_serve_with_its_own_ray_drains_on_sigterm_and_leaves_no_process(alloy_home, tmp_path):
    from alloyml.cli import main
    from alloyml.routing.synthetic import make_logged_responses

    logs = make_logged_responses(80, 2, seed=1)
    logs.save(tmp_path / "logs.csv")
    (tmp_path / "models.json").write_text(json.dumps(
        {m: {"kind": "constant", "text": f"sure a{i}", "cost_per_call": i + 1} for i, m in enumerate(logs.models)}))
    assert main(["cascade", "fit", str(tmp_path / "logs.csv"), "--budget", "100", "--out", str(tmp_path / "p.json"),
                 "--thresholds", "4", "--folds", "2", "--models", str(tmp_path / "models.json"),
                 "--save", "own"]) == 0
    env = {k: v for k, v in os.environ.items() if k not in ("ALLOYML_RAY_ADDRESS", "RAY_ADDRESS")}
    port = _free_port()
    # Its own session and process group, so the group can be inspected (and cleaned up) as a whole.
    proc = subprocess.Popen([sys.executable, "-m", "alloyml.cli", "serve", "cascade", "own", "--port", str(port),
                             "--no-guard", "--poll-s", "0.5"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}/own"
    spawned: dict[int, float] = {}
    try:
        deadline, answered = time.monotonic() + 240, None
        while time.monotonic() < deadline and proc.poll() is None and answered is None:
            try:
                request = urllib.request.Request(url, data=b'{"query": "w1"}',
                                                 headers={"Content-Type": "application/json"})
                answered = json.loads(urllib.request.urlopen(request, timeout=30).read())
            except OSError:
                time.sleep(0.5)
        assert answered is not None and answered["answer"].startswith("sure"), proc.poll()
        for child in psutil.Process(proc.pid).children(recursive=True):
            spawned[child.pid] = child.create_time()
        names = " ".join(psutil.Process(p).name() for p in spawned if _alive(p, spawned[p]))
        assert "gcs_server" in names and "raylet" in names  # it did start a Ray of its own
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        assert "stopped serving" in out
        end = time.monotonic() + 30  # Ray's daemons exit asynchronously after ray.shutdown()
        while time.monotonic() < end and any(_alive(p, c) for p, c in spawned.items()):
            time.sleep(0.5)
        left = {p: psutil.Process(p).cmdline()[:3] for p, c in spawned.items() if _alive(p, c)}
        assert left == {}, f"processes outlived `alloyml serve`: {left}"
        assert _group_members(proc.pid) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid, created in spawned.items():
            if _alive(pid, created):
                os.kill(pid, signal.SIGKILL)  # only processes this test's command spawned
