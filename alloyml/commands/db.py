"""`alloyml db upgrade`: create or migrate the metadata store."""


def register(subparsers) -> None:
    db = subparsers.add_parser("db", help="manage the metadata store's schema")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    upgrade = db_sub.add_parser("upgrade", help="create the schema or migrate it to this alloyml's version")
    upgrade.add_argument("--url", help="database URL (default: ALLOYML_DB_URL or the embedded SQLite file)")
    upgrade.set_defaults(func=_upgrade)


def _upgrade(args) -> int:
    from alloyml.platform.client import upgrade_database
    from alloyml.platform.settings import Settings, display_url

    settings = Settings.from_env(db_url=args.url)
    revision = upgrade_database(settings.db_url)
    print(f"database {display_url(settings.db_url)} is at schema revision {revision}")
    return 0
