"""Retention: per instance, generational (keep-last, daily, weekly, monthly), after each completed backup.

A completed backup is kept when any rule keeps it (`select_expired`); the others are deleted. Deleting is steps
that can fail separately, so it is ordered to never forget an object: the row is marked `deleting`, the archive
and its manifest are deleted, and only then is the row removed. If storage refuses either delete, the row
stays `deleting` and the sweeper retries it. Deletes go in batches (`purge`: one DeleteObjects call for up to
500 backups): a complete marks the backups retention expires `deleting` as it records itself (one statement),
and the node's `Purger` deletes what the completes of the last moments marked, together. Several nodes may delete
the same backup at once (retention after two completes, the sweeper, a DELETE): every step is idempotent.

Retention never deletes a backup that is still under delete protection (`protect_days` after it completed): the
instance's token may cause a retention run (each of its completes does), and nothing the token can cause may
shorten the protected history. The rules choose among all the completed backups, protected or not; a backup they
do not keep is deleted at the first complete after its protection ended (where Object Lock holds its objects, with
governance bypass: the gateway's lock and its protection end together). Nor is the backup being completed ever
expired, whatever the clocks say: "newest" is the order backups completed in (`completion_seq`), not a time.

Copies of one Home Assistant backup (the same `backup_id` in the description each upload carries) are backups like
any other: the description is the client's word, so it cannot make the gateway delete anything; the integration
lists the newest copy of each, and Home Assistant's delete removes every copy.
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


def protected(backup: Backup, policy: Policy, now: float) -> bool:
    """Whether the backup is still under the instance's delete protection at `now`."""
    return policy.protect_days > 0 and now < policy.deletable_at(backup.completed_at or backup.created_at)


def select_expired(
    newest_first: Sequence[Backup],
    policy: Policy,
    now: float | None = None,
    completing: str | None = None,
) -> list[Backup]:
    """The completed backups retention removes (`newest_first`: an instance's completed backups in completion
    order, newest first; with a complete, the backup being completed first).

    Kept, when any rule keeps it (UTC; a period counts when it has a backup, so nights without one never cost a
    generation): the `keep_last` newest; the newest of each of the last `keep_daily` days, `keep_weekly` ISO weeks
    and `keep_monthly` months. Never removed, whatever the rules say: the backup `completing`, and a backup still
    under delete protection at `now` (required when the policy protects backups).
    """
    if policy.protect_days > 0 and now is None:
        raise ValueError("the policy protects backups: retention needs the time")
    kept = {backup.id for backup in newest_first[: policy.keep_last]}
    kept |= _newest_per_period(newest_first, policy.keep_daily, _day)
    kept |= _newest_per_period(newest_first, policy.keep_weekly, _iso_week)
    kept |= _newest_per_period(newest_first, policy.keep_monthly, _month)
    return [
        backup
        for backup in newest_first
        if backup.id not in kept
        and backup.id != completing
        and not (now is not None and protected(backup, policy, now))
    ]


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
