"""`alloyml tune hpo|inference|merge CONFIG.yaml`: a Ray Tune hyperparameter search, budgeted inference tuning
of a language model, or a search over merge parameters (CMA-ES), from a YAML config that is validated whole
before anything runs. Each search is recorded in the store as a run of kind "tune" with one trial per
configuration tried."""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path

_HPO_EXAMPLE = """\
example (see README, "AutoML"):
  objective: {kind: sklearn, estimator: sklearn.linear_model.LogisticRegression, dataset: breast_cancer,
              preprocessing: [sklearn.preprocessing.StandardScaler], params: {max_iter: 500}, cv: 3}
  space:
    logisticregression__C: {kind: uniform, low: 1.0e-3, high: 100.0, log: true}
  num_samples: 8          # scheduler: asha | fifo; searcher: optuna | random; priors, seed, metric, mode
"""

_INFERENCE_EXAMPLE = """\
example (see README, "AutoML"):
  model: {kind: smollm2}  # or {kind: alloyml, path: DIR}, {kind: hf, path: DIR}, {kind: litellm, model: P/NAME}
  task: plural            # a built-in task, or data: FILE.jsonl of {"input": ..., "target": ...} rows
  space: {n: [1, 3], temperature: [0.0, 0.8], max_tokens: [8, 16], templates: ["{instruction} {input}"]}
  budget: 60              # mean tokens per example
"""

