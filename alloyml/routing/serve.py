"""A cascade as a Ray Serve service: one deployment per stage, plus the cascade ingress.

Layout on Serve, for a cascade `name` at version `v`:
- one application per stage, `"{name}--v{v}--{model}"`, whose single deployment answers queries;
- the ingress application `name` (HTTP at `/{name}` on 127.0.0.1, and a Python handle), which runs the
  chain: call a stage, score its answer, stop or go on.

A new version first starts its own stage applications and waits until each answers; only then does it
roll the ingress over to the new plan. A version whose stages fail to start is deleted again and
recorded in `failed_deploys`; the running version is never touched.
Serve takes an old ingress replica out of routing and lets it finish its in-flight requests, which
still call the old stage applications; those are deleted only once no old ingress replica is left.
So a swap drops no request.

Each request is recorded (its request id, query, answer, every stage call with its answer, cost and
score, stage reached, latency, errors, frontier point, version) through a `log_callback` in batches;
a `BudgetGuard` watches spend and steps down to cheaper frontier points.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

from ray import serve

from alloyml.errors import AlloyError, ConfigError, InvalidInputError
from alloyml.routing.adapters import Stage, build_stage
from alloyml.routing.failures import (
    CircuitBreaker,
    FailurePolicy,
    NoStageAnsweredError,
    StageFailedError,
    call_with_policy,
    describe,
)
from alloyml.routing.guard import BudgetGuard
from alloyml.routing.loopback import bind_replica_grpc_to_loopback
from alloyml.routing.plan import CascadePlan, ReplicaPlan
from alloyml.routing.request_log import BatchLogger
from alloyml.routing.scorer import scorer_from_dict

_REPLICA = {"num_cpus": 0}  # routing is I/O-bound; replicas must not hold CPUs others need
MAX_BODY_BYTES = 1 << 20  # larger request bodies are refused with 413 before they are parsed
INLINE_SCORE_MAX_CHARS = 4096  # longer texts are scored in a worker thread, off the event loop
# A stage whose model cannot be built must fail its deploy quickly, not retry for minutes.
STAGE_CONSTRUCTOR_RETRIES = 1


class DeployError(AlloyError):
    """A new version could not be started; the version that was serving goes on serving."""


@serve.deployment(ray_actor_options=_REPLICA, max_ongoing_requests=256, graceful_shutdown_wait_loop_s=0.5,
                  max_constructor_retry_count=STAGE_CONSTRUCTOR_RETRIES)
class StageServer:
    """One stage: a model (built here from its JSON spec, or shipped as a `Stage`) and its price."""

    def __init__(self, name: str, stage: Stage | None = None, spec: dict | None = None):
        bind_replica_grpc_to_loopback()
        self.stage = stage if stage is not None else build_stage(name, spec)

    def answer(self, query: str) -> tuple[str, float]:
        return self.stage.answer([query])[0]

    def ping(self) -> bool:
        return True


def guard_points(plan: CascadePlan, count: int = 3, step: float = 0.6) -> list[int]:
    """Frontier indices the budget guard may use: the chosen point and up to `count - 1` cheaper ones,
    aiming at `step`, `step**2`, ... of the chosen point's training cost."""
    costs = [p.mean_cost for p in plan.frontier]
    chosen = plan.chosen
    picks = {chosen}
    for k in range(1, count):
        target = costs[chosen] * step**k
        picks.add(max((i for i in range(chosen + 1) if costs[i] <= target), default=0))
    return sorted(picks)


@serve.deployment(ray_actor_options=_REPLICA, max_ongoing_requests=512, graceful_shutdown_timeout_s=60,
                  graceful_shutdown_wait_loop_s=0.5)
