"""18.1 / 18.2 / 18.6 against a real Ray Serve: stages that raise, hang or refuse connections are skipped
(retries, timeouts, circuit breaker, fallback to the next stage), a version whose model cannot be built
leaves the old version serving under load, and the HTTP face validates requests and speaks OpenAI."""

import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from alloyml.lm import ConstantLM, Price
from alloyml.routing.adapters import Stage
from alloyml.routing.failures import FailurePolicy
from alloyml.routing.plan import CascadePlan

pytestmark = pytest.mark.ray

# A scorer with no weights: every answer scores exactly 1 / (1 + e^0) = 0.5.
HALF = {"kind": "hashed_logistic", "n_features": 16, "index": [], "weight": [], "intercept": 0.0}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Raises:
    def answer(self, queries):
        raise RuntimeError("model crashed")


class Hangs:
    def answer(self, queries):
        time.sleep(20)
        return [("late", 0, 0)] * len(queries)


class Refuses:
    """Calls an endpoint nobody listens on, as a remote model whose server is down."""

    def __init__(self):
        self.port = _free_port()  # bound and released: nothing listens there now

    def answer(self, queries):
        socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
        return [("unreachable", 0, 0)] * len(queries)


def _plan(chain, thresholds, specs=None):
    stages = [{"model": m, "threshold": t} for m, t in zip(chain, [*thresholds, None], strict=True)]
    return CascadePlan.from_dict({"models": chain, "frontier": [{"stages": stages, "accuracy": 0.5, "mean_cost": 1.0}],
                                  "chosen": 0, "scorer": HALF, "model_specs": specs or {}})


def _post(url, body, raw=None):
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        response = urllib.request.urlopen(request, timeout=60)
        return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        text = err.read()
        try:
            return err.code, json.loads(text or b"null")
        except json.JSONDecodeError:  # Serve's own 404/503 pages are plain text
            return err.code, {"text": text.decode(errors="replace")}


@pytest.fixture(scope="module")
def serve_port(ray_session):
    from ray import serve

    ray_session.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # stub models travel by value
    yield _free_port()
    serve.shutdown()


GOOD = {"good": Stage("good", ConstantLM("sure a1"), Price(per_call=2.0)),
        "backup": Stage("backup", ConstantLM("maybe a2"), Price(per_call=5.0))}


def test_failing_stages_fall_through_and_open_their_breakers(serve_port):
    from alloyml.routing.serve import CascadeService

    stages = {"raises": Stage("raises", Raises(), Price(per_call=1.0)),
              "hangs": Stage("hangs", Hangs(), Price(per_call=1.0)),
              "refuses": Stage("refuses", Refuses(), Price(per_call=1.0)), **GOOD}
    policy = FailurePolicy(timeout_s=0.5, retries=1, backoff_s=0.01, breaker_failures=2, breaker_reset_s=600)
    service = CascadeService("fails", port=serve_port, failure_policy=policy)
    handle = service.deploy(_plan(["raises", "hangs", "refuses", "good"], [0.4, 0.4, 0.4]), 1, stages)
    records = []
    for i in range(5):
        start = time.monotonic()
        records.append((handle.route.remote(f"q{i}").result(timeout_s=60), time.monotonic() - start))
    for record, _ in records:
        # the three broken stages cost nothing (no answer), the good one answers at stage 3
        assert (record["answer"], record["stage_reached"], record["cost"]) == ("sure a1", 3, 2.0)
    first = records[0][0]["errors"]
    # each broken stage: 2 attempts (1 retry), each reported with the stage's name and what went wrong
    assert [e["model"] for e in first] == ["raises"] * 2 + ["hangs"] * 2 + ["refuses"] * 2
    assert "model crashed" in first[0]["error"] and "TimeoutError" in first[2]["error"]
    assert "ConnectionRefusedError" in first[4]["error"]
    status = service.status()
    # two failed calls opened each breaker; the last 3 requests skipped the broken stages entirely
    assert status["breakers"] == {"raises": "open", "hangs": "open", "refuses": "open", "good": "closed"}
    assert status["stage_errors"] == {"raises": 4, "hangs": 4, "refuses": 4, "good": 0}
    assert status["stage_skipped"] == {"raises": 3, "hangs": 3, "refuses": 3, "good": 0}
    assert all(r["errors"] == [] for r, _ in records[2:])
    assert records[0][1] >= 2 * policy.timeout_s and max(t for _, t in records[2:]) < policy.timeout_s
    service.delete()


