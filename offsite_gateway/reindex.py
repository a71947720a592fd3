"""`offsite-gateway reindex`: rebuild the database from the manifests in the bucket, after the database is lost.

1. Storage is listed under the prefix; every `*.manifest.json` is read and checked (format version, the archive
   beside it exists with the size it names). Anything else is left alone.
2. Each instance a manifest names is created again with its own id (Home Assistant's config entry is keyed by it)
   and name, unless the database has that id already. Its token is not known (only its hash ever was): it gets
   an unusable one, and `offsite-gateway instance rotate NAME` issues the real one. If two instance ids carry one
   name (an instance revoked and its name given again), the one with the newest backup is active, the others
   revoked.
3. Each completed backup is inserted as it was (same id, times, sizes, SHA-256, Home Assistant's metadata),
   unless the database has that id already. Nothing in the database is changed or removed.
4. Completed backups the database holds whose manifest is missing (completed by a gateway older than manifests)
   get one, so the bucket describes them too.

It can run against a live gateway (nothing it inserts conflicts with what a node writes) and again (idempotent).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from . import auth, manifest
from .config import Settings
from .storage import Storage, StorageError
from .store import Backup, Instance, Store

_LOGGER = logging.getLogger(__name__)

READ_CONCURRENCY = 16
BACKFILL_PAGE = 500


@dataclass
class ReindexReport:
    """What a reindex found and did."""

    manifests: int = 0
    backups_added: int = 0
    backups_known: int = 0
    instances_added: list[str] = field(default_factory=list)  # names: each needs `instance rotate NAME`
    instances_revoked: list[str] = field(default_factory=list)  # ids of older instances that shared a name
    skipped: dict[str, str] = field(default_factory=dict)  # manifest key -> why
    manifests_written: int = 0


async def _read(storage: Storage, key: str, sizes: dict[str, int]) -> tuple[Instance, Backup] | str:
    """The manifest's instance and backup, or why it is skipped."""
    try:
        data = await storage.get_object(key, manifest.MAX_SIZE)
    except StorageError as err:
        return f"could not read it: {err}"
    if data is None:
        return "gone before it was read"
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


async def reindex(
    store: Store, storage: Storage, settings: Settings, now: float | None = None
) -> ReindexReport:
    """Rebuild the database's instances and completed backups from the bucket (see the module's docstring)."""
    now = time.time() if now is None else now
    report = ReindexReport()
    sizes: dict[str, int] = {}
    async for item in storage.list_objects(settings.s3_prefix):
        sizes[item.key] = item.size
    keys = sorted(key for key in sizes if manifest.is_manifest_key(key))
    report.manifests = len(keys)

    semaphore = asyncio.Semaphore(READ_CONCURRENCY)

    async def read(key: str) -> tuple[Instance, Backup] | str:
        async with semaphore:
            return await _read(storage, key, sizes)

    found: list[tuple[Instance, Backup]] = []
    for key, result in zip(keys, await asyncio.gather(*(read(key) for key in keys)), strict=True):
        if isinstance(result, str):
            report.skipped[key] = result
            _LOGGER.warning("Reindex: skipped %r: %s", key, result)
        else:
            found.append(result)

    await _restore_instances(store, found, now, report)
    for _, backup in sorted(found, key=lambda pair: pair[1].completed_at or 0):
        if await store.restore_backup(backup):
            report.backups_added += 1
        else:
            report.backups_known += 1
    await _backfill(store, storage, sizes, report)
    return report


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
