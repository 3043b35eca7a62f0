"""`alloyml runs list`: recent runs as a table; `alloyml runs tag RUN KEY=VALUE ...`: tag a run."""


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
    tagging = runs_sub.add_parser("tag", help="set (or --delete) tags on a run")
    tagging.add_argument("run", type=int, metavar="RUN", help="run id")
    tagging.add_argument("tags", nargs="*", metavar="KEY=VALUE", help="tags to set, e.g. owner=ana stage=prod")
    tagging.add_argument("--delete", action="append", default=[], metavar="KEY", help="remove this tag")
    tagging.set_defaults(func=_tag)


def _list(args) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from alloyml.platform.client import Platform

    with Platform() as platform:
        runs = platform.store.list_runs(kind=args.kind, status=args.status, limit=args.limit, filter=args.filter)
    table = Table(title=f"runs ({len(runs)} shown)")
    for column in ("id", "kind", "name", "status", "started", "seconds", "metrics", "tags"):
        table.add_column(column)
    for run in runs:
        seconds = f"{run.seconds:.2f}" if run.seconds is not None else "—"
        metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in list(run.metrics.items())[:4])
        tags = ", ".join(f"{k}={v}" for k, v in run.tags.items())
        table.add_row(str(run.id), run.kind, run.name or "", run.status,
                      run.started_at.strftime("%Y-%m-%d %H:%M:%S"), seconds, metrics, escape(tags))
    Console().print(table)
    return 0


def _tag(args) -> int:
    from alloyml.errors import InvalidInputError
    from alloyml.platform.client import Platform

    pairs = {}
    for item in args.tags:
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidInputError(f"tag {item!r} is not KEY=VALUE, e.g. owner=ana")
        pairs[key] = value
    if not pairs and not args.delete:
        raise InvalidInputError("give tags as KEY=VALUE, or --delete KEY")
    with Platform() as platform:
        tags = platform.store.set_tags(args.run, pairs)  # validates every pair before writing any
        for key in args.delete:
            platform.store.delete_tag(args.run, key)
            tags.pop(key, None)
    print(f"run {args.run} tags: " + (", ".join(f"{k}={v}" for k, v in tags.items()) or "(none)"))
    return 0
