"""Progress display for long valuations (rich), shared by every method that takes `progress=`.

`progress` is False (nothing), True (a rich bar on stderr) or a callable receiving the running
`PointStats` after each batch (sampling methods) — what the store or a UI hooks into.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def sampling_progress(progress, method: str) -> Iterator[Callable | None]:
    """A per-batch callback for `run_batches`: the user's callable, a rich bar (samples and evaluations so
    far; the total is unknown until the stopping criterion fires), or None."""
    if not progress:
        yield None
        return
    if callable(progress):
        yield progress
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.fields[status]}"),
                  TimeElapsedColumn(), transient=True) as bar:
        task = bar.add_task(method, total=None, status="")

        def update(stats):
            bar.update(task, status=f"{stats.samples} samples, {stats.evaluations} evaluations")

        yield update


@contextlib.contextmanager
def counted_progress(progress, description: str, total: int) -> Iterator[Callable[[int], None]]:
    """advance(k) for work of known size (KNN test blocks, TracIn checkpoints x chunks)."""
    if not progress:
        yield lambda k=1: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda k=1: bar.advance(task, k)
