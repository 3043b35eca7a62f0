"""Per-step overhead of a durable workflow against a bare Ray task on the same machine.

Cases: a chain of N steps (each waits for the previous one: the overhead a user sees on the critical path)
against N bare tasks run one after the other with `ray.get`, and a fan-out of N independent steps against
`ray.get([task.remote() ...])`; both run the same function (`increment`). Workflow time runs from
`alloyml.workflows.submit` to `result()`, so it includes recording the workflow, every step's running/done
transitions, its output artifact (written with fsync) and the result. Overhead per step =
(workflow seconds - bare seconds) / N, median over repeats.

    python benchmarks/workflows.py [--quick] [--db-url postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alloyml.workflows import Workflow, step, submit  # noqa: E402
from benchmarks._common import ratio, row, write_results  # noqa: E402

TARGET_MS = 50.0


@step(num_cpus=1)
def increment(x: int) -> int:
    return x + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    parser.add_argument("--db-url", help="store URL (default: SQLite in a temp ALLOYML_HOME)")
    args = parser.parse_args()
    n_steps, repeats = (8, 3) if args.quick else (20, 5)

    import ray

    from alloyml.platform.client import Platform
    from alloyml.raycluster import ensure_ray

    ensure_ray(num_cpus=2)
    bare = ray.remote(num_cpus=1, max_retries=0)(increment.fn)
    ray.get([bare.remote(i) for i in range(4)])  # start the workers before timing anything
    rows = []
    with tempfile.TemporaryDirectory() as home, Platform(db_url=args.db_url, home=home, upgrade=True) as platform:
        backend = platform.store.url.split(":")[0]
        for case, build, run_bare in (("chain", _chain, _bare_chain), ("fan-out", _fan_out, _bare_fan_out)):
            workflow_s, bare_s = [], []
            submit(platform, build(n_steps)).result(timeout=600)  # warm-up: imports, first artifacts
            for _ in range(repeats):
                start = time.perf_counter()
                run_bare(bare, n_steps)
                bare_s.append(time.perf_counter() - start)
                start = time.perf_counter()
                result = submit(platform, build(n_steps)).result(timeout=600)
                workflow_s.append(time.perf_counter() - start)
                assert result == n_steps, result
            per_step_ms = [1000 * w / n_steps for w in workflow_s]
            bare_ms = [1000 * b / n_steps for b in bare_s]
            overhead = statistics.median(w - b for w, b in zip(per_step_ms, bare_ms, strict=True))
            rows.append(row(
                f"{case} of {n_steps} steps, {backend} store", "ms per step",
                round(statistics.median(per_step_ms), 2), {"ray_task": round(statistics.median(bare_ms), 2)},
                ratio(statistics.median(per_step_ms), statistics.median(bare_ms)),
                target=f"overhead < {TARGET_MS:g} ms per step vs ray_task", met=overhead < TARGET_MS,
                notes=f"median overhead {overhead:.1f} ms/step over {repeats} repeats; 2-core machine shared "
                      "with other jobs, so absolute times are noisy",
                overhead_ms=round(overhead, 2)))
            print(rows[-1])
    write_results("workflows", rows)


def _chain(n: int) -> Workflow:
    workflow = Workflow("bench-chain")
    value = workflow.add(increment, x=0)
    for _ in range(n - 1):
        value = workflow.add(increment, x=value)
    return workflow


def _fan_out(n: int) -> Workflow:
    workflow = Workflow("bench-fan-out")
    for i in range(n):
        workflow.add(increment, x=i)  # independent steps; the result is the last one's output, n
    return workflow


def _bare_chain(task, n: int) -> None:
    value = 0
    for _ in range(n):
        value = _ray_get(task.remote(value))


def _bare_fan_out(task, n: int) -> None:
    _ray_get([task.remote(i) for i in range(n)])


def _ray_get(refs):
    import ray

    return ray.get(refs)


if __name__ == "__main__":
    main()
