"""`alloyml demo`: the built-in `demo` workflow on the embedded defaults, with a live view of its steps,
then a summary of what it measured and where to look next.

If the demo is interrupted, `alloyml workflow resume ID` finishes it without redoing completed steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # rich loads only when the demo runs, so `alloyml --help` stays fast
    from rich.console import Console


def register(subparsers) -> None:
    demo = subparsers.add_parser("demo", help="run the end-to-end demo on the embedded defaults")
    demo.add_argument("--quick", action="store_true", help="smaller sizes (the test suite's reduced demo)")
    demo.set_defaults(func=_demo)


def _demo(args) -> int:
    run_demo(quick=args.quick)
    return 0

def run_demo(quick: bool = False, console: Console | None = None) -> dict:
    from rich.console import Console

    from alloyml.platform.client import Platform
    from alloyml.platform.settings import display_url
    from alloyml.workflows import submit
    from alloyml.workflows.builtin import get_builtin
    from alloyml.workflows.builtin.demo import DEMO_CONFIGS
    from alloyml.workflows.display import watch
    from alloyml.workflows.recording import store_location

    console = console or Console()
    with Platform() as platform:
        console.print(f"[bold]alloyml demo[/bold] — store {display_url(platform.settings.db_url)}")
        handle = submit(platform, get_builtin("demo").build(),
                        {"store": store_location(platform), "config": DEMO_CONFIGS["quick" if quick else "full"]})
        console.print(f"workflow #{handle.id} submitted (resume with `alloyml workflow resume {handle.id}`)")
        watch(platform.store, handle.id, console)
        summary = handle.result()
    _print_summary(console, summary)
    console.print("\nEverything is in the store. Open the dashboard with [bold]alloyml ui[/bold] "
                  "(http://127.0.0.1:8501), list runs with [bold]alloyml runs list[/bold].")
    return summary


def _print_summary(console: Console, summary: dict) -> None:
    from rich.table import Table

    cleaning = summary["cleaning"]
    table = Table(title="data valuation (10% flipped labels)")
    table.add_column("method")
    table.add_column("AUC of flagging flipped rows", justify="right")
    for method, auc in cleaning["auc_by_method"].items():
        table.add_row(method, f"{auc:.3f}")
    console.print(table)
    console.print(f"removing the lowest-valued {cleaning['removed']} rows "
                  f"({cleaning['removed_that_were_flipped']:.0%} of them flipped): test accuracy "
                  f"{cleaning['noisy_accuracy']:.3f} → {cleaning['cleaned_accuracy']:.3f} "
                  f"(gain {cleaning['gain']:+.3f})")
    merge = summary["merge"]
    table = Table(title=f"merging the two specialists (chosen: {merge['method']})")
    table.add_column("method")
    for task in next(iter(merge["scores_by_method"].values())):
        table.add_column(f"{task} accuracy", justify="right")
    for method, scores in merge["scores_by_method"].items():
        table.add_row(method, *(f"{v:.2f}" for v in scores.values()))
    console.print(table)
    cascade = summary["cascade"]
    table = Table(title=f"cascade (budget {cascade['budget']:.2f} per query, held-out queries)")
    for column in ("policy", "accuracy", "mean cost"):
        table.add_column(column)
    table.add_row("cascade", f"{cascade['accuracy']:.3f}", f"{cascade['mean_cost']:.2f}")
    if "planned_mean_cost" in cascade:  # a summary stored by an older alloyml lacks it
        table.add_row("cascade as planned (training)", f"{cascade['planned_accuracy']:.3f}",
                      f"{cascade['planned_mean_cost']:.2f}")
    for model, numbers in cascade["singles"].items():
        table.add_row(f"{model} alone", f"{numbers['accuracy']:.3f}", f"{numbers['mean_cost']:.2f}")
    console.print(table)
    if "planned_mean_cost" in cascade:
        verdict = "within" if cascade["mean_cost"] <= cascade["budget"] else "OVER"
        console.print(f"cascade spend on {cascade['test_queries']} held-out queries: {cascade['mean_cost']:.2f} "
                      f"= {cascade['mean_cost'] / cascade['budget']:.0%} of the budget ({verdict} budget)")
    tuning, serving = summary["tuning"], summary["serving"]
    console.print(f"inference tuning of the merged model: best {tuning['best']} "
                  f"(utility {tuning['best_utility']:.2f}, {tuning['best_cost']:.1f} tokens per query)")
    console.print(f"served on Ray Serve: {serving['requests']} requests, accuracy {serving['accuracy']:.2f}, "
                  f"mean cost {serving['mean_cost']:.2f}, logged to the store")
