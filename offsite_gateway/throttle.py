"""Wrong tokens, per source: counted in a metric, warned about now and then, and refused (429) past a threshold.

A 256-bit token cannot be guessed, so this is not what keeps tokens safe: it makes a misconfigured client or a
scan visible (the `offsite_gateway_auth_failures_total` metric, a warning in the log naming the source), and makes a scan
cheap to answer (a blocked source gets 429 before any token is looked at). Counts live in this process's memory,
for the last minute, for at most `MAX_SOURCES` sources; with several gateway nodes each counts its own.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict, deque

from .logs import ThrottledLog, escape
from .metrics import Metrics

_LOGGER = logging.getLogger(__name__)

WINDOW = 60.0
MAX_SOURCES = 10_000  # sources remembered (the least recent forgotten first)


class AuthFailures:
    """Recent authentication failures of each source (see the module's docstring)."""

    def __init__(self, per_minute: int, metrics: Metrics) -> None:
        self.per_minute = per_minute
        self._metrics = metrics
        self._recent: OrderedDict[str, deque[float]] = OrderedDict()
        self._warnings = ThrottledLog(_LOGGER)

    def retry_after(self, source: str, now: float) -> int | None:
        """Seconds until `source` may try again, or None if it is not blocked."""
        times = self._recent.get(source)
        if self.per_minute <= 0 or times is None:
            return None
        while times and times[0] <= now - WINDOW:
            times.popleft()
        if len(times) < self.per_minute:
            return None
        return max(1, math.ceil(times[0] + WINDOW - now))

    def recent(self, now: float) -> dict[str, int]:
        """The failures of each source within the last minute (diagnostics, tests)."""
        return {
            source: count
            for source, times in self._recent.items()
            if (count := sum(1 for moment in times if moment > now - WINDOW))
        }

    def failed(self, source: str, now: float) -> None:
        """A request from `source` had no valid token."""
        times = self._recent.pop(source, None)
        if times is None:
            times = deque(maxlen=self.per_minute if self.per_minute > 0 else 1000)
        while times and times[0] <= now - WINDOW:
            times.popleft()
        times.append(now)
        self._recent[source] = times  # the most recent last
        if len(self._recent) > MAX_SOURCES:
            self._recent.popitem(last=False)
        self._metrics.auth_failures.inc()
        blocked = self.per_minute > 0 and len(times) >= self.per_minute
        self._warnings.log(
            logging.WARNING,
            "Request without a valid token from %s (%d in the last minute%s)",
            escape(source),
            len(times),
            f"; answering 429 for up to {WINDOW:.0f} s" if blocked else "",
        )
