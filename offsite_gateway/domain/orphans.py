"""Storage uploads the database does not hold as in progress (orphans): left over by a crash, a lost response, a
failed abort, a revoked instance. The sweeper aborts them every run, the CLI those of an instance it revokes."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from ..config import Settings
from ..metrics import Metrics
from ..storage import PendingUpload, Storage, StorageError
from ..store import COMPLETED, DELETING, UPLOADING, Store

_LOGGER = logging.getLogger(__name__)


async def abort_orphans(
    store: Store, storage: Storage, uploads: Iterable[PendingUpload], metrics: Metrics | None = None
) -> int:
    """Abort each of `uploads` that the database does not hold as in progress; return how many were aborted.

    An upload completed since storage was listed is no orphan: the database holds its backup completed with that
    upload id, and it is left alone (nothing of it is pending in storage any more). The database says so, not
    the abort's answer: S3 and moto answer NoSuchUpload to an abort of an upload they no longer have, but
    SeaweedFS answers 204 as to any abort (the completed object stays either way).
    """
    aborted = 0
    for upload in uploads:
        if await _known(store, upload.key, upload.upload_id):
            continue
        try:
            if not await storage.abort_multipart_upload(upload.key, upload.upload_id):
                continue  # aborted (or completed) since storage was listed: not an orphan after all
        except StorageError as err:
            _LOGGER.warning("Sweeper: could not abort orphan upload of %s: %s", upload.key, err)
            if metrics is not None:
                metrics.storage_errors.labels(err.operation).inc()
            continue
        aborted += 1
        _LOGGER.info("Sweeper: aborted an upload the database does not know: %s", upload.key)
    return aborted


async def abort_instance_uploads(
    store: Store, storage: Storage, settings: Settings, instance_id: str, metrics: Metrics | None = None
) -> int:
    """Abort the instance's storage uploads that the database does not hold as in progress (after a revocation,
    all of them); return how many were aborted."""
    uploads = await storage.list_multipart_uploads(f"{settings.s3_prefix}{instance_id}/")
    return await abort_orphans(store, storage, uploads, metrics)


async def _known(store: Store, key: str, upload_id: str) -> bool:
    """Whether the database holds this upload as in progress (or is about to: its id not stored yet), or as
    completed (storage completed it after it was listed: it is pending no more)."""
    backup_id = key.rsplit("/", 1)[-1]
    backup = await store.get_backup(backup_id)
    if backup is None or backup.object_key != key:
        return False
    if backup.status == UPLOADING:
        return backup.upload_id in (None, upload_id)
    return backup.status in (COMPLETED, DELETING) and backup.upload_id == upload_id
