"""Batched request logging for a served cascade: records are handed to a callback in batches from a
background thread, so the request path never waits for the store."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class BatchLogger:
    """Calls `callback(records)` with up to `batch_size` records, at least every `flush_interval_s`
    while records wait. A failing callback drops that batch and is counted in `errors`."""

    def __init__(self, callback: Callable[[list[dict]], object], batch_size: int = 64,
                 flush_interval_s: float = 0.5):
        self.callback = callback
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.logged = 0
        self.errors = 0
        self._buffer: list[dict] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def log(self, record: dict) -> None:
        with self._lock:
            self._buffer.append(record)
            full = len(self._buffer) >= self.batch_size
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cascade-request-log", daemon=True)
                self._thread.start()
        if full:
            self._wake.set()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Send everything buffered now (in batches of at most `batch_size`)."""
        while True:
            with self._lock:
                batch, self._buffer = self._buffer[: self.batch_size], self._buffer[self.batch_size :]
            if not batch:
                return
            try:
                self.callback(batch)
                self.logged += len(batch)
            except Exception:  # the service must keep answering when the store is down
                self.errors += len(batch)
                log.exception("cascade request log callback failed; %d records dropped", len(batch))

    def close(self) -> None:
        self._stopped = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()
