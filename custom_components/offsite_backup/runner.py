"""One backup job at a time: its state machine, progress, history, events and Repairs issue.

A job asks Home Assistant's backup manager for a backup *for this integration's backup agent*; the manager writes
the archive (encrypted with Home Assistant's backup key) and hands its stream to the agent, which hands it here:
:meth:`BackupRunner.async_upload` sends it with the upload engine. Backups made from Settings > System > Backups to
this location arrive the same way and are tracked as jobs of their own.

The upload's resume state is persisted as parts are acknowledged, so an upload interrupted by a restart carries on
where it stopped when the same backup is still on disk (:meth:`BackupRunner.async_resume_interrupted`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypedDict

from homeassistant.components.backup import (
    AgentBackup,
    BackupAgentError,
    BackupManagerError,
    BackupNotFound,
)
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import issue_registry as ir
from homeassistant.helpers.storage import Store
from homeassistant.util import dt as dt_util

from .api import (
    GatewayAuthError,
    GatewayClient,
    GatewayConflictError,
    GatewayError,
    GatewayNotFoundError,
    RemoteBackup,
)
from .compat import backup_manager
from .const import (
    BUSY_RETRY_DELAY,
    DOMAIN,
    EVENT_FAILED,
    EVENT_SUCCEEDED,
    HISTORY_SIZE,
    ISSUE_BACKUP_FAILING,
    LOGGER,
    JobStatus,
    JobTrigger,
)
from .listeners import Listeners
from .uploader import SUSPEND, UploadError, UploadOptions, UploadState, upload

STORAGE_VERSION = 1
READ_CHUNK = 1 << 20

type OpenStream = Callable[[], Coroutine[Any, Any, AsyncIterator[bytes]]]
type ProgressCallback = Callable[..., None]

UNENCRYPTED_REFUSED = (
    "Refusing to send an unencrypted backup off-site. Set this location to encrypted in Settings > System > "
    "Backups (Home Assistant then encrypts it with its backup key), or allow unencrypted backups in the "
    "integration's options"
)


@dataclass(frozen=True, slots=True)
class RunnerOptions:
    """What the runner needs from the entry's options."""

    agent_id: str
    include_database: bool
    allow_unencrypted: bool
    failures_before_repair: int
    upload: UploadOptions


