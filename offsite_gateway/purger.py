"""The purger: deletes, in batches, the backups retention marked `deleting` after the completes of this node.

A complete marks the backups its instance's retention no longer keeps `deleting`, in its own statement (from then
on they are neither listed nor counted), and hands them here. The purger waits `linger` seconds for more, then
deletes their archives and manifests with one DeleteObjects call per 500 backups, and their rows with one
statement: at a night's rate, a few storage calls a second for every node instead of two per backup. What it
cannot delete (storage refused, the node stopped first) stays `deleting`, and the sweeper deletes it later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from .metrics import Metrics
from .retention import purge
from .storage import Storage
from .store import Backup, Store
from .tasks import stop_task

_LOGGER = logging.getLogger(__name__)

LINGER = 0.5  # seconds the purger waits for more backups to delete after the first one
MAX_PENDING = 100_000  # backups held at most; beyond, the sweeper deletes them (they stay `deleting`)


class Purger:
    """Deletes the backups `add`ed to it, a batch at a time, in its own task (`start`, `stop`)."""

    def __init__(self, store: Store, storage: Storage, metrics: Metrics, linger: float = LINGER) -> None:
        self.store = store
        self.storage = storage
        self.metrics = metrics
        self.linger = linger
        self._pending: dict[str, Backup] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="offsite-gateway-purger")

    async def stop(self) -> None:
        """Stop; what is still pending is deleted first, if storage answers within a few seconds."""
        task, self._task = self._task, None
        await stop_task(task)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._purge_pending()

    def add(self, backups: Iterable[Backup]) -> None:
        """Backups marked `deleting`, to delete with the next batch."""
        for backup in backups:
            if len(self._pending) >= MAX_PENDING:
                _LOGGER.warning("Purger: %d deletes pending; the sweeper deletes the rest", MAX_PENDING)
                break
            self._pending[backup.id] = backup
        if self._pending:
            self._idle.clear()
            self._wake.set()

    async def wait_idle(self) -> None:
        """Until nothing is pending (tests, and a node stopping)."""
        await self._idle.wait()

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.linger)
            try:
                await self._purge_pending()
            except Exception:
                _LOGGER.exception("Purger: deleting failed; the sweeper deletes what is left")

    async def _purge_pending(self) -> None:
        try:
            while self._pending:  # what is added meanwhile goes in the next round
                batch, self._pending = list(self._pending.values()), {}
                await purge(self.store, self.storage, batch, self.metrics)
        finally:
            if not self._pending:
                self._wake.clear()
                self._idle.set()
