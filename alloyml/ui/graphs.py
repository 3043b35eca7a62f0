"""Graphviz (DOT) text for the two graphs the dashboard draws: model lineage and workflow DAGs.

`st.graphviz_chart` renders DOT in the browser, so no Graphviz binary is needed on the server.
"""

from __future__ import annotations

from alloyml.platform import entities as e
from alloyml.ui.analysis import step_seconds

STATE_COLORS = {"pending": "#e0e0e0", "running": "#90caf9", "done": "#a5d6a7", "failed": "#ef9a9a",
                "cancelled": "#ffe082"}


def _quote(*lines: str) -> str:
    """A DOT string literal; several lines are joined with DOT's centred line break."""
    escaped = (str(line).replace("\\", "\\\\").replace('"', '\\"') for line in lines)
    return '"' + "\\n".join(escaped) + '"'


def _digraph(nodes: list[str], edges: list[str]) -> str:
    header = ["digraph {", "  rankdir=LR;", '  node [shape=box, style="rounded,filled", fontname="Helvetica"];',
              '  edge [fontname="Helvetica", fontsize=10];']
    return "\n".join(header + nodes + edges + ["}"])


def lineage_dot(edges: list[e.LineageEdge], models: dict[int, e.Model], highlight: int | None = None) -> str:
    """Parents → children; edge labels give the role (and weight); `highlight` is filled in colour."""
    ids = sorted({edge.child_id for edge in edges} | {edge.parent_id for edge in edges}
                 | ({highlight} if highlight is not None else set()))
    nodes = []
    for model_id in ids:
        model = models.get(model_id)
        label = (model.name, f"#{model_id} · {model.architecture}") if model else (f"#{model_id}",)
        fill = "#ffcc80" if model_id == highlight else "#e3f2fd"
        nodes.append(f"  m{model_id} [label={_quote(*label)}, fillcolor={_quote(fill)}];")
    lines = []
    for edge in edges:
        label = edge.role if edge.weight is None else f"{edge.role} ({edge.weight:g})"
        lines.append(f"  m{edge.parent_id} -> m{edge.child_id} [label={_quote(label)}];")
    return _digraph(nodes, lines)


def workflow_dot(steps: list[e.WorkflowStep]) -> str:
    """The step DAG, each node coloured by its state and labelled with attempts and seconds."""
    index = {step.name: i for i, step in enumerate(steps)}
    nodes, edges = [], []
    for i, step in enumerate(steps):
        seconds = step_seconds(step)
        detail = step.state + (f" · {seconds:.1f}s" if seconds is not None else "")
        detail += f" · {step.attempts} attempts" if step.attempts > 1 else ""
        color = STATE_COLORS.get(step.state, "#ffffff")
        nodes.append(f"  s{i} [label={_quote(step.name, detail)}, fillcolor={_quote(color)}];")
        edges += [f"  s{index[parent]} -> s{i};" for parent in step.depends_on if parent in index]
    return _digraph(nodes, edges)
