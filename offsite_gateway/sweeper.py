"""The sweeper: periodic cleanup that keeps storage and the database in step.

Each run, in this order:
1. uploads in progress that showed no sign of life (created, parts signed or listed) for `stale_upload_after`
   seconds are aborted in storage and marked failed: a slow upload that keeps asking for part URLs lives on;
2. multipart uploads the gateway made that the database does not know as in progress are aborted (left over by a
   crash, a lost response, a failed abort, a revoked instance). Storage is listed *before* the database is read,
   and an init inserts its row before it creates the upload, so an upload being started right now is never
   mistaken for an orphan. The bucket may be shared: only keys the gateway makes are touched, those under
   `S3_PREFIX` if one is set, else those under the id of an instance the database knows (`<instance_id>/...`);
   another application's uploads are left alone;
3. backups left `deleting` (their object delete failed earlier, or their node stopped before its purger deleted
   them) are deleted, in batches (`retention.purge`; every step of it is idempotent, so no lock is needed);
4. init events older than the rate-limit window are pruned, and `failed` rows `prune_failed_after` seconds
   after they failed.

Every node runs it: one at a time sweeps (the store's sweeper lock: an advisory lock on PostgreSQL), the others
skip that run; and each upload it fails is held with the store's backup lock (skipped if a request holds it),
so a sweep never races a complete, an abort or a delete of the same backup on another node.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from .config import Settings
from .domain import Context, abort_instance_uploads, abort_orphans, fail_upload
from .metrics import Metrics
from .retention import purge
from .storage import Storage, StorageError
from .store import Store
from .tasks import stop_task

__all__ = ["SweepReport", "Sweeper", "abort_instance_uploads", "abort_orphans"]

_LOGGER = logging.getLogger(__name__)


@dataclass
class SweepReport:
    """What one sweeper run did."""

    stale_failed: int = 0
    orphans_aborted: int = 0
    deletions_done: int = 0
    deletions_failed: int = 0
    failed_pruned: int = 0
    skipped: bool = False  # another node was sweeping


class Sweeper:
    """Runs `run_once` every `sweep_interval` seconds (0 disables the timer; `run_once` still works)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        storage: Storage,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.metrics = metrics
        self.clock = clock
        self.context = Context(settings, store, storage, metrics, clock)
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.settings.sweep_interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="offsite-gateway-sweeper")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval)
            try:
                await self.run_once()
            except Exception:
                _LOGGER.exception("Sweeper run failed; trying again in %d s", self.settings.sweep_interval)

    async def run_once(self, now: float | None = None) -> SweepReport:
        """One cleanup pass; `now` may be given to look into the future (tests)."""
        async with self._lock, self.store.lock_sweeper() as mine:
            if not mine:
                _LOGGER.debug("Sweeper: another node is sweeping; skipped")
                return SweepReport(skipped=True)
            report = await self._run(self.clock() if now is None else now)
        self.metrics.sweeps.inc()
        if (
            report.stale_failed
            or report.orphans_aborted
            or report.deletions_done
            or report.deletions_failed
            or report.failed_pruned
        ):
            _LOGGER.info("Sweeper: %s", report)
        return report

    async def _run(self, now: float) -> SweepReport:
        report = SweepReport()
        store, storage = self.store, self.storage

        for backup in await store.stale_uploads(now - self.settings.stale_upload_after):
            # Marked failed first (only if still uploading, so a complete racing us wins), then aborted (if
            # storage refuses, step 2 aborts the upload on a later run, once storage answers again).
            async with store.lock_backup(backup.id, wait=False) as held:
                if not held or await fail_upload(self.context, backup.id, now) is None:
                    continue
                report.stale_failed += 1
                _LOGGER.info(
                    "Sweeper: upload %s of instance %s showed no activity for too long; marked failed",
                    backup.id,
                    backup.instance_id,
                )
        self.metrics.swept.labels("stale").inc(report.stale_failed)

        prefix = self.settings.s3_prefix
        try:
            pending = await storage.list_multipart_uploads(prefix)
        except StorageError as err:
            _LOGGER.warning("Sweeper: could not list multipart uploads: %s", err)
            self.metrics.storage_errors.labels(err.operation).inc()
            pending = []
        if not prefix and pending:  # a shared bucket's other uploads are not ours
            instances = {instance.id for instance in await store.list_instances()}
            pending = [upload for upload in pending if upload.key.partition("/")[0] in instances]
        report.orphans_aborted = await abort_orphans(store, storage, pending, self.metrics)
        self.metrics.swept.labels("orphan").inc(report.orphans_aborted)

        deleting = await store.deleting_backups()
        report.deletions_failed = len(await purge(store, storage, deleting, self.metrics))
        report.deletions_done = len(deleting) - report.deletions_failed
        self.metrics.swept.labels("deleted").inc(report.deletions_done)

        await store.prune_init_events(now - 3600)
        report.failed_pruned = await store.prune_failed(now - self.settings.prune_failed_after)
        self.metrics.uploads_in_progress.set(await store.count_uploading())
        return report
