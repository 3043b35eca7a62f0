"""The budget guard of a served cascade: watch spend over a sliding window, step down the frontier.

The guard holds an index into the allowed frontier points (sorted by training cost, cheapest first)
and starts at the chosen one. When the mean cost per request over the window exceeds the budget, it
moves one point cheaper; when the window's spend, scaled by how much dearer the next point was on the
training data, would still fit the budget, it moves one point back up (never above the start). After
a move the window restarts, so each point is judged on its own requests.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from alloyml.errors import InvalidInputError


@dataclass(frozen=True)
class GuardState:
    point: int
    budget: float
    window_mean_cost: float | None
    window_requests: int
    moves_down: int
    moves_up: int

    def to_dict(self) -> dict:
        return asdict(self)


class BudgetGuard:
    """point_costs: [P] training mean cost of the allowed points, ascending; start: initial point.
    window_s: sliding window length; min_requests: requests needed in the window before a move."""

    def __init__(self, budget: float, point_costs: Sequence[float], start: int, window_s: float = 60.0,
                 min_requests: int = 20, clock: Callable[[], float] = time.monotonic):
        if budget <= 0 or not point_costs or not 0 <= start < len(point_costs):
            raise InvalidInputError(
                f"budget guard needs budget > 0 and start in [0, {len(point_costs)}); got {budget}, {start}"
            )
        self.budget = budget
        self.point_costs = list(point_costs)
        self.start = start
        self.window_s = window_s
        self.min_requests = min_requests
        self.clock = clock
        self._point = start
        self._window: deque[tuple[float, float]] = deque()
        self._spend = 0.0
        self._moves = [0, 0]
        self._lock = threading.Lock()

    @property
    def point(self) -> int:
        return self._point

    def record(self, cost: float, point: int | None = None) -> None:
        """Count one request's cost; requests served by an earlier point (in flight across a move) are
        not counted against the current one."""
        with self._lock:
            if point is not None and point != self._point:
                return
            now = self.clock()
            self._window.append((now, cost))
            self._spend += cost
            self._evict(now)
            if len(self._window) < self.min_requests:
                return
            mean = self._spend / len(self._window)
            if mean > self.budget and self._point > 0:
                self._move(-1)
            elif self._point < self.start:
                ratio = self.point_costs[self._point + 1] / max(self.point_costs[self._point], 1e-12)
                if mean * ratio <= self.budget:
                    self._move(+1)

    def _evict(self, now: float) -> None:
        while self._window and self._window[0][0] < now - self.window_s:
            self._spend -= self._window.popleft()[1]

    def _move(self, step: int) -> None:
        self._point += step
        self._moves[step > 0] += 1
        self._window.clear()
        self._spend = 0.0

    def state(self) -> GuardState:
        with self._lock:
            self._evict(self.clock())
            n = len(self._window)
            return GuardState(self._point, self.budget, self._spend / n if n else None, n, *self._moves)