def test_last_stage_failing_returns_best_earlier_answer_and_all_failing_is_503(serve_port):
    from alloyml.routing.serve import CascadeService

    stages = {"raises": Stage("raises", Raises()), **GOOD}
    policy = FailurePolicy(timeout_s=2.0, retries=0)
    service = CascadeService("lastfails", port=serve_port, failure_policy=policy)
    handle = service.deploy(_plan(["good", "raises"], [0.9]), 1, stages)  # 0.5 < 0.9: would go on
    record = handle.route.remote("q").result(timeout_s=60)
    assert (record["answer"], record["stage_reached"], record["score"], record["cost"]) == ("sure a1", 0, 0.5, 2.0)
    service.deploy(_plan(["raises", "backup"], [0.4]), 2, {**stages, "backup": Stage("backup", Raises())})
    status, body = _post(service.url, {"query": "q"})
    assert status == 503 and "no stage" in body["error"]["message"]
    assert service.status()["failed"] == 1
    service.delete()


def test_broken_version_under_load_keeps_old_version_serving(serve_port):
    from ray import serve

    from alloyml.routing.serve import CascadeService, DeployError

    service = CascadeService("rollout", port=serve_port)
    handle = service.deploy(_plan(["good", "backup"], [0.4]), 1, GOOD)
    versions, errors, stop = [], [], threading.Event()

    def by_handle():
        while not stop.is_set():
            try:
                versions.append(handle.route.remote("w1").result(timeout_s=60)["version"])
            except Exception as err:  # any failure counts
                errors.append(repr(err))

    def by_http():
        while not stop.is_set():
            status, body = _post(service.url, {"query": "w2"})
            versions.append(body["version"]) if status == 200 else errors.append((status, body))

    clients = [threading.Thread(target=f) for f in [by_handle] * 3 + [by_http] * 3]
    for c in clients:
        c.start()
    broken = _plan(["good", "backup"], [0.4], specs={"good": {"kind": "constant", "no_such_parameter": 1},
                                                     "backup": {"kind": "constant", "text": "ok"}})
    with pytest.raises(DeployError, match="version 1 keeps serving"):
        service.deploy(broken, 2)
    time.sleep(1.0)
    stop.set()
    for c in clients:
        c.join()
    assert errors == []
    assert len(versions) >= 20 and set(versions) == {"1"}
    status = service.status()
    assert status["version"] == "1" and [d["version"] for d in status["failed_deploys"]] == ["2"]
    assert "no_such_parameter" in status["failed_deploys"][0]["error"]
    assert not [a for a in serve.status().applications if a.startswith("rollout--v2--")]  # cleaned up
    service.delete()


def test_http_validation_and_openai_routes(serve_port):
    openai = pytest.importorskip("openai")  # the peer client; installed with litellm

    from alloyml.routing.serve import CascadeService

    service = CascadeService("oai", port=serve_port, max_body_bytes=2000)
    service.deploy(_plan(["good", "backup"], [0.4]), 1, GOOD)
    url = service.url
    assert _post(url, {"query": 123})[0] == 422
    assert _post(url, {"query": None})[0] == 422
    assert _post(url, {"query": "ok", "query_id": 5})[0] == 422
    assert _post(url, None, raw=b"null")[0] == 400
    assert _post(url, None, raw=b"{not json")[0] == 400
    status, body = _post(url, {"query": "x" * 5000})
    assert status == 413 and "2000" in body["error"]["message"]
    assert _post(url, {"query": "fine"})[0] == 200

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    chat = client.chat.completions.create(model="oai", messages=[{"role": "system", "content": "be brief"},
                                                                 {"role": "user", "content": "w1 w2"}])
    assert chat.choices[0].message.content == "sure a1" and chat.model == "oai"
    extra = chat.model_extra["alloyml"]
    assert (extra["model"], extra["stage_reached"], extra["score"], extra["cost"]) == ("good", 0, 0.5, 2.0)
    assert chat.id == f"chatcmpl-{extra['request_id']}" and len(extra["request_id"]) == 32  # what labels name
    text = client.completions.create(model="oai", prompt="w3")
    assert text.choices[0].text == "sure a1" and text.model_extra["alloyml"]["cost"] == 2.0
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=[{"role": "user", "content": "q"}])
    status, _ = _post(f"{url}/v1/chat/completions", {"model": "oai", "messages": [{"role": "user", "content": 7}]})
    assert status == 422
    status, _ = _post(f"{url}/v1/completions", {"model": "oai", "prompt": {"a": 1}})
    assert status == 422
    service.delete()


