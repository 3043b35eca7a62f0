"""Shared plumbing for benchmark scripts: the machine description, timers and the results file
(`{"topic", "when", "machine", "command", "rows": [...]}`, one row per compared case, as `row(...)` builds
it). Each `benchmarks/<topic>.py` builds rows with `row(...)` and calls
`write_results(topic, rows)`; `python benchmarks/make_table.py` regenerates benchmarks/README.md."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from alloyml.atomic import write_atomic

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    info = {"cpus": os.cpu_count(), "gpu": None, "python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        info["torch"] = None
    return info


@contextmanager
def timer():
    """`with timer() as t: ...` then `t()` gives the elapsed seconds."""
    start = time.perf_counter()
    elapsed = [None]
    yield lambda: elapsed[0] if elapsed[0] is not None else time.perf_counter() - start
    elapsed[0] = time.perf_counter() - start


def ratio(alloyml: float | None, peer: float | None, higher_is_better: bool = False) -> float | None:
    """peer / alloyml for costs, alloyml / peer for scores: > 1 always means alloyml is ahead."""
    if alloyml is None or peer is None or alloyml == 0 or peer == 0:
        return None
    return round(alloyml / peer if higher_is_better else peer / alloyml, 3)


def row(case, metric, alloyml, peers=None, ratio=None, target=None, met=None, notes="", **extra) -> dict:
    out = {
        "case": case,
        "metric": metric,
        "alloyml": alloyml,
        "peers": peers or {},
        "ratio": ratio,
        "target": target,
        "met": met,
        "notes": notes,
    }
    out.update(extra)
    return out


def write_results(topic: str, rows: list[dict], suffix: str = "", **extra) -> Path:
    """Write benchmarks/results/<topic><suffix>.json (whole or not at all) and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    payload = {
        "topic": topic,
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "command": "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]),
        "rows": rows,
    }
    payload.update(extra)
    path = RESULTS_DIR / f"{topic}{suffix}.json"
    write_atomic(path, (json.dumps(payload, indent=2, default=float) + "\n").encode())
    print(f"wrote {path}")
    return path
