"""What the runner remembers across restarts: recent jobs, the last success, failures in a row, the upload to resume."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypedDict

from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers.storage import Store
from homeassistant.util import dt as dt_util

from .const import CLOCK_MARGIN, HISTORY_SIZE, LOGGER, STORE_JOBS, JobStatus, store_key
from .jobs import Job

STORAGE_VERSION = 1


class PendingUpload(TypedDict):
    """What is persisted while an upload runs, to resume it after a restart."""

    job: dict[str, Any]
    backup: dict[str, Any]
    state: dict[str, Any] | None


class StoredHistory(TypedDict):
    """The history's store."""

    history: list[dict[str, Any]]
    last_success: str | None
    failures_in_row: int
    since: str
    pending: PendingUpload | None
    creating: dict[str, Any] | None
    leftovers: list[Leftover]


class Leftover(TypedDict):
    """A backup Home Assistant may have left on this machine: it stopped while the backup was being written."""

    job_id: str
    until: str  # looked for until then (the Supervisor may still be writing it after the restart)


class JobHistory:
    """The recent jobs (newest first) and what follows from them, kept in Home Assistant's store."""

    def __init__(self, hass: HomeAssistant, entry_id: str) -> None:
        """Empty until :meth:`async_load`."""
        self._store: Store[StoredHistory] = Store(hass, STORAGE_VERSION, store_key(entry_id, STORE_JOBS))
        self.jobs: list[Job] = []
        self.last_success: datetime | None = None
        self.failures_in_row = 0
        self.since: datetime = (
            dt_util.utcnow()
        )  # the first setup: "Backup stale" counts from it before any success
        self.pending: PendingUpload | None = None
        self.creating: dict[str, Any] | None = None  # the job whose backup Home Assistant is creating
        self.leftovers: list[Leftover] = []

    async def async_load(self) -> None:
        """Read what was stored (nothing on a new entry)."""
        data = await self._store.async_load()
        if not data:
            self.save()
            return
        self.jobs = [Job.from_dict(item) for item in data.get("history", [])]
        last_success = data.get("last_success")
        self.last_success = datetime.fromisoformat(last_success) if last_success else None
        self.failures_in_row = int(data.get("failures_in_row", 0))
        self.since = datetime.fromisoformat(data["since"]) if data.get("since") else self.since
        self.pending = data.get("pending")
        creating = data.get("creating")
        self.creating = creating if isinstance(creating, dict) else None
        leftovers = data.get("leftovers")
        self.leftovers = [
            item
            for item in (leftovers if isinstance(leftovers, list) else [])
            if isinstance(item, dict)
            and isinstance(item.get("job_id"), str)
            and isinstance(item.get("until"), str)
        ]
        self.check_clock(dt_util.utcnow())

    @callback
    def check_clock(self, now: datetime) -> bool:
        """Set aside a last success (or a start) further ahead than ``now`` plus a margin; whether it did.

        Recorded while the clock was ahead, it would keep "Backup stale" off until that date: the last success is
        forgotten (the jobs stay in the history, with their dates) and staleness counts from now.
        """
        changed = False
        if self.last_success is not None and self.last_success > now + CLOCK_MARGIN:
            LOGGER.warning(
                "Ignoring the last success recorded for %s: it is ahead of the clock (now %s), so it was recorded "
                'while the clock was wrong; "Backup stale" counts from now',
                self.last_success.isoformat(),
                now.isoformat(),
            )
            self.last_success = None
            self.since = now
            changed = True
        if self.since > now + CLOCK_MARGIN:
            LOGGER.warning("The history's start (%s) is ahead of the clock; counting from now", self.since)
            self.since = now
            changed = True
        if changed:
            self.save()
        return changed

    def _data_to_save(self) -> StoredHistory:
        return {
            "history": [job.as_dict() for job in self.jobs],
            "last_success": self.last_success.isoformat() if self.last_success else None,
            "failures_in_row": self.failures_in_row,
            "since": self.since.isoformat(),
            "pending": self.pending,
            "creating": self.creating,
            "leftovers": self.leftovers,
        }

    @callback
    def save(self) -> None:
        """Save soon (many changes within a second are one write)."""
        self._store.async_delay_save(self._data_to_save, 1)

    async def async_flush(self) -> None:
        """Save now: the next setup (a reload) reads it at once."""
        await self._store.async_save(self._data_to_save())

    @callback
    def record(self, job: Job) -> None:
        """Add an ended job; count a success or a failure."""
        if self.creating is not None and self.creating.get("id") == job.id:
            self.creating = None
        self.jobs.insert(0, job)
        del self.jobs[HISTORY_SIZE:]
        if job.status is JobStatus.SUCCEEDED:
            self.last_success = job.ended
            self.failures_in_row = 0
        elif job.status is JobStatus.FAILED:
            self.failures_in_row += 1
        self.save()

    # ------------------------------------------------------------------------------------ the upload to resume

    @callback
    def set_creating(self, job: Job) -> None:
        """Home Assistant is asked for the job's backup: if it stops meanwhile, the next start counts the job."""
        self.creating = job.as_dict()
        self.save()

    @callback
    def add_leftover(self, job_id: str, until: datetime) -> None:
        """Look for a backup of ``job_id`` left on this machine, until ``until``."""
        self.leftovers = [*self.leftovers, {"job_id": job_id, "until": until.isoformat()}]
        self.save()

    @callback
    def drop_leftovers(self, job_ids: set[str], now: datetime) -> None:
        """Stop looking for these (found and removed), and for those looked for long enough."""
        kept = [
            item
            for item in self.leftovers
            if item["job_id"] not in job_ids and datetime.fromisoformat(item["until"]) > now
        ]
        if kept != self.leftovers:
            self.leftovers = kept
            self.save()

    @callback
    def set_pending(self, job: Job, backup: dict[str, Any]) -> None:
        """An upload starts: what a restart needs to carry it on."""
        self.creating = None
        self.pending = {"job": job.as_dict(), "backup": backup, "state": None}
        self.save()

    @callback
    def update_pending(self, state: dict[str, Any]) -> None:
        """The upload's state moved on (a part was acknowledged)."""
        if self.pending is not None:
            self.pending["state"] = state
            self.save()

    @callback
    def clear_pending(self) -> None:
        """The upload ended: nothing to resume."""
        self.pending = None
        self.save()

    def pending_summary(self) -> dict[str, Any] | None:
        """The upload waiting to be resumed, without anything secret (no URLs are ever stored)."""
        if self.pending is None:
            return None
        state = self.pending["state"] or {}
        return {
            "job_id": self.pending["job"].get("id"),
            "backup_id": self.pending["backup"].get("backup_id"),
            "remote_id": state.get("backup_id"),
            "parts_acknowledged": len(state.get("parts", {}) or {}),
        }

    # -------------------------------------------------------------------------------------------- reading

    @property
    def last_job(self) -> Job | None:
        """The newest ended job."""
        return self.jobs[0] if self.jobs else None

    @property
    def last_error(self) -> str | None:
        """The error of the last failed job, cleared by the next success (a partial one tells what it lacks)."""
        for job in self.jobs:
            if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
                return job.error
        return None

    @property
    def last_size(self) -> int | None:
        """Size in bytes of the last backup sent."""
        for job in self.jobs:
            if job.status is JobStatus.SUCCEEDED:
                return job.size
        return None
