"""Running the upload engine for one job: its deadline, progress, saved state and waiting, shown on the job.

The runner settles the job from how the engine's task ends (``runner.BackupRunner._upload``); this starts that task
and keeps the job, the history and the entities up to date while it runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import datetime
from typing import Any

from homeassistant.components.backup import AgentBackup
from homeassistant.core import HomeAssistant
from homeassistant.util import dt as dt_util

from .const import DOMAIN, JobStatus
from .engine.api import GatewayClient, RemoteBackup
from .engine.left_behind import in_upload_slot
from .engine.privacy import MetadataPrivacy
from .engine.uploader import Clock, UploadOptions, UploadState, Waiting, upload
from .history import JobHistory
from .jobs import Job, Wait
from .listeners import Listeners
from .outcome import OutcomeReporter

type OpenStream = Callable[[], Coroutine[Any, Any, AsyncIterator[bytes]]]

CLOCK = Clock(now=lambda: dt_util.utcnow().timestamp())
"""The engine reads Home Assistant's wall clock, the one the deadlines are computed with."""


def _instant(timestamp: float) -> datetime:
    return dt_util.utc_from_timestamp(timestamp)


class JobSender:
    """Starts the upload engine's task for a job, wired to the job, its saved state and its listeners."""

    def __init__(
        self,
        hass: HomeAssistant,
        *,
        client: GatewayClient,
        history: JobHistory,
        outcome: OutcomeReporter,
        listeners: Listeners,
        privacy: MetadataPrivacy,
    ) -> None:
        """Send through ``client``; save the state in ``history``; tell a wait through ``outcome``."""
        self._hass = hass
        self._client = client
        self._history = history
        self._outcome = outcome
        self._listeners = listeners
        self._privacy = privacy

    def start(
        self,
        job: Job,
        *,
        backup: AgentBackup,
        open_stream: OpenStream,
        on_progress: Callable[..., None] | None,
        state: UploadState | None,
        options: UploadOptions,
    ) -> asyncio.Task[RemoteBackup]:
        """The engine's task sending ``backup`` for ``job`` (resuming ``state``), not started yet."""

        def progress(done: int, total: int) -> None:
            job.progress = 100.0 * done / total if total else 100.0
            if on_progress is not None:
                on_progress(bytes_uploaded=done)
            self._listeners.notify()

        def persist(upload_state: UploadState) -> None:
            self._history.update_pending(upload_state.to_dict())

        def waiting(wait: Waiting | None) -> None:
            if job.done:
                return
            if wait is None:
                job.waiting = None
                job.status = JobStatus.UPLOADING
            else:
                first = job.waiting is None
                job.waiting = Wait(
                    error=wait.error,
                    next_try=_instant(wait.next_try),
                    retry_until=_instant(wait.give_up_at),
                    since=_instant(wait.since),
                    requests=wait.requests,
                )
                job.status = JobStatus.WAITING
                if first:
                    self._outcome.waiting(job)
            self._listeners.notify()

        metadata = self._privacy.outgoing(backup.as_dict())

        def attempt() -> Coroutine[Any, Any, RemoteBackup]:
            return upload(
                client=self._client,
                open_stream=open_stream,
                size=backup.size,
                name=backup.name,
                metadata=metadata,
                options=options,
                progress=progress,
                state=state,
                on_state=persist,
                clock=CLOCK,
                on_wait=waiting,
            )

        return self._hass.async_create_task(
            in_upload_slot(self._client, attempt), f"{DOMAIN} upload {backup.backup_id}", eager_start=False
        )