class CascadeIngress:
    """Runs the cascade for each request: JSON over HTTP (POST `{"query": ...}`, GET `/status`, the
    OpenAI routes of `openai_api`) and `route(query)` / `status()` over a handle.

    A stage that errors, times out or has its breaker open is skipped: the request goes on to the next
    stage; when the last stage fails, the best-scoring answer of the stages that did answer is
    returned; when none answered, the request fails (HTTP 503)."""

    def __init__(self, name: str, version: str, plan: dict, stage_apps: dict[str, str], guard: dict | None,
                 log_callback: Callable[[list[dict]], object] | None, log_batch_size: int, log_flush_s: float,
                 failure_policy: dict | None = None, max_body_bytes: int = MAX_BODY_BYTES):
        bind_replica_grpc_to_loopback()
        self.replica = serve.get_replica_context().replica_id.unique_id  # which replica answered, per record
        self.name = name
        self.version = version
        self.plan = CascadePlan.from_dict(plan)
        self.scorer = scorer_from_dict(self.plan.scorer)
        self.stages = {
            model: serve.get_deployment_handle("StageServer", app_name=app) for model, app in stage_apps.items()
        }
        self.points = guard_points(self.plan, **(guard or {}).get("points", {})) if guard else [self.plan.chosen]
        self.guard = None
        if guard:
            costs = [self.plan.frontier[i].mean_cost for i in self.points]
            self.guard = BudgetGuard(guard["budget"], costs, len(self.points) - 1, guard["window_s"],
                                     guard["min_requests"])
        self.policy = FailurePolicy(**(failure_policy or {}))
        self.breakers = {m: CircuitBreaker(self.policy.breaker_failures, self.policy.breaker_reset_s)
                         for m in stage_apps}
        self.stage_errors = dict.fromkeys(stage_apps, 0)
        self.stage_skipped = dict.fromkeys(stage_apps, 0)
        self.failed = 0
        self.max_body_bytes = max_body_bytes
        self.logger = BatchLogger(log_callback, log_batch_size, log_flush_s) if log_callback else None
        self.in_flight = 0
        self.served = 0

    async def _score(self, query: str, answer: str, model: str) -> float:
        if len(query) + len(answer) <= INLINE_SCORE_MAX_CHARS:  # microseconds: a thread hop would cost more
            return float(self.scorer.predict_proba([query], [answer], [model])[0])
        # A long text takes the scorer milliseconds to seconds; off the event loop, other requests go on.
        proba = await asyncio.to_thread(self.scorer.predict_proba, [query], [answer], [model])
        return float(proba[0])

    async def _call_stage(self, model: str, query: str, errors: list[dict]):
        def count(err: BaseException) -> None:
            self.stage_errors[model] += 1
            errors.append({"model": model, "error": describe(err)})

        if self.breakers[model].state == "open":
            self.stage_skipped[model] += 1
        return await call_with_policy(lambda: self.stages[model].answer.remote(query), self.policy,
                                      self.breakers[model], count)

    async def route(self, query: str, query_id: str | None = None) -> dict:
        if not isinstance(query, str):
            raise InvalidInputError(f"query must be a string, got {type(query).__name__}")
        start = time.perf_counter()
        self.in_flight += 1
        try:
            slot = self.guard.point if self.guard else 0
            point = self.plan.frontier[self.points[slot]]
            cost, scores, errors = 0.0, [], []
            answered = []  # (score, stage index, answer) of stages that answered
            calls = []  # every stage that answered, logged so served traffic can be labelled and refitted on
            final = None
            stage_ms = []  # wall time of each stage call, so the ingress's own share is measured
            for j, stage in enumerate(point.stages):
                called = time.perf_counter()
                try:
                    answer, stage_cost = await self._call_stage(stage.model, query, errors)
                except StageFailedError:
                    continue  # fall through to the next stage
                finally:
                    stage_ms.append((time.perf_counter() - called) * 1e3)
                cost += stage_cost
                calls.append({"model": stage.model, "answer": answer, "cost": float(stage_cost), "score": None})
                if stage.threshold is None:
                    final = (j, answer)
                    break
                score = await self._score(query, answer, stage.model)
                calls[-1]["score"] = score
                scores.append(score)
                answered.append((score, j, answer))
                if score >= stage.threshold:
                    final = (j, answer)
                    break
            if final is None and answered:  # the stages after them failed: the most confident answer
                _, j, answer = max(answered)
                final = (j, answer)
            if final is None:
                self.failed += 1
                raise NoStageAnsweredError(f"no stage of cascade {self.name!r} answered: {errors}")
            reached, answer = final
            record = {
                "request_id": uuid.uuid4().hex,  # what labels refer to (`alloyml cascade label`)
                "query_id": query_id,
                "query": query,
                "answer": answer,
                "model": point.stages[reached].model,
                "stage_reached": reached,
                "scores": scores,
                "score": next((sc for sc, j, _ in answered if j == reached), None),
                "cost": cost,
                "latency_ms": (time.perf_counter() - start) * 1e3,
                "stage_ms": stage_ms,
                "frontier_point": self.points[slot],
                "version": self.version,
                "replica": self.replica,
                "errors": errors,
                "calls": calls,
            }
        finally:
            self.in_flight -= 1
        self.served += 1
        if self.guard:
            self.guard.record(cost, slot)
        if self.logger:
            self.logger.log(record)
        return record

    def status(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "replica": self.replica,  # the counters below are this replica's
            "served": self.served,
            "failed": self.failed,
            "in_flight": self.in_flight,
            "frontier_points": self.points,
            "guard": self.guard.state().to_dict() if self.guard else None,
            "logged": self.logger.logged if self.logger else 0,
            "log_errors": self.logger.errors if self.logger else 0,
            "stage_errors": dict(self.stage_errors),
            "stage_skipped": dict(self.stage_skipped),
            "breakers": {m: b.state for m, b in self.breakers.items()},
            "failure_policy": self.policy.to_dict(),
        }

    async def __call__(self, request):
        from alloyml.routing import openai_api

        if request.method == "GET":
            return self.status()
        body = await openai_api.read_json(request, self.max_body_bytes)
        if isinstance(body, openai_api.JSONResponse):
            return body
        path = request.url.path.rstrip("/")
        if path.endswith(("/v1/chat/completions", "/v1/completions")):
            return await openai_api.handle(self, path, body)
        problem = openai_api.native_problem(body)
        if problem:
            return openai_api.error(problem, 422 if isinstance(body, dict) and "query" in body else 400)
        try:
            return await self.route(body["query"], body.get("query_id"))
        except NoStageAnsweredError as err:
            return openai_api.error(str(err), 503)

    def __del__(self):
        if getattr(self, "logger", None):
            self.logger.close()


