"""Retention: per instance, generational (keep-last, daily, weekly, monthly), after each completed backup.

A completed backup is kept when any rule keeps it (`select_expired`); the others are deleted. Deleting is steps
that can fail separately, so it is ordered to never forget an object: the row is marked `deleting`, the archive
and its manifest are deleted, and only then is the row removed. If storage refuses either delete, the row
stays `deleting` and the sweeper retries it. Deletes go in batches (`purge`: one DeleteObjects call for up to
500 backups): a complete marks the backups retention expires `deleting` as it records itself (one statement),
and the node's `Purger` deletes what the completes of the last moments marked, together. Several nodes may delete
the same backup at once (retention after two completes, the sweeper, a DELETE): every step is idempotent.

Retention is not bound by delete protection (`protect_days` binds the instance's token only) and, where Object Lock
holds the objects, deletes them with governance bypass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable, Sequence
from datetime import UTC, datetime

from .manifest import manifest_key
from .metrics import Metrics
from .policy import Policy
from .storage import Storage, StorageError
from .store import Backup, Store

_LOGGER = logging.getLogger(__name__)


def _moment(backup: Backup) -> datetime:
    return datetime.fromtimestamp(backup.completed_at or backup.created_at, UTC)


def _day(backup: Backup) -> Hashable:
    return _moment(backup).date()


def _iso_week(backup: Backup) -> Hashable:
    year, week, _ = _moment(backup).isocalendar()
    return year, week


def _month(backup: Backup) -> Hashable:
    moment = _moment(backup)
    return moment.year, moment.month


def _ha_backup_id(backup: Backup) -> str | None:
    """Home Assistant's id of the backup, from its description (the same backup sent twice has it twice)."""
    value = backup.metadata.get("backup_id")
    return value if isinstance(value, str) and value else None


def _newest_per_period(
    newest_first: Sequence[Backup], periods: int, period: Callable[[Backup], Hashable]
) -> set[str]:
    """The newest backup of each of the last `periods` periods that have a backup."""
    kept: set[str] = set()
    seen: set[Hashable] = set()
    for backup in newest_first:
        if periods <= 0:
            break
        key = period(backup)
        if key in seen:
            continue
        if len(seen) == periods:
            break
        seen.add(key)
        kept.add(backup.id)
    return kept


def select_expired(newest_first: Sequence[Backup], policy: Policy) -> list[Backup]:
    """The completed backups retention removes (`newest_first`: an instance's completed backups, newest first).

    Kept, when any rule keeps it (UTC; a period counts when it has a backup, so nights without one never cost a
    generation): the `keep_last` newest; the newest of each of the last `keep_daily` days, `keep_weekly` ISO weeks
    and `keep_monthly` months. Older copies of a Home Assistant backup that was sent more than once (the same
    `backup_id` in its description) are duplicates of a newer copy and go too.
    """
    unique: list[Backup] = []
    duplicates: set[str] = set()
    seen_ids: set[str] = set()
    for backup in newest_first:
        ha_id = _ha_backup_id(backup)
        if ha_id is not None and ha_id in seen_ids:
            duplicates.add(backup.id)
            continue
        if ha_id is not None:
            seen_ids.add(ha_id)
        unique.append(backup)
    kept = {backup.id for backup in unique[: policy.keep_last]}
    kept |= _newest_per_period(unique, policy.keep_daily, _day)
    kept |= _newest_per_period(unique, policy.keep_weekly, _iso_week)
    kept |= _newest_per_period(unique, policy.keep_monthly, _month)
    return [backup for backup in newest_first if backup.id not in kept or backup.id in duplicates]


PURGE_BATCH = 500  # backups purged together: their archives and manifests fill one DeleteObjects call


async def delete_backups(
    store: Store, storage: Storage, backups: Iterable[Backup], metrics: Metrics | None = None
) -> list[Backup]:
    """Mark the backups `deleting`, then `purge` them; return those left `deleting` (storage refused)."""
    backups = list(backups)
    await store.mark_deleting([backup.id for backup in backups])
    return await purge(store, storage, backups, metrics)


async def purge(
    store: Store, storage: Storage, backups: Sequence[Backup], metrics: Metrics | None = None
) -> list[Backup]:
    """Delete the archives and manifests of backups marked `deleting` (DeleteObjects, `PURGE_BATCH` backups a
    call), then the rows of those storage deleted both of; return the others, left `deleting` for the sweeper."""
    failed: list[Backup] = []
    for start in range(0, len(backups), PURGE_BATCH):
        batch = backups[start : start + PURGE_BATCH]
        keys = [key for backup in batch for key in (backup.object_key, manifest_key(backup.object_key))]
        try:
            refused = await storage.delete_objects(keys)
        except StorageError as err:
            if metrics is not None:
                metrics.storage_errors.labels(err.operation).inc()
            _LOGGER.warning("Could not delete %d backup(s); the sweeper will retry: %s", len(batch), err)
            failed.extend(batch)
            continue
        done: list[str] = []
        for backup in batch:
            why = refused.get(backup.object_key) or refused.get(manifest_key(backup.object_key))
            if why is None:
                done.append(backup.id)
                continue
            _LOGGER.warning(
                "Could not delete backup %s (%s); the sweeper will retry: %s",
                backup.id,
                backup.object_key,
                why,
            )
            if metrics is not None:
                metrics.storage_errors.labels("delete_objects").inc()
            failed.append(backup)
        await store.delete_backups(done)
    return failed