_MERGE_EXAMPLE = """\
example (see README, "Merging"):
  template: {merge_method: task_arithmetic, base_model: ckpt/base, models: [{model: ckpt/a}, {model: ckpt/b}]}
  metric: mypkg.evals:score   # function(state_dict) -> float, higher is better
  search: [weight]            # layer_groups: 2, n_trials: 24, popsize, bounds: {weight: [0, 1]}, seed
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "tune", help="tune hyperparameters (Ray Tune) or inference settings under a budget, from a YAML config",
        description="Run a search described by a YAML config; every trial is recorded in the store (run kind 'tune').",
    )
    sub = parser.add_subparsers(dest="tune_command", metavar="SEARCH", required=True)
    hpo = sub.add_parser(
        "hpo", help="hyperparameter search on the local Ray Tune: scikit-learn estimators or alloyml LM training",
        description="Search the hyperparameters of a scikit-learn estimator (k-fold cross-validation on a bundled\n"
                    "dataset) or of alloyml LM training, with Optuna or random search and ASHA early stopping.",
        epilog=_HPO_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    hpo.add_argument("config", help="YAML config: objective, space, priors, num_samples, scheduler, searcher, seed")
    hpo.add_argument("--out", metavar="FILE", help='write {"config", "metric", "mode", "score", "run_id"} of the best '
                                                   "trial to this JSON file")
    hpo.add_argument("--resume", metavar="RUN_ID", type=int,
                     help="continue an interrupted search of the same config: its recorded trials count towards "
                          "num_samples and are not run again (a new run holds them and the rest)")
    hpo.set_defaults(func=_hpo)

    inference = sub.add_parser(
        "inference", help="the best decoding settings and prompt template of a language model within a token budget",
        description="Budgeted inference tuning (EcoOptiGen-style): the configuration of the space with the highest\n"
                    "utility whose mean tokens per example stay within the budget. Pruning is provable, so the\n"
                    "answer equals an exhaustive search's.",
        epilog=_INFERENCE_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inference.add_argument("config", help="YAML config: model, task or data, instruction, space, budget, utility")
    inference.add_argument("--out", metavar="FILE", help='write {"config", "utility", "mean_cost", "run_id"} of the '
                                                         "chosen configuration to this JSON file")
    inference.set_defaults(func=_inference)

    merge = sub.add_parser(
        "merge", help="search merge parameters (CMA-ES over per-layer-group weights, densities, t) for a metric",
        description="Search the parameters of a mergekit-style merge template to maximise a metric of the merged\n"
                    "state dict; every merge evaluated is recorded as a trial (see alloyml.merging.search_config).",
        epilog=_MERGE_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    merge.add_argument("config", help="YAML config: template, metric, search, layer_groups, n_trials, bounds, seed")
    merge.add_argument("--out", metavar="FILE", help="write the best merge config (YAML, ready for `alloyml merge`) "
                                                     "to this file")
    merge.set_defaults(func=_merge_search)


def _hpo(args: argparse.Namespace) -> int:
    from rich.console import Console

    from alloyml.automl.config import HPOConfig, load_tune_config
    from alloyml.platform.client import Platform

    out = _checked_out(args.out)
    config = load_tune_config(args.config, HPOConfig)
    console = Console()
    name = config.name or f"hpo {Path(args.config).name}"
    params = {"search": "hpo", "metric": config.metric, "mode": config.mode,
              "config_file": str(Path(args.config).resolve()), "config": config.model_dump(mode="json")}
    with Platform() as platform:
        previous = _resumed_trials(platform, args.resume, params["config"]) if args.resume is not None else []
        if args.resume is not None:
            params["resumed_from"] = args.resume
        _hpo_run(platform, config, name, params, previous, console, out)
    return 0


def _hpo_run(platform, config, name, params, previous, console, out) -> None:
    from alloyml.automl import hyperparameter_search
    from alloyml.automl.hpo import describe_search, warm_start_count
    from alloyml.platform.settings import display_url
    from alloyml.workflows.recording import trial_recorder

    objective = config.objective.build()
    with platform.run("tune", name=name, params=params) as run:
        n_warm = warm_start_count(config.num_samples, config.prior_fraction, bool(config.priors))
        console.print(f"[bold]tune hpo[/bold] {name!r}: {config.searcher} search, {config.scheduler} scheduler — "
                      f"run {run.id} in {display_url(platform.settings.db_url)}")
        console.print(describe_search(config.searcher, config.num_samples, n_warm), highlight=False)
        record = trial_recorder(platform, run.id)
        for trial in previous:  # the new run holds the whole search
            record(trial)
        if previous:
            console.print(f"resuming run {params['resumed_from']}: {len(previous)} trials recorded, "
                          f"{max(0, config.num_samples - len(previous))} to run", highlight=False)
        done = len(previous)
        with _trial_progress(console, config.num_samples, "trials", completed=done) as advance:

            def on_trial(trial) -> None:  # streamed as each trial finishes: a crash keeps what was recorded
                nonlocal done
                record(trial)
                done += 1
                advance()
                score = trial.metrics.get(config.metric, float("nan"))
                why = f" ({trial.error})" if trial.error else ""
                console.print(f"  [{done}/{config.num_samples}] trial {trial.trial_id} {trial.status}: "
                              f"{config.metric} {score:.4f}{why}", highlight=False, markup=False)

            result = hyperparameter_search(objective, config.space, **config.search_kwargs(), on_trial=on_trial,
                                           previous=previous)
        run.log_metrics(best_score=result.best_score, trials=len(result.trials), best_config=result.best_config)
    console.print(_hpo_table(result, list(config.space)))
    console.print(f"best {result.metric} ({result.mode}) {result.best_score:.4f}: {_plain_dict(result.best_config)}",
                  highlight=False, markup=False)
    if out is not None:
        _write_json(out, {"config": result.best_config, "metric": result.metric, "mode": result.mode,
                          "score": result.best_score, "run_id": run.id})
        console.print(f"best config written to {out}")


def _resumed_trials(platform, run_id: int, config: dict):
    """The trials recorded by tune run `run_id`, checked to be a search of the same config (num_samples may
    grow), as TrialRecords."""
    from alloyml.errors import InvalidInputError
    from alloyml.trials import TrialRecord

    run = platform.store.get_run(run_id)
    if run.kind != "tune" or run.params.get("search") != "hpo":
        raise InvalidInputError(f"--resume {run_id}: run {run_id} is a {run.kind} run, not a tune hpo search")
    recorded = dict(run.params.get("config") or {})
    differs = sorted(k for k in set(recorded) | set(config)
                     if k != "num_samples" and recorded.get(k) != config.get(k))
    if differs:
        raise InvalidInputError(f"--resume {run_id}: the config differs from that run's in {differs}; "
                                "resume with the same config (only num_samples may change)")
    return [TrialRecord(trial_id=f"run{run_id}-{t.number}", config=dict(t.config), metrics=dict(t.metrics),
                        cost=float(t.cost or 0.0), seconds=float(t.seconds or 0.0), status=t.status,
                        extra={"resumed_from": run_id})
            for t in sorted(platform.store.list_trials(run_id), key=lambda t: t.number)]


def _inference(args: argparse.Namespace) -> int:
    from rich.console import Console

    from alloyml.automl import tune_inference
    from alloyml.automl.config import InferenceTuningConfig, load_tune_config
    from alloyml.lm import build_lm
    from alloyml.platform.client import Platform
    from alloyml.workflows.recording import trial_recorder

    out = _checked_out(args.out)
    config = load_tune_config(args.config, InferenceTuningConfig)
    examples = config.examples()
    lm = build_lm(config.model)
    console = Console()
    name = config.name or f"inference {Path(args.config).name}"
    params = {"search": "inference", "metric": "utility", "mode": "max", "budget": config.budget,
              "config_file": str(Path(args.config).resolve()), "config": config.model_dump(mode="json")}
    with Platform() as platform, platform.run("tune", name=name, params=params) as run:
        n_configs = len(config.space.configs())
        record = trial_recorder(platform, run.id)
        label = f"{n_configs} configurations on {len(examples)} examples (run {run.id})"
        with _trial_progress(console, n_configs, label) as advance:

            def on_trial(trial) -> None:
                record(trial)
                advance()

            result = tune_inference(lm, examples, config.space, **config.tune_kwargs(), on_trial=on_trial)
        best = result.best.model_dump() if result.best is not None else None
        run.log_metrics(best_utility=result.best_utility, best_cost=result.best_cost, tuning_cost=result.tuning_cost,
                        status_counts=result.status_counts, best_config=best)
    console.print(_inference_table(result, config.space))
    counts = ", ".join(f"{status} {count}" for status, count in sorted(result.status_counts.items()))
    console.print(f"{len(result.trials)} configurations: {counts}; the search spent {result.tuning_cost:.0f} tokens")
    if best is None:
        console.print(f"no configuration fits the budget of {config.budget:g} per example (run {run.id})")
        return 1
    console.print(f"chosen: {_plain_dict(best)}", highlight=False, markup=False)
    console.print(f"utility {result.best_utility:.4f}, mean cost {result.best_cost:.2f} per example "
                  f"(budget {config.budget:g}) — run {run.id}")
    if out is not None:
        _write_json(out, {"config": best, "utility": result.best_utility, "mean_cost": result.best_cost,
                          "run_id": run.id})
        console.print(f"chosen config written to {out}")
    return 0


@contextmanager
def _trial_progress(console, total: int, label: str, completed: int = 0):
    """A rich progress bar of trials done out of `total` (drawn only on a terminal); yields `advance()`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(label, total=total, completed=completed)
        yield lambda: progress.advance(task)


