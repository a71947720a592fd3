"""A Supervisor (Home Assistant OS, Supervised) as Home Assistant's hassio integration talks to it.

Only the Supervisor's API is simulated, the way core's own hassio backup tests do it: an ``AsyncMock`` of
aiohasupervisor's ``SupervisorClient`` whose answers are aiohasupervisor's own models, keeping backups (real tar
archives) in memory. Home Assistant's backup manager, the Supervisor reader-writer and the ``hassio.local`` backup
location run for real; the hassio integration counts as loaded (``"hassio" in hass.config.components`` is what
``is_hassio`` reads) without its setup, which would talk to the Supervisor about everything else.
"""

from __future__ import annotations

import io
import os
import tarfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any
from unittest.mock import AsyncMock, patch

from aiohasupervisor import SupervisorClient, SupervisorNotFoundError
from aiohasupervisor.addons import AddonsClient
from aiohasupervisor.backups import BackupsClient
from aiohasupervisor.jobs import JobsClient
from aiohasupervisor.models import backups as supervisor_backups
from aiohasupervisor.models import jobs as supervisor_jobs
from aiohasupervisor.models.addons import InstalledAddon
from aiohasupervisor.models.backups import LOCATION_CLOUD_BACKUP, LOCATION_LOCAL_STORAGE
from aiohasupervisor.models.mounts import MountsInfo
from aiohasupervisor.mounts import MountsClient
from homeassistant.core import HomeAssistant

ADDONS = {
    "core_mosquitto": "Mosquitto broker",
    "a0d7b954_zigbee2mqtt": "Zigbee2MQTT",
    "core_esphome": "ESPHome",
}
ALL_FOLDERS = {folder.value for folder in supervisor_backups.Folder}


def _model[T](cls: type[T], **values: Any) -> T:
    """An aiohasupervisor model from what this version of it knows (fields differ between versions)."""
    known = {item.name for item in fields(cls)}  # type: ignore[arg-type]
    return cls(**{key: value for key, value in values.items() if key in known})


@dataclass
class StoredBackup:
    """A backup the fake Supervisor holds."""

    slug: str
    archive: bytes
    details: supervisor_backups.BackupComplete
    locations: set[str] = field(default_factory=set)


