"""Riding out transient failures: retried against a deadline, not a count.

A transient failure (a network error, a timeout, a 5xx, a 429 or a 408 from storage or the gateway, a gateway that
cannot be reached) is tried again after a capped, jittered backoff (``Retry-After`` honoured) until the upload's
``deadline``; a failure that begins after the deadline is still tried for ``patience`` seconds, so that a blip
near the end of a long upload does not end it. Meanwhile nothing is aborted: parts storage holds stay held, and
the upload carries on where it stopped once the failure passes.

Who waits, and until when, is told through ``on_wait``: a :class:`Waiting` while any operation of the upload is
failing, ``None`` once they all went through again. Time is read from an injected :class:`Clock`, so tests can
move it (and the integration uses the same wall clock as the deadline it computes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .upload_model import UploadOptions

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Clock:
    """Where the engine reads the time (seconds, as ``time.time``) and how it waits."""

    now: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


@dataclass(frozen=True, slots=True)
class Waiting:
    """The upload is waiting for a transient failure to pass (times are the clock's seconds)."""

    error: str
    """What failed, as the gateway or storage said it."""
    next_try: float
    """When it is tried again."""
    give_up_at: float
    """After this, the failure ends the upload."""
    since: float
    """When the failure began."""
    requests: int = 0
    """Requests of the upload (to storage or the gateway) under way meanwhile."""


def duration(seconds: float) -> str:
    """``2 h 5 min``, ``12 min``, ``40 s``: how long something took, for a person."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes = whole // 60
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


class Retrier:
    """Paces the retries of one upload's failing operations (parts, gateway calls) and tells who waits."""

    def __init__(
        self,
        options: UploadOptions,
        clock: Clock,
        on_wait: Callable[[Waiting | None], None] | None,
    ) -> None:
        self._options = options
        self.clock = clock
        self._on_wait = on_wait
        self._failing: dict[object, Waiting] = {}  # every failing operation: its last wait
        self._sleeping: set[object] = set()  # those waiting for their next try now
        self._requests = 0  # requests under way
        self._shown: Waiting | None = None

    @contextmanager
    def request(self) -> Iterator[None]:
        """Around one request to storage or the gateway: counted while it is under way."""
        self._requests += 1
        self._report()
        try:
            yield
        finally:
            self._requests -= 1
            self._report()

    def give_up_at(self, since: float) -> float:
        """When an operation failing since ``since`` stops being retried."""
        floor = since + self._options.patience
        deadline = self._options.deadline
        return floor if deadline is None else max(deadline, floor)

    async def pause(
        self, key: object, *, since: float, tries: int, error: str, retry_after: float | None
    ) -> bool:
        """Wait before the next try of operation ``key`` (failing since ``since``, ``tries`` times so far).

        Returns ``False`` at once, without waiting, when it must give up instead.
        """
        now = self.clock.now()
        give_up_at = self.give_up_at(since)
        if now >= give_up_at:
            return False
        if retry_after is not None:
            delay = min(self._options.retry_after_cap, max(0.0, retry_after))
        else:
            delay = self._options.backoff(tries)
        delay = min(delay, give_up_at - now)  # the last try is at the deadline, not after it
        if not self._failing:
            _LOGGER.info("Upload waiting: %s; trying again for up to %s", error, duration(give_up_at - now))
        self._failing[key] = Waiting(error=error, next_try=now + delay, give_up_at=give_up_at, since=since)
        self._sleeping.add(key)
        self._report()
        _LOGGER.debug("Try %d failed (%s); next in %.2f s", tries, error, delay)
        try:
            await self.clock.sleep(delay)
        finally:
            self._sleeping.discard(key)
            self._report()
        return True

    def recovered(self, key: object) -> None:
        """Operation ``key`` went through: it no longer waits."""
        waiting = self._failing.get(key)
        if waiting is not None and len(self._failing) == 1:
            _LOGGER.info("Upload going on again after %s", duration(self.clock.now() - waiting.since))
        self.forget(key)

    def forget(self, key: object) -> None:
        """Operation ``key`` is no longer tried (it went through, gave up or was cancelled)."""
        self._sleeping.discard(key)
        if self._failing.pop(key, None) is not None:
            self._report()

    def _report(self) -> None:
        shown: Waiting | None = None
        if self._failing:
            # The next try is the soonest one scheduled; when none is (they are being tried), now.
            sleeping = [self._failing[key] for key in self._sleeping]
            soonest = (
                min(sleeping, key=lambda item: item.next_try)
                if sleeping
                else max(self._failing.values(), key=lambda item: item.next_try)
            )
            shown = Waiting(
                error=soonest.error,
                next_try=soonest.next_try if sleeping else max(soonest.next_try, self.clock.now()),
                give_up_at=min(item.give_up_at for item in self._failing.values()),
                since=min(item.since for item in self._failing.values()),
                requests=self._requests,
            )
        if shown == self._shown or self._on_wait is None:
            self._shown = shown
            return
        self._shown = shown
        try:
            self._on_wait(shown)
        except Exception:
            _LOGGER.exception("Upload waiting callback failed")
