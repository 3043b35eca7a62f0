"""Merge search: CMA-ES over per-layer-group merge parameters against a user metric, trials on Ray.

Each searched parameter becomes a gradient of `layer_groups` anchors (mergekit's per-layer lists), one
gradient per merged model for per-model parameters (`weight`, `density`) and one in all for shared ones
(`t`, `lambda`). A `slices` template gets these per slice (set on each slice's sources, or the slice's
own `parameters` for shared ones), so each layer range is tuned on its own. CMA-ES works in the unit
cube; values are mapped into each parameter's bounds. A generation's trials merge in memory and are
scored in parallel on Ray; every trial is returned (and handed to `on_trial` as it finishes, so a
workflow can record it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from alloyml.errors import InvalidInputError
from alloyml.merging.config import MergeConfig, load_merge_config
from alloyml.merging.registry import get_method
from alloyml.trials import SearchResult, TrialCallback, TrialRecord

DEFAULT_BOUNDS = {"weight": (0.0, 1.0), "density": (0.1, 1.0), "t": (0.0, 1.0), "lambda": (0.0, 2.0)}
_FAILED = 1e12  # CMA-ES minimises; a failed trial scores worse than any real one


def _slots(template: dict, search: Sequence[str]) -> list[tuple[str, str | None, int | None]]:
    """(parameter, model or None for shared, slice index or None with `models`) for each searched
    gradient, in a fixed order. With `slices`, every slice gets its own gradients (over its own layers)."""
    method = get_method(template["merge_method"])
    slots = []
    groups = [(None, template["models"], template.get("base_model"))] if "models" in template else [
        (i, s["sources"], s.get("base_model") or template.get("base_model")) for i, s in enumerate(template["slices"])
    ]
    for name in search:
        for index, specs, base in groups:
            base = base if method.uses_base else None
            if method.parameter(name).scope == "shared":
                slots.append((name, None, index))
            else:
                slots += [(name, spec["model"], index) for spec in specs if spec["model"] != base]
    return slots


def _copy_template(template: dict) -> dict:
    def entry(m):
        return dict(m, parameters=dict(m.get("parameters") or {}))

    config = {**template, "parameters": dict(template.get("parameters") or {})}
    if "models" in template:
        config["models"] = [entry(m) for m in template["models"]]
    else:
        config["slices"] = [dict(entry(s), sources=[entry(src) for src in s["sources"]]) for s in template["slices"]]
    return config


def _trial_config(template: dict, slots, groups: int, x, bounds) -> tuple[dict, dict[str, list[float]]]:
    config = _copy_template(template)
    values = {}
    for i, (name, model, index) in enumerate(slots):
        lo, hi = bounds[name]
        anchors = [round(lo + float(v) * (hi - lo), 6) for v in x[i * groups : (i + 1) * groups]]
        setting = anchors if groups > 1 else anchors[0]
        if index is None:
            scope = config if model is None else next(m for m in config["models"] if m["model"] == model)
        else:
            out_slice = config["slices"][index]
            scope = out_slice if model is None else next(m for m in out_slice["sources"] if m["model"] == model)
        scope["parameters"][name] = setting
        key = f"{model}.{name}" if model else name
        values[key if index is None else f"slices[{index}].{key}"] = anchors
    return config, values


def check_template(
    template: MergeConfig | dict | str,
    search: Sequence[str] = ("weight",),
    layer_groups: int = 4,
    bounds: Mapping[str, tuple[float, float]] | None = None,
) -> tuple[dict, list[tuple[str, str | None]], dict[str, tuple[float, float]]]:
    """(template as a dict, searched slots, bounds) once the template, filled in at the centre of the
    bounds, is a valid merge config: so a bad template fails before any trial runs. A template file
    need not set the searched parameters."""
    if isinstance(template, MergeConfig):
        template = template.model_dump(mode="json", exclude_defaults=True)
    elif not isinstance(template, dict):
        template = _read_template(template)
    if template.get("modules") is not None:  # mergekit's one-module form, searched as its models/slices
        template = load_merge_config(template).model_dump(mode="json", exclude_defaults=True)
        if template.get("module_parameters"):
            raise InvalidInputError("a merge-search template in `modules:` form may not set module parameters; "
                                    "move them to the top-level `parameters`")

    def entries_ok(items, keys=("model",)):
        return isinstance(items, list) and items and all(
            isinstance(m, dict) and all(k in m for k in keys) and isinstance(m.get("parameters") or {}, dict)
            for m in items
        )

    if "models" in template:
        if not entries_ok(template["models"]):
            raise InvalidInputError("the merge-search template's `models` must be a list of {model, parameters} "
                                    "mappings")
    elif "slices" in template:
        if not (entries_ok(template["slices"], ("sources",))
                and all(entries_ok(s["sources"], ("model", "layer_range")) for s in template["slices"])):
            raise InvalidInputError("the merge-search template's `slices` must be a list of {sources: [{model, "
                                    "layer_range, parameters}], parameters} mappings")
    else:
        raise InvalidInputError("the merge-search template lists neither `models` nor `slices`")
    if layer_groups < 1:
        raise InvalidInputError(f"layer_groups must be >= 1, got {layer_groups}")
    if "merge_method" not in template:
        raise InvalidInputError("the merge-search template names no `merge_method`")
    bounds = {**DEFAULT_BOUNDS, **(bounds or {})}
    slots = _slots(template, search)
    missing = sorted({slot[0] for slot in slots} - set(bounds))
    if missing:
        raise InvalidInputError(f"no bounds for searched parameters {missing}; pass bounds={{name: (lo, hi)}}")
    centre = [0.5] * (len(slots) * layer_groups)
    load_merge_config(_trial_config(template, slots, layer_groups, centre, bounds)[0])
    return template, slots, bounds


def _read_template(source) -> dict:
    """A template from YAML text or a file, read as a mapping (validated once filled in)."""
    from alloyml.yaml_config import read_yaml

    data, label, _ = read_yaml(source, "merge-search template")
    if not isinstance(data, dict):
        raise InvalidInputError(f"merge-search template {label}: expected a mapping, got {type(data).__name__}")
    return data


def evaluate_merge(config: dict, sources: Mapping[str, Any] | None, metric: Callable[[dict], float]) -> float:
    """Merge `config` in memory and score the merged state dict with `metric` (higher is better)."""
    from alloyml.merging.engine import merge

    return float(metric(merge(config, sources=sources).state_dict))


def search_merge(
    template: MergeConfig | dict | str,
    metric: Callable[[dict], float],
    *,
    search: Sequence[str] = ("weight",),
    layer_groups: int = 4,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    n_trials: int = 40,
    popsize: int | None = None,
    sigma0: float = 0.25,
    seed: int = 0,
    sources: Mapping[str, Any] | None = None,
    parallel: bool = True,
    on_trial: TrialCallback | None = None,
) -> SearchResult:
    """Search merge parameters with CMA-ES to maximise `metric(state_dict)`.

    `template` is a merge config (method, base model, models); the parameters named in `search` are
    filled in by the search. Runs whole generations until at least `n_trials` trials are done.
    `parallel=True` evaluates each generation's trials as Ray tasks (`alloyml.raycluster.ensure_ray()`).
    """
    import cma

    start = time.perf_counter()
    if layer_groups < 1 or n_trials < 1:
        raise InvalidInputError(f"layer_groups and n_trials must be >= 1, got {layer_groups} and {n_trials}")
    template, slots, bounds = check_template(template, search, layer_groups, bounds)
    x0 = [0.5] * (len(slots) * layer_groups)

    options = {"bounds": [0, 1], "seed": seed + 1, "verbose": -9}  # cma treats seed 0 as "random"
    if popsize:
        options["popsize"] = popsize
    es = cma.CMAEvolutionStrategy(x0, sigma0, options)
    evaluate = _ray_evaluator(sources, metric) if parallel else None
    trials: list[TrialRecord] = []
    generation = 0
    while len(trials) < n_trials:
        xs = es.ask()
        batch = [(len(trials) + i, *_trial_config(template, slots, layer_groups, x, bounds)) for i, x in enumerate(xs)]
        records = (
            evaluate(batch, generation, on_trial)
            if parallel
            else _run_local(batch, generation, sources, metric, on_trial)
        )
        records.sort(key=lambda r: int(r.trial_id))
        trials += records
        es.tell(xs, [-r.metrics["score"] if "score" in r.metrics else _FAILED for r in records])
        generation += 1
    scored = [t for t in trials if "score" in t.metrics]
    if not scored:
        raise InvalidInputError(f"every merge-search trial failed; first error: {trials[0].error}")
    best = max(scored, key=lambda t: t.metrics["score"])
    best_config = load_merge_config(best.config).model_dump(mode="json", exclude_defaults=True)
    return SearchResult(trials, best_config, best.metrics["score"], seconds=time.perf_counter() - start)


def _record(number, generation, config, values, outcome, seconds) -> TrialRecord:
    """The trial as every search records it; a failed or non-finite score is an "error" with no metric."""
    if isinstance(outcome, BaseException):
        error = f"{type(outcome).__name__}: {outcome}"
    elif not math.isfinite(outcome):
        error = f"metric returned {outcome}"
    else:
        error = None
    return TrialRecord(
        trial_id=str(number),
        config=config,
        metrics={} if error else {"score": float(outcome)},
        cost=1.0,  # one merge evaluated
        seconds=seconds,
        status="error" if error else "completed",
        extra={"generation": generation, "values": values},
        error=error,
    )


def _run_local(batch, generation, sources, metric, on_trial) -> list[TrialRecord]:
    records = []
    for number, config, values in batch:
        start = time.perf_counter()
        try:
            outcome = evaluate_merge(config, sources, metric)
        except Exception as err:  # a failed trial is recorded, not fatal to the search
            outcome = err
        records.append(_record(number, generation, config, values, outcome, time.perf_counter() - start))
        if on_trial:
            on_trial(records[-1])
    return records


def _ray_evaluator(sources, metric):
    import ray

    from alloyml.raycluster import ensure_ray

    ensure_ray()
    sources_ref = ray.put(dict(sources or {}))
    metric_ref = ray.put(metric)

    @ray.remote(num_cpus=1)
    def trial(config, sources, metric):
        start = time.perf_counter()
        try:
            return evaluate_merge(config, sources, metric), time.perf_counter() - start
        except Exception as err:
            return err, time.perf_counter() - start

    def evaluate(batch, generation, on_trial) -> list[TrialRecord]:
        pending = {trial.remote(config, sources_ref, metric_ref): (n, config, v) for n, config, v in batch}
        records = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            number, config, values = pending.pop(done[0])
            outcome, seconds = ray.get(done[0])
            records.append(_record(number, generation, config, values, outcome, seconds))
            if on_trial:
                on_trial(records[-1])
        return records

    return evaluate
