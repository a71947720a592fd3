"""The watchdog: the gateway notices a house that stopped backing up, and tells its owner and the operator.

Each instance is expected to complete a backup every `expect_every` seconds (`EXPECT_EVERY`, 36 h by default;
`instance set NAME --expect-every 2d` for one instance, `off` exempts it). From that and the newest completed
backup the database holds, its state (`expectation`):

- `ok`: the newest backup is younger than the interval (or, with none yet, the instance is younger than it: a new
  instance is given one interval for its first backup);
- `late`: the newest backup is older than the interval;
- `never`: no backup yet, one interval after the instance was created;
- `paused`: not watched (`--expect-every off`).

Every `WATCH_INTERVAL` seconds every node looks at every active instance (`Watchdog.run_once`) and compares its
state with the one recorded in the database (`watch`). A change is recorded with a compare-and-set on the record's
version, in the same transaction as the notices it queues (`Store.change_watch`): when several nodes look at
once, one of them makes each change and queues its notices, the others find the version moved on and do nothing.
No rule lives in one process: the clock is an argument, the states and the record are the database's.

What is told (`decide`): turning `late` (or `never`) is told once (`late`); while it stays so, again every
`REMIND_EVERY` (`reminder`, daily by default; `off`: never again); a backup landing after that is told once more
(`recovered`). Pausing or resuming an instance tells nobody. Each is queued for every recipient: the operator's
webhook (`NOTIFY_URL`) and e-mail (`NOTIFY_EMAIL`), and the house's own notify URL if it set one. The outbox
(`offsite_gateway/outbox.py`) delivers them.

The same look sets the gauges: instances by state, how long the instance late the longest has been late, and
the instances near their quota.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .config import Settings
from .messages import (
    EMAIL,
    LATE_EVENT,
    OPERATOR,
    OWNER,
    RECOVERED,
    REMINDER,
    WEBHOOK,
    Facts,
    build_payload,
    iso,
    redact_url,
)
from .metrics import Metrics
from .policy import policy_for
from .store import LATE, NEVER, OK, PAUSED, WATCH_STATES, Activity, Instance, Notice, Store, Watched
from .tasks import stop_task

_LOGGER = logging.getLogger(__name__)

NEAR_QUOTA = 0.9  # an instance using this share of its quota counts as near it (a gauge)
KEEP_NOTICES = 30 * 86_400  # seconds a notice done (sent, given up, dropped) stays in the outbox
YIELD_EVERY = 500  # instances looked at between two turns given back to the event loop


@dataclass(frozen=True)
class Expectation:
    """What the gateway expects of an instance now."""

    state: str
    expect_every: int | None  # seconds; None while paused
    last_success: float | None
    due_at: float | None  # when the next backup is (or was) due; None while paused


def expect_every_for(instance: Instance, settings: Settings) -> int:
    """The instance's expected interval in seconds (its own, else the gateway's); 0: not watched."""
    own = instance.policy.expect_every
    return settings.expect_every if own is None else own


def expectation(
    instance: Instance, last_success: float | None, settings: Settings, now: float
) -> Expectation:
    """The instance's state at `now` (the module's docstring)."""
    every = expect_every_for(instance, settings)
    if every <= 0:
        return Expectation(PAUSED, None, last_success, None)
    due = (instance.created_at if last_success is None else last_success) + every
    if now <= due:
        return Expectation(OK, every, last_success, due)
    return Expectation(NEVER if last_success is None else LATE, every, last_success, due)


def operator_alerts(settings: Settings) -> bool:
    """Whether the operator is told of late instances (a webhook or e-mail is set)."""
    return bool(settings.notify_url or (settings.notify_email and settings.smtp_host))


def watch_json(instance: Instance, now_expected: Expectation, settings: Settings) -> dict[str, Any]:
    """`GET /v1/instance`'s `watch`: the gateway's view of the instance, and who it tells."""
    notify = instance.notify
    return {
        "state": now_expected.state,
        "expect_every": now_expected.expect_every,
        "last_success_at": iso(now_expected.last_success),
        "due_at": iso(now_expected.due_at),
        "notify": None if notify is None else {"url": redact_url(notify.url), "format": notify.format},
        "operator_alerts": operator_alerts(settings),
    }


@dataclass(frozen=True)
class Change:
    """A change of an instance's record, and what it tells (None: nobody)."""

    record: Watched
    event: str | None


SILENT = (LATE, NEVER)


def decide(
    instance_id: str, previous: Watched | None, now_expected: Expectation, now: float, remind_every: int
) -> Change | None:
    """What to record, and tell, given the record and the state now; None: nothing."""
    before = previous.state if previous is not None else OK
    after = now_expected.state
    if after == before:
        if (
            previous is not None
            and after in SILENT
            and remind_every > 0
            and previous.notified_at is not None
            and now - previous.notified_at >= remind_every
        ):
            return Change(Watched(instance_id, after, previous.since, now), REMINDER)
        return None
    if after in SILENT:
        if previous is not None and before in SILENT:  # its backups were all deleted: the same silence
            return Change(Watched(instance_id, after, previous.since, previous.notified_at), None)
        assert now_expected.due_at is not None
        return Change(Watched(instance_id, after, now_expected.due_at, now), LATE_EVENT)
    if after == OK and before in SILENT:
        return Change(Watched(instance_id, OK, now, None), RECOVERED)
    return Change(Watched(instance_id, after, now, None), None)  # paused, or watched again


