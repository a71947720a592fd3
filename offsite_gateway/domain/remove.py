"""A backup's abort and delete: by its instance (the API: its own backups, not while delete protection holds),
by the operator (the CLI: any backup, whatever its protection and Object Lock, which it bypasses in governance
mode), and the sweeper's fail of an upload that showed no sign of life. Each holds the backup's lock."""

from __future__ import annotations

import logging
import math

from ..errors import ApiError
from ..messages import iso
from ..policy import policy_for
from ..retention import delete_backups, protected
from ..storage import StorageError
from ..store import COMPLETED, DELETING, UPLOADING, Backup, Instance
from .context import Context, owned

_LOGGER = logging.getLogger(__name__)


async def fail_upload(context: Context, backup_id: str, now: float | None = None) -> Backup | None:
    """Mark the upload failed (so its instance may start again at once), then abort it in storage; the backup as
    it failed, or None if it was not uploading (completed, aborted or swept meanwhile). Hold its lock.

    If storage refuses the abort, the upload is no longer one the database knows as in progress: the sweeper
    aborts it on its next run.
    """
    # The upload id as the database holds it when the backup fails: a create on another node may have recorded
    # it since the backup was read (if not, that create sees the backup failed and aborts what it made).
    failed = await context.store.fail_backup(backup_id, context.clock() if now is None else now)
    if failed is not None and failed.upload_id is not None:
        try:
            await context.storage.abort_multipart_upload(failed.object_key, failed.upload_id)
        except StorageError as err:
            context.metrics.storage_errors.labels(err.operation).inc()
            _LOGGER.warning(
                "Could not abort the upload of backup %s now; the sweeper will: %s", backup_id, err
            )
    return failed


async def _abort(context: Context, backup: Backup) -> None:
    if await fail_upload(context, backup.id) is None:
        raise ApiError(409, "not_uploading", f"backup {backup.id} is not uploading any more")
    _LOGGER.info("Upload of backup %s aborted", backup.id)


async def abort(context: Context, instance: Instance, backup_id: str) -> None:
    """The instance aborts its upload `backup_id`: 409 unless it is uploading.

    Also while its storage upload is still being created (no upload id yet): the create then sees the backup
    failed, and aborts the upload it made.
    """
    async with context.store.lock_backup(backup_id):
        backup = await owned(context, instance.id, backup_id)
        if backup.status != UPLOADING:
            raise ApiError(409, "not_uploading", f"backup {backup.id} is {backup.status}, not uploading")
        await _abort(context, backup)


async def delete(context: Context, backup_id: str, *, owner: Instance | None) -> Backup | None:
    """Delete backup `backup_id`: its upload aborted, or its archive and manifest deleted, then its row; the
    backup deleted (None if there is none).

    `owner`: the instance deleting its own backup (404 if it is not its own; 403 while it is protected), or None
    for the operator, whom neither binds. 502 if storage did not delete the objects: the backup stays `deleting`,
    and the sweeper retries.
    """
    store = context.store
    async with store.lock_backup(backup_id):
        if owner is not None:
            backup = await owned(context, owner.id, backup_id, deleting=True)
        else:
            found = await store.get_backup(backup_id)
            if found is None:
                return None
            backup = found
        if backup.status == UPLOADING:
            await _abort(context, backup)
            await store.delete_backup(backup.id)
        elif backup.status in (COMPLETED, DELETING):
            if backup.status == COMPLETED and owner is not None:
                refuse_if_protected(context, owner, backup)
            if await delete_backups(store, context.storage, [backup], context.metrics):
                raise ApiError(
                    502, "storage_error", "storage did not delete the object; the gateway will retry it"
                )
        else:
            await store.delete_backup(backup.id)
    by = f"instance {owner.id}" if owner is not None else "the operator"
    _LOGGER.info("Backup %s of instance %s deleted by %s", backup.id, backup.instance_id, by)
    return backup


def refuse_if_protected(context: Context, instance: Instance, backup: Backup) -> None:
    """403 `protected` for a completed backup younger than the instance's protect-days (retention does not delete
    it either; the operator's `backup delete` can)."""
    policy = policy_for(instance, context.settings)
    deletable_at = policy.deletable_at(backup.completed_at or backup.created_at)
    if protected(backup, policy, context.clock()):
        # Rounded up to the second: never announced earlier than it is.
        when = iso(math.ceil(deletable_at))
        raise ApiError(
            403,
            "protected",
            f"this backup is protected against deletion for {policy.protect_days} days after it was made: "
            f"it can be deleted from {when} on",
            details={"deletable_at": when},
        )
