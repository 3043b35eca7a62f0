"""Run search: MLflow's filter syntax, tokenized and parsed here into clauses that `SqlStore` turns into
bound SQL (names and values only ever become bound parameters, never SQL text).

    metrics.noise_auc > 0.9 AND params.method = 'knn_shapley' AND tags.owner LIKE 'ana%'

A filter is clauses `FIELD OP VALUE` joined by AND (any case; there is no OR, as in MLflow). FIELD:

- `metrics.NAME` (the run's latest value) with `= != < <= > >=` and a number;
- `params.NAME` with `= != LIKE ILIKE` and a quoted string, or `= != < <= > >=` and a number. A string
  matches only string-valued params and a number only number-valued ones (bools are neither): our params
  keep their JSON types, while MLflow's are all strings and compare as text only;
- `tags.NAME` with `= != LIKE ILIKE` and a quoted string;
- `attributes.NAME` (or a bare `kind`, `status`, `name`; `run_name` is `name`) with `= != LIKE ILIKE`
  and a quoted string.

The prefixes `metric.`, `param.`, `tag.`, `attribute.`, `attr.` work too. A NAME with other characters
goes in backticks: metrics.`f1 score` (a backtick inside is doubled). Strings take single or double
quotes; a quote inside is escaped with a backslash (\\' \\" \\\\) or doubled ('it''s'). LIKE: `%` is any
run of characters, `_` one character, everything else literal, case-sensitive; ILIKE ignores case.
Every clause needs its field to exist: `tags.x != 'a'` does not match a run without tag x (as in MLflow).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from alloyml.errors import InvalidInputError

COMPARISONS = ("=", "!=", "<", "<=", ">", ">=")
STRING_OPS = ("=", "!=", "LIKE", "ILIKE")
COLUMNS = ("kind", "status", "name")
_SCOPES = {"metrics": "metrics", "metric": "metrics", "params": "params", "param": "params",
           "tags": "tags", "tag": "tags", "attributes": "column", "attribute": "column", "attr": "column"}
_ALIASES = {"run_name": "name"}
_EXAMPLE = "e.g. \"metrics.noise_auc > 0.9 AND params.method = 'knn_shapley'\""

# One token at a time; the order matters (a backtick name before a bare one, <= before <).
_TOKEN = re.compile(r"""
      (?P<space>\s+)
    | (?P<field>[A-Za-z_][A-Za-z0-9_]*\.(?:`(?:[^`]|``)+`|[A-Za-z0-9_.\-/:]+))
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![A-Za-z0-9_.]))
    | (?P<op>!=|<=|>=|=|<|>)
    | (?P<quote>['"])
""", re.VERBOSE)


@dataclass(frozen=True)
class Clause:
    scope: str  # "metrics", "params", "tags" or "column"
    name: str
    op: str  # one of COMPARISONS, "LIKE" or "ILIKE"
    value: float | str


@dataclass(frozen=True)
class _Token:
    kind: str  # field, word, number, op, string
    value: object
    start: int
    end: int


def _string(text: str, start: int) -> tuple[str, int]:
    """The string literal opening at `start`: its value and the index after its closing quote."""
    quote, out, i = text[start], [], start + 1
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text) and text[i + 1] in ("'", '"', "\\"):
            out.append(text[i + 1])
            i += 2
        elif char == quote and text[i + 1:i + 2] == quote:  # SQL's doubled quote
            out.append(quote)
            i += 2
        elif char == quote:
            return "".join(out), i + 1
        else:
            out.append(char)
            i += 1
    raise InvalidInputError(f"run filter {text!r}: the string opened at position {start} is never closed")


def tokenize(text: str) -> list[_Token]:
    tokens, i = [], 0
    while i < len(text):
        match = _TOKEN.match(text, i)
        if match is None:
            raise InvalidInputError(f"run filter {text!r}: unexpected {text[i]!r} at position {i}; {_EXAMPLE}")
        kind = match.lastgroup
        if kind == "quote":
            value, end = _string(text, i)
            tokens.append(_Token("string", value, i, end))
            i = end
            continue
        if kind != "space":
            tokens.append(_Token(kind, match.group(), i, match.end()))
        i = match.end()
    return tokens


def _clauses(text: str, tokens: list[_Token]) -> list[list[_Token]]:
    """Tokens split at each AND (strings are single tokens already, so an AND inside one is not split)."""
    groups: list[list[_Token]] = [[]]
    for token in tokens:
        word = token.value.upper() if token.kind == "word" else None
        if word == "AND":
            groups.append([])
        elif word in ("OR", "NOT", "IN"):
            raise InvalidInputError(f"run filter {text!r}: {word} is not supported; join clauses with AND")
        else:
            groups[-1].append(token)
    return groups


def _field(token: _Token, clause: str) -> tuple[str, str]:
    if token.kind == "word":
        scope, name = "column", token.value
    elif token.kind == "field":
        prefix, _, name = token.value.partition(".")
        if prefix.lower() not in _SCOPES:
            raise InvalidInputError(f"run filter clause {clause!r}: {prefix!r} is not one of metrics., params., "
                                    "tags., attributes.")
        scope = _SCOPES[prefix.lower()]
        if name.startswith("`"):
            name = name[1:-1].replace("``", "`")
    else:
        raise InvalidInputError(f"run filter clause {clause!r} does not start with a field; {_EXAMPLE}")
    if scope == "column":
        name = _ALIASES.get(name.lower(), name.lower())
        if name not in COLUMNS:
            raise InvalidInputError(f"run filter clause {clause!r}: attribute {name!r} is not one of {COLUMNS}")
    if scope == "params" and '"' in name:  # it would end the JSON path the backends look the key up by
        raise InvalidInputError(f'run filter clause {clause!r}: a params name cannot contain "')
    return scope, name


