"""Run search: a small filter language, parsed here into clauses that `SqlStore` turns into bound SQL.

    metrics.noise_auc > 0.9 and params.method = 'knn_shapley' and status = 'done'

Clauses are `FIELD OP VALUE` joined by `and`. FIELD is `metrics.<name>` (the run's latest value; numbers
only), `params.<name>` (string-valued params: = and != with a quoted string), or one of `kind`,
`status`, `name`. OP is one of
= != < <= > >=. VALUE is a number or a quoted string. Names and values only ever become bound parameters,
never SQL text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from alloyml.errors import InvalidInputError

OPERATORS = ("=", "!=", "<", "<=", ">", ">=")
COLUMNS = ("kind", "status", "name")
_CLAUSE = re.compile(
    r"""\s*(?P<field>(?:metrics|params)\.[A-Za-z0-9_.\-/]+|[A-Za-z_]+)\s*
        (?P<op>!=|<=|>=|=|<|>)\s*
        (?P<value>'[^']*'|"[^"]*"|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Clause:
    scope: str  # "metrics", "params" or "column"
    name: str
    op: str
    value: float | str


def parse_filter(text: str | None) -> list[Clause]:
    if text is None or not text.strip():
        return []
    clauses = []
    for part in re.split(r"\s+and\s+", text.strip(), flags=re.IGNORECASE):
        match = _CLAUSE.match(part)
        if match is None:
            raise InvalidInputError(f"run filter clause {part!r} is not FIELD OP VALUE, e.g. "
                                    "\"metrics.noise_auc > 0.9\" or \"params.method = 'knn_shapley'\"")
        field, op, raw = match["field"], match["op"], match["value"]
        value: float | str = raw[1:-1] if raw[0] in "'\"" else float(raw)
        scope, _, name = field.partition(".") if "." in field else ("column", "", field)
        if scope == "column" and field not in COLUMNS:
            raise InvalidInputError(f"run filter field {field!r} is not metrics.NAME, params.NAME or one of {COLUMNS}")
        if scope == "metrics" and isinstance(value, str):
            raise InvalidInputError(f"run filter {part!r}: metrics are compared with numbers")
        if scope == "params" and (op not in ("=", "!=") or not isinstance(value, str)):
            raise InvalidInputError(f"run filter {part!r}: params are matched with = or != and a quoted string")
        if scope == "column" and (op not in ("=", "!=") or not isinstance(value, str)):
            raise InvalidInputError(f"run filter {part!r}: {field} is matched with = or != and a quoted string")
        clauses.append(Clause(scope, name if scope != "column" else field, op, value))
    return clauses
