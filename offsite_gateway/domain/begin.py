"""A backup's begin: the gateway's size limit, the plan of its parts, the instance's quota, one upload at a time
and the rate of starts (the database checks these with the create, atomically), then its storage upload."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from typing import Any

from ..errors import ApiError
from ..parts import TooLarge, plan_parts
from ..policy import policy_for
from ..storage import StorageError
from ..store import UPLOADING, Backup, Instance, QuotaExceeded, RateLimited, UploadInProgress
from .context import Context

_LOGGER = logging.getLogger(__name__)


async def begin(
    context: Context,
    instance: Instance,
    *,
    name: str,
    size: int,
    sha256: str | None,
    metadata: dict[str, Any],
) -> Backup:
    """Start the instance's backup of `size` bytes; the backup, uploading, with its storage upload id."""
    settings, store, storage = context.settings, context.store, context.storage
    if size > settings.max_backup_bytes:
        raise ApiError(
            413,
            "quota_exceeded",
            f"size {size} is over this gateway's limit of {settings.max_backup_bytes} bytes",
            details={"needed_bytes": size, "max_backup_bytes": settings.max_backup_bytes},
        )
    # Checked by the database with the create, atomically: an upload that is completing counts (see begin_backup).
    quota = policy_for(instance, settings).quota_bytes
    try:
        part_size, part_count = plan_parts(size, settings.part_size, settings.max_parts)
    except TooLarge as err:  # not past the size check above: MAX_BACKUP_BYTES fits in MAX_PARTS parts
        raise ApiError(413, "quota_exceeded", f"size {size}: {err}", details={"needed_bytes": size}) from None
    backup_id = uuid.uuid4().hex
    now = context.clock()
    backup = Backup(
        id=backup_id,
        instance_id=instance.id,
        name=name,
        size=size,
        sha256=sha256,
        status=UPLOADING,
        created_at=now,
        completed_at=None,
        part_size=part_size,
        part_count=part_count,
        object_key=f"{settings.s3_prefix}{instance.id}/{backup_id}",
        metadata=metadata,
        last_activity=now,
    )
    # The row goes in before the upload exists in storage: the sweeper never takes it for an orphan.
    try:
        await store.begin_backup(backup, now, settings.init_rate, quota)
    except QuotaExceeded as err:
        assert quota is not None
        raise ApiError(
            413,
            "quota_exceeded",
            f"this backup needs {size} bytes; {err.used} of this instance's quota of {quota} bytes are "
            f"used, {max(0, quota - err.used)} free",
            details={"used_bytes": err.used, "needed_bytes": size, "quota_bytes": quota},
        ) from None
    except UploadInProgress as err:
        # Its id, so a client that lost the answer to its create can abort its own stale upload at once.
        raise ApiError(
            409,
            "upload_in_progress",
            f"this instance already has an upload in progress: backup {err.backup_id} "
            f"(DELETE /v1/backups/{err.backup_id}/upload aborts it)",
            details={"backup_id": err.backup_id},
        ) from None
    except RateLimited as err:
        raise ApiError(
            429,
            "rate_limited",
            f"more than {settings.init_rate} uploads started within an hour; retry in {err.retry_after} s",
            {"Retry-After": str(err.retry_after)},
        ) from None
    try:
        upload_id = await storage.create_multipart_upload(backup.object_key)
    except BaseException:
        await store.delete_backup(backup_id)
        raise
    if not await store.set_upload_id(backup_id, upload_id):
        # Aborted (or deleted) meanwhile by its owner, who learned its id from a 409 after losing our answer.
        await abort_unrecorded(context, backup.object_key, upload_id)
        raise ApiError(
            409, "not_uploading", f"backup {backup_id} was aborted while its upload was being created"
        )
    _LOGGER.info(
        "Instance %s started backup %s: %d bytes in %d parts", instance.id, backup_id, size, part_count
    )
    return dataclasses.replace(backup, upload_id=upload_id)


async def abort_unrecorded(context: Context, key: str, upload_id: str) -> None:
    """Abort a storage upload the database does not hold as in progress (else the sweeper does, as an orphan)."""
    try:
        await context.storage.abort_multipart_upload(key, upload_id)
    except StorageError as err:
        context.metrics.storage_errors.labels(err.operation).inc()
        _LOGGER.warning("Could not abort the upload of %s now; the sweeper will: %s", key, err)