def _clause(text: str, tokens: list[_Token]) -> Clause:
    if not tokens:
        raise InvalidInputError(f"run filter {text!r} has an empty clause (AND with nothing on one side)")
    clause = text[tokens[0].start:tokens[-1].end]
    if len(tokens) != 3:
        raise InvalidInputError(f"run filter clause {clause!r} is not FIELD OP VALUE; {_EXAMPLE}")
    field, op_token, value_token = tokens
    scope, name = _field(field, clause)
    if op_token.kind == "op":
        op = op_token.value
    elif op_token.kind == "word" and op_token.value.upper() in ("LIKE", "ILIKE"):
        op = op_token.value.upper()
    else:
        raise InvalidInputError(f"run filter clause {clause!r}: {op_token.value!r} is not an operator "
                                f"({', '.join(COMPARISONS)}, LIKE, ILIKE)")
    if value_token.kind == "number":
        value: float | str = float(value_token.value)
        if not math.isfinite(value):
            raise InvalidInputError(f"run filter clause {clause!r}: {value_token.value} is not a finite number")
    elif value_token.kind == "string":
        value = value_token.value
    else:
        raise InvalidInputError(f"run filter clause {clause!r}: the value must be a number or a quoted string")
    numeric = isinstance(value, float)
    if scope == "metrics" and (not numeric or op not in COMPARISONS):
        raise InvalidInputError(f"run filter clause {clause!r}: metrics are compared with "
                                f"{' '.join(COMPARISONS)} and a number")
    if scope == "params" and (op not in (COMPARISONS if numeric else STRING_OPS)):
        raise InvalidInputError(f"run filter clause {clause!r}: params are matched with = != LIKE ILIKE and a "
                                "quoted string, or compared with = != < <= > >= and a number")
    if scope in ("tags", "column") and (numeric or op not in STRING_OPS):
        what = "tags" if scope == "tags" else name
        raise InvalidInputError(f"run filter clause {clause!r}: {what} is matched with = != LIKE ILIKE and a "
                                "quoted string")
    return Clause(scope, name, op, value)


def parse_filter(text: str | None) -> list[Clause]:
    if text is not None and not isinstance(text, str):
        raise InvalidInputError(f"run filter must be a string; got {type(text).__name__}")
    if text is None or not text.strip():
        return []
    return [_clause(text, group) for group in _clauses(text, tokenize(text))]
