"""Fit a budgeted FrugalGPT cascade on logged responses, compare it with the single models and a learned
router, then serve it on Ray Serve (stub models stand in for real ones) and roll out a new version.

    .venv/bin/python examples/cascade_fit_and_serve.py
"""

from alloyml.lm import ConstantLM, Price
from alloyml.routing import FrugalCascade, LearnedRouter, Stage, make_logged_responses

logs = make_logged_responses(4000, 5, seed=0)  # or load_responses("responses.csv")
train, test = logs.split(0.5)
budget = float(train.cost[:, 2].mean())  # what the middle model costs

cascade = FrugalCascade(budget=budget).fit(train)
result = cascade.evaluate(test)
router = LearnedRouter(budget=budget).fit(train).evaluate(test)
print(f"budget {budget:.2f}; cascade {' -> '.join(cascade.plan_.point.models)}: accuracy {result.accuracy:.3f}, "
      f"cost {result.mean_cost:.2f} (planned {cascade.plan_.point.mean_cost:.2f})")
print(f"learned router: accuracy {router.accuracy:.3f}, cost {router.mean_cost:.2f}, PGR {router.pgr:.3f}")
for name, acc, cost in zip(test.models, test.correct.mean(0), test.cost.mean(0), strict=True):
    print(f"  {name} alone: accuracy {acc:.3f}, cost {cost:.2f}")
cascade.plan_.save("plan.json")

from alloyml.routing.serve import CascadeService  # noqa: E402  (imports Ray Serve)

stages = {m: Stage(m, ConstantLM(f"sure a{i}"), Price(per_call=float(c)))
          for i, (m, c) in enumerate(zip(train.models, train.cost.mean(0), strict=True))}
service = CascadeService("demo", budget=budget, log_callback=print, log_batch_size=4)
handle = service.deploy(cascade.plan_, version=1, stages=stages)
print(handle.route.remote("w1 w17 w40").result())  # or POST {"query": ...} to service.url, or OpenAI's
# client.chat.completions.create(model="demo", ...) with base_url=service.url + "/v1"
service.deploy(cascade.plan_, version=2, stages=stages)  # in-flight requests finish on version 1
print(service.status())
service.delete()