@dataclass(slots=True)
class Job:
    """One backup job, from request to outcome; the last ones are kept as history."""

    id: str
    trigger: JobTrigger
    started: datetime
    status: JobStatus = JobStatus.CREATING
    ended: datetime | None = None
    backup_id: str | None = None  # Home Assistant's backup id
    remote_id: str | None = None  # the gateway's id
    size: int | None = None
    error: str | None = None
    progress: float = 0.0
    cancel_requested: bool = field(default=False, repr=False)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event, repr=False)  # set on cancel and on outcome

    @property
    def duration(self) -> float | None:
        """Seconds from start to end, once ended."""
        return None if self.ended is None else round((self.ended - self.started).total_seconds(), 3)

    @property
    def done(self) -> bool:
        """Whether the job has an outcome."""
        return self.status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)

    def as_dict(self) -> dict[str, Any]:
        """Serialise for the store and diagnostics."""
        return {
            "id": self.id,
            "trigger": self.trigger.value,
            "started": self.started.isoformat(),
            "ended": self.ended.isoformat() if self.ended else None,
            "status": self.status.value,
            "backup_id": self.backup_id,
            "remote_id": self.remote_id,
            "size": self.size,
            "duration": self.duration,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        """Read back what ``as_dict`` stored."""
        ended = data.get("ended")
        return cls(
            id=data["id"],
            trigger=JobTrigger(data["trigger"]),
            started=datetime.fromisoformat(data["started"]),
            ended=datetime.fromisoformat(ended) if ended else None,
            status=JobStatus(data["status"]),
            backup_id=data.get("backup_id"),
            remote_id=data.get("remote_id"),
            size=data.get("size"),
            error=data.get("error"),
        )


class PendingUpload(TypedDict):
    """What is persisted while an upload runs, to resume it after a restart."""

    job: dict[str, Any]
    backup: dict[str, Any]
    state: dict[str, Any] | None


class StoredRunner(TypedDict):
    """The runner's store."""

    history: list[dict[str, Any]]
    last_success: str | None
    failures_in_row: int
    since: str
    pending: PendingUpload | None


class JobError(HomeAssistantError):
    """A job ended without a backup off-site; the message is the reason."""


class UploadSuspended(Exception):
    """The upload was stopped to be resumed later (Home Assistant stops, the entry unloads)."""


class BackupRunner:
    """Runs backup jobs for one config entry and remembers how they went."""

    def __init__(
        self,
        hass: HomeAssistant,
        entry: ConfigEntry[Any],
        client: GatewayClient,
        options: RunnerOptions,
    ) -> None:
        """Set up the runner; call :meth:`async_load` before use."""
        self.hass = hass
        self.entry = entry
        self.client = client
        self.options = options
        self._store: Store[StoredRunner] = Store(hass, STORAGE_VERSION, f"{DOMAIN}.{entry.entry_id}.jobs")
        self.history: list[Job] = []
        self._current: Job | None = None
        self.last_success: datetime | None = None
        self.failures_in_row = 0
        self.since: datetime = dt_util.utcnow()
        self._pending: PendingUpload | None = None
        self._upload_task: asyncio.Task[RemoteBackup] | None = None
        self._suspending = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._listeners = Listeners()

    # ------------------------------------------------------------------------------------------- state

    async def async_load(self) -> None:
        """Read the history and any interrupted upload from the store."""
        data = await self._store.async_load()
        if not data:
            self._save()
            return
        self.history = [Job.from_dict(item) for item in data.get("history", [])]
        last_success = data.get("last_success")
        self.last_success = datetime.fromisoformat(last_success) if last_success else None
        self.failures_in_row = int(data.get("failures_in_row", 0))
        self.since = datetime.fromisoformat(data["since"]) if data.get("since") else self.since
        self._pending = data.get("pending")

    def _data_to_save(self) -> StoredRunner:
        return {
            "history": [job.as_dict() for job in self.history],
            "last_success": self.last_success.isoformat() if self.last_success else None,
            "failures_in_row": self.failures_in_row,
            "since": self.since.isoformat(),
            "pending": self._pending,
        }

    @callback
    def _save(self) -> None:
        self._store.async_delay_save(self._data_to_save, 1)

    @property
    def last_job(self) -> Job | None:
        """The newest finished job."""
        return self.history[0] if self.history else None

    @property
    def status(self) -> JobStatus:
        """The running job's status, else how the last one ended, else idle."""
        if self.current is not None:
            return self.current.status
        return self.last_job.status if self.last_job else JobStatus.IDLE

    @property
    def progress(self) -> float:
        """Upload progress of the running job in %, else 100 after a success and 0 otherwise."""
        if self.current is not None:
            return round(self.current.progress, 1)
        return 100.0 if self.status is JobStatus.SUCCEEDED else 0.0

    @property
    def last_error(self) -> str | None:
        """The error of the last failed job, cleared by the next success."""
        for job in self.history:
            if job.status is JobStatus.SUCCEEDED:
                return None
            if job.status is JobStatus.FAILED:
                return job.error
        return None

    @property
    def last_size(self) -> int | None:
        """Size in bytes of the last backup sent."""
        for job in self.history:
            if job.status is JobStatus.SUCCEEDED:
                return job.size
        return None

    def pending_summary(self) -> dict[str, Any] | None:
        """The upload waiting to be resumed, without anything secret (no URLs are ever stored)."""
        if self._pending is None:
            return None
        state = self._pending["state"] or {}
        return {
            "job_id": self._pending["job"].get("id"),
            "backup_id": self._pending["backup"].get("backup_id"),
            "remote_id": state.get("backup_id"),
            "parts_acknowledged": len(state.get("parts", {}) or {}),
        }

    @property
    def busy(self) -> bool:
        """Whether a job is running."""
        return self.current is not None

    @callback
    def async_add_listener(self, listener: CALLBACK_TYPE) -> CALLBACK_TYPE:
        """Call ``listener`` whenever the state changes; returns the function that stops it."""
        return self._listeners.add(listener)

    @property
    def current(self) -> Job | None:
        """The job running now."""
        return self._current

    @current.setter
    def current(self, job: Job | None) -> None:
        self._current = job
        if job is None:
            self._idle.set()
        else:
            self._idle.clear()

    @callback
    def _notify(self) -> None:
        self._listeners.notify()

    async def async_wait_idle(self) -> None:
        """Return once no job runs (at once when none does)."""
        await self._idle.wait()

    # -------------------------------------------------------------------------------------------- jobs

    async def async_run(self, trigger: JobTrigger, *, retry_until: datetime | None = None) -> Job:
        """Make a backup for this location and send it; returns the finished job.

        While Home Assistant's backup manager is busy, tries again every 10 minutes until ``retry_until``.
        Raises :class:`JobError` with the reason when no backup reached the gateway.
        """
        if self.current is not None:
            raise JobError(
                translation_domain=DOMAIN,
                translation_key="already_running",
            )
        job = Job(id=uuid.uuid4().hex, trigger=trigger, started=dt_util.utcnow())
        self.current = job
        self._notify()
        try:
            await self._create_backup(job, retry_until)
        except asyncio.CancelledError:
            # Home Assistant stops or the entry unloads. A suspended upload is carried on at the next start
            # (async_resume_interrupted records it then); anything else ends here.
            if self._pending is None:
                self._settle(
                    job, JobStatus.CANCELLED, "Stopped: Home Assistant stopped or reloaded the integration"
                )
                self._finish(job)
            elif self.current is job:
                self.current = None
            raise
        except (BackupManagerError, HomeAssistantError) as err:
            self._settle(job, JobStatus.FAILED, f"Home Assistant could not create the backup: {err}")
        if not job.done and self._suspending:
            # The upload stopped to resume at the next start, which records the job then.
            if self.current is job:
                self.current = None
            raise JobError("Suspended: Home Assistant stopped or reloaded the integration during the upload")
        if not job.done:
            self._settle(
                job,
                JobStatus.FAILED,
                "Home Assistant created the backup but did not hand it to Offsite Backup",
            )
        self._finish(job)
        if job.status is not JobStatus.SUCCEEDED:
            raise JobError(job.error or job.status.value)
        return job

    async def _create_backup(self, job: Job, retry_until: datetime | None) -> None:
        manager = backup_manager(self.hass)
        while True:
            if job.cancel_requested:
                self._settle(job, JobStatus.CANCELLED, None)
            if job.done:  # cancelled, or a backup made meanwhile from Settings was taken as this job's
                return
            if manager.state != "idle":
                if retry_until is None or dt_util.utcnow() + BUSY_RETRY_DELAY >= retry_until:
                    self._settle(
                        job,
                        JobStatus.FAILED,
                        f"Home Assistant's backup manager is busy ({manager.state}) with another backup"
                        + (", until the end of the backup window" if retry_until else ""),
                    )
                    return
                LOGGER.info(
                    "Home Assistant's backup manager is busy (%s); trying again in 10 minutes", manager.state
                )
                try:
                    async with asyncio.timeout(BUSY_RETRY_DELAY.total_seconds()):
                        await job.wakeup.wait()
                except TimeoutError:
                    pass
                continue
            await manager.async_create_backup(
                agent_ids=[self.options.agent_id],
                include_addons=None,
                include_all_addons=False,
                include_database=self.options.include_database,
                include_folders=None,
                include_homeassistant=True,
                name=f"Offsite backup {dt_util.now().strftime('%Y-%m-%d %H:%M')}",
                password=self._password(),
            )
            return

    def _password(self) -> str | None:
        """Home Assistant's backup encryption key, unless this location is set to unencrypted."""
        config = backup_manager(self.hass).config.data
        agent_config = config.agents.get(self.options.agent_id)
        if agent_config is not None and not agent_config.protected:
            return None
        password: str | None = config.create_backup.password
        return password

    async def async_cancel(self) -> bool:
        """Cancel the running job; returns whether there was one."""
        job = self.current
        if job is None:
            return False
        job.cancel_requested = True
        job.wakeup.set()
        if self._upload_task is not None and not self._upload_task.done():
            self._upload_task.cancel()
        return True

    # ------------------------------------------------------------------------------------------ upload

    async def async_upload(
        self, backup: AgentBackup, open_stream: OpenStream, on_progress: ProgressCallback | None
    ) -> None:
        """Send a backup Home Assistant hands to this location; raises ``BackupAgentError`` with the reason.

        The upload belongs to the running job when that job waits for its backup; otherwise (a backup made from
        Settings > System > Backups) it is a job of its own.
        """
        job = self.current
        if job is None or job.status is not JobStatus.CREATING:
            if job is not None:
                raise BackupAgentError("Another upload to this location is in progress")
            job = Job(id=uuid.uuid4().hex, trigger=JobTrigger.HOME_ASSISTANT, started=dt_util.utcnow())
            self.current = job
        own = job.trigger is not JobTrigger.HOME_ASSISTANT
        try:
            await self._upload(job, backup, open_stream, on_progress, state=None)
        except UploadSuspended as err:
            if not own and self.current is job:
                self.current = None
            raise BackupAgentError(str(err)) from err
        if not own:
            self._finish(job)
        if job.status is not JobStatus.SUCCEEDED:
            raise BackupAgentError(job.error or "Upload cancelled")

    async def _upload(
        self,
        job: Job,
        backup: AgentBackup,
        open_stream: OpenStream,
        on_progress: ProgressCallback | None,
        state: UploadState | None,
    ) -> None:
        """Run the upload engine for ``job`` and settle the job.

        Raises :class:`UploadSuspended` (job not settled, resume state kept) when :meth:`async_shutdown` stops it,
        and ``CancelledError`` when the caller is cancelled (also suspended: Home Assistant is stopping).
        """
        job.backup_id = backup.backup_id
        job.size = backup.size
        if job.cancel_requested:
            self._settle(job, JobStatus.CANCELLED, None)
            return
        if not backup.protected and not self.options.allow_unencrypted:
            self._settle(job, JobStatus.FAILED, UNENCRYPTED_REFUSED)
            return
        job.status = JobStatus.UPLOADING
        job.progress = 0.0
        self._pending = {"job": job.as_dict(), "backup": backup.as_dict(), "state": None}
        self._save()
        self._notify()

        def progress(done: int, total: int) -> None:
            job.progress = 100.0 * done / total if total else 100.0
            if on_progress is not None:
                on_progress(bytes_uploaded=done)
            self._notify()

        def persist(upload_state: UploadState) -> None:
            if self._pending is not None:
                self._pending["state"] = upload_state.to_dict()
                self._save()

        async def send() -> RemoteBackup:
            def attempt() -> Coroutine[Any, Any, RemoteBackup]:
                return upload(
                    client=self.client,
                    open_stream=open_stream,
                    size=backup.size,
                    name=backup.name,
                    metadata=backup.as_dict(),
                    options=self.options.upload,
                    progress=progress,
                    state=state,
                    on_state=persist,
                )

            try:
                return await attempt()
            except GatewayConflictError as err:
                stuck = err.details.get("backup_id") if err.code == "upload_in_progress" else None
                if not isinstance(stuck, str):
                    raise
                # This runner is the instance's only uploader: an upload in progress on the gateway was left
                # behind (the answer to its creation was lost). Abort it and start again, rather than wait
                # hours for the gateway's sweeper.
                LOGGER.warning("Aborting upload %s left behind on the gateway, then starting again", stuck)
                await self.client.abort_upload(stuck)
                return await attempt()

        task = self.hass.async_create_task(send(), f"{DOMAIN} upload {backup.backup_id}", eager_start=False)
        self._upload_task = task
        try:
            remote = await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                # We are being cancelled (Home Assistant stops): stop the engine without aborting, to resume.
                task.cancel(SUSPEND)
                await asyncio.gather(task, return_exceptions=True)
                raise
            if self._suspending:
                raise UploadSuspended(
                    "Upload suspended while Home Assistant stops or reloads the integration; it resumes at the "
                    "next start if the backup is still on disk"
                ) from None
            # Cancelled by cancel_backup: the engine aborted the upload on the gateway.
            self._pending = None
            self._settle(job, JobStatus.CANCELLED, None)
        except GatewayAuthError as err:
            self._pending = None
            self.entry.async_start_reauth(self.hass)
            self._settle(job, JobStatus.FAILED, f"The gateway refused the token: {err}")
        except (UploadError, GatewayError) as err:
            self._pending = None
            self._settle(job, JobStatus.FAILED, str(err))
        else:
            self._pending = None
            job.remote_id = remote.id
            job.size = remote.size
            job.progress = 100.0
            self._settle(job, JobStatus.SUCCEEDED, None)
        finally:
            self._upload_task = None
            self._save()

    @callback
    def _settle(self, job: Job, status: JobStatus, error: str | None) -> None:
        """Give the job its outcome (once)."""
        if job.done:
            return
        job.status = status
        job.error = error
        job.ended = dt_util.utcnow()
        job.wakeup.set()
        self._notify()

    @callback
    def _finish(self, job: Job) -> None:
        """Record a settled job: history, counters, events, the Repairs issue."""
        if self.current is job:
            self.current = None
        self.history.insert(0, job)
        del self.history[HISTORY_SIZE:]
        data = {
            "config_entry_id": self.entry.entry_id,
            "job_id": job.id,
            "trigger": job.trigger.value,
            "backup_id": job.backup_id,
            "size": job.size,
            "duration": job.duration,
        }
        if job.status is JobStatus.SUCCEEDED:
            self.last_success = job.ended
            self.failures_in_row = 0
            ir.async_delete_issue(self.hass, DOMAIN, self._issue_id)
            LOGGER.info("Backup %s sent off-site (%s bytes in %s s)", job.backup_id, job.size, job.duration)
            self.hass.bus.async_fire(EVENT_SUCCEEDED, data)
        elif job.status is JobStatus.FAILED:
            self.failures_in_row += 1
            LOGGER.error("Offsite backup failed: %s", job.error)
            self.hass.bus.async_fire(EVENT_FAILED, data | {"error": job.error})
            if self.failures_in_row >= self.options.failures_before_repair:
                ir.async_create_issue(
                    self.hass,
                    DOMAIN,
                    self._issue_id,
                    is_fixable=False,
                    is_persistent=False,
                    severity=ir.IssueSeverity.ERROR,
                    translation_key=ISSUE_BACKUP_FAILING,
                    translation_placeholders={
                        "title": self.entry.title,
                        "failures": str(self.failures_in_row),
                        "error": job.error or "",
                    },
                )
        else:
            LOGGER.info("Offsite backup cancelled")
        self._save()
        self._notify()

    @property
    def _issue_id(self) -> str:
        return f"{ISSUE_BACKUP_FAILING}_{self.entry.entry_id}"

    # ------------------------------------------------------------------------------------------ resume

    async def async_resume_interrupted(self) -> None:
        """Carry on an upload a restart interrupted, when the same backup is still on disk; else record why not."""
        pending = self._pending
        if pending is None or self.current is not None:
            return
        job = Job.from_dict(pending["job"])
        job.status = JobStatus.UPLOADING
        backup = AgentBackup.from_dict(pending["backup"])
        state = UploadState.from_dict(pending["state"]) if pending["state"] else None
        path = await self._local_copy(backup)
        if path is None:
            self._pending = None
            if state is not None:
                try:
                    await self.client.abort_upload(state.backup_id)
                except GatewayNotFoundError:
                    pass
                except GatewayError as err:
                    LOGGER.warning(
                        "Could not abort the interrupted upload (the gateway's sweeper will): %s", err
                    )
            self._settle(
                job,
                JobStatus.FAILED,
                "The upload was interrupted by a restart of Home Assistant, and the backup is no longer on "
                "disk to finish it",
            )
            self._finish(job)
            return
        LOGGER.info("Resuming the upload of backup %s interrupted by a restart", backup.backup_id)
        self.current = job
        self._notify()
        try:
            await self._upload(job, backup, _file_opener(self.hass, path), None, state=state)
        except UploadSuspended:
            self.current = None
            return
        self._finish(job)

    async def _local_copy(self, backup: AgentBackup) -> Path | None:
        """The path of the same backup in a local backup location, if Home Assistant still has it."""
        manager = backup_manager(self.hass)
        for agent in manager.local_backup_agents.values():
            try:
                local = await agent.async_get_backup(backup.backup_id)
                path: Path = agent.get_backup_path(backup.backup_id)
            except BackupNotFound:
                continue
            if local is None or local.protected != backup.protected:
                continue
            if await self.hass.async_add_executor_job(path.is_file):
                return path
        return None

    async def async_shutdown(self) -> None:
        """Stop an upload in progress without aborting it, so it resumes at the next start."""
        self._suspending = True
        task = self._upload_task
        if task is not None and not task.done():
            task.cancel(SUSPEND)
            await asyncio.gather(task, return_exceptions=True)
        # Written now, not after the save delay: the next setup (a reload) reads it at once.
        await self._store.async_save(self._data_to_save())


def _file_opener(hass: HomeAssistant, path: Path) -> OpenStream:
    """An ``open_stream`` reading a backup file in the executor, like Home Assistant's own."""

    async def read() -> AsyncIterator[bytes]:
        handle = await hass.async_add_executor_job(path.open, "rb")
        try:
            while chunk := await hass.async_add_executor_job(handle.read, READ_CHUNK):
                yield chunk
        finally:
            await hass.async_add_executor_job(handle.close)

    async def open_stream() -> AsyncIterator[bytes]:
        return read()

    return open_stream
