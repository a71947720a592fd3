"""A backup's complete, below HTTP: storage's CompleteMultipartUpload, what storage then holds, and retention's
choice. `app.complete_backup` reads and checks the request, holds the backup's lock, and calls these in order.

What a token's upload stores is checked, never assumed: each part URL signs its exact length, but storage that
does not enforce signed lengths (moto; LocalStack given `Content-Length` and `Transfer-Encoding: chunked` at once)
keeps whatever was sent. So once storage has completed the object, its size is read back (HeadObject); an object
of any other size than the one declared, signed and counted against the quota is refused as the attack it is:
the upload is marked failed, its object deleted, and a warning logged (ids and sizes only, nothing the request
sent).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from .errors import ApiError
from .metrics import Metrics
from .policy import Policy
from .retention import select_expired
from .storage import Storage, StorageError, StoredPart
from .store import Backup, Store

_LOGGER = logging.getLogger(__name__)

# What storage answers a CompleteMultipartUpload whose parts are not all there as listed (a part missing, another
# ETag, a part too small): the parts are then listed, to tell the client which one.
PART_REFUSALS = frozenset(("InvalidPart", "InvalidPartOrder", "EntityTooSmall"))


def part_length(backup: Backup, number: int) -> int:
    """The exact length of part `number`: `part_size`, or what is left for the last one."""
    if number < backup.part_count:
        return backup.part_size
    return backup.size - (backup.part_count - 1) * backup.part_size


def unquoted(etag: str) -> str:
    return etag.strip().strip('"')


def check_parts(backup: Backup, declared: dict[int, str], stored: list[StoredPart]) -> None:
    """409 unless the stored parts are all there, with the declared ETags and their signed lengths."""
    by_number = {part.part_number: part for part in stored}
    chosen: list[StoredPart] = []
    for number in range(1, backup.part_count + 1):
        part = by_number.get(number)
        if part is None:
            raise ApiError(409, "parts_missing", f"storage does not hold part {number}")
        if unquoted(part.etag) != unquoted(declared[number]):
            raise ApiError(
                409, "parts_missing", f"part {number} in storage has ETag {part.etag}, not {declared[number]}"
            )
        chosen.append(part)
    for part in chosen:
        expected = part_length(backup, part.part_number)
        if part.size != expected:
            raise ApiError(
                409,
                "size_mismatch",
                f"part {part.part_number} holds {part.size} bytes, {expected} expected "
                f"(declared size {backup.size}, part size {backup.part_size})",
            )


async def complete_in_storage(
    storage: Storage, backup: Backup, upload_id: str, declared: dict[int, str]
) -> int | None:
    """CompleteMultipartUpload with the parts the client declared, in one call; then the size of the object
    storage holds (None: none).

    Nothing is listed first: storage checks that each part is there with that ETag. Only when storage refuses are
    the parts listed, to say which one is missing or wrong. An upload storage no longer knows may have been
    completed by an earlier call that stopped before recording it (a crash, a lost answer): then the object is
    there, and its size says whether it is this backup.
    """
    parts = [StoredPart(number, f'"{unquoted(declared[number])}"', 0) for number in sorted(declared)]
    try:
        await storage.complete_multipart_upload(backup.object_key, upload_id, parts)
    except StorageError as err:
        if err.code == "NoSuchUpload":
            stored = await storage.object_size(backup.object_key)
            if stored is None:
                raise ApiError(
                    409, "not_uploading", "storage no longer knows this upload: abort it and start again"
                ) from None
            if stored == backup.size:
                _LOGGER.info("Backup %s was already complete in storage; recording it", backup.id)
            return stored
        if err.code not in PART_REFUSALS:
            raise
        check_parts(backup, declared, await storage.list_parts(backup.object_key, upload_id))
        raise ApiError(
            409, "parts_missing", f"storage refused the parts as listed ({err.code}); list them and retry"
        ) from None
    return await storage.object_size(backup.object_key)


async def refuse_stored_size(
    store: Store, storage: Storage, metrics: Metrics, backup: Backup, *, stored: int | None, now: float
) -> ApiError:
    """The object storage completed is not the size declared: fail the upload, delete the object (should storage
    refuse, the backup is left `deleting`, for the sweeper), log it; the 409 to answer."""
    _LOGGER.warning(
        "Refused the complete of backup %s of instance %s: storage holds %s bytes where %d were declared and "
        "signed, so a part was sent with another length than its URL allows (storage did not enforce it); the "
        "upload is marked failed and its object deleted",
        backup.id,
        backup.instance_id,
        "no" if stored is None else stored,
        backup.size,
    )
    metrics.uploads_refused.labels("size_mismatch").inc()
    await store.fail_backup(backup.id, now)
    try:
        refused = await storage.delete_objects([backup.object_key])
    except StorageError as err:
        metrics.storage_errors.labels(err.operation).inc()
        refused = {backup.object_key: str(err)}
    if refused:
        # Left to the sweeper, which deletes `deleting` backups' objects until storage does, then the row.
        _LOGGER.warning("Could not delete the refused object of backup %s yet; the sweeper will", backup.id)
        await store.mark_deleting([backup.id])
    return ApiError(
        409,
        "size_mismatch",
        f"storage holds {stored} bytes for this backup, not the {backup.size} declared: a part was sent with "
        "another length than its URL signs; the upload is refused and deleted, start again",
    )


def retention_choice(
    recorded: Backup, completed: Sequence[Backup], policy: Policy, now: float
) -> list[Backup]:
    """What retention expires once `recorded` is completed, among the instance's `completed` backups (newest
    first, in completion order): `recorded` is the newest, whatever its time says, and never expired, nor is a
    backup still under delete protection."""
    return select_expired(
        [recorded, *completed],
        policy,
        now,
        completing=recorded.id,
    )
