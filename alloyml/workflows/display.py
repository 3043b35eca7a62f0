"""Rich rendering of workflows for the CLI: a table of workflows, a live table of one workflow's steps."""

from __future__ import annotations

import time

from alloyml.workflows.driver import TERMINAL

STATE_STYLES = {"pending": "dim", "running": "bold yellow", "done": "green", "failed": "bold red",
                "cancelled": "magenta", "cancelling": "magenta"}


def workflows_table(workflows):
    from rich.table import Table

    table = Table(title=f"workflows ({len(workflows)} shown)")
    for column in ("id", "name", "status", "created", "updated"):
        table.add_column(column)
    for w in workflows:
        table.add_row(str(w.id), w.name, _styled(w.status), f"{w.created_at:%Y-%m-%d %H:%M:%S}",
                      f"{w.updated_at:%H:%M:%S}")
    return table


def steps_table(workflow, steps):
    """One row per step: state, attempts, timings, upstream steps and the last line of any error."""
    from rich.table import Table

    done = sum(s.state == "done" for s in steps)
    table = Table(title=f"workflow {workflow.id} {workflow.name!r}: {_styled(workflow.status)} "
                        f"({done}/{len(steps)} steps done)")
    for column in ("step", "state", "attempts", "started", "seconds", "after", "error"):
        table.add_column(column, overflow="fold")
    for s in steps:
        seconds = (f"{(s.finished_at - s.started_at).total_seconds():.2f}"
                   if s.started_at and s.finished_at and s.state in ("done", "failed") else "")
        error = s.error.strip().splitlines()[-1] if s.error else ""
        table.add_row(s.name, _styled(s.state), str(s.attempts),
                      f"{s.started_at:%H:%M:%S}" if s.started_at else "", seconds, ", ".join(s.depends_on), error)
    return table


def watch(store, workflow_id: int, console, *, until=None, refresh_s: float = 0.25) -> str:
    """Show the steps table live until the workflow is terminal (or `until()` is true); returns the status."""
    from rich.live import Live

    def render():
        return steps_table(store.get_workflow(workflow_id), store.workflow_steps(workflow_id))

    with Live(render(), console=console, refresh_per_second=8) as live:
        while True:
            status = store.get_workflow(workflow_id).status
            live.update(render())
            if status in TERMINAL or (until is not None and until()):
                return status
            time.sleep(refresh_s)


def _styled(state: str) -> str:
    style = STATE_STYLES.get(state, "")
    return f"[{style}]{state}[/]" if style else state
