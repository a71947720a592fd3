"""A config entry's options read into typed settings, with their defaults (stored data may be odd)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import time, timedelta
from typing import Any

from homeassistant.util import dt as dt_util

from .const import (
    CONF_ADDONS,
    CONF_ALLOW_UNENCRYPTED,
    CONF_BANDWIDTH_LIMIT,
    CONF_CONTENTS,
    CONF_FAILURES_BEFORE_REPAIR,
    CONF_FOLDERS,
    CONF_INCLUDE_DATABASE,
    CONF_KEEP_LOCAL,
    CONF_NIGHTLY,
    CONF_NOTIFY_FORMAT,
    CONF_NOTIFY_URL,
    CONF_OUTSIDE_ALERTS,
    CONF_PARTS_IN_FLIGHT,
    CONF_RESTORE_DRILL,
    CONF_STALE_AFTER,
    CONF_WINDOW_END,
    CONF_WINDOW_START,
    CONTENTS_CHOICES,
    DEFAULT_ALLOW_UNENCRYPTED,
    DEFAULT_CONTENTS,
    DEFAULT_FAILURES_BEFORE_REPAIR,
    DEFAULT_INCLUDE_DATABASE,
    DEFAULT_KEEP_LOCAL,
    DEFAULT_NIGHTLY,
    DEFAULT_NOTIFY_FORMAT,
    DEFAULT_PARTS_IN_FLIGHT,
    DEFAULT_RESTORE_DRILL,
    DEFAULT_STALE_AFTER,
    DEFAULT_WINDOW_END,
    DEFAULT_WINDOW_START,
    MAX_FAILURES_BEFORE_REPAIR,
    MAX_PARTS_IN_FLIGHT,
    MAX_STALE_AFTER,
    MIN_PARTS_IN_FLIGHT,
    NOTIFY_FORMATS,
    DrillSchedule,
)
from .contents import ContentsChoice
from .engine.schedule import Window


def _number(value: Any, default: int, low: int, high: int) -> int:
    """A whole number between ``low`` and ``high``; ``default`` for anything else (stored data may be odd)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return default
    try:
        number = float(value)
    except ValueError:
        return default
    if not math.isfinite(number):
        return default
    return min(high, max(low, round(number)))


def _choice(value: Any, choices: tuple[str, ...], default: str) -> str:
    """One of ``choices``; ``default`` for anything else."""
    return value if isinstance(value, str) and value in choices else default


def _strings(value: Any) -> tuple[str, ...]:
    """A list of strings (anything else in it is dropped); ``()`` for anything that is not a list."""
    if not isinstance(value, list | tuple):
        return ()
    return tuple(item for item in value if isinstance(item, str))


def _drill_schedule(value: Any) -> DrillSchedule:
    """The "Restore drill" option; the default for anything else (stored data may be odd)."""
    try:
        return DrillSchedule(value)
    except ValueError:
        return DEFAULT_RESTORE_DRILL


def _notify_url(value: Any) -> str | None:
    """The "Alert me from outside" URL as stored (the options flow checked it); None for anything else."""
    return value.strip() if isinstance(value, str) and value.strip() else None


def _time(value: Any, default: time) -> time:
    if isinstance(value, time):
        return value
    if isinstance(value, str) and (parsed := dt_util.parse_time(value)) is not None:
        return parsed
    return default


@dataclass(frozen=True, slots=True)
class Settings:
    """The entry's options with their defaults applied."""

    nightly: bool
    window: Window
    parts_in_flight: int
    bandwidth_limit: int | None  # bytes per second
    include_database: bool
    failures_before_repair: int
    stale_after: timedelta
    allow_unencrypted: bool
    keep_local: bool
    contents: ContentsChoice
    restore_drill: DrillSchedule = DEFAULT_RESTORE_DRILL
    outside_alerts: bool = False
    notify_url: str | None = field(default=None, repr=False)  # its path and query may be secret
    notify_format: str = DEFAULT_NOTIFY_FORMAT

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Settings:
        """Read an entry's options (missing keys take their defaults)."""
        start = _time(options.get(CONF_WINDOW_START), DEFAULT_WINDOW_START)
        end = _time(options.get(CONF_WINDOW_END), DEFAULT_WINDOW_END)
        if start == end:  # refused by the options flow; never let stored data break setup
            start, end = DEFAULT_WINDOW_START, DEFAULT_WINDOW_END
        kib = _number(options.get(CONF_BANDWIDTH_LIMIT), 0, 0, 1 << 30)
        return cls(
            nightly=bool(options.get(CONF_NIGHTLY, DEFAULT_NIGHTLY)),
            window=Window(start, end),
            parts_in_flight=_number(
                options.get(CONF_PARTS_IN_FLIGHT),
                DEFAULT_PARTS_IN_FLIGHT,
                MIN_PARTS_IN_FLIGHT,
                MAX_PARTS_IN_FLIGHT,
            ),
            bandwidth_limit=kib * 1024 if kib else None,
            include_database=bool(options.get(CONF_INCLUDE_DATABASE, DEFAULT_INCLUDE_DATABASE)),
            failures_before_repair=_number(
                options.get(CONF_FAILURES_BEFORE_REPAIR),
                DEFAULT_FAILURES_BEFORE_REPAIR,
                1,
                MAX_FAILURES_BEFORE_REPAIR,
            ),
            stale_after=timedelta(
                hours=_number(options.get(CONF_STALE_AFTER), DEFAULT_STALE_AFTER, 1, MAX_STALE_AFTER)
            ),
            allow_unencrypted=bool(options.get(CONF_ALLOW_UNENCRYPTED, DEFAULT_ALLOW_UNENCRYPTED)),
            keep_local=bool(options.get(CONF_KEEP_LOCAL, DEFAULT_KEEP_LOCAL)),
            contents=ContentsChoice(
                contents=_choice(options.get(CONF_CONTENTS), CONTENTS_CHOICES, DEFAULT_CONTENTS),
                include_database=bool(options.get(CONF_INCLUDE_DATABASE, DEFAULT_INCLUDE_DATABASE)),
                addons=_strings(options.get(CONF_ADDONS)),
                folders=_strings(options.get(CONF_FOLDERS)),
            ),
            restore_drill=_drill_schedule(options.get(CONF_RESTORE_DRILL)),
            outside_alerts=bool(options.get(CONF_OUTSIDE_ALERTS, False)),
            notify_url=_notify_url(options.get(CONF_NOTIFY_URL)),
            notify_format=_choice(options.get(CONF_NOTIFY_FORMAT), NOTIFY_FORMATS, DEFAULT_NOTIFY_FORMAT),
        )
