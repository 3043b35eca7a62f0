"""Correctness labels for served requests, read from JSONL or CSV: `request_id, correct` per line, and
optionally `model` (which stage's answer is labelled; by default the one the cascade returned).
Every line is checked before anything is stored, and an error names the file and line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from alloyml.errors import InvalidInputError
from alloyml.routing.responses import FALSE_WORDS, TRUE_WORDS


def read_labels(path: str | Path) -> tuple[list[tuple[str, str | None, bool]], list[str]]:
    """([(request_id, model or None, correct)], [where each came from, e.g. "labels.csv line 3"])."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"labels file {str(path)!r} does not exist")
    if path.suffix not in (".jsonl", ".csv"):
        raise InvalidInputError(f"labels file {str(path)!r} must end in .jsonl or .csv")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidInputError(f"labels file {str(path)!r} cannot be read: {err}") from err
    entries = _jsonl(text, path) if path.suffix == ".jsonl" else _csv(text, path)
    if not entries:
        raise InvalidInputError(f"labels file {str(path)!r} has no labels; expected lines of request_id, correct")
    labels, where = [], []
    for line, record in entries:
        at = f"{path.name} line {line}"
        labels.append(_label(record, at))
        where.append(at)
    return labels, where


def _jsonl(text: str, path: Path) -> list[tuple[int, dict]]:
    out = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as err:
            raise InvalidInputError(f"{path.name} line {line}: not JSON ({err.msg})") from err
        if not isinstance(record, dict):
            raise InvalidInputError(f'{path.name} line {line}: expected an object {{"request_id": ..., '
                                    f'"correct": ...}}, got {type(record).__name__}')
        out.append((line, record))
    return out


def _csv(text: str, path: Path) -> list[tuple[int, dict]]:
    reader = csv.DictReader(text.splitlines())
    header = reader.fieldnames or []
    lacking = [c for c in ("request_id", "correct") if c not in header]
    if lacking:
        raise InvalidInputError(f"{path.name} line 1: the header lacks {lacking}; expected request_id,correct"
                                "[,model]")
    out = []
    for record in reader:
        if None in record:  # more cells than header columns
            raise InvalidInputError(f"{path.name} line {reader.line_num}: more cells than the header's "
                                    f"{len(header)} columns")
        if not any((v or "").strip() for v in record.values()):
            continue
        out.append((reader.line_num, {k: v for k, v in record.items() if v not in (None, "") or k == "correct"}))
    return out


def _label(record: dict, at: str) -> tuple[str, str | None, bool]:
    request_id = record.get("request_id")
    if not isinstance(request_id, str) or not request_id.strip():
        raise InvalidInputError(f"{at}: request_id must be a non-empty string, got {request_id!r}")
    model = record.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise InvalidInputError(f"{at}: model must be a model name, got {model!r}")
    return request_id.strip(), model.strip() if model else None, _correct(record.get("correct"), at)


def _correct(value, at: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    raise InvalidInputError(f"{at}: correct must be true/false or 1/0, got {value!r}")
