"""`alloyml cascade fit|label|eval`: budgeted FrugalGPT cascades from logged responses (CSV or Parquet, or
the labelled requests a served cascade logged)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("cascade", help="fit and evaluate budgeted model cascades")
    sub = parser.add_subparsers(dest="cascade_command", metavar="ACTION", required=True)

    fit = sub.add_parser("fit", help="find the cost-accuracy frontier and the best cascade under a budget")
    fit.add_argument("responses", nargs="?", default=None,
                     help="logged responses: CSV/Parquet with query_id,query,model,answer,correct,cost")
    fit.add_argument("--from-log", metavar="NAME", default=None,
                     help="instead of a file: the labelled served requests of stored cascade NAME "
                          "(see `alloyml cascade label`)")
    fit.add_argument("--budget", type=float, required=True, help="max mean cost per query")
    fit.add_argument("--missing", choices=["error", "drop"], default="error",
                     help="queries some model did not answer: refuse the log (default) or drop those queries")
    fit.add_argument("--out", required=True, help="where to write the plan (JSON)")
    fit.add_argument("--max-length", type=int, default=3, help="longest chain of models (default 3)")
    fit.add_argument("--thresholds", type=int, default=32, help="candidate thresholds per stage (default 32)")
    fit.add_argument("--folds", type=int, default=5, help="folds for out-of-fold scorer training (default 5)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--cost-z", type=float, default=None,
                     help="keep the plan's training mean cost this many standard errors below the budget, so "
                          "the budget holds on new traffic (default: alloyml.routing.cascade.COST_Z)")
    fit.add_argument("--models", default=None,
                     help='JSON file of model specs for serving, e.g. '
                          '{"m0": {"kind": "smollm2", "price": {"per_prompt_token": 1, "per_completion_token": 1}}}')
    fit.add_argument("--save", metavar="NAME", default=None,
                     help="also store the plan as a new version of cascade NAME (for `alloyml serve cascade`)")
    fit.set_defaults(func=_fit)

    label = sub.add_parser("label", help="attach correctness labels to served requests of a stored cascade")
    label.add_argument("name", help="cascade name in the store")
    label.add_argument("file", help="JSONL or CSV with request_id, correct (and optionally model: which stage's "
                                    "answer; default the answer returned)")
    label.set_defaults(func=_label)

    ev = sub.add_parser("eval", help="accuracy and cost of a plan on (held-out) logged responses")
    ev.add_argument("plan", help="plan JSON written by `alloyml cascade fit`")
    ev.add_argument("responses", help="logged responses (CSV/Parquet)")
    ev.add_argument("--missing", choices=["error", "drop"], default="error",
                    help="queries some model did not answer: refuse the log (default) or drop those queries")
    ev.add_argument("--point", type=int, default=None, help="frontier point to evaluate (default: the chosen)")
    ev.add_argument("--json", action="store_true", help="end with one JSON line of the results")
    ev.set_defaults(func=_eval)


def _fit(args: argparse.Namespace) -> int:
    from rich.console import Console

    from alloyml.errors import InvalidInputError
    from alloyml.routing.cascade import COST_Z, FrugalCascade
    from alloyml.routing.responses import load_responses

    args.cost_z = COST_Z if args.cost_z is None else args.cost_z
    if (args.responses is None) == (args.from_log is None):
        raise InvalidInputError("give either a responses file or --from-log NAME (exactly one)")
    _check_fit_args(args)
    specs = None
    if args.models:
        from alloyml.routing.specs import check_model_specs

        specs = _read_specs(args.models)
        check_model_specs(specs)  # build each once: a spec that cannot be built fails here, not at deploy
    if args.from_log:
        from alloyml.platform.client import Platform
        from alloyml.workflows.recording import served_responses

        with Platform() as platform:
            responses = served_responses(platform, args.from_log, missing=args.missing)
    else:
        responses = load_responses(args.responses, missing=args.missing)
    cascade = FrugalCascade(
        budget=args.budget, max_length=args.max_length, n_thresholds=args.thresholds, folds=args.folds,
        seed=args.seed, cost_z=args.cost_z,
    ).fit(responses)
    console = Console()
    console.print(_frontier_table(cascade.plan_))
    point = cascade.plan_.point
    console.print(
        f"chosen point {cascade.plan_.chosen}: {_chain_text(point)}  "
        f"accuracy {point.accuracy:.4f}  mean cost {point.mean_cost:.4g} +- {point.cost_se or 0:.2g} "
        f"(budget {args.budget:g}, kept {args.cost_z:g} standard errors below it)"
    )
    plan = cascade.plan_
    if specs is not None:
        plan = plan.model_copy(update={"model_specs": specs})
        plan = type(plan).from_dict(plan.model_dump())  # validate the specs' model names
    path = plan.save(args.out)
    console.print(f"plan written to {path}")
    if args.save:
        from alloyml.platform.client import Platform
        from alloyml.workflows.recording import save_cascade_plan

        with Platform() as platform:
            stored = save_cascade_plan(platform, args.save, plan, responses, args.budget)
        console.print(f"stored as cascade {stored.name!r} version {stored.version}")
    return 0


def _check_fit_args(args: argparse.Namespace) -> None:
    """Refuse bad numbers and an unwritable --out before any work starts."""
    import math
    from pathlib import Path

    from alloyml.errors import InvalidInputError

    if not math.isfinite(args.budget) or args.budget <= 0:
        raise InvalidInputError(f"--budget must be a positive mean cost per query, got {args.budget}")
    if args.thresholds < 1:
        raise InvalidInputError(f"--thresholds must be >= 1 candidate thresholds per stage, got {args.thresholds}")
    if args.max_length < 1:
        raise InvalidInputError(f"--max-length must be >= 1, got {args.max_length}")
    if args.folds < 2:
        raise InvalidInputError(f"--folds must be >= 2, got {args.folds}")
    if not math.isfinite(args.cost_z) or args.cost_z < 0:
        raise InvalidInputError(f"--cost-z must be >= 0, got {args.cost_z}")
    out = Path(args.out)
    folder = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise InvalidInputError(f"--out {args.out!r} is a folder; give a file path for the plan JSON")
    if not folder.is_dir():
        raise InvalidInputError(f"--out {args.out!r}: folder {str(folder)!r} does not exist")

    existed = out.exists()
    try:  # really open it: permission bits do not tell (root, read-only mounts)
        with open(out, "a"):
            pass
    except OSError as err:
        raise InvalidInputError(f"--out {args.out!r} is not writable: {err.strerror}") from err
    if not existed:
        out.unlink()


def _read_specs(path: str) -> dict:
    import json
    from pathlib import Path

    from alloyml.errors import ConfigError
    from alloyml.routing.adapters import parse_stage_spec

    try:
        specs = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"--models {path!r}: cannot read JSON model specs: {err}") from err
    if not isinstance(specs, dict):
        raise ConfigError(f'--models {path!r} must map model names to specs like {{"kind": "constant"}}')
    for name, spec in specs.items():
        try:
            parse_stage_spec(name, spec)  # checked whole now, built when served
        except ConfigError as err:
            raise ConfigError(f"--models {path!r}: {err}") from None
    return specs


def _label(args: argparse.Namespace) -> int:
    from alloyml.platform.client import Platform
    from alloyml.routing.labels import read_labels

    labels, where = read_labels(args.file)
    with Platform() as platform:
        count = platform.store.label_cascade_requests(args.name, labels, where)
    print(f"labelled {count} answers of cascade {args.name!r} from {args.file}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console

    from alloyml.errors import InvalidInputError
    from alloyml.routing.cascade import evaluate_plan
    from alloyml.routing.plan import CascadePlan
    from alloyml.routing.responses import load_responses

    plan = CascadePlan.load(args.plan)
    if args.point is not None and not 0 <= args.point < len(plan.frontier):
        raise InvalidInputError(f"--point must be in [0, {len(plan.frontier)}), got {args.point}")
    result = evaluate_plan(plan, load_responses(args.responses, missing=args.missing), point=args.point)
    point = plan.frontier[plan.chosen if args.point is None else args.point]
    summary = {
        "accuracy": result.accuracy,
        "mean_cost": result.mean_cost,
        "n_queries": len(result.stage),
        "chain": point.models,
        "thresholds": point.thresholds,
        "stage_share": result.stage_share.tolist(),
        "train_accuracy": point.accuracy,
        "train_mean_cost": point.mean_cost,
        "train_mean_cost_se": point.cost_se,
        "budget": plan.budget,
        "spend_over_budget": result.mean_cost / plan.budget if plan.budget else None,
    }
    console = Console()
    console.print(
        f"{_chain_text(point)}: accuracy {result.accuracy:.4f}, mean cost {result.mean_cost:.4g} on "
        f"{len(result.stage)} queries (planned on training: {point.accuracy:.4f}, {point.mean_cost:.4g})"
    )
    if plan.budget:
        verdict = "within" if result.mean_cost <= plan.budget else "OVER"
        console.print(f"spend {result.mean_cost:.4g} vs budget {plan.budget:.4g}: "
                      f"{result.mean_cost / plan.budget:.1%} of it, {verdict} budget")
    if args.json:
        print(json.dumps(summary))
    return 0


def _chain_text(point) -> str:
    parts = [f"{s.model} (>= {s.threshold:.3f})" if s.threshold is not None else s.model for s in point.stages]
    return " -> ".join(parts)


def _frontier_table(plan):
    from rich.table import Table

    table = Table(title="cost-accuracy frontier (training, out-of-fold scores)")
    for name in ("#", "mean cost", "accuracy", "cascade"):
        table.add_column(name, justify="right" if name != "cascade" else "left")
    for i, point in enumerate(plan.frontier):
        style = "bold green" if i == plan.chosen else None
        table.add_row(str(i), f"{point.mean_cost:.4g}", f"{point.accuracy:.4f}", _chain_text(point), style=style)
    return table
