"""The restore drill in Home Assistant: which backup, when, and what shows afterwards.

The checks of one backup are ``drill_checks.DrillChecks`` (downloaded through the backup location, as Home
Assistant's own download path does), built on the plain code of ``engine/drill.py``; this module chooses the backup, runs
the checks as a task of the entry, and tells how they ended.

The drill is not a backup job: it has its own state (running, progress, the last result, the last success), kept in
its own store. It does not start while a backup job runs; a backup may start while it runs. Each drill's outcome is
told like a job's: a log line, an event (``offsite_backup_drill_succeeded`` / ``_failed``), and a Repairs issue when
it failed, which the next good drill clears.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from homeassistant.config_entries import ConfigEntry
from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers.storage import Store
from homeassistant.util import dt as dt_util

from .const import (
    DOMAIN,
    EVENT_DRILL_FAILED,
    EVENT_DRILL_SUCCEEDED,
    HISTORY_SIZE,
    ISSUE_DRILL_FAILED,
    LOGGER,
    STORE_DRILL,
    DrillSchedule,
    JobStatus,
    JobTrigger,
    store_key,
)
from .drill_checks import Download, DrillChecks, DrillTarget
from .engine.api import GatewayClient, GatewayError
from .engine.drill import (
    DrillFailure,
    describe,
    label,
    pick_backup,
    weekly_due,
)
from .engine.privacy import MetadataPrivacy
from .listeners import Listeners
from .listing import read_listing
from .repair_issues import clear_issue, issue_id, raise_issue

if TYPE_CHECKING:
    from .runner import BackupRunner

STORAGE_VERSION = 1

__all__ = ["DrillRefused", "DrillResult", "DrillStopped", "RestoreDrill"]


class DrillRefused(HomeAssistantError):
    """No drill was started (one runs, a backup runs, no such backup, nothing to verify): nothing is recorded."""


class DrillStopped(HomeAssistantError):
    """The drill was stopped before its end (Home Assistant stops, the entry unloads): nothing is recorded."""


@dataclass(slots=True)
class DrillResult:
    """How one drill ended."""

    backup_id: str | None
    backup_name: str | None
    ok: bool
    error: str | None
    started: datetime
    ended: datetime
    trigger: JobTrigger
    size: int | None = None

    @property
    def duration(self) -> float:
        """Seconds from start to end."""
        return round((self.ended - self.started).total_seconds(), 3)

    def as_dict(self) -> dict[str, Any]:
        """Serialise for the store and diagnostics."""
        return {
            "backup_id": self.backup_id,
            "backup_name": self.backup_name,
            "ok": self.ok,
            "error": self.error,
            "started": self.started.isoformat(),
            "ended": self.ended.isoformat(),
            "trigger": self.trigger.value,
            "size": self.size,
            "duration": self.duration,
        }

    @classmethod
    def from_dict(cls, data: Any) -> DrillResult | None:
        """Read back what ``as_dict`` stored; ``None`` for anything else (stored data may be odd)."""
        try:
            return cls(
                backup_id=data.get("backup_id"),
                backup_name=data.get("backup_name"),
                ok=bool(data["ok"]),
                error=data.get("error"),
                started=datetime.fromisoformat(data["started"]),
                ended=datetime.fromisoformat(data["ended"]),
                trigger=JobTrigger(data.get("trigger", JobTrigger.MANUAL)),
                size=data.get("size"),
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            return None


type Pick = Callable[[DrillTarget, Sequence[DrillTarget]], DrillTarget]


class RestoreDrill:
    """Runs restore drills for one config entry and remembers how the last ones went."""

    def __init__(
        self,
        hass: HomeAssistant,
        entry: ConfigEntry[Any],
        client: GatewayClient,
        runner: BackupRunner,
        privacy: MetadataPrivacy,
        *,
        download: Download,
        schedule: DrillSchedule,
        rng: random.Random | None = None,
    ) -> None:
        """Set up; call :meth:`async_load` before use."""
        self.hass = hass
        self._entry = entry
        self._client = client
        self._runner = runner
        self._privacy = privacy
        self._download = download
        self.schedule = schedule
        self._rng = rng or random.SystemRandom()
        self._store: Store[dict[str, Any]] = Store(
            hass, STORAGE_VERSION, store_key(entry.entry_id, STORE_DRILL)
        )
        self._listeners = Listeners()
        self._task: asyncio.Task[DrillResult] | None = None
        self._target: DrillTarget | None = None
        self._progress = 0.0
        self.last: DrillResult | None = None
        self.last_verified: DrillResult | None = None
        self._deleted: list[str] = []  # the gateway's ids of copies deleted through the location

    async def async_load(self) -> None:
        """Read the last results from the store."""
        data = await self._store.async_load() or {}
        self.last = DrillResult.from_dict(data.get("last"))
        self.last_verified = DrillResult.from_dict(data.get("last_verified"))
        deleted = data.get("deleted")
        if isinstance(deleted, list):
            self._deleted = [item for item in deleted if isinstance(item, str)][-HISTORY_SIZE:]
        # The Repairs issue as the last drill has it (raised again after a restart, or cleared).
        if self.last is not None and not self.last.ok:
            self._raise_issue(self.last)
        else:
            clear_issue(self.hass, self._entry, ISSUE_DRILL_FAILED)

    def _data_to_save(self) -> dict[str, Any]:
        return {
            "last": self.last.as_dict() if self.last else None,
            "last_verified": self.last_verified.as_dict() if self.last_verified else None,
            "deleted": self._deleted,
        }

    async def async_flush(self) -> None:
        """Save now (the entry unloads)."""
        await self._store.async_save(self._data_to_save())

    @callback
    def async_add_listener(self, listener: CALLBACK_TYPE) -> CALLBACK_TYPE:
        """Call ``listener`` whenever the state changes; returns the function that stops it."""
        return self._listeners.add(listener)

    # ------------------------------------------------------------------------------------------- state

    @property
    def running(self) -> bool:
        """Whether a drill runs."""
        return self._task is not None

    @property
    def progress(self) -> float:
        """Share of the running drill's download read, in %."""
        return round(self._progress, 1)

    @property
    def current(self) -> tuple[str, str | None] | None:
        """The backup the running drill tests (id, name), once it is chosen."""
        return (self._target.backup_id, self._target.name) if self._target else None

    @property
    def issue_id(self) -> str:
        """The entry's Repairs issue for a failed drill."""
        return issue_id(ISSUE_DRILL_FAILED, self._entry)

    @callback
    def forget(self, remote_id: str) -> None:
        """A copy on the gateway is deleted through the location: its record goes on purpose, it is not lost."""
        if remote_id not in self._deleted:
            self._deleted = [*self._deleted, remote_id][-HISTORY_SIZE:]
            self._store.async_delay_save(self._data_to_save, 1)

    @callback
    def _set_progress(self, percent: float) -> None:
        previous, self._progress = self._progress, percent
        if int(percent) != int(previous):  # each whole percent
            self._listeners.notify()

    # ------------------------------------------------------------------------------------------- running

    async def async_verify(
        self,
        backup_id: str | None = None,
        *,
        trigger: JobTrigger = JobTrigger.MANUAL,
        pick: Pick | None = None,
    ) -> DrillResult:
        """Run a drill of ``backup_id`` (the newest backup when ``None``) now, and return how it ended.

        A failed check is a result (``ok`` false), not an exception. Raises :class:`DrillRefused` when no drill
        could start, and :class:`DrillStopped` when the drill was stopped before its end.
        """
        if self._task is not None:
            raise DrillRefused(translation_domain=DOMAIN, translation_key="drill_running")
        if self._runner.busy:
            raise DrillRefused(translation_domain=DOMAIN, translation_key="drill_backup_running")
        task = self._entry.async_create_background_task(
            self.hass, self._run(backup_id, trigger, pick), f"{DOMAIN} restore drill", eager_start=False
        )
        self._task = task
        self._progress = 0.0
        self._listeners.notify()
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():  # our caller was cancelled: so is the drill
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                raise
            raise DrillStopped(translation_domain=DOMAIN, translation_key="drill_stopped") from None

    async def async_after_nightly_backup(self, window_end: datetime) -> DrillResult | None:
        """After a successful nightly backup: the drill the option asks for, if it is due and the window is open."""
        if self.schedule is DrillSchedule.OFF:
            return None
        now = dt_util.now()
        if now >= window_end:
            LOGGER.info("No restore drill tonight: the backup window has ended")
            return None
        pick: Pick | None = None
        if self.schedule is DrillSchedule.WEEKLY:
            verified = dt_util.as_local(self.last_verified.ended).date() if self.last_verified else None
            failed = self.last is not None and not self.last.ok
            if not weekly_due(now.date(), verified, failed):
                return None
            today = now.date()

            def pick(newest: DrillTarget, older: Sequence[DrillTarget]) -> DrillTarget:
                return pick_backup(newest, older, today, self._rng)

        try:
            return await self.async_verify(trigger=JobTrigger.SCHEDULE, pick=pick)
        except DrillRefused as err:
            LOGGER.info("No restore drill tonight (%s)", err.translation_key)
            return None

    async def async_stop(self) -> None:
        """Stop a drill in progress (nothing is recorded) and save."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self.async_flush()

    async def _run(self, backup_id: str | None, trigger: JobTrigger, pick: Pick | None) -> DrillResult:
        started = dt_util.utcnow()
        try:
            try:
                target = await self._choose(backup_id, pick)
            except GatewayError as err:
                return self._finish(
                    DrillTarget(backup_id or "", None),
                    started,
                    trigger,
                    f"Could not read the list of backups on the gateway: {err}",
                )
            self._target = target
            self._listeners.notify()
            LOGGER.info("Restore drill of backup %s", label(target.name, target.backup_id))
            try:
                await DrillChecks(self.hass, self._download, self._set_progress).run(target)
            except DrillFailure as err:
                return self._finish(target, started, trigger, str(err))
            except Exception as err:  # a bug: still an outcome, with its message
                LOGGER.exception("Unexpected error in the restore drill of backup %s", target.backup_id)
                return self._finish(target, started, trigger, f"Unexpected error: {describe(err)}")
            return self._finish(target, started, trigger, None)
        finally:
            self._task = None
            self._target = None
            self._listeners.notify()

    async def _choose(self, backup_id: str | None, pick: Pick | None) -> DrillTarget:
        """The backup to test: ``backup_id``, else the last one this installation sent, else the gateway's newest.

        Raises :class:`DrillRefused` for an id the gateway does not list, or when there is nothing to test.
        """
        listed: dict[str, DrillTarget] = {}  # the newest copy of each backup, newest first
        by_remote: dict[str, DrillTarget] = {}
        for copies in (await read_listing(self._client, self._privacy)).values():
            for remote, backup in copies:
                target = DrillTarget(backup.backup_id, backup.name, remote, backup)
                listed.setdefault(backup.backup_id, target)
                by_remote[remote.id] = target
        if backup_id is not None:
            if backup_id not in listed:
                raise DrillRefused(
                    translation_domain=DOMAIN,
                    translation_key="unknown_backup",
                    translation_placeholders={"backup_id": backup_id},
                )
            return listed[backup_id]
        newest = self._last_sent(by_remote)
        if newest is None:
            if not listed:
                raise DrillRefused(translation_domain=DOMAIN, translation_key="nothing_to_verify")
            newest = next(iter(listed.values()))
        if pick is None:
            return newest
        return pick(newest, [target for key, target in listed.items() if key != newest.backup_id])

    def _last_sent(self, by_remote: dict[str, DrillTarget]) -> DrillTarget | None:
        """The last backup this installation sent, as the gateway records it now (no record: ``remote`` None).

        ``None`` when none was sent, or when it was deleted through the location since.
        """
        for job in self._runner.history:
            if job.status is JobStatus.SUCCEEDED and job.backup_id and job.remote_id:
                if job.remote_id in self._deleted:
                    return None
                return by_remote.get(job.remote_id) or DrillTarget(job.backup_id, job.name)
        return None

    # ------------------------------------------------------------------------------------------- outcome

    @callback
    def _finish(
        self, target: DrillTarget, started: datetime, trigger: JobTrigger, error: str | None
    ) -> DrillResult:
        """Record and tell how a drill ended."""
        result = DrillResult(
            backup_id=target.backup_id or None,
            backup_name=target.name,
            ok=error is None,
            error=error,
            started=started,
            ended=dt_util.utcnow(),
            trigger=trigger,
            size=target.remote.size if target.remote else None,
        )
        self.last = result
        if result.ok:
            self.last_verified = result
        self._store.async_delay_save(self._data_to_save, 1)
        self._report(result)
        return result

    @callback
    def _report(self, result: DrillResult) -> None:
        data = {
            "config_entry_id": self._entry.entry_id,
            "backup_id": result.backup_id,
            "backup_name": result.backup_name,
            "error": result.error,
            "trigger": result.trigger.value,
            "duration": result.duration,
        }
        which = label(result.backup_name, result.backup_id or "?")
        if result.ok:
            clear_issue(self.hass, self._entry, ISSUE_DRILL_FAILED)
            LOGGER.info("Restore drill of backup %s passed in %s s", which, result.duration)
            self.hass.bus.async_fire(EVENT_DRILL_SUCCEEDED, data)
            return
        LOGGER.error("Restore drill failed: %s", result.error)
        self.hass.bus.async_fire(EVENT_DRILL_FAILED, data)
        self._raise_issue(result)

    @callback
    def _raise_issue(self, result: DrillResult) -> None:
        raise_issue(
            self.hass,
            self._entry,
            ISSUE_DRILL_FAILED,
            backup_name=result.backup_name or "?",
            backup_id=result.backup_id or "?",
            error=result.error or "",
        )