def _ray_listeners():
    """(process name, address) of every listening TCP socket of this Ray: GCS, raylet, and every process
    the raylet started (workers, Serve controller, proxy, replicas)."""
    psutil = pytest.importorskip("psutil")
    import ray

    node = ray._private.worker._global_node
    roots = [p.process.pid for procs in node.all_processes.values() for p in procs]
    pids = set(roots)
    for pid in roots:
        try:
            pids |= {c.pid for c in psutil.Process(pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
    found = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append((" ".join(proc.cmdline())[:80], conn.laddr.ip, conn.laddr.port))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def test_every_listener_is_on_loopback(serve_port):
    from alloyml.routing.serve import CascadeService

    service = CascadeService("loop", port=serve_port)
    handle = service.deploy(_plan(["good", "backup"], [0.4]), 1, GOOD)
    assert handle.route.remote("q").result(timeout_s=60)["answer"] == "sure a1"
    listeners = _ray_listeners()
    replicas = [entry for entry in listeners if "ServeReplica" in entry[0]]
    assert len({e[0] for e in replicas}) >= 3  # the ingress and both stages have their gRPC servers
    assert any(port == serve_port for _, _, port in listeners)  # the HTTP proxy is among them
    wide = [entry for entry in listeners if entry[1] not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")]
    assert wide == [], listeners
    service.delete()


def test_cli_sigterm_drains_and_exits_0_and_a_broken_version_keeps_the_old_one(serve_port, alloy_home, tmp_path):
    import os
    import signal
    import subprocess

    import ray
    from ray import serve

    from alloyml.cli import main
    from alloyml.platform.client import Platform
    from alloyml.routing.synthetic import make_logged_responses

    logs = make_logged_responses(120, 2, seed=1)
    logs.save(tmp_path / "logs.csv")
    (tmp_path / "models.json").write_text(json.dumps(
        {m: {"kind": "constant", "text": f"sure a{i}", "cost_per_call": i + 1} for i, m in enumerate(logs.models)}))
    assert main(["cascade", "fit", str(tmp_path / "logs.csv"), "--budget", "100", "--out", str(tmp_path / "p.json"),
                 "--thresholds", "4", "--folds", "2", "--models", str(tmp_path / "models.json"),
                 "--save", "sig"]) == 0
    env = {**os.environ, "ALLOYML_RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    proc = subprocess.Popen([sys.executable, "-m", "alloyml.cli", "serve", "cascade", "sig", "--port", str(serve_port),
                             "--no-guard", "--poll-s", "0.3"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{serve_port}/sig"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if _post(url, {"query": "w1"})[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert _post(url, {"query": "w1"})[1]["version"] == "1"
        # A broken version 2 is stored: the service reports it and version 1 goes on answering.
        with Platform() as platform:
            v1 = platform.store.get_cascade("sig")
            plan = {**v1.plan, "model_specs": {m: {"kind": "constant", "bogus": 1} for m in logs.models}}
            platform.store.save_cascade("sig", v1.stages, v1.thresholds, v1.costs, v1.budget, plan=plan)
        answers = []
        while time.monotonic() < deadline:
            status, body = _post(url, {"query": "w2"})
            answers.append((status, body.get("version")))
            if not [a for a in serve.status().applications if a.startswith("sig--v2--")] and len(answers) > 40:
                break
            time.sleep(0.1)
        assert set(answers) == {(200, "1")}
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "version 2" in err and "version 1 keeps serving" in err
    assert "stopped serving" in out
    assert not [a for a in serve.status().applications if a == "sig" or a.startswith("sig--")]