class CascadeService:
    """Deploys versions of the cascade `name` on Ray Serve (started on 127.0.0.1:`port` if not running).

    budget: when set, a budget guard (sliding window of `window_s` s, moves after `min_requests`
    requests) switches among `guard_count` frontier points. log_callback(records) receives request
    records in batches (it runs inside the ingress replica, so it must be picklable). failure_policy:
    timeouts, retries and circuit breaker of the stage calls. max_body_bytes: HTTP body limit (413).
    replicas: Serve replicas of the ingress and of each stage (default: the plan's `replicas`, else one);
    requests are spread over the replicas by Serve's router.
    `failed_deploys` lists the versions that could not start (also in `status()`).
    """

    def __init__(self, name: str, *, budget: float | None = None, window_s: float = 60.0, min_requests: int = 20,
                 guard_count: int = 3, log_callback: Callable[[list[dict]], object] | None = None,
                 log_batch_size: int = 64, log_flush_s: float = 0.5, host: str = "127.0.0.1", port: int = 8000,
                 failure_policy: FailurePolicy | None = None, max_body_bytes: int = MAX_BODY_BYTES,
                 replicas: ReplicaPlan | None = None):
        if not name or not name.replace("-", "").replace("_", "").isalnum() or "--" in name:
            raise InvalidInputError(f"cascade name must be letters, digits, single '-' or '_', got {name!r}")
        self.name = name
        self.budget = budget
        self.window_s = window_s
        self.min_requests = min_requests
        self.guard_count = guard_count
        self.log_callback = log_callback
        self.log_batch_size = log_batch_size
        self.log_flush_s = log_flush_s
        self.host = host
        self.port = port
        self.failure_policy = failure_policy or FailurePolicy()
        self.max_body_bytes = max_body_bytes
        self.replicas = replicas
        self.version: str | None = None
        self.failed_deploys: list[dict] = []

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/{self.name}"

    @property
    def handle(self):
        return serve.get_app_handle(self.name)

    def deploy(self, plan: CascadePlan, version: str | int, stages: dict[str, Stage] | None = None):
        """Serve `plan` as version `version`, replacing the running one without dropping requests.

        stages: live `Stage` objects by model name; models not given are built from `plan.model_specs`.
        Returns the ingress handle.
        """
        from alloyml.raycluster import ensure_ray

        version = str(version)
        if version == self.version:
            raise InvalidInputError(f"cascade {self.name!r} already serves version {version}")
        if plan.scorer is None:
            raise InvalidInputError("a served plan needs a saved scorer (fit with the default TextScorer)")
        points = guard_points(plan, self.guard_count) if self.budget else [plan.chosen]
        models = sorted({m for i in points for m in plan.frontier[i].models})
        stages = stages or {}
        missing = [m for m in models if m not in stages and m not in plan.model_specs]
        if missing:
            raise ConfigError(f"no Stage and no model_specs entry for models {missing} of cascade {self.name!r}")

        scorer_from_dict(plan.scorer)  # what the ingress builds first: fail here, not in a replica

        replicas = (self.replicas or plan.replicas or ReplicaPlan()).deployment_options()
        ensure_ray()
        serve.start(http_options={"host": self.host, "port": self.port})
        stage_apps = {m: f"{self.name}--v{version}--{m}" for m in models}
        self._start_stages(version, stage_apps, stages, plan, replicas)
        guard = None
        if self.budget:
            guard = {"budget": self.budget, "window_s": self.window_s, "min_requests": self.min_requests,
                     "points": {"count": self.guard_count}}
        ingress = CascadeIngress.options(**replicas).bind(
            self.name, version, plan.model_dump(), stage_apps, guard, self.log_callback, self.log_batch_size,
            self.log_flush_s, self.failure_policy.to_dict(), self.max_body_bytes)
        # Only now, with every new stage answering, the ingress rolls over: Serve starts the new ingress
        # replica and drains the old one, whose in-flight requests still reach the old stages.
        handle = serve.run(ingress, name=self.name, route_prefix=f"/{self.name}")
        self.version = version
        # Every other stage app of this cascade, including those of an earlier process that served it.
        retired = [app for app in self._stage_apps() if app not in stage_apps.values()]
        if retired:
            self._wait_for_old_ingress()
            for app in retired:
                serve.delete(app)
        return handle

    def _start_stages(self, version: str, stage_apps: dict[str, str], stages: dict[str, Stage], plan,
                      replicas: dict) -> None:
        """Start the new version's stage applications and wait until each answers a ping. On failure
        delete them, record the failure and raise DeployError; the serving version is untouched."""
        try:
            handles = serve.run_many([
                serve.RunTarget(StageServer.options(**replicas).bind(m, stages.get(m), plan.model_specs.get(m)),
                                name=app, route_prefix=None)
                for m, app in stage_apps.items()
            ])
            for h in handles:
                h.ping.remote().result(timeout_s=self.failure_policy.timeout_s)
        except Exception as err:
            message = f"{type(err).__name__}: {err}; {self._failure_details(stage_apps)}"[:2000]
            for app in stage_apps.values():
                try:
                    serve.delete(app)
                except Exception:  # noqa: BLE001  best effort: the app may never have been created
                    pass
            self.failed_deploys.append({"version": version, "error": message, "at": time.time()})
            raise DeployError(
                f"version {version} of cascade {self.name!r} failed to start ({message[:500]}); "
                f"{'version ' + self.version + ' keeps serving' if self.version else 'nothing is served'}"
            ) from err

    @staticmethod
    def _failure_details(stage_apps: dict[str, str]) -> str:
        """What Serve says about the stage applications that did not start (their constructor's error)."""
        apps = serve.status().applications
        details = []
        for model, app in stage_apps.items():
            status = apps.get(app)
            for deployment in (status.deployments.values() if status else []):
                if deployment.message and str(status.status) not in ("RUNNING", "ApplicationStatus.RUNNING"):
                    details.append(f"stage {model!r}: {deployment.message[-600:]}")
        return "; ".join(details) or "no details from Serve"

    def _wait_for_old_ingress(self, timeout_s: float = 120.0) -> None:
        """Block until the ingress runs only new replicas (old ones have drained their requests)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            app = serve.status().applications.get(self.name)
            states = app.deployments["CascadeIngress"].replica_states if app else {}
            if app and set(map(str, states)) <= {"RUNNING", "ReplicaState.RUNNING"} and app.status == "RUNNING":
                return
            time.sleep(0.2)
        raise TimeoutError(f"old replicas of cascade {self.name!r} did not drain within {timeout_s} s")

    def status(self) -> dict:
        """The ingress's counters, plus the versions that failed to deploy."""
        return {**self.handle.status.remote().result(), "failed_deploys": list(self.failed_deploys)}

    def _stage_apps(self) -> list[str]:
        return [app for app in serve.status().applications if app.startswith(f"{self.name}--v")]

    def delete(self) -> None:
        serve.delete(self.name)
        for app in self._stage_apps():
            serve.delete(app)
        self.version = None



def served_version(name: str) -> str | None:
    """The version the running ingress of cascade `name` serves, or None when none runs on this Ray
    cluster (Ray not started here, Serve not started, or no application `name`). Starts nothing."""
    import ray

    if not ray.is_initialized() or name not in serve.status().applications:
        return None
    try:
        return str(serve.get_app_handle(name).status.remote().result(timeout_s=30)["version"])
    except Exception:  # noqa: BLE001  the application is being deleted or is not a cascade ingress
        return None


def wait_for_version(name: str, version: str | int, timeout_s: float, poll_s: float = 0.5) -> str | None:
    """Poll until the ingress of cascade `name` serves `version`; the version served when it does, or at
    `timeout_s` (None once no ingress runs)."""
    deadline = time.monotonic() + timeout_s
    while True:
        current = served_version(name)
        if current in (str(version), None) or time.monotonic() >= deadline:
            return current
        time.sleep(poll_s)
