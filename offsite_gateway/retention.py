"""Retention: per instance, generational (keep-last, daily, weekly, monthly), after each completed backup.

A completed backup is kept when any rule keeps it (`select_expired`); the others are deleted. Deleting is steps
that can fail separately, so it is ordered to never forget an object: the row is marked `deleting`, the archive
and then its manifest are deleted, and only then is the row removed. If storage refuses either delete, the row
stays `deleting` and the sweeper retries it. Several nodes may delete the same backup at once (retention after two
completes, the sweeper, a DELETE): every step is idempotent.

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
from .store import COMPLETED, Backup, Store

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
    policy: Policy,
    metrics: Metrics | None = None,
) -> list[Backup]:
    """Delete the instance's completed backups retention no longer keeps; return them."""
    expired = select_expired(await store.list_backups(instance_id, COMPLETED), policy)
    if expired:
        _LOGGER.info("Retention: deleting %d backup(s) of instance %s", len(expired), instance_id)
        await delete_backups(store, storage, expired, metrics)
        if metrics is not None:
            metrics.retention_deleted.inc(len(expired))
    return expired
