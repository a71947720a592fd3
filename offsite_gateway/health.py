"""Readiness: whether the database and storage answer, probed at most once every few seconds.

`GET /readyz` needs no token, so anyone may call it as often as they like: the probe's result is kept `ttl`
seconds, callers meanwhile share it (and those arriving during a probe wait for that one), and what failed is
told only to the log. The public answer says "ok" or "unavailable" for each, nothing more.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from .storage import Storage
from .store import Store

_LOGGER = logging.getLogger(__name__)

PROBE_TTL = 5.0
PROBE_TIMEOUT = 5.0


class Readiness:
    """The cached result of probing the database and storage."""

    def __init__(
        self,
        store: Store,
        storage: Storage,
        clock: Callable[[], float],
        ttl: float = PROBE_TTL,
        timeout: float = PROBE_TIMEOUT,
    ) -> None:
        self._store = store
        self._storage = storage
        self._probes: dict[str, Callable[[], Awaitable[None]]] = {
            "database": self._ping_database,
            "storage": self._ping_storage,
        }
        self._clock = clock
        self._ttl = ttl
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._checked: dict[str, bool] | None = None
        self._checked_at = 0.0

    def _fresh(self) -> dict[str, bool] | None:
        if self._checked is not None and 0 <= self._clock() - self._checked_at < self._ttl:
            return self._checked
        return None

    async def check(self) -> dict[str, bool]:
        """{"database": answers, "storage": answers}, at most `ttl` seconds old."""
        checked = self._fresh()
        if checked is not None:
            return checked
        async with self._lock:
            checked = self._fresh()
            if checked is None:
                checked = {name: await self._probe(name) for name in self._probes}
                self._checked, self._checked_at = checked, self._clock()
            return checked

    async def _ping_database(self) -> None:
        await self._store.ping()

    async def _ping_storage(self) -> None:
        await self._storage.head_bucket()

    async def _probe(self, name: str) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                await self._probes[name]()
        except Exception as err:  # any failure means not ready; the details go to the log only
            detail = "timed out" if isinstance(err, TimeoutError) else f"{type(err).__name__}: {err}"
            _LOGGER.warning("Readiness: the %s does not answer: %s", name, detail)
            return False
        return True
