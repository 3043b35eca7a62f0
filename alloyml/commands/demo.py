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
    from alloyml.platform.client import Platform
    from alloyml.platform.settings import display_url
    from alloyml.workflows import submit
    from alloyml.workflows.builtin import get_builtin
    from alloyml.workflows.builtin.demo import DEMO_CONFIGS
    from alloyml.workflows.display import watch
    from alloyml.workflows.recording import store_location

    console = console or demo_console()
    with Platform() as platform:
        console.print(f"[bold]alloyml demo[/bold] — store {display_url(platform.settings.db_url)}")
        handle = submit(platform, get_builtin("demo").build(),
                        {"store": store_location(platform), "config": DEMO_CONFIGS["quick" if quick else "full"]})
        console.print(f"workflow #{handle.id} submitted (resume with `alloyml workflow resume {handle.id}`)")
        watch(platform.store, handle.id, console)
        summary = handle.result()
        ids = _recorded_ids(platform.store, handle.id)
    _print_summary(console, summary)
    _print_dashboard_pages(console, ids)
    return summary


NON_TERMINAL_WIDTH = 160  # columns: the demo's widest table (the steps table) fits on one line per row


def demo_console() -> Console:
    """The console the demo prints to: the terminal's own width on a terminal; elsewhere (a log file,
    CI, a pipe) a fixed `NON_TERMINAL_WIDTH` columns and no colour codes, so each table row stays one
    line instead of wrapping into a column of word fragments at rich's default of 80."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=NON_TERMINAL_WIDTH, no_color=True)


def _recorded_ids(store, workflow_id: int) -> dict:
    """What the demo recorded, by the names its summary prints (for the dashboard pointers)."""
    models = {m.name: m.id for m in store.list_models() if m.name.startswith("demo-")}
    merges = [m.id for m in store.list_merges() if m.output_model_id == models.get("demo-merged")]
    cascades = [c for c in store.list_cascades() if c.name == "demo-cascade"]
    return {"workflow": workflow_id, "models": models, "merge": max(merges, default=None),
            "cascade": max(cascades, key=lambda c: c.version, default=None)}


DASHBOARD_PORT = 8501  # `alloyml ui`'s default


def _print_dashboard_pages(console: Console, ids: dict) -> None:
    """The last lines: the command that opens the dashboard on this store, and the page showing each
    thing that just ran (Streamlit names a page's URL after its script in alloyml/ui/views)."""
    import os

    # the same store: the home and artifact folders as they are now (neither may hold a credential); a
    # database URL may, so it is named, not printed
    env = [f"{name}={os.environ[name]}" for name in ("ALLOYML_HOME", "ALLOYML_ARTIFACTS") if os.environ.get(name)]
    command = " ".join([*env, "alloyml", "ui"])
    if os.environ.get("ALLOYML_DB_URL"):
        command += " (with ALLOYML_DB_URL set as it is now)"
    base = f"http://127.0.0.1:{DASHBOARD_PORT}"
    cascade = ids["cascade"]
    models = ", ".join(ids["models"])
    pages = [
        ("Workflows", "workflows", f"workflow #{ids['workflow']}: its steps, timings and attempts"),
        ("Data values", "data_values", "the three valuations and the flipped rows they flag"),
        ("Models & training", "models", f"{models}: loss curves and lineage"),
        ("Merges", "merges", f"merge #{ids['merge']}: the merged model and its two specialists"),
        ("Cascades", "cascades", f"{cascade.name} v{cascade.version}: its chain, budget and served requests"
         if cascade else "the demo's cascade"),
        ("AutoML", "automl", "the merged model's inference-tuning trials"),
    ]
    console.print(f"\nEverything above is in the store. To look at it, run: {command}", markup=False,
                  highlight=False)
    console.print("then open these dashboard pages:", markup=False, highlight=False)
    width = max(len(title) for title, _, _ in pages)
    for title, path, what in pages:
        console.print(f"  {title:<{width}}  {base}/{path}  {what}", markup=False, highlight=False, soft_wrap=True)


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
    _print_merge(console, summary["merge"])
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
                      f"= {cascade['mean_cost'] / cascade['budget']:.0%} of the budget ({verdict} budget)",
                      soft_wrap=True)
    tuning, serving = summary["tuning"], summary["serving"]
    console.print(f"inference tuning of the merged model: best {tuning['best']} "
                  f"(utility {tuning['best_utility']:.2f}, {tuning['best_cost']:.1f} tokens per query)",
                  markup=False, highlight=False, soft_wrap=True)
    console.print(f"served on Ray Serve: {serving['requests']} requests, accuracy {serving['accuracy']:.2f}, "
                  f"mean cost {serving['mean_cost']:.2f}, logged to the store")


MERGE_TARGET = 0.8  # the chosen merge keeps at least this fraction of each specialist's held-out accuracy


def _print_merge(console: Console, merge: dict) -> None:
    """Every method's row (its validation-searched setting, held-out accuracy and the fraction of each
    specialist's it keeps), the base and specialists for reference, and why the chosen one was chosen."""
    from rich.table import Table

    if "methods" not in merge:  # a summary stored by an older alloyml
        console.print(f"merge: chosen {merge['method']}, scores {merge['scores']}")
        return
    tasks = list(merge["specialists"])
    table = Table(title="merging the two specialists: merge weights searched on validation prompts, "
                        "accuracy on held-out prompts")
    for column in ("model", "setting", *tasks, *(f"{t} ÷ spec." for t in tasks), "validation: worse ÷ spec."):
        table.add_column(column, justify="left" if column in ("model", "setting") else "right", no_wrap=True)
    specialists = merge["specialists"]

    def fractions(scores):
        return [f"{scores[t] / specialists[t]:.2f}" if specialists[t] else "-" for t in tasks]

    table.add_row("base (before fine-tuning)", "", *(f"{merge['base'][t]:.2f}" for t in tasks),
                  *fractions(merge["base"]), "")
    for t in tasks:
        table.add_row(f"{t} specialist", "", *(f"{specialists[u]:.2f}" if u == t else "" for u in tasks),
                      *("1.00" if u == t else "" for u in tasks), "")
    for method, info in merge["methods"].items():
        searched = merge.get("searched", {}).get(method, list(info["setting"]))  # the knobs the search varied
        setting = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in info["setting"].items()
                            if k in searched)
        marker = " (chosen)" if method == merge["method"] else ""
        table.add_row(f"merge {method}{marker}", setting, *(f"{info['held_out'][t]:.2f}" for t in tasks),
                      *fractions(info["held_out"]), f"{info['validation_worst_fraction']:.2f}")
    console.print(table)
    chosen = merge["methods"][merge["method"]]
    worst = min(chosen["held_out_fraction"].values())
    verdict = "met" if worst >= MERGE_TARGET else "MISSED"
    console.print(f"chosen: {merge['reason']} ({merge['trials']} merges tried on validation prompts). "
                  f"On held-out prompts it keeps "
                  + ", ".join(f"{chosen['held_out_fraction'][t]:.2f} of the {t} specialist" for t in tasks)
                  + f": target >= {MERGE_TARGET} of each {verdict}.", markup=False, highlight=False, soft_wrap=True)
