"""A cascade as a Ray Serve service: one deployment per stage, plus the cascade ingress.

Layout on Serve, for a cascade `name` at version `v`:
- one application per stage, `"{name}--v{v}--{model}"`, whose single deployment answers queries;
- the ingress application `name` (HTTP at `/{name}` on 127.0.0.1, and a Python handle), which runs the
  chain: call a stage, score its answer, stop or go on.

A new version first starts its own stage applications, then rolls the ingress over to the new plan.
Serve takes an old ingress replica out of routing and lets it finish its in-flight requests, which
still call the old stage applications; those are deleted only once no old ingress replica is left.
So a swap drops no request.

Each request is recorded (stage reached, scores, cost, latency, frontier point, version) through a
`log_callback` in batches; a `BudgetGuard` watches spend and steps down to cheaper frontier points.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ray import serve

from alloyml.errors import ConfigError, InvalidInputError
from alloyml.routing.adapters import Stage, build_stage
from alloyml.routing.guard import BudgetGuard
from alloyml.routing.plan import CascadePlan
from alloyml.routing.request_log import BatchLogger
from alloyml.routing.scorer import scorer_from_dict

_REPLICA = {"num_cpus": 0}  # routing is I/O-bound; replicas must not hold CPUs others need


@serve.deployment(ray_actor_options=_REPLICA, max_ongoing_requests=256, graceful_shutdown_wait_loop_s=0.5)
class StageServer:
    """One stage: a model (built here from its JSON spec, or shipped as a `Stage`) and its price."""

    def __init__(self, name: str, stage: Stage | None = None, spec: dict | None = None):
        self.stage = stage if stage is not None else build_stage(name, spec)

    def answer(self, query: str) -> tuple[str, float]:
        return self.stage.answer([query])[0]


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
    """Runs the cascade for each request; JSON over HTTP (POST `{"query": ...}`, GET `/status`) and
    `route(query)` / `status()` over a handle."""

    def __init__(self, name: str, version: str, plan: dict, stage_apps: dict[str, str], guard: dict | None,
                 log_callback: Callable[[list[dict]], object] | None, log_batch_size: int, log_flush_s: float):
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
        self.logger = BatchLogger(log_callback, log_batch_size, log_flush_s) if log_callback else None
        self.in_flight = 0
        self.served = 0

    async def route(self, query: str, query_id: str | None = None) -> dict:
        start = time.perf_counter()
        self.in_flight += 1
        try:
            slot = self.guard.point if self.guard else 0
            point = self.plan.frontier[self.points[slot]]
            cost, scores, answer, reached = 0.0, [], "", 0
            for j, stage in enumerate(point.stages):
                reached = j
                answer, stage_cost = await self.stages[stage.model].answer.remote(query)
                cost += stage_cost
                if stage.threshold is None:
                    break
                score = float(self.scorer.predict_proba([query], [answer], [stage.model])[0])
                scores.append(score)
                if score >= stage.threshold:
                    break
            record = {
                "query_id": query_id,
                "answer": answer,
                "model": point.stages[reached].model,
                "stage_reached": reached,
                "scores": scores,
                "cost": cost,
                "latency_ms": (time.perf_counter() - start) * 1e3,
                "frontier_point": self.points[slot],
                "version": self.version,
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
            "served": self.served,
            "in_flight": self.in_flight,
            "frontier_points": self.points,
            "guard": self.guard.state().to_dict() if self.guard else None,
            "logged": self.logger.logged if self.logger else 0,
            "log_errors": self.logger.errors if self.logger else 0,
        }

    async def __call__(self, request) -> dict:
        if request.method == "GET":
            return self.status()
        try:
            body = await request.json()
            query = body["query"]
        except Exception as err:
            from starlette.responses import JSONResponse

            return JSONResponse({"error": f'expected a JSON body {{"query": str}}: {err}'}, status_code=400)
        return await self.route(str(query), body.get("query_id"))

    def __del__(self):
        if getattr(self, "logger", None):
            self.logger.close()


class CascadeService:
    """Deploys versions of the cascade `name` on Ray Serve (started on 127.0.0.1:`port` if not running).

    budget: when set, a budget guard (sliding window of `window_s` s, moves after `min_requests`
    requests) switches among `guard_count` frontier points. log_callback(records) receives request
    records in batches (it runs inside the ingress replica, so it must be picklable).
    """

    def __init__(self, name: str, *, budget: float | None = None, window_s: float = 60.0, min_requests: int = 20,
                 guard_count: int = 3, log_callback: Callable[[list[dict]], object] | None = None,
                 log_batch_size: int = 64, log_flush_s: float = 0.5, host: str = "127.0.0.1", port: int = 8000):
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
        self.version: str | None = None

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

        ensure_ray()
        serve.start(http_options={"host": self.host, "port": self.port})
        stage_apps = {m: f"{self.name}--v{version}--{m}" for m in models}
        guard = None
        if self.budget:
            guard = {"budget": self.budget, "window_s": self.window_s, "min_requests": self.min_requests,
                     "points": {"count": self.guard_count}}
        ingress = CascadeIngress.bind(self.name, version, plan.model_dump(), stage_apps, guard, self.log_callback,
                                      self.log_batch_size, self.log_flush_s)
        # One call starts the new stages and rolls the ingress; a new ingress replica that is up before
        # its stages only queues its first requests.
        *_, handle = serve.run_many([
            *(serve.RunTarget(StageServer.bind(m, stages.get(m), plan.model_specs.get(m)), name=app, route_prefix=None)
              for m, app in stage_apps.items()),
            serve.RunTarget(ingress, name=self.name, route_prefix=f"/{self.name}"),
        ])
        self.version = version
        # Every other stage app of this cascade, including those of an earlier process that served it.
        retired = [app for app in self._stage_apps() if app not in stage_apps.values()]
        if retired:
            self._wait_for_old_ingress()
            for app in retired:
                serve.delete(app)
        return handle

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
        return self.handle.status.remote().result()

    def _stage_apps(self) -> list[str]:
        return [app for app in serve.status().applications if app.startswith(f"{self.name}--v")]

    def delete(self) -> None:
        serve.delete(self.name)
        for app in self._stage_apps():
            serve.delete(app)
        self.version = None

