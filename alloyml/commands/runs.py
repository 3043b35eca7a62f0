"""`alloyml runs list`: recent runs as a table."""


def register(subparsers) -> None:
    runs = subparsers.add_parser("runs", help="inspect recorded runs")
    runs_sub = runs.add_subparsers(dest="runs_command", metavar="ACTION", required=True)
    listing = runs_sub.add_parser("list", help="list recent runs")
    listing.add_argument("--kind", help="only runs of this kind (train, valuation, merge, ...)")
    listing.add_argument("--status", help="only runs with this status (running, done, failed)")
    listing.add_argument("--filter", metavar="EXPR",
                         help="e.g. \"metrics.noise_auc > 0.9 and params.method = 'knn_shapley'\"")
    listing.add_argument("--limit", type=int, default=20)
    listing.set_defaults(func=_list)


def _list(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from alloyml.platform.client import Platform

    with Platform() as platform:
        runs = platform.store.list_runs(kind=args.kind, status=args.status, limit=args.limit, filter=args.filter)
    table = Table(title=f"runs ({len(runs)} shown)")
    for column in ("id", "kind", "name", "status", "started", "seconds", "metrics"):
        table.add_column(column)
    for run in runs:
        seconds = f"{run.seconds:.2f}" if run.seconds is not None else "—"
        metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in list(run.metrics.items())[:4])
        table.add_row(str(run.id), run.kind, run.name or "", run.status,
                      run.started_at.strftime("%Y-%m-%d %H:%M:%S"), seconds, metrics)
    Console().print(table)
    return 0