class FakeSupervisor:
    """The Supervisor's backup, job, mount and add-on API, in memory."""

    def __init__(self) -> None:
        self.client = AsyncMock(spec=SupervisorClient)
        self.client.backups = AsyncMock(spec=BackupsClient)
        self.client.jobs = AsyncMock(spec=JobsClient)
        self.client.mounts = AsyncMock(spec=MountsClient)
        self.client.addons = AsyncMock(spec=AddonsClient)
        self.backups: dict[str, StoredBackup] = {}
        self.made: dict[str, bytes] = {}  # every archive made, by slug, even once removed
        self.originals: dict[str, supervisor_backups.BackupComplete] = {}
        self.jobs: dict[uuid.UUID, supervisor_jobs.Job] = {}
        self.created: list[supervisor_backups.PartialBackupOptions] = []
        self.restored: list[tuple[str, supervisor_backups.PartialRestoreOptions]] = []
        self.received: list[bytes] = []
        self.removed: list[tuple[str, set[str]]] = []
        self.failing_addons: set[str] = set()
        self.hold_writing = False  # backups being made stay "being written" until finish_writing()
        self.writing: dict[str, tuple[StoredBackup, uuid.UUID, list[str]]] = {}
        self.content_size = 6 * 1024 * 1024  # Home Assistant's inner archive: two 5 MiB parts in all
        backups, jobs = self.client.backups, self.client.jobs
        backups.partial_backup.side_effect = self._partial_backup
        backups.backup_info.side_effect = self._backup_info
        backups.download_backup.side_effect = self._download_backup
        backups.remove_backup.side_effect = self._remove_backup
        backups.upload_backup.side_effect = self._upload_backup
        backups.partial_restore.side_effect = self._partial_restore
        backups.list.side_effect = self._list
        jobs.get_job.side_effect = self._get_job
        self.client.mounts.info.return_value = MountsInfo(default_backup_mount=None, mounts=[])
        self.client.addons.list.side_effect = self._installed
        self.client.addons.addon_info.side_effect = self._addon_info

    # ---------------------------------------------------------------------------------------- creating

    async def _partial_backup(self, options: supervisor_backups.PartialBackupOptions) -> Any:
        self.created.append(options)
        slug = uuid.uuid4().hex[:8]
        if options.addons == supervisor_backups.AddonSet.ALL:
            addons = list(ADDONS)
        else:
            addons = sorted(options.addons or [])
        saved = [slug_ for slug_ in addons if slug_ not in self.failing_addons]
        folders = sorted(str(folder) for folder in options.folders or [])
        archive = self._archive(slug, options, saved, folders)
        details = _model(
            supervisor_backups.BackupComplete,
            slug=slug,
            name=options.name,
            date=datetime.now(UTC),
            type=supervisor_backups.BackupType.PARTIAL,
            location_attributes={
                location or LOCATION_LOCAL_STORAGE: supervisor_backups.BackupLocationAttributes(
                    protected=options.password is not None, size_bytes=len(archive)
                )
                for location in options.location or [LOCATION_LOCAL_STORAGE]
            },
            compressed=True,
            supervisor_version="2026.11.0",
            homeassistant="2026.10.4" if options.homeassistant else None,
            addons=[
                supervisor_backups.BackupAddon(name=ADDONS[slug_], size=1.0, slug=slug_, version="1.0.0")
                for slug_ in saved
            ],
            repositories=[],
            folders=[supervisor_backups.Folder(folder) for folder in folders],
            homeassistant_exclude_database=options.homeassistant_exclude_database,
            extra=options.extra,
        )
        self.made[slug] = archive
        self.originals[slug] = details
        stored = StoredBackup(
            slug,
            archive,
            details,
            {location or LOCATION_LOCAL_STORAGE for location in options.location or []},
        )
        job_id = uuid.uuid4()
        failed = [a for a in addons if a in self.failing_addons]
        if self.hold_writing:
            self.writing[slug] = (stored, job_id, failed)
            self.jobs[job_id] = self._job(job_id, slug, failed=failed, done=False)
        else:
            self.backups[slug] = stored
            self.jobs[job_id] = self._job(job_id, slug, failed=failed)
        return _model(supervisor_backups.NewBackup, job_id=job_id, slug=None)

    def finish_writing(self) -> list[str]:
        """The backups being written are written: in the Supervisor's folder, their jobs done; their slugs."""
        done = list(self.writing)
        for slug, (stored, job_id, failed) in self.writing.items():
            self.backups[slug] = stored
            self.jobs[job_id] = self._job(job_id, slug, failed=failed)
        self.writing.clear()
        return done

    def _archive(
        self,
        slug: str,
        options: supervisor_backups.PartialBackupOptions,
        addons: list[str],
        folders: list[str],
    ) -> bytes:
        """A Supervisor backup as a tar: backup.json and an inner archive per part (random bytes: incompressible)."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:

            def add(name: str, data: bytes) -> None:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

            add("./backup.json", f'{{"slug": "{slug}", "name": "{options.name}"}}'.encode())
            if options.homeassistant:
                add("./homeassistant.tar.gz", os.urandom(self.content_size))
            for addon in addons:
                add(f"./{addon}.tar.gz", os.urandom(64 * 1024))
            for folder in folders:
                add(f"./{folder.replace('/', '_')}.tar.gz", os.urandom(64 * 1024))
        return buffer.getvalue()

    def _job(
        self,
        job_id: uuid.UUID,
        reference: str,
        failed: list[str] = (),  # type: ignore[assignment]
        done: bool = True,
    ) -> supervisor_jobs.Job:
        now = datetime.now(UTC)

        def job(name: str, ref: str | None, errors: list[Any], children: list[Any]) -> supervisor_jobs.Job:
            return _model(
                supervisor_jobs.Job,
                name=name,
                reference=ref,
                uuid=uuid.uuid4() if name != "root" else job_id,
                progress=100.0 if done else 50.0,
                stage=None,
                done=done,
                errors=errors,
                created=now,
                child_jobs=children,
                extra=None,
            )

        addon_jobs = [
            job(
                "backup_addon_save",
                slug,
                [
                    _model(
                        supervisor_jobs.JobError,
                        type="BackupError",
                        message=f"Cannot write {slug}",
                        stage=None,
                    )
                ],
                [],
            )
            for slug in failed
        ]
        children = [job("backup_store_addons", None, [], addon_jobs)] if addon_jobs else []
        return job("root", reference if done else None, [], children)

    async def _get_job(self, job_id: uuid.UUID) -> supervisor_jobs.Job:
        return self.jobs[job_id]

    # ---------------------------------------------------------------------------------------- reading

    def _stored(self, slug: str) -> StoredBackup:
        if slug not in self.backups:
            raise SupervisorNotFoundError(f"Backup {slug} not found")
        return self.backups[slug]

    async def _backup_info(self, slug: str) -> supervisor_backups.BackupComplete:
        return self._stored(slug).details

    async def _download_backup(self, slug: str, options: Any = None) -> AsyncIterator[bytes]:
        archive = self._stored(slug).archive

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(archive), 1 << 20):
                yield archive[start : start + (1 << 20)]

        return chunks()

    async def _list(self) -> list[supervisor_backups.Backup]:
        return [
            _model(
                supervisor_backups.Backup,
                slug=stored.slug,
                name=stored.details.name,
                date=stored.details.date,
                type=stored.details.type,
                location_attributes=stored.details.location_attributes,
                compressed=True,
                content=supervisor_backups.BackupContent(
                    homeassistant=stored.details.homeassistant is not None,
                    addons=[addon.slug for addon in stored.details.addons],
                    folders=list(stored.details.folders),
                ),
            )
            for stored in self.backups.values()
        ]

    async def _remove_backup(self, slug: str, options: Any = None) -> None:
        stored = self._stored(slug)
        locations = (
            set(options.location) if options is not None and options.location else set(stored.locations)
        )
        self.removed.append((slug, locations))
        remaining = {
            location: attributes
            for location, attributes in stored.details.location_attributes.items()
            if location not in locations
        }
        if not remaining:
            del self.backups[slug]
        else:
            stored.details = _model(
                supervisor_backups.BackupComplete,
                **{item.name: getattr(stored.details, item.name) for item in fields(stored.details)}
                | {"location_attributes": remaining},
            )

    # ---------------------------------------------------------------------------------------- restoring

    async def _upload_backup(self, stream: AsyncIterator[bytes], options: Any = None) -> str:
        data = b"".join([chunk async for chunk in stream])
        self.received.append(data)
        for slug, archive in self.made.items():
            if archive == data:  # a backup of its own, back from another location
                return self._store_again(slug, options)
        raise SupervisorNotFoundError("not a backup this Supervisor made")

    def _store_again(self, slug: str, options: Any) -> str:
        locations = (
            set(options.location) if options is not None and options.location else {LOCATION_CLOUD_BACKUP}
        )
        original = self.originals[slug]
        details = _model(
            supervisor_backups.BackupComplete,
            **{item.name: getattr(original, item.name) for item in fields(original)}
            | {
                "location_attributes": {
                    location: supervisor_backups.BackupLocationAttributes(
                        protected=next(iter(original.location_attributes.values())).protected,
                        size_bytes=len(self.made[slug]),
                    )
                    for location in locations
                }
            },
        )
        self.backups[slug] = StoredBackup(slug, self.made[slug], details, locations)
        return slug

    async def _partial_restore(self, slug: str, options: supervisor_backups.PartialRestoreOptions) -> Any:
        self._stored(slug)
        self.restored.append((slug, options))
        job_id = uuid.uuid4()
        self.jobs[job_id] = self._job(job_id, slug)
        return _model(supervisor_backups.BackupJob, job_id=job_id)

    # ---------------------------------------------------------------------------------------- add-ons

    async def _installed(self) -> list[InstalledAddon]:
        return [
            _model(
                InstalledAddon,
                advanced=False,
                available=True,
                build=False,
                description=name,
                homeassistant=None,
                icon=False,
                logo=False,
                name=name,
                repository="core",
                slug=slug,
                stage="stable",
                update_available=False,
                url=None,
                version="1.0.0",
                version_latest="1.0.0",
                detached=False,
                state="started",
            )
            for slug, name in ADDONS.items()
        ]

    async def _addon_info(self, slug: str) -> Any:
        class Info:
            def __init__(self) -> None:
                self.name, self.slug, self.version = ADDONS[slug], slug, "1.0.0"

        return Info()


@contextmanager
def supervised(hass: HomeAssistant) -> Iterator[FakeSupervisor]:
    """Make ``hass`` a Supervisor install for the block: set up the backup integration inside it."""
    supervisor = FakeSupervisor()
    with (
        patch("homeassistant.components.hassio.backup.get_supervisor_client", return_value=supervisor.client),
        patch("homeassistant.components.hassio.get_supervisor_client", return_value=supervisor.client),
        patch.dict(os.environ, {"SUPERVISOR": "127.0.0.1", "SUPERVISOR_TOKEN": "supervisor-token"}),
    ):
        hass.config.components.add("hassio")
        yield supervisor
