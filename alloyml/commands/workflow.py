"""`alloyml workflow list | show ID [--watch] | resume ID | cancel ID | builtins | run NAME`."""


def register(subparsers) -> None:
    workflow = subparsers.add_parser("workflow", help="list, follow, resume and cancel durable workflows")
    sub = workflow.add_subparsers(dest="workflow_command", metavar="ACTION", required=True)

    listing = sub.add_parser("list", help="recent workflows")
    listing.add_argument("--status", help="only workflows with this status")
    listing.add_argument("--limit", type=int, default=20)
    listing.set_defaults(func=_list)

    show = sub.add_parser("show", help="a workflow's steps: state, attempts, timings, errors")
    show.add_argument("id", type=int)
    show.add_argument("--watch", action="store_true", help="refresh live until the workflow finishes")
    show.add_argument("--errors", action="store_true", help="print each failed step's full traceback")
    show.set_defaults(func=_show)

    resume = sub.add_parser("resume", help="drive an unfinished workflow to the end in this process")
    resume.add_argument("id", type=int)
    resume.add_argument("--quiet", action="store_true", help="no live display")
    resume.set_defaults(func=_resume)

    cancel = sub.add_parser("cancel", help="cancel a pending or running workflow")
    cancel.add_argument("id", type=int)
    cancel.set_defaults(func=_cancel)

    builtins = sub.add_parser("builtins", help="list the built-in workflows")
    builtins.set_defaults(func=_builtins)

    run = sub.add_parser("run", help="submit a built-in workflow and follow it")
    run.add_argument("name", help="built-in workflow name (see `alloyml workflow builtins`)")
    run.add_argument("--input", action="append", default=[], metavar="NAME=VALUE",
                     help="an input: a JSON value (bare text such as a name is a string), or @path to a "
                          ".npy file (repeat per input)")
    run.add_argument("--detach", action="store_true", help="drive it in a detached process and return")
    run.add_argument("--resources", action="append", default=[], metavar="STEP=JSON",
                     help='custom Ray resources for one step, e.g. value_rows=\'{"node_a": 1}\' (repeat per step)')
    run.set_defaults(func=_run)


def _list(args) -> int:
    from rich.console import Console

    from alloyml.platform.client import Platform
    from alloyml.workflows.display import workflows_table

    with Platform() as platform:
        Console().print(workflows_table(platform.store.list_workflows(limit=args.limit, status=args.status)))
    return 0


def _show(args) -> int:
    from rich.console import Console

    from alloyml.platform.client import Platform
    from alloyml.workflows.display import steps_table, watch

    console = Console()
    with Platform() as platform:
        store = platform.store
        if args.watch:
            watch(store, args.id, console)
        else:
            console.print(steps_table(store.get_workflow(args.id), store.workflow_steps(args.id)))
        workflow = store.get_workflow(args.id)
        if args.errors:
            for s in store.workflow_steps(args.id):
                if s.state == "failed" and s.error:
                    console.rule(f"step {s.name}")
                    console.print(s.error, markup=False, highlight=False)
        return 0 if workflow.status != "failed" else 1


def _resume(args) -> int:
    from alloyml.platform.client import Platform
    from alloyml.workflows import resume

    with Platform() as platform:
        return _follow(platform, resume(args.id, platform), quiet=args.quiet)


def _cancel(args) -> int:
    from alloyml.platform.client import Platform
    from alloyml.workflows import WorkflowHandle

    with Platform() as platform:
        status = WorkflowHandle(platform, args.id).cancel(timeout=60)
    print(f"workflow {args.id}: {status}")
    return 0


def _builtins(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from alloyml.workflows.builtin import builtins

    table = Table(title="built-in workflows")
    for column in ("name", "inputs", "description"):
        table.add_column(column)
    for item in builtins().values():
        table.add_row(item.name, ", ".join(item.inputs), item.description)
    Console().print(table)
    return 0


def _run(args) -> int:
    from alloyml.platform.client import Platform
    from alloyml.workflows import submit
    from alloyml.workflows.builtin import get_builtin
    from alloyml.workflows.recording import store_location

    workflow = get_builtin(args.name).build()
    for name, resources in (_parse_input(item) for item in args.resources):
        workflow.place(name, resources=resources)
    inputs = dict(_parse_input(item) for item in args.input)
    with Platform() as platform:
        if "store" in workflow.inputs and "store" not in inputs:
            inputs["store"] = store_location(platform)  # steps that record open this store
        handle = submit(platform, workflow, inputs, detach=args.detach)
        print(f"workflow {handle.id} submitted")
        return 0 if args.detach else _follow(platform, handle, quiet=False)


def _follow(platform, handle, *, quiet: bool) -> int:
    """Wait for the workflow (with a live step table unless quiet) and print its result or error."""
    from rich.console import Console

    from alloyml.workflows.display import watch

    console = Console()
    try:
        if not quiet:
            watch(platform.store, handle.id, console)
        status = handle.wait()
    except KeyboardInterrupt:
        handle.stop_driving()
        console.print(f"stopped driving workflow {handle.id}; finish it with `alloyml workflow resume {handle.id}`")
        raise
    workflow = platform.store.get_workflow(handle.id)
    if quiet:
        return 0 if status == "done" else 1
    if status == "done":
        console.print("result:", handle.result())
        return 0
    console.print(f"workflow {handle.id} {status}: {workflow.error}", markup=False, highlight=False)
    return 1


def _parse_input(item: str):
    import json

    import numpy as np

    from alloyml.errors import InvalidInputError

    name, sep, value = item.partition("=")
    if not sep or not name:
        raise InvalidInputError(f"--input {item!r}: expected NAME=VALUE (JSON) or NAME=@file.npy")
    if value.startswith("@"):
        try:
            return name, np.load(value[1:], allow_pickle=False)
        except FileNotFoundError as err:
            raise InvalidInputError(f"--input {name}: file {value[1:]!r} does not exist") from err
        except (OSError, ValueError) as err:  # pickled objects (allow_pickle=False), not an .npy, unreadable
            raise InvalidInputError(f"--input {name}: {value[1:]!r} is not a plain .npy array ({err})") from err
    try:
        return name, json.loads(value)
    except json.JSONDecodeError as err:
        if value and not value.lstrip().startswith(("{", "[", '"')):
            return name, value  # bare text (`--input cascade=prod`): a string
        raise InvalidInputError(f"--input {name}: {value!r} is not JSON (quote strings: '\"text\"')") from err