@dataclass
class WatchReport:
    """What one look at every instance found and did."""

    states: Counter[str] = field(default_factory=Counter)
    changes: int = 0
    lost: int = 0  # changes another node made first
    queued: int = 0  # notices queued
    oldest_late: float = 0.0  # seconds the instance late the longest has been late
    near_quota: int = 0
    stored: int = 0  # bytes of every active instance


class Watchdog:
    """Runs `run_once` every `watch_interval` seconds (0: the timer is off; `run_once` still works)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        on_queued: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.on_queued = on_queued
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        if settings.storage_quota is not None:
            metrics.storage_quota_bytes.set(settings.storage_quota)

    def start(self) -> None:
        if self.settings.watch_interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="offsite-gateway-watchdog")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:
                _LOGGER.exception(
                    "Watchdog: looking at the instances failed; again in %d s", self.settings.watch_interval
                )
            await asyncio.sleep(self.settings.watch_interval)

    def recipients(self, instance: Instance) -> list[tuple[str, str]]:
        """(recipient, channel) of every notification about `instance`."""
        found = []
        if self.settings.notify_url:
            found.append((OPERATOR, WEBHOOK))
        if self.settings.notify_email and self.settings.smtp_host:
            found.append((OPERATOR, EMAIL))
        if instance.notify is not None:
            found.append((OWNER, WEBHOOK))
        return found

    def _notices(
        self,
        instance: Instance,
        previous: Watched | None,
        change: Change,
        now_expected: Expectation,
        now: float,
    ) -> list[Notice]:
        if change.event is None:
            return []
        assert now_expected.expect_every is not None
        assert now_expected.due_at is not None
        # A recovery ends the silence the record held; the others are that silence.
        silence = previous if change.event == RECOVERED and previous is not None else change.record
        facts = Facts(
            instance_id=instance.id,
            name=instance.name,
            created_at=instance.created_at,
            state=now_expected.state,
            expect_every=now_expected.expect_every,
            last_success=now_expected.last_success,
            due_at=now_expected.due_at,
            late_since=silence.since,
        )
        notices = []
        for recipient, channel in self.recipients(instance):
            notice_id = uuid.uuid4().hex
            notices.append(
                Notice(
                    id=notice_id,
                    instance_id=instance.id,
                    event=change.event,
                    recipient=recipient,
                    channel=channel,
                    payload=build_payload(notice_id, change.event, recipient, facts, now),
                    created_at=now,
                    next_at=now,
                )
            )
        return notices

    async def run_once(self, now: float | None = None) -> WatchReport:
        """One look at every active instance; `now` may be given to look into the future (tests)."""
        async with self._lock:
            report = await self._run(self.clock() if now is None else now)
        self.metrics.watch_runs.inc()
        for state in WATCH_STATES:
            self.metrics.instances_by_state.labels(state).set(report.states[state])
        self.metrics.oldest_late_seconds.set(report.oldest_late)
        self.metrics.instances_near_quota.set(report.near_quota)
        self.metrics.stored_bytes.set(report.stored)
        if report.changes or report.queued:
            _LOGGER.info(
                "Watchdog: %d change(s), %d notice(s) queued; %s",
                report.changes,
                report.queued,
                ", ".join(f"{report.states[state]} {state}" for state in WATCH_STATES),
            )
        if report.queued and self.on_queued is not None:
            self.on_queued()
        return report

    async def _run(self, now: float) -> WatchReport:
        report = WatchReport()
        store = self.store
        # The records first, then what the backups say: a decision never rests on backups older than its record.
        records = await store.watched()
        instances = [instance for instance in await store.list_instances() if instance.revoked_at is None]
        activity = await store.activity()
        for index, instance in enumerate(instances):
            if index % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)  # thousands of homes: requests get a turn between two slices
            held = activity.get(instance.id, Activity(None, 0, 0))
            now_expected = expectation(instance, held.last_success, self.settings, now)
            report.states[now_expected.state] += 1
            if now_expected.state in SILENT and now_expected.due_at is not None:
                report.oldest_late = max(report.oldest_late, now - now_expected.due_at)
            report.stored += held.bytes
            quota = policy_for(instance, self.settings).quota_bytes
            if quota and held.bytes >= NEAR_QUOTA * quota:
                report.near_quota += 1
            previous = records.get(instance.id)
            change = decide(instance.id, previous, now_expected, now, self.settings.remind_every)
            if change is None:
                continue
            notices = self._notices(instance, previous, change, now_expected, now)
            if await store.change_watch(previous.version if previous else 0, change.record, notices):
                report.changes += 1
                report.queued += len(notices)
                if change.event is not None:
                    _LOGGER.info(
                        "Watchdog: instance %s is %s (%s); %d notice(s) queued",
                        instance.id,
                        now_expected.state,
                        change.event,
                        len(notices),
                    )
            else:
                report.lost += 1
        await store.prune_notices(now - KEEP_NOTICES)
        return report
