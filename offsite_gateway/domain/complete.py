"""A backup's complete: the parts declared, storage's CompleteMultipartUpload, what storage then holds, the
manifest, Object Lock, retention's choice recorded with the complete, and the expired backups handed to the purger.
`complete` does it in that order, holding the backup's lock; the API reads the body first (`api.backups`).

What a token's upload stores is checked, never assumed: each part URL signs its exact length, but storage that
does not enforce signed lengths (moto; LocalStack given `Content-Length` and `Transfer-Encoding: chunked` at once)
keeps whatever was sent. So once storage has completed the object, its size is read back (HeadObject); an object
of any other size than the one declared, signed and counted against the quota is refused as the attack it is:
the upload is marked failed, its object deleted, and a warning logged (ids and sizes only, nothing the request
sent).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence

from .. import manifest
from ..errors import ApiError
from ..metrics import Metrics
from ..policy import Policy, policy_for
from ..retention import delete_backups, select_expired
from ..storage import Storage, StorageError, StoredPart
from ..store import COMPLETED, Backup, Instance, Store
from .context import Context, owned, require_uploading

_LOGGER = logging.getLogger(__name__)

# What storage answers a CompleteMultipartUpload whose parts are not all there as listed (a part missing, another
# ETag, a part too small): the parts are then listed, to tell the client which one.
PART_REFUSALS = frozenset(("InvalidPart", "InvalidPartOrder", "EntityTooSmall"))

# What a complete declares: its parts (number → ETag) and the backup's SHA-256, if it says one. Read by the caller
# once the backup's lock is held and the backup is known to be the caller's and uploading (the cheap refusals
# first): `complete` hands it the backup.
Declared = Callable[[Backup], Awaitable[tuple[dict[int, str], str | None]]]


async def complete(context: Context, instance: Instance, backup_id: str, declared_parts: Declared) -> Backup:
    """Complete the instance's upload `backup_id` with the parts `declared_parts` reads; the backup completed.

    One complete, abort or delete of a backup at a time, on every node (the parsing of its parts included); on
    PostgreSQL the lock's round trip also reads the backup, which `owned` then takes, and its instance's
    completed backups, which retention then takes.
    """
    settings, store, storage, metrics = context.settings, context.store, context.storage, context.metrics
    policy = policy_for(instance, settings)
    async with store.lock_backup(backup_id, completing=True):
        backup = await owned(context, instance.id, backup_id)
        upload_id = require_uploading(backup)  # the cheap refusal first: before the body is parsed
        declared, sha256 = await declared_parts(backup)
        check_declared(backup, declared, sha256)
        stored = await complete_in_storage(storage, backup, upload_id, declared)
        now = context.clock()
        if stored != backup.size:
            raise await refuse_stored_size(store, storage, metrics, backup, stored=stored, now=now)
        # The manifest goes in before the database records the backup: no completed row lacks its manifest.
        recorded = dataclasses.replace(
            backup, status=COMPLETED, completed_at=now, sha256=sha256 or backup.sha256
        )
        key = manifest.manifest_key(backup.object_key)
        await storage.put_object(key, manifest.build(recorded, instance))
        if settings.object_lock and policy.protect_days > 0:
            # Under Object Lock until the token may delete it: not even storage's keys delete it earlier
            # (without governance bypass). Again on a retried complete: the date only moves later.
            until = policy.deletable_at(now)
            await storage.lock_object(backup.object_key, until)
            await storage.lock_object(key, until)
        # Retention's choice among the instance's completed backups and this one, recorded with the complete.
        completed = await store.list_backups(backup.instance_id, COMPLETED)
        expired = retention_choice(recorded, completed, policy, now)
        if not await store.complete_backup(backup.id, sha256, now, [old.id for old in expired]):
            current = await store.get_backup(backup.id)
            if current is not None and current.status == COMPLETED:
                raise ApiError(409, "not_uploading", f"backup {backup.id} is completed already")
            # Aborted or swept while we completed: do not leave an object nobody knows.
            await delete_backups(store, storage, [backup], metrics)
            raise ApiError(409, "not_uploading", f"backup {backup.id} was aborted while completing")
        metrics.bytes_completed.inc(backup.size)
        metrics.backups_completed.inc()
        _LOGGER.info(
            "Backup %s of instance %s completed: %d bytes", backup.id, backup.instance_id, backup.size
        )
        if expired:
            # Marked `deleting` with the complete; their objects and rows go in batches (`Purger`), within about
            # a second (or with the sweeper, should this node stop first).
            _LOGGER.info("Retention: deleting %d backup(s) of instance %s", len(expired), backup.instance_id)
            metrics.retention_deleted.inc(len(expired))
            if context.purger is not None:
                context.purger.add(expired)
    return recorded


def check_declared(backup: Backup, declared: dict[int, str], sha256: str | None) -> None:
    """400 unless the complete lists every part of the backup once, and no other SHA-256 than its begin said."""
    expected = set(range(1, backup.part_count + 1))
    if set(declared) != expected:
        missing = sorted(expected - set(declared))
        extra = sorted(set(declared) - expected)
        detail = f"missing {missing[:10]}" if missing else f"out of 1..{backup.part_count}: {extra[:10]}"
        raise ApiError(400, "invalid_request", f"parts: every part 1..{backup.part_count} once; {detail}")
    if sha256 and backup.sha256 and sha256 != backup.sha256:
        raise ApiError(400, "invalid_request", "sha256: differs from the one declared when the upload began")


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
