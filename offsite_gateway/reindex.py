"""`offsite-gateway reindex`: rebuild the database from the manifests in the bucket, after the database is lost.

1. Storage is listed under the prefix; every `*.manifest.json` is read and checked (format version, the archive
   beside it exists with the size it names). Anything else is left alone.
2. Each instance a manifest names is created again with its own id (Home Assistant's config entry is keyed by it)
   and name, unless the database has that id already. Its token is not known (only its hash ever was): it gets
   an unusable one, and `offsite-gateway instance rotate NAME` issues the real one. If two instance ids carry one
   name (an instance revoked and its name given again), the one with the newest backup is active, the others
   revoked.
3. Each completed backup is inserted as it was (same id, times, sizes, SHA-256, Home Assistant's metadata),
   unless the database has that id already. A row of that id that is `uploading` or `failed` (a database restored
   from a dump older than the backup's complete: the client was told it succeeded) is promoted to `completed` as
   the manifest describes it, since the manifest and an archive of its size prove storage completed it. A row
   in any other state is left as it is.
4. Each instance's policy comes back from the newest record of it in the bucket (its `instance.json`, written by
   `instance set`, and the policy every backup's manifest carries), unless the database's was set as late or
   later: the newest record wins, by when the policy was set.
5. Completed backups the database holds whose archive is gone (deleted after the dump was taken) are reported, and
   with `prune_missing` removed (row, and the manifest if one is left). Each is checked with storage again
   first, so that a backup completed since the listing is never taken for a missing one.
6. Completed backups the database holds whose manifest is missing (completed by a gateway older than manifests)
   get one, so the bucket describes them too.

It can run against a live gateway (what it promotes or removes is held with the backup's lock; nothing it inserts
conflicts with what a node writes) and again (idempotent). Retention is not applied: the next complete does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from . import auth, manifest
from .config import Settings
from .retention import delete_backups
from .storage import Storage, StorageError
from .store import COMPLETED, FAILED, UPLOADING, Backup, Instance, Store

_LOGGER = logging.getLogger(__name__)

READ_CONCURRENCY = 16
BACKFILL_PAGE = 500


@dataclass
class ReindexReport:
    """What a reindex found and did."""

    manifests: int = 0
    backups_added: int = 0
    backups_known: int = 0
    backups_promoted: list[str] = field(default_factory=list)  # ids of rows completed again from the bucket
    instances_added: list[str] = field(default_factory=list)  # names: each needs `instance rotate NAME`
    instances_revoked: list[str] = field(default_factory=list)  # ids of older instances that shared a name
    policies_restored: list[str] = field(default_factory=list)  # names of instances given their policy again
    missing: list[str] = field(default_factory=list)  # ids of completed rows whose archive is gone
    pruned: list[str] = field(default_factory=list)  # those of them removed (`prune_missing`)
    skipped: dict[str, str] = field(default_factory=dict)  # manifest key -> why
    manifests_written: int = 0


async def _fetch(storage: Storage, key: str) -> bytes | str:
    """A manifest's bytes, or why it could not be read."""
    try:
        data = await storage.get_object(key, manifest.MAX_SIZE)
    except StorageError as err:
        return f"could not read it: {err}"
    return "gone before it was read" if data is None else data


async def _read(storage: Storage, key: str, sizes: dict[str, int]) -> tuple[Instance, Backup] | str:
    """The manifest's instance and backup, or why it is skipped."""
    data = await _fetch(storage, key)
    if isinstance(data, str):
        return data
    try:
        instance, backup = manifest.parse(data, key)
    except manifest.ManifestError as err:
        return f"not a manifest this gateway reads: {err}"
    archive = sizes.get(backup.object_key)
    if archive is None:
        return "its archive is not in the bucket"
    if archive != backup.size:
        return f"its archive holds {archive} bytes, the manifest says {backup.size}"
    return instance, backup


async def _read_instance(storage: Storage, key: str) -> Instance | str:
    """The instance (and policy) an instance manifest describes, or why it is skipped."""
    data = await _fetch(storage, key)
    if isinstance(data, str):
        return data
    try:
        return manifest.parse_instance(data, key)
    except manifest.ManifestError as err:
        return f"not an instance manifest this gateway reads: {err}"


