"""Logging what strangers send: escaped so it cannot forge a line or drive a terminal, and rate-limited.

The gateway faces the internet: anything taken from a request (a path, an address) goes through `escape` before
it reaches a log line, and what an attacker can trigger at will (protocol errors, failed accepts, wrong tokens)
goes through a `ThrottledLog`, so that a flood of bad requests costs the log one line now and then.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


def escape(text: str, limit: int = 1000) -> str:
    """`text` as printable ASCII: control and non-ASCII characters as `\\xNN`/`\\uNNNN`, `"` and `\\` escaped;
    cut to `limit` characters (an ellipsis says so)."""
    escaped = text[:limit].encode("unicode_escape", "backslashreplace").decode("ascii").replace('"', '\\"')
    return escaped + ("..." if len(text) > limit else "")


class ThrottledLog:
    """At most one line each `interval` seconds; the next line written says how many were left out meanwhile."""

    def __init__(
        self, logger: logging.Logger, interval: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.interval = interval
        self._clock = clock
        self._last: float | None = None
        self._left_out = 0

    def log(self, level: int, message: str, *args: object) -> bool:
        """Write the line unless one was written less than `interval` seconds ago; True if it was written."""
        now = self._clock()
        if self._last is not None and now - self._last < self.interval:
            self._left_out += 1
            return False
        if self._left_out:
            message += " (and %d more like it in the last %d s)"
            args = (*args, self._left_out, round(now - self._last if self._last is not None else 0))
        self.logger.log(level, message, *args)
        self._last = now
        self._left_out = 0
        return True
