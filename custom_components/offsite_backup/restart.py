"""What a restart left to do: a job stopped while its backup was created, what was left of it, an upload to resume.

- A job Home Assistant stopped while it was creating the backup (``JobHistory.creating``) is recorded as failed:
  the night is lost. On a Supervisor install the Supervisor goes on writing that backup after Home Assistant
  stopped; it carries the job's id in its metadata (``own_retention.JOB_MARKER``) and is looked for on the local
  locations, at start and every few minutes for ``LEFTOVER_WATCH``, to be removed (unless local copies are kept).
- An upload a restart interrupted (``JobHistory.pending``) is carried on from the local copy of the backup, read
  as it was sent (``local_copy.FoundCopy``); when the copy no longer gives the same bytes, the upload starts over.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Any

from homeassistant.components.backup import AgentBackup
from homeassistant.core import HomeAssistant
from homeassistant.util import dt as dt_util

from .compat import backup_manager
from .const import LOGGER, JobStatus
from .engine.api import GatewayClient
from .engine.left_behind import abort_left_behind
from .engine.uploader import UploadState
from .history import JobHistory
from .jobs import Job, JobTracker, UploadSuspended
from .local_copy import LocalCopies
from .own_retention import JOB_MARKER

STOPPED_CREATING = (
    "Home Assistant stopped while it was creating the backup, which was never sent; what it may have left on "
    "this machine is removed"
)
NO_LONGER_ON_DISK = "The upload was interrupted by a restart of Home Assistant, and the backup is no longer on disk to finish it"
LEFTOVER_WATCH = timedelta(hours=12)
"""How long after such a stop a backup it left is looked for (the Supervisor may still be writing it)."""

type OpenStream = Callable[[], Coroutine[Any, Any, AsyncIterator[bytes]]]
type Upload = Callable[
    [Job, AgentBackup, OpenStream, Callable[..., None] | None, UploadState | None], Awaitable[None]
]


class RestartRecovery:
    """Does, at start, what the last stop left undone (see the module's docstring)."""

    def __init__(
        self,
        hass: HomeAssistant,
        *,
        history: JobHistory,
        jobs: JobTracker,
        local: LocalCopies,
        client: GatewayClient,
        keep_local: Callable[[], bool],
        upload: Upload,
        remove_local_copy: Callable[[Job], Awaitable[None]],
    ) -> None:
        """``upload(job, backup, open_stream, on_progress, state)`` sends and settles the job, as the runner does."""
        self._hass = hass
        self._history = history
        self._jobs = jobs
        self._local = local
        self._client = client
        self._keep_local = keep_local
        self._upload = upload
        self._remove_local_copy = remove_local_copy

    async def async_run(self) -> None:
        """Count a job a stop interrupted while its backup was created, remove what that left, and carry on an
        upload a restart interrupted when the same backup is still on disk (else record why not)."""
        await self._count_stopped_creation()
        await self.async_remove_leftovers()
        await self._resume()

    @property
    def leftovers(self) -> bool:
        """Whether backups left by a stop are still looked for."""
        return bool(self._history.leftovers)

    async def async_remove_leftovers(self) -> None:
        """Remove the backups a stop left on this machine, once they show."""
        if not self._history.leftovers:
            return
        job_ids = {item["job_id"] for item in self._history.leftovers}
        removed = await self._local.remove_left_by(job_ids, JOB_MARKER)
        self._history.drop_leftovers(removed, dt_util.utcnow())

    async def _count_stopped_creation(self) -> None:
        creating = self._history.creating
        if creating is None:
            return
        try:
            job = Job.from_dict(creating)
        except (KeyError, TypeError, ValueError):
            self._history.creating = None
            return
        if job.local_copy and not self._keep_local():
            self._history.add_leftover(job.id, dt_util.utcnow() + LEFTOVER_WATCH)
        async with self._jobs.run(job):
            self._jobs.settle(job, JobStatus.FAILED, STOPPED_CREATING)

    async def _resume(self) -> None:
        pending = self._history.pending
        if pending is None:
            return
        job = Job.from_dict(pending["job"])
        job.status = JobStatus.UPLOADING
        backup = AgentBackup.from_dict(pending["backup"])
        state = UploadState.from_dict(pending["state"]) if pending["state"] else None
        async with self._jobs.run(job):
            copy = await self._local.find(
                backup, backup_manager(self._hass).config.data.create_backup.password
            )
            if copy is None:
                # Nothing of it is removed: what is not found cannot be known to be this backup's copy.
                self._history.clear_pending()
                await self._abort(state)
                self._jobs.settle(job, JobStatus.FAILED, NO_LONGER_ON_DISK)
                return
            if not copy.same_bytes and state is not None:
                # Read again through Home Assistant's encryption, it makes other bytes: the parts storage holds
                # belong to another encryption of it. The upload starts over, cleanly.
                LOGGER.info(
                    "Backup %s is kept unencrypted on disk and encrypted on its way here: its upload starts over",
                    backup.backup_id,
                )
                await self._abort(state)
                state = None
            LOGGER.info("Resuming the upload of backup %s interrupted by a restart", backup.backup_id)
            try:
                await self._upload(job, backup, copy.open_stream, None, state)
            except UploadSuspended:
                return
            finally:
                await copy.finish()
                if not job.suspended:
                    await self._remove_local_copy(job)

    async def _abort(self, state: UploadState | None) -> None:
        """Abort the interrupted upload on the gateway (best effort: its sweeper would, later)."""
        if state is not None:
            await abort_left_behind(self._client, state.backup_id)
