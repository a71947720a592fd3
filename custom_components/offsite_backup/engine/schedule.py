"""Jittered daily window math: when tonight's backup runs.

Each local day has one *window* ``[start, end)`` in the house's time zone (default 00:00-02:00). The window
belongs to the day it starts on, so a window of 23:00-01:00 that starts on Monday is Monday's. For each day a
uniform random instant inside the window is drawn once and persisted by the caller (``Plan.as_dict``), so a restart
does not draw again.

Rules that keep "exactly one backup per night":
- A day whose plan is ``done`` never runs again, whatever restarts happen.
- A window that passed while Home Assistant was off is not replayed later: the next plan is the next window.
- Started inside the window with no plan yet (or after the planned instant went by while Home Assistant was off),
  the run is drawn again in what is left of the window, so restarts do not make instances pile up at one instant.
- A stored plan for a day after tomorrow is not plausible (``plausible``): it was drawn while the clock was ahead,
  and following it would stop the backups until then. The caller drops it and draws tonight's.

Time is real elapsed time: the window's ends are resolved to UTC instants first, so on the nights the clocks
change the window simply lasts an hour more or less. A local time that does not exist (spring forward) resolves to
the end of the gap, the instant the clocks jump (02:30 in Paris on the last Sunday of March is 03:00): a window of
02:30-03:10 lasts 03:00-03:10 that night. A window lying wholly inside the gap (02:10-02:50) lasts one minute from
03:00, so no night is skipped. A local time that happens twice (fall back) resolves to its first occurrence.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

ONE_DAY = timedelta(days=1)


MIN_WINDOW = timedelta(minutes=1)


def _instant(day: date, at: time, tz: tzinfo) -> datetime:
    """The UTC instant of a local wall-clock time, resolving DST gaps and repeats (see module docstring)."""
    local = datetime.combine(day, at, tzinfo=tz)
    instant = local.astimezone(UTC)  # fold=0: a repeated time's first occurrence
    if instant.astimezone(tz).replace(tzinfo=None) == local.replace(tzinfo=None):
        return instant
    # Inside a gap: fold=0 and fold=1 read the time with the offsets before and after it, two instants on either
    # side of the jump. The jump is the first instant in between with the later offset.
    other = local.replace(fold=1).astimezone(UTC)
    low, high = sorted((int(instant.timestamp()), int(other.timestamp())))
    after = datetime.fromtimestamp(high, UTC).astimezone(tz).utcoffset()
    while high - low > 1:  # whole seconds: clocks jump on a second
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, UTC).astimezone(tz).utcoffset() == after:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


@dataclass(frozen=True, slots=True)
class Window:
    """A daily local-time window; ``end`` at or before ``start`` means the window crosses midnight."""

    start: time
    end: time

    def __post_init__(self) -> None:
        """Refuse an empty window."""
        if self.start == self.end:
            raise ValueError("The backup window must not be empty: its start and end are equal")

    @property
    def crosses_midnight(self) -> bool:
        """Whether the window ends on the next local day."""
        return self.end < self.start

    def bounds(self, day: date, tz: tzinfo) -> tuple[datetime, datetime]:
        """The UTC instants ``[start, end)`` of the window that starts on local ``day``.

        A window that lies entirely inside a DST gap still lasts a minute from the end of the gap: no night is
        skipped.
        """
        start = _instant(day, self.start, tz)
        end = _instant(day + ONE_DAY if self.crosses_midnight else day, self.end, tz)
        return start, max(end, start + MIN_WINDOW)


@dataclass(frozen=True, slots=True)
class Plan:
    """The run drawn for one window day; ``done`` once that day's run has started."""

    day: date
    run_at: datetime
    done: bool = False

    def as_dict(self) -> dict[str, Any]:
        """Serialise for storage."""
        return {"day": self.day.isoformat(), "run_at": self.run_at.isoformat(), "done": self.done}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """Read back what ``as_dict`` stored; raises ``ValueError`` on anything else."""
        try:
            run_at = datetime.fromisoformat(data["run_at"])
            day = date.fromisoformat(data["day"])
            done = data.get("done", False)
        except (KeyError, TypeError) as err:
            raise ValueError(f"Not a stored plan: {data!r}") from err
        if run_at.tzinfo is None or not isinstance(done, bool):
            raise ValueError(f"Not a stored plan: {data!r}")
        return cls(day=day, run_at=run_at.astimezone(UTC), done=done)

    def mark_done(self) -> Plan:
        """The same plan, marked as run."""
        return Plan(day=self.day, run_at=self.run_at, done=True)


def draw(
    day: date,
    window: Window,
    tz: tzinfo,
    rng: random.Random,
    not_before: datetime | None = None,
) -> datetime | None:
    """A uniform random instant in the window of ``day``, no earlier than ``not_before``.

    Returns ``None`` when nothing is left of the window after ``not_before``.
    """
    start, end = window.bounds(day, tz)
    if not_before is not None and not_before > start:
        start = not_before
    if start >= end:
        return None
    span = (end - start).total_seconds()
    # uniform() may return its upper bound: keep the instant strictly inside [start, end).
    offset = min(rng.uniform(0, span), span - 1e-6)
    return start + timedelta(seconds=offset)


def next_plan(
    now: datetime,
    window: Window,
    tz: tzinfo,
    previous: Plan | None,
    rng: random.Random,
) -> Plan:
    """The plan to follow from ``now``: the persisted one while it still holds, else a draw for the next window.

    ``now`` must be timezone-aware.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now = now.astimezone(UTC)
    local_today = now.astimezone(tz).date()
    # The window in progress may have started yesterday (windows crossing midnight); look a few days ahead so a
    # window that does not exist on one day (entirely inside a DST gap) still leads to the next one.
    day = local_today - ONE_DAY
    while True:
        _, end = window.bounds(day, tz)
        skip = end <= now or (
            previous is not None and (day < previous.day or (day == previous.day and previous.done))
        )
        if not skip:
            if (
                previous is not None
                and previous.day == day
                and previous.run_at >= now
                and _inside(previous.run_at, window.bounds(day, tz))
            ):
                return previous
            run_at = draw(day, window, tz, rng, not_before=now)
            if run_at is not None:
                return Plan(day=day, run_at=run_at)
        day += ONE_DAY


def plausible(plan: Plan, now: datetime, tz: tzinfo) -> bool:
    """Whether a stored plan can have been drawn by a clock that told the time: no plan is ever for a day after
    tomorrow (``next_plan`` draws tonight's window, or tomorrow's). A plan further ahead was drawn while the clock
    was ahead (a wrong real-time clock at boot, a bad time server): following it would stop the backups until then.
    """
    return plan.day <= now.astimezone(tz).date() + ONE_DAY


def _inside(instant: datetime, bounds: tuple[datetime, datetime]) -> bool:
    start, end = bounds
    return start <= instant < end
