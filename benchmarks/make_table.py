"""Regenerate the results tables in benchmarks/README.md from benchmarks/results/*.json.

The tables sit between the markers `<!-- results:begin -->` and `<!-- results:end -->`; everything else
in the README is prose kept by hand."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table_for(result: dict) -> str:
    machine = result.get("machine", {})
    where = f"{machine.get('cpus')} CPUs" + (f", {machine['gpu']}" if machine.get("gpu") else "")
    lines = [
        f"### {result['topic']} ({where}, {result.get('when', '?')})",
        "",
        f"`{result.get('command', '')}`",
        "",
        "| case | metric | alloyml | peers | ratio | target | met | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        peers = ", ".join(f"{k}: {_fmt(v)}" for k, v in (r.get("peers") or {}).items()) or "—"
        notes = str(r.get("notes") or "").replace("|", "/").replace("\n", " ")
        lines.append(
            f"| {r['case']} | {r['metric']} | {_fmt(r.get('alloyml'))} | {peers} | {_fmt(r.get('ratio'))} "
            f"| {_fmt(r.get('target'))} | {_fmt(r.get('met'))} | {notes} |"
        )
    return "\n".join(lines)


def main() -> None:
    readme = HERE / "README.md"
    text = readme.read_text()
    results = [json.loads(p.read_text()) for p in sorted((HERE / "results").glob("*.json"))]
    # kernels.compile.json is the compile-inspection table (kernel x dtype x registers), not benchmark rows
    tables = [table_for(r) for r in results if all("case" in row for row in r.get("rows", []))]
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    readme.write_text(head + BEGIN + "\n\n" + "\n\n".join(tables) + "\n\n" + END + tail)
    print(f"updated {readme} with {len(tables)} tables")


if __name__ == "__main__":
    main()
