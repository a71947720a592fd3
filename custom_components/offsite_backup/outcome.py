"""How a job ended, told to the people and automations that care: the log, an event, a Repairs issue."""

from __future__ import annotations

import logging
from typing import Any

from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant, callback

from .const import (
    EVENT_FAILED,
    EVENT_SUCCEEDED,
    EVENT_WAITING,
    ISSUE_BACKUP_FAILING,
    ISSUE_QUOTA_EXCEEDED,
    LOGGER,
    UNENCRYPTED_REFUSED,
    JobStatus,
    JobTrigger,
)
from .engine.api import GatewayQuotaError
from .jobs import Job
from .repair_issues import clear_issue, issue_id, raise_issue


def failure_level(error: str | None) -> int:
    """How a failed backup is logged: a refusal by the owner's own policy as a warning (its message says which
    setting to change), any other failure as an error."""
    return logging.WARNING if error == UNENCRYPTED_REFUSED else logging.ERROR


def _size(value: int | None) -> str:
    """A byte count for people: binary units, one decimal."""
    if value is None:
        return "?"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


class OutcomeReporter:
    """Logs each ended job, fires ``offsite_backup_succeeded``/``_failed`` (and ``_waiting`` when a job begins to
    wait for a failure to pass), and raises or clears the Repairs issue."""

    def __init__(self, hass: HomeAssistant, entry: ConfigEntry[Any], failures_before_repair: int) -> None:
        """Report for ``entry``; the issue appears after ``failures_before_repair`` failures in a row."""
        self._hass = hass
        self._entry = entry
        self._failures_before_repair = failures_before_repair

    @property
    def issue_id(self) -> str:
        """The entry's Repairs issue."""
        return issue_id(ISSUE_BACKUP_FAILING, self._entry)

    @property
    def quota_issue_id(self) -> str:
        """The entry's Repairs issue for a backup the gateway refused for the quota."""
        return issue_id(ISSUE_QUOTA_EXCEEDED, self._entry)

    @callback
    def quota_refused(self, err: GatewayQuotaError) -> None:
        """The gateway refused a backup for the quota: a Repairs issue with what is used and what it needed."""
        raise_issue(
            self._hass,
            self._entry,
            ISSUE_QUOTA_EXCEEDED,
            used=_size(err.used_bytes),
            needed=_size(err.needed_bytes),
            quota=_size(err.quota_bytes),
        )

    @callback
    def restore(self, last_job: Job | None, failures_in_row: int) -> None:
        """At setup: the issues as the stored history has them (raised again, or cleared when they no longer hold:
        the threshold option was raised, a success came while issues were not kept)."""
        if (
            last_job is not None
            and last_job.status is JobStatus.FAILED
            and (failures_in_row >= self._failures_before_repair)
        ):
            self._raise_failing(failures_in_row, last_job.error)
        else:
            clear_issue(self._hass, self._entry, ISSUE_BACKUP_FAILING)
        if last_job is not None and last_job.status is JobStatus.SUCCEEDED:
            clear_issue(self._hass, self._entry, ISSUE_QUOTA_EXCEEDED)

    @callback
    def _raise_failing(self, failures_in_row: int, error: str | None) -> None:
        raise_issue(
            self._hass,
            self._entry,
            ISSUE_BACKUP_FAILING,
            failures=str(failures_in_row),
            error=error or "",
        )

    @callback
    def waiting(self, job: Job) -> None:
        """A job began to wait for a failure to pass: ``offsite_backup_waiting`` (once per outage)."""
        assert job.waiting is not None
        LOGGER.warning("Offsite backup waiting: %s", job.waiting.describe())
        data: dict[str, Any] = {
            "config_entry_id": self._entry.entry_id,
            "job_id": job.id,
            "trigger": job.trigger.value,
            "backup_id": job.backup_id,
        }
        self._hass.bus.async_fire(EVENT_WAITING, data | job.waiting.as_dict())

    @callback
    def report(self, job: Job, failures_in_row: int) -> None:
        """Tell how ``job`` ended (``failures_in_row`` counts it already)."""
        data = {
            "config_entry_id": self._entry.entry_id,
            "job_id": job.id,
            "trigger": job.trigger.value,
            "backup_id": job.backup_id,
            "size": job.size,
            "duration": job.duration,
        }
        if job.status is JobStatus.SUCCEEDED:
            clear_issue(self._hass, self._entry, ISSUE_BACKUP_FAILING)
            clear_issue(self._hass, self._entry, ISSUE_QUOTA_EXCEEDED)
            LOGGER.info("Backup %s sent off-site (%s bytes in %s s)", job.backup_id, job.size, job.duration)
            # A partial backup (add-ons or folders Home Assistant could not back up) says what it lacks.
            self._hass.bus.async_fire(
                EVENT_SUCCEEDED, data | {"partial": job.error is not None, "error": job.error}
            )
        elif job.status is JobStatus.FAILED:
            # Logged once, by whoever learns of it: here for the nightly backup, which nobody waits for. The button
            # logs its own (button.py); Home Assistant logs a failed action for its caller, and a failed upload of
            # a backup it made ("Upload failed for <location>: ...").
            if job.trigger is JobTrigger.SCHEDULE:
                LOGGER.log(failure_level(job.error), "Offsite backup failed: %s", job.error)
            else:
                LOGGER.debug("Offsite backup (%s) failed: %s", job.trigger.value, job.error)
            self._hass.bus.async_fire(EVENT_FAILED, data | {"error": job.error})
            if failures_in_row >= self._failures_before_repair:
                self._raise_failing(failures_in_row, job.error)
        else:
            LOGGER.info("Offsite backup cancelled%s", f": {job.error}" if job.error else "")
