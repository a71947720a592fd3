"""Backup jobs of one entry: asking Home Assistant for a backup, sending it, carrying it on after a restart.

A job asks Home Assistant's backup manager for a backup *for this integration's backup location* (and, while it is
sent, the local one: see ``local_copy.py``); the manager writes the archive, encrypted with Home Assistant's backup
key, and hands its stream to the location, which hands it here: :meth:`BackupRunner.async_upload` sends it with the
upload engine. Backups made from Settings > System > Backups to this location arrive the same way and are jobs of
their own.

The pieces: ``jobs.py`` owns the running job (whatever way it ends, it is recorded and the runner is idle),
``history.py`` remembers (and persists the upload's state as parts are acknowledged), ``outcome.py`` tells (log,
events, Repairs), ``local_copy.py`` keeps what a restart resumes from.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from homeassistant.components.backup import AgentBackup, BackupAgentError, BackupManagerError
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers.hassio import is_hassio
from homeassistant.util import dt as dt_util

from .compat import backup_manager, failed_parts
from .const import (
    BUSY_RETRY_DELAY,
    LOGGER,
    RETRY_GRACE,
    RETRY_MANUAL,
    UNENCRYPTED_REFUSED,
    JobStatus,
    JobTrigger,
)
from .contents import ContentsChoice, resolve_contents
from .engine.api import (
    GatewayAuthError,
    GatewayClient,
    GatewayError,
    GatewayQuotaError,
    RemoteBackup,
)
from .engine.privacy import MetadataPrivacy
from .engine.upload_errors import UploadError, describe
from .engine.uploader import SUSPEND, UploadOptions, UploadState
from .history import JobHistory
from .job_sender import JobSender
from .jobs import Job, JobError, JobTracker, UploadSuspended, Wait
from .listeners import Listeners
from .local_copy import LocalCopies
from .outcome import OutcomeReporter
from .own_retention import JOB_MARKER, MARKER, OwnRetention
from .restart import STOPPED_CREATING, RestartRecovery

type OpenStream = Callable[[], Coroutine[Any, Any, AsyncIterator[bytes]]]
type ProgressCallback = Callable[..., None]

__all__ = ["STOPPED_CREATING", "UNENCRYPTED_REFUSED", "BackupRunner", "Job", "JobError", "RunnerOptions"]

STOPPED = "Stopped: Home Assistant stopped or reloaded the integration"
CALLER_STOPPED = (
    "Cancelled: the action, script or automation that asked for this backup was stopped before it was sent"
)
SUSPENDED = (
    "Upload suspended while Home Assistant stops or reloads the integration; it resumes at the next start if the "
    "backup is still on disk"
)


@dataclass(frozen=True, slots=True)
class RunnerOptions:
    """What the runner needs from the entry's options."""

    agent_id: str
    contents: ContentsChoice
    allow_unencrypted: bool
    failures_before_repair: int
    upload: UploadOptions
    keep_local: bool = False
    retry_grace: timedelta = RETRY_GRACE  # a nightly backup retries until the end of its window plus this
    retry_manual: timedelta = RETRY_MANUAL  # a backup started by hand retries for this long from its start


