"""Retention: per instance, keep the newest N completed backups (and optionally one per month).

Deleting is steps that can fail separately, so it is ordered to never forget an object: the row is marked
`deleting`, the archive and then its manifest are deleted, and only then is the row removed. If storage refuses
either delete, the row stays `deleting` and the sweeper retries it. Several nodes may delete the same backup at
once (retention after two completes, the sweeper, a DELETE): every step is idempotent.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from .manifest import manifest_key
from .metrics import Metrics
from .storage import Storage, StorageError
from .store import COMPLETED, Backup, Store

_LOGGER = logging.getLogger(__name__)


def _month(timestamp: float) -> tuple[int, int]:
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.year, moment.month


def select_expired(newest_first: Sequence[Backup], keep: int, monthly: int, now: float) -> list[Backup]:
    """The completed backups retention removes.

    Kept: the `keep` newest, plus the oldest backup of each of the last `monthly` calendar months (UTC, the
    current month included) — the first backup of a month stays that month's keeper as later ones come and go.
    """
    kept = {backup.id for backup in newest_first[:keep]}
    if monthly > 0:
        year, month = _month(now)
        months: set[tuple[int, int]] = set()
        for _ in range(monthly):
            months.add((year, month))
            year, month = (year - 1, 12) if month == 1 else (year, month - 1)
        keepers: dict[tuple[int, int], Backup] = {}
        for backup in newest_first:  # newest first: the last one seen in a month is its oldest
            stamp = backup.completed_at or backup.created_at
            if _month(stamp) in months:
                keepers[_month(stamp)] = backup
        kept.update(backup.id for backup in keepers.values())
    return [backup for backup in newest_first if backup.id not in kept]


async def delete_backups(
    store: Store, storage: Storage, backups: Iterable[Backup], metrics: Metrics | None = None
) -> list[Backup]:
    """Delete each backup's archive and manifest, then its row; return those left `deleting` (storage refused)."""
    backups = list(backups)
    await store.mark_deleting([backup.id for backup in backups])
    failed: list[Backup] = []
    for backup in backups:
        try:
            await storage.delete_object(backup.object_key)
            await storage.delete_object(manifest_key(backup.object_key))
        except StorageError as err:
            _LOGGER.warning(
                "Could not delete backup %s (%s); the sweeper will retry: %s",
                backup.id,
                backup.object_key,
                err,
            )
            if metrics is not None:
                metrics.storage_errors.labels(err.operation).inc()
            failed.append(backup)
            continue
        await store.delete_backup(backup.id)
    return failed


async def apply_retention(
    store: Store,
    storage: Storage,
    instance_id: str,
    *,
    keep: int,
    monthly: int,
    now: float,
    metrics: Metrics | None = None,
) -> list[Backup]:
    """Delete the instance's completed backups retention no longer keeps; return them."""
    expired = select_expired(await store.list_backups(instance_id, COMPLETED), keep, monthly, now)
    if expired:
        _LOGGER.info("Retention: deleting %d backup(s) of instance %s", len(expired), instance_id)
        await delete_backups(store, storage, expired, metrics)
        if metrics is not None:
            metrics.retention_deleted.inc(len(expired))
    return expired
