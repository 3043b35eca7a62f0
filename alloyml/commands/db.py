"""`alloyml db upgrade | downgrade REV | check`: migrate the metadata store and check it."""


def register(subparsers) -> None:
    db = subparsers.add_parser("db", help="manage the metadata store's schema")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    url_help = "database URL (default: ALLOYML_DB_URL or the embedded SQLite file)"
    upgrade = db_sub.add_parser("upgrade", help="create the schema or migrate it to this alloyml's version")
    upgrade.add_argument("--url", help=url_help)
    upgrade.set_defaults(func=_upgrade)
    downgrade = db_sub.add_parser("downgrade", help="undo migrations down to a revision (`base`: empty)")
    downgrade.add_argument("revision", help="target revision id (see `alloyml db check`), or base")
    downgrade.add_argument("--url", help=url_help)
    downgrade.set_defaults(func=_downgrade)
    check = db_sub.add_parser("check", help="integrity, foreign keys, schema revision, artifact files")
    check.add_argument("--url", help=url_help)
    check.add_argument("--hash", action="store_true", help="also recompute every artifact's hash (reads them all)")
    check.set_defaults(func=_check)


def _migrate(args, direction: str) -> int:
    from alloyml.platform import schema
    from alloyml.platform.settings import Settings, display_url

    settings = Settings.from_env(db_url=args.url)
    write_engine, read_engine = schema.make_engines(settings.db_url)
    try:
        if direction == "upgrade":
            revision = schema.upgrade(write_engine)
        else:
            revision = schema.downgrade(write_engine, args.revision)
    finally:
        write_engine.dispose()
        read_engine.dispose()
    print(f"database {display_url(settings.db_url)} is at schema revision {revision or 'base (empty)'}")
    return 0


def _upgrade(args) -> int:
    return _migrate(args, "upgrade")


def _downgrade(args) -> int:
    return _migrate(args, "downgrade")


def _check(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from alloyml.platform.checks import check_store
    from alloyml.platform.settings import Settings, display_url

    settings = Settings.from_env(db_url=args.url)
    results = check_store(settings, full_hash=args.hash)
    table = Table(title=f"alloyml db check — {display_url(settings.db_url)}")
    for column in ("check", "result", "details"):
        table.add_column(column)
    for result in results:
        table.add_row(result.name, "ok" if result.ok else "[red]FAILED[/red]", result.details)
    Console().print(table)
    return 0 if all(r.ok for r in results) else 1