async def reindex(
    store: Store,
    storage: Storage,
    settings: Settings,
    now: float | None = None,
    *,
    prune_missing: bool = False,
) -> ReindexReport:
    """Rebuild the database's instances and completed backups from the bucket (see the module's docstring)."""
    now = time.time() if now is None else now
    report = ReindexReport()
    sizes: dict[str, int] = {}
    async for item in storage.list_objects(settings.s3_prefix):
        sizes[item.key] = item.size
    keys = sorted(key for key in sizes if manifest.is_manifest_key(key))
    instance_keys = sorted(key for key in sizes if manifest.is_instance_manifest_key(key))
    report.manifests = len(keys)

    semaphore = asyncio.Semaphore(READ_CONCURRENCY)

    async def read(key: str) -> tuple[Instance, Backup] | str:
        async with semaphore:
            return await _read(storage, key, sizes)

    async def read_instance(key: str) -> Instance | str:
        async with semaphore:
            return await _read_instance(storage, key)

    found: list[tuple[Instance, Backup]] = []
    for key, result in zip(keys, await asyncio.gather(*(read(key) for key in keys)), strict=True):
        if isinstance(result, str):
            report.skipped[key] = result
            _LOGGER.warning("Reindex: skipped %r: %s", key, result)
        else:
            found.append(result)
    described: list[Instance] = [instance for instance, _ in found]
    for key, read_back in zip(
        instance_keys, await asyncio.gather(*(read_instance(key) for key in instance_keys)), strict=True
    ):
        if isinstance(read_back, str):
            report.skipped[key] = read_back
            _LOGGER.warning("Reindex: skipped %r: %s", key, read_back)
        else:
            described.append(read_back)

    await _restore_instances(store, found, now, report)
    for _, backup in sorted(found, key=lambda pair: pair[1].completed_at or 0):
        if await store.restore_backup(backup):
            report.backups_added += 1
        elif await _promote(store, backup):
            report.backups_promoted.append(backup.id)
            _LOGGER.info(
                "Reindex: backup %s completed in storage after the database's copy: completed", backup.id
            )
        else:
            report.backups_known += 1
    await _restore_policies(store, described, report)
    await _find_missing(store, storage, sizes, report, prune=prune_missing)
    await _backfill(store, storage, sizes, report)
    return report


async def _promote(store: Store, backup: Backup) -> bool:
    """Complete the row of `backup` from its manifest if it is `uploading` or `failed` (held with its lock)."""
    async with store.lock_backup(backup.id):
        row = await store.get_backup(backup.id)
        if row is None or row.status not in (UPLOADING, FAILED) or row.instance_id != backup.instance_id:
            return False
        return await store.promote_backup(backup)


async def _restore_policies(store: Store, described: list[Instance], report: ReindexReport) -> None:
    """Each instance's newest policy record in the bucket, unless the database's is as new (`restore_policy`)."""
    newest: dict[str, Instance] = {}
    for instance in described:
        if instance.policy_set_at is None:
            continue
        known = newest.get(instance.id)
        if known is None or (known.policy_set_at or 0) < instance.policy_set_at:
            newest[instance.id] = instance
    for instance in newest.values():
        assert instance.policy_set_at is not None
        if await store.restore_policy(instance.id, instance.policy, instance.policy_set_at):
            report.policies_restored.append(instance.name)


async def _find_missing(
    store: Store, storage: Storage, sizes: dict[str, int], report: ReindexReport, *, prune: bool
) -> None:
    """Completed rows whose archive is not in the bucket: reported, and with `prune` removed."""
    after = ""
    candidates: list[Backup] = []
    while page := await store.completed_backups(after, BACKFILL_PAGE):
        after = page[-1].id
        candidates += [backup for backup in page if backup.object_key not in sizes]
    for backup in candidates:
        if await storage.object_size(backup.object_key) is not None:
            continue  # completed since the listing
        report.missing.append(backup.id)
        _LOGGER.warning(
            "Reindex: backup %s of instance %s is listed but its archive is gone%s",
            backup.id,
            backup.instance_id,
            "; removing it" if prune else "",
        )
        if not prune:
            continue
        async with store.lock_backup(backup.id):
            current = await store.get_backup(backup.id)
            if current is None or current.status != COMPLETED:
                continue
            if not await delete_backups(store, storage, [current]):
                report.pruned.append(backup.id)


async def _restore_instances(
    store: Store, found: list[tuple[Instance, Backup]], now: float, report: ReindexReport
) -> None:
    newest: dict[str, tuple[float, Instance]] = {}
    for instance, backup in found:
        stamp = backup.completed_at or 0
        if instance.id not in newest or stamp > newest[instance.id][0]:
            newest[instance.id] = (stamp, instance)
    existing = await store.list_instances()
    known_ids = {instance.id for instance in existing}
    taken = {instance.name for instance in existing if instance.revoked_at is None}
    # The most recently active first: it keeps the name, older holders of the same name come back revoked.
    for _, instance in sorted(newest.values(), key=lambda pair: pair[0], reverse=True):
        if instance.id in known_ids:
            continue
        revoked = instance.name in taken
        restored = Instance(instance.id, instance.name, instance.created_at, now if revoked else None)
        # A token nobody knows: `instance rotate NAME` issues the one Home Assistant will use.
        if not await store.restore_instance(restored, auth.hash_token(auth.new_token())):
            continue
        if revoked:
            report.instances_revoked.append(instance.id)
        else:
            taken.add(instance.name)
            report.instances_added.append(instance.name)


async def _backfill(store: Store, storage: Storage, sizes: dict[str, int], report: ReindexReport) -> None:
    """Write the manifest of every completed backup that has none (completed before manifests existed)."""
    instances = {instance.id: instance for instance in await store.list_instances()}
    after = ""
    while page := await store.completed_backups(after, BACKFILL_PAGE):
        after = page[-1].id
        for backup in page:
            key = manifest.manifest_key(backup.object_key)
            instance = instances.get(backup.instance_id)
            if key in sizes or backup.object_key not in sizes or instance is None:
                continue
            await storage.put_object(key, manifest.build(backup, instance))
            report.manifests_written += 1