def _merge_search(args: argparse.Namespace) -> int:
    from rich.console import Console

    from alloyml.merging.search import search_merge
    from alloyml.merging.search_config import load_merge_search_config
    from alloyml.platform.client import Platform
    from alloyml.platform.settings import display_url
    from alloyml.workflows.recording import trial_recorder

    out = _checked_out(args.out)
    config = load_merge_search_config(args.config)
    metric = config.build_metric()
    console = Console()
    name = config.name or f"merge search {Path(args.config).name}"
    params = {"search": "merge", "metric": "score", "mode": "max", "method": config.template["merge_method"],
              "config_file": str(Path(args.config).resolve()), "config": config.model_dump(mode="json")}
    with Platform() as platform, platform.run("tune", name=name, params=params) as run:
        console.print(f"[bold]tune merge[/bold] {name!r}: {config.n_trials} trials of {config.template['merge_method']}"
                      f" — run {run.id} in {display_url(platform.settings.db_url)}")
        record = trial_recorder(platform, run.id)

        def on_trial(trial) -> None:
            record(trial)
            score = trial.metrics.get("score")
            shown = f"score {score:.4f}" if score is not None else trial.error
            console.print(f"  trial {trial.trial_id} {trial.status}: {shown}", highlight=False, markup=False)

        result = search_merge(config.template, metric, **config.search_kwargs(), on_trial=on_trial)
        run.log_metrics(best_score=result.best_score, trials=len(result.trials), best_config=result.best_config)
    console.print(f"best score {result.best_score:.4f} of {len(result.trials)} trials (run {run.id})", highlight=False)
    if out is not None:
        out.write_text(result.best_yaml)
        console.print(f"best merge config written to {out}")
    return 0


