"""One backup job, and the one owner of the job running now.

Whatever way a job ends — an outcome, an error nobody expected, a cancel from the caller — :meth:`JobTracker.run`
gives it an outcome with its message, hands it to be recorded, and leaves the runner idle. The only job it does not
record is one suspended to be resumed after a restart: that one is recorded when its upload ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from homeassistant.core import callback
from homeassistant.exceptions import HomeAssistantError
from homeassistant.util import dt as dt_util

from .const import DOMAIN, JobStatus, JobTrigger
from .engine.upload_errors import describe


class JobError(HomeAssistantError):
    """A job ended without a backup off-site; the message is the reason."""


class UploadSuspended(Exception):
    """The upload was stopped to be resumed later (Home Assistant stops, the entry unloads)."""


@dataclass(frozen=True, slots=True)
class Wait:
    """What a job waits for: the failure, when it is tried again, until when at the latest, since when."""

    error: str
    next_try: datetime
    retry_until: datetime
    since: datetime
    requests: int = 0  # requests of the upload under way meanwhile

    def as_dict(self) -> dict[str, str]:
        """For events and attributes."""
        return {
            "error": self.error,
            "next_try": self.next_try.isoformat(),
            "retry_until": self.retry_until.isoformat(),
            "waiting_since": self.since.isoformat(),
        }

    def describe(self) -> str:
        """One line for the last-error sensor: that it waits, the next try, and what failed."""
        next_try = dt_util.as_local(self.next_try).strftime("%H:%M:%S")
        until = dt_util.as_local(self.retry_until).strftime("%Y-%m-%d %H:%M")
        return f"Waiting to try again at {next_try} (until {until} at the latest): {self.error}"


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
    local_copy: str | None = None  # the local backup location this job also wrote to, only to resume from
    name: str | None = None  # the backup's name (what Settings > System > Backups shows)
    deadline: datetime | None = None  # transient failures are retried until then
    progress: float = 0.0
    waiting: Wait | None = field(default=None, repr=False)  # while it waits for a failure to pass
    cancel_requested: bool = field(default=False, repr=False)
    suspended: bool = field(default=False, repr=False)  # stopped to resume after a restart: no outcome yet
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
            "local_copy": self.local_copy,
            "name": self.name,
            "deadline": self.deadline.isoformat() if self.deadline else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        """Read back what ``as_dict`` stored."""
        ended = data.get("ended")
        deadline = data.get("deadline")
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
            local_copy=data.get("local_copy"),
            name=data.get("name"),
            deadline=datetime.fromisoformat(deadline) if isinstance(deadline, str) else None,
        )


class JobTracker:
    """The job running now: at most one, and never left behind."""

    def __init__(
        self,
        *,
        record: Callable[[Job], None],
        changed: Callable[[], None],
        cancel_reason: Callable[[], str],
    ) -> None:
        """``record(job)`` takes each ended job; ``changed()`` is called on every change of state.

        ``cancel_reason()`` words why a job whose task was cancelled stopped (Home Assistant stopping, or the
        action, script or automation that asked for it being stopped).
        """
        self._record = record
        self._changed = changed
        self._cancel_reason = cancel_reason
        self._current: Job | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def current(self) -> Job | None:
        """The job running now."""
        return self._current

    async def wait_idle(self) -> None:
        """Return once no job runs (at once when none does)."""
        await self._idle.wait()

    @asynccontextmanager
    async def run(self, job: Job) -> AsyncIterator[Job]:
        """Make ``job`` the running job for the block; raises ``JobError`` when another one runs.

        On leaving the block the job has an outcome (an exception gives it one, worded from the exception) and is
        recorded, unless it was suspended to be resumed; either way no job runs any more.
        """
        if self._current is not None:
            raise JobError(translation_domain=DOMAIN, translation_key="already_running")
        self._current = job
        self._idle.clear()
        self._changed()
        try:
            yield job
        except asyncio.CancelledError:
            if not job.suspended:
                self.settle(job, JobStatus.CANCELLED, self._cancel_reason())
            raise
        except Exception as err:
            if not job.suspended:
                self.settle(job, JobStatus.FAILED, f"Unexpected error: {describe(err)}")
            raise
        finally:
            if not job.done and not job.suspended:
                self.settle(job, JobStatus.FAILED, "The job ended without a backup off-site")
            self._current = None
            self._idle.set()
            if job.done:
                self._record(job)
            self._changed()

    @callback
    def settle(self, job: Job, status: JobStatus, error: str | None) -> None:
        """Give the job its outcome (once)."""
        if job.done:
            return
        job.waiting = None
        job.status = status
        job.error = error
        job.ended = dt_util.utcnow()
        job.wakeup.set()
        self._changed()