class BackupRunner:
    """Runs backup jobs for one config entry and remembers how they went."""

    def __init__(
        self,
        hass: HomeAssistant,
        entry: ConfigEntry[Any],
        client: GatewayClient,
        options: RunnerOptions,
        privacy: MetadataPrivacy,
    ) -> None:
        """Set up the runner; call :meth:`async_load` before use."""
        self.hass = hass
        self.entry = entry
        self.client = client
        self.options = options
        self._privacy = privacy
        self._history = JobHistory(hass, entry.entry_id)
        self._outcome = OutcomeReporter(hass, entry, options.failures_before_repair)
        self._local = LocalCopies(hass)
        self.retention = OwnRetention(hass, options.agent_id)
        self._listeners = Listeners()
        self._jobs = JobTracker(
            record=self._record, changed=self._listeners.notify, cancel_reason=self._why_stopped
        )
        self._upload_task: asyncio.Task[RemoteBackup] | None = None
        self._suspending = False
        self._sender = JobSender(
            hass,
            client=client,
            history=self._history,
            outcome=self._outcome,
            listeners=self._listeners,
            privacy=privacy,
        )
        self._restart = RestartRecovery(
            hass,
            history=self._history,
            jobs=self._jobs,
            local=self._local,
            client=client,
            keep_local=lambda: self.options.keep_local,
            upload=self._upload,
            remove_local_copy=self._remove_local_copy,
        )

    async def async_load(self) -> None:
        """Read the history and any interrupted upload from the store; the Repairs issues as it has them."""
        await self._history.async_load()
        self._outcome.restore(self._history.last_job, self._history.failures_in_row)

    @callback
    def check_clock(self, now: datetime) -> None:
        """Set aside a last success further ahead than the clock allows (it was recorded while it was ahead)."""
        if self._history.check_clock(now):
            self._listeners.notify()

    @callback
    def async_add_listener(self, listener: CALLBACK_TYPE) -> CALLBACK_TYPE:
        """Call ``listener`` whenever the state changes; returns the function that stops it."""
        return self._listeners.add(listener)

    # ------------------------------------------------------------------------------------------- state

    @property
    def current(self) -> Job | None:
        """The job running now."""
        return self._jobs.current

    @property
    def busy(self) -> bool:
        """Whether a job is running."""
        return self._jobs.current is not None

    @property
    def history(self) -> list[Job]:
        """The recent ended jobs, newest first."""
        return self._history.jobs

    @property
    def last_success(self) -> datetime | None:
        """When the last backup reached storage."""
        return self._history.last_success

    @property
    def since(self) -> datetime:
        """When the history began (the entry's first setup)."""
        return self._history.since

    @property
    def failures_in_row(self) -> int:
        """Failed jobs since the last success."""
        return self._history.failures_in_row

    @property
    def last_error(self) -> str | None:
        """While a job waits for a failure to pass: that it waits, the next try and the failure. Else the error of
        the last failed job, cleared by the next success."""
        if (job := self.current) is not None and job.waiting is not None:
            return job.waiting.describe()
        return self._history.last_error

    @property
    def waiting(self) -> Wait | None:
        """What the running job waits for, if it waits."""
        job = self.current
        return job.waiting if job is not None else None

    @property
    def last_size(self) -> int | None:
        """Size in bytes of the last backup sent."""
        return self._history.last_size

    @property
    def status(self) -> JobStatus:
        """The running job's status, else how the last one ended, else idle."""
        if (job := self.current) is not None:
            return job.status
        last = self._history.last_job
        return last.status if last else JobStatus.IDLE

    @property
    def progress(self) -> float:
        """Upload progress of the running job in %, else 100 after a success and 0 otherwise."""
        if (job := self.current) is not None:
            return round(job.progress, 1)
        return 100.0 if self.status is JobStatus.SUCCEEDED else 0.0

    def pending_summary(self) -> dict[str, Any] | None:
        """The upload waiting to be resumed, without anything secret."""
        return self._history.pending_summary()

    async def async_wait_idle(self) -> None:
        """Return once no job runs (at once when none does)."""
        await self._jobs.wait_idle()

    @callback
    def _record(self, job: Job) -> None:
        self._history.record(job)
        self._outcome.report(job, self._history.failures_in_row)

    def _why_stopped(self) -> str:
        return STOPPED if self._suspending else CALLER_STOPPED

    # ------------------------------------------------------------------------------------------- jobs

    async def async_run(self, trigger: JobTrigger, *, retry_until: datetime | None = None) -> Job:
        """Make a backup for this location and send it; returns the finished job.

        While Home Assistant's backup manager is busy, tries again every 10 minutes until ``retry_until``.
        Transient failures of the upload are retried until ``retry_until`` plus an hour (an hour from now without
        it). Raises :class:`JobError` with the reason when no backup reached the gateway.
        """
        job = Job(id=uuid.uuid4().hex, trigger=trigger, started=dt_util.utcnow())
        job.deadline = (
            retry_until + self.options.retry_grace
            if retry_until is not None
            else job.started + self.options.retry_manual
        )
        try:
            async with self._jobs.run(job):
                try:
                    await self._create_backup(job, retry_until)
                except (BackupManagerError, HomeAssistantError) as err:
                    self._jobs.settle(
                        job, JobStatus.FAILED, f"Home Assistant could not create the backup: {err}"
                    )
                except asyncio.CancelledError:
                    if self._suspending and not job.suspended and job.backup_id is None:
                        # Home Assistant stops while it creates the backup (on a Supervisor install, the
                        # Supervisor goes on writing it): the next start counts the job as failed and removes
                        # what was left (async_resume_interrupted).
                        job.suspended = True
                    raise
                finally:
                    if not job.suspended:
                        await self._remove_local_copy(job)
                if not job.done and not job.suspended:
                    self._jobs.settle(
                        job,
                        JobStatus.FAILED,
                        "Home Assistant created the backup but did not hand it to Offsite Backup",
                    )
        except Exception as err:
            if not job.done:  # another job runs
                raise
            raise JobError(job.error or job.status.value) from err  # recorded, with its message
        if job.suspended:
            raise JobError(SUSPENDED)
        if job.status is not JobStatus.SUCCEEDED:
            raise JobError(job.error or job.status.value)
        if job.trigger is JobTrigger.SCHEDULE:
            await self._apply_retention(job)
        return job

    async def _apply_retention(self, job: Job) -> None:
        """After a nightly backup: Home Assistant's retention settings where they apply to ours (own_retention)."""
        try:
            await self.retention.async_apply(
                local_copies_at=job.local_copy if self.options.keep_local else None
            )
        except Exception:
            LOGGER.exception("Unexpected error applying the retention after backup %s", job.backup_id)

    async def _create_backup(self, job: Job, retry_until: datetime | None) -> None:
        manager = backup_manager(self.hass)
        password = self._password()
        if password is None and not self.options.allow_unencrypted:
            # Refused before Home Assistant spends minutes on an archive that could not be sent.
            self._jobs.settle(job, JobStatus.FAILED, UNENCRYPTED_REFUSED)
            return
        self._history.set_creating(job)
        busy_since: datetime | None = None
        while True:
            if job.cancel_requested:
                self._jobs.settle(job, JobStatus.CANCELLED, None)
            if job.done:
                return
            if manager.state != "idle":
                now = dt_util.utcnow()
                if retry_until is None or now + BUSY_RETRY_DELAY >= retry_until:
                    self._jobs.settle(
                        job,
                        JobStatus.FAILED,
                        f"Home Assistant's backup manager is busy ({manager.state}) with another backup"
                        + (", until the end of the backup window" if retry_until else ""),
                    )
                    return
                LOGGER.info(
                    "Home Assistant's backup manager is busy (%s); trying again in 10 minutes", manager.state
                )
                busy_since = busy_since or now
                job.status = JobStatus.WAITING
                job.waiting = Wait(
                    error=f"Home Assistant's backup manager is busy ({manager.state}) with another backup",
                    next_try=now + BUSY_RETRY_DELAY,
                    retry_until=retry_until,
                    since=busy_since,
                )
                self._listeners.notify()
                try:
                    async with asyncio.timeout(BUSY_RETRY_DELAY.total_seconds()):
                        await job.wakeup.wait()
                except TimeoutError:
                    pass
                continue
            if job.waiting is not None:
                job.waiting = None
                job.status = JobStatus.CREATING
                self._listeners.notify()
            contents = resolve_contents(
                self.options.contents,
                supervised=is_hassio(self.hass),
                automatic=manager.config.data.create_backup,
            )
            job.local_copy = self._local.location()
            self._history.set_creating(job)
            agent_ids = [self.options.agent_id, *([job.local_copy] if job.local_copy else [])]
            kind = "nightly backup" if job.trigger is JobTrigger.SCHEDULE else "backup"
            await manager.async_create_backup(
                agent_ids=agent_ids,
                name=f"Offsite {kind} {dt_util.now().strftime('%Y-%m-%d %H:%M')}",
                password=password,
                # Not Home Assistant's automatic backups, on purpose: its retention of those counts them across
                # every location and would cut its own local backups and this location to its count
                # (own_retention.py). The metadata says which backups are ours, and why they were made.
                with_automatic_settings=False,
                extra_metadata={MARKER: job.trigger.value, JOB_MARKER: job.id},
                **contents.as_kwargs(),
            )
            self._note_partial(job)
            return

    @callback
    def _note_partial(self, job: Job) -> None:
        """A backup that landed without some add-ons or folders says which, as Home Assistant marks it partial."""
        if job.status is not JobStatus.SUCCEEDED or job.backup_id is None:
            return
        addons, folders = failed_parts(backup_manager(self.hass), job.backup_id)
        if not addons and not folders:
            return
        missing = [f"add-on {name}" for name in addons] + [f"folder {folder}" for folder in folders]
        job.error = f"Partial backup: Home Assistant could not back up {', '.join(missing)}"
        LOGGER.warning("Backup %s is partial: %s", job.backup_id, job.error)

    def _password(self) -> str | None:
        """Home Assistant's backup encryption key, unless this location is set to unencrypted."""
        config = backup_manager(self.hass).config.data
        agent_config = config.agents.get(self.options.agent_id)
        if agent_config is not None and not agent_config.protected:
            return None
        password: str | None = config.create_backup.password
        return password

    async def _remove_local_copy(self, job: Job) -> None:
        """The local copy only served to resume: remove it once the job has an outcome (unless kept)."""
        if job.local_copy and job.backup_id and not self.options.keep_local:
            await self._local.remove(job.backup_id, job.local_copy)

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
        try:
            if (
                job is not None
                and job.status is JobStatus.CREATING
                and job.trigger is not JobTrigger.HOME_ASSISTANT
            ):
                await self._upload(job, backup, open_stream, on_progress, state=None)
            elif job is not None:
                raise BackupAgentError("Another upload to this location is in progress")
            else:
                job = Job(id=uuid.uuid4().hex, trigger=JobTrigger.HOME_ASSISTANT, started=dt_util.utcnow())
                job.deadline = job.started + self.options.retry_manual
                async with self._jobs.run(job):
                    await self._upload(job, backup, open_stream, on_progress, state=None)
        except UploadSuspended as err:
            raise BackupAgentError(str(err)) from err
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

        When :meth:`async_shutdown` stops it, the job is marked suspended (no outcome; the resume state is kept) and
        :class:`UploadSuspended` is raised. When the caller is cancelled otherwise, the upload is aborted, the job
        settled as cancelled, and ``CancelledError`` goes on.
        """
        job.backup_id = backup.backup_id
        job.name = backup.name
        job.size = backup.size
        if job.cancel_requested:
            self._jobs.settle(job, JobStatus.CANCELLED, None)
            return
        if not backup.protected and not self.options.allow_unencrypted:
            self._jobs.settle(job, JobStatus.FAILED, UNENCRYPTED_REFUSED)
            return
        job.status = JobStatus.UPLOADING
        job.progress = 0.0
        self._history.set_pending(job, backup.as_dict())
        self._listeners.notify()

        options = replace(
            self.options.upload, deadline=job.deadline.timestamp() if job.deadline is not None else None
        )
        task = self._sender.start(
            job, backup=backup, open_stream=open_stream, on_progress=on_progress, state=state, options=options
        )
        self._upload_task = task
        try:
            remote = await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():  # our caller was cancelled
                if self._suspending:  # Home Assistant stops: stop without aborting, to resume
                    task.cancel(SUSPEND)
                    await asyncio.gather(task, return_exceptions=True)
                    job.suspended = True
                    raise
                task.cancel()  # the engine aborts the upload on the gateway
                await asyncio.gather(task, return_exceptions=True)
                self._history.clear_pending()
                self._jobs.settle(job, JobStatus.CANCELLED, CALLER_STOPPED)
                raise
            if self._suspending:
                job.suspended = True
                raise UploadSuspended(SUSPENDED) from None
            # Cancelled by cancel_backup: the engine aborted the upload on the gateway.
            self._history.clear_pending()
            self._jobs.settle(job, JobStatus.CANCELLED, None)
        except GatewayAuthError as err:
            self._history.clear_pending()
            self.entry.async_start_reauth(self.hass)
            self._jobs.settle(job, JobStatus.FAILED, f"The gateway refused the token: {err}")
        except GatewayQuotaError as err:
            self._history.clear_pending()
            self._outcome.quota_refused(err)
            self._jobs.settle(job, JobStatus.FAILED, str(err))
        except (UploadError, GatewayError) as err:
            self._history.clear_pending()
            self._jobs.settle(job, JobStatus.FAILED, str(err))
        except Exception as err:  # a bug: still an outcome, with its message
            LOGGER.exception("Unexpected error uploading backup %s", backup.backup_id)
            self._history.clear_pending()
            self._jobs.settle(job, JobStatus.FAILED, f"Unexpected error: {describe(err)}")
        else:
            self._history.clear_pending()
            job.remote_id = remote.id
            job.size = remote.size
            job.progress = 100.0
            self._jobs.settle(job, JobStatus.SUCCEEDED, None)
        finally:
            self._upload_task = None

    # ------------------------------------------------------------------------------------------ resume

    async def async_resume_interrupted(self) -> None:
        """At start: what a restart left to do (``restart.RestartRecovery``)."""
        if not self.busy:
            await self._restart.async_run()

    @property
    def leftovers(self) -> bool:
        """Whether backups left by a stop are still looked for."""
        return self._restart.leftovers

    async def async_remove_leftovers(self) -> None:
        """Remove the backups a stop left on this machine, once they show (at start, then every few minutes)."""
        await self._restart.async_remove_leftovers()

    async def async_shutdown(self) -> None:
        """Stop an upload in progress without aborting it, so it resumes at the next start."""
        self._suspending = True
        task = self._upload_task
        if task is not None and not task.done():
            task.cancel(SUSPEND)
            await asyncio.gather(task, return_exceptions=True)
        await self._history.async_flush()