def _hpo_table(result, names: list[str]):
    from rich import box
    from rich.table import Table

    best = next((i for i, t in enumerate(result.trials) if t.config == result.best_config), None)
    table = Table(title=f"trials in the order they finished ({result.mode} {result.metric})", box=box.SIMPLE_HEAD)
    for column in ("#", "status", "reports"):
        table.add_column(column, justify="left" if column == "status" else "right",
                         min_width=len("stopped_early") if column == "status" else None)
    short = [n.rsplit("__", 1)[-1] for n in names]  # pipeline step prefixes, when that stays unambiguous
    for header in short if len(set(short)) == len(short) else names:
        table.add_column(header)
    for column in (result.metric, "cost"):
        table.add_column(column, justify="right")
    for i, t in enumerate(result.trials):
        table.add_row(str(i), t.status, str(t.extra.get("iterations", "")), *(_cell(t.config.get(n)) for n in names),
                      _cell(t.metrics.get(result.metric)), _cell(t.cost), style="bold green" if i == best else None)
    return table


def _inference_table(result, space):
    from rich import box
    from rich.table import Table

    # Settings with one candidate are the same in every row; templates are shown by their index.
    columns = {"n": "n", "temperature": "temp", "top_p": "top_p", "max_tokens": "max tok", "stop": "stop",
               "template": "tmpl"}
    candidates = {"n": space.n, "temperature": space.temperature, "top_p": space.top_p,
                  "max_tokens": space.max_tokens, "stop": space.stop, "template": space.templates}
    varied = [key for key in columns if len(candidates[key]) > 1]
    legend = ", ".join(f"{i} = {_cell(t)}" for i, t in enumerate(space.templates)) if "template" in varied else None
    table = Table(title=f"configurations (budget {result.budget:g} per example)", box=box.SIMPLE_HEAD,
                  caption=f"templates: {legend}" if legend else None)
    for column in ("#", "status", *(columns[key] for key in varied), "utility", "cost/ex", "seen"):
        table.add_column(column, justify="left" if column in ("status", "stop") else "right",
                         min_width=len("pruned_dominated") if column == "status" else None)
    chosen = result.best.model_dump() if result.best is not None else None

    def shown(key, value):
        return str(space.templates.index(value)) if key == "template" else _cell(value)

    for i, t in enumerate(result.trials):
        table.add_row(str(i), t.status, *(shown(key, t.config[key]) for key in varied), _cell(t.metrics["utility"]),
                      _cell(t.metrics["mean_cost"]), str(int(t.metrics["examples"])),
                      style="bold green" if t.config == chosen else None)
    return table


def _cell(value) -> str:
    from rich.markup import escape

    if isinstance(value, float):
        return f"{value:.4g}"
    text = repr(value) if isinstance(value, str | tuple) else str(value)
    return escape(text if len(text) <= 32 else text[:29] + "...")


def _plain_dict(config: dict) -> str:
    return "{" + ", ".join(f"{k}: {v!r}" for k, v in config.items()) + "}"


def _checked_out(out: str | None) -> Path | None:
    """--out, checked before any work: its folder must exist."""
    from alloyml.errors import InvalidInputError

    if out is None:
        return None
    path = Path(out)
    if not path.parent.is_dir():
        raise InvalidInputError(f"--out {out}: the folder {path.parent} does not exist")
    return path


def _write_json(path: Path, payload: dict) -> None:
    """Write `payload` as JSON, whole or not at all."""
    import json

    from alloyml.atomic import write_atomic

    def plain(value):
        if hasattr(value, "item"):  # numpy scalars that Ray Tune's samplers return
            return value.item()
        raise TypeError(f"{type(value).__name__} is not JSON serializable")

    write_atomic(path, (json.dumps(payload, indent=2, default=plain) + "\n").encode())
