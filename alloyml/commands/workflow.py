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
    resume.add_argument("--address", default=None, help=_ADDRESS_HELP)
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
    run.add_argument("--address", default=None, help=_ADDRESS_HELP)
    run.set_defaults(func=_run)


_ADDRESS_HELP = ("the Ray cluster: ray://HOST:10001 (Ray Client: this process drives, the cluster runs the steps) "
                 "or http://HOST:8265 (Ray Jobs API: the head runs the driver with its own settings); default "
                 "ALLOYML_RAY_ADDRESS or a local Ray. Ray's token, when the cluster wants one, comes from "
                 "RAY_AUTH_TOKEN (with RAY_AUTH_MODE=token), never from the command line")


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


def _join_cluster(args) -> None:
    """A Ray Client or GCS `--address` is joined by this process, like ALLOYML_RAY_ADDRESS (which it
    overrides here and in any detached driver this process starts)."""
    import os

    from alloyml.errors import ConfigError
    from alloyml.raycluster import address_kind

    if args.address is None:
        return
    if address_kind(args.address) == "jobs":
        raise ConfigError(f"--address {args.address!r} is a Ray Jobs API address; `resume` drives in this process: "
                          "give ray://HOST:10001, or submit `alloyml workflow run` through the Jobs API")
    os.environ["ALLOYML_RAY_ADDRESS"] = args.address


def _resume(args) -> int:
    from alloyml.platform.client import Platform
    from alloyml.workflows import resume

    _join_cluster(args)
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
    from alloyml.raycluster import address_kind
    from alloyml.workflows import submit
    from alloyml.workflows.builtin import get_builtin
    from alloyml.workflows.recording import store_location

    kind = None if args.address is None else address_kind(args.address)  # checked before anything else
    workflow = get_builtin(args.name).build()
    for name, resources in (_parse_input(item) for item in args.resources):
        workflow.place(name, resources=resources)
    if kind == "jobs":
        return _run_as_job(args, workflow)
    inputs = dict(_parse_input(item) for item in args.input)
    _join_cluster(args)
    with Platform() as platform:
        if "store" in workflow.inputs and "store" not in inputs:
            inputs["store"] = store_location(platform)  # steps that record open this store
        handle = submit(platform, workflow, inputs, detach=args.detach)
        print(f"workflow {handle.id} submitted")
        return 0 if args.detach else _follow(platform, handle, quiet=False)


def _run_as_job(args, workflow) -> int:
    """The same `workflow run`, minus --address, as a Ray job: the head records and drives the workflow
    with its own store settings; this process follows the job's log."""
    from alloyml.errors import InvalidInputError
    from alloyml.workflows.jobs import follow_job, submit_command

    files = [item.partition("=")[0] for item in args.input if item.partition("=")[2].startswith("@")]
    if files:
        raise InvalidInputError(f"--input {', '.join(files)}: a file on this machine does not reach a Jobs API "
                                "driver; give the values as JSON, or submit through ray://HOST:10001")
    inputs = dict(_parse_input(item) for item in args.input)
    # Bad inputs fail here, before a job is submitted; the head fills in its own store.
    workflow.check_inputs({**({"store": None} if "store" in workflow.inputs else {}), **inputs})
    argv = ["workflow", "run", args.name, *(f"--input={item}" for item in args.input),
            *(f"--resources={item}" for item in args.resources), *(["--detach"] if args.detach else [])]
    job_id = submit_command(args.address, argv)
    print(f"Ray job {job_id} submitted to {args.address}")
    if args.detach:
        return 0
    state, workflow_id, _ = follow_job(args.address, job_id)
    print(f"Ray job {job_id} {state.lower()}" + (f" (workflow {workflow_id})" if workflow_id is not None else ""))
    return 0 if state == "SUCCEEDED" else 1


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
