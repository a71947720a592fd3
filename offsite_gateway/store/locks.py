"""Locks of one process, by key: what a node holds before it asks the database for the same lock.

On SQLite (one node) they are the whole lock. On PostgreSQL they come first, so that the requests of one node
that wait for one backup wait here, holding no database connection, and at most one of them at a time waits
for the database's advisory lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator


class KeyedLocks:
    """An `asyncio.Lock` per key, forgotten once nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    @contextlib.asynccontextmanager
    async def hold(self, key: str, *, wait: bool = True) -> AsyncIterator[bool]:
        """Yield True once `key` is held; with `wait=False`, False at once if it is held already."""
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        if not wait and lock.locked():
            yield False
            return
        async with lock:
            yield True
