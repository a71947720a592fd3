"""The nightly trigger: follows the plan of ``engine/schedule.py`` with Home Assistant's timers and store."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime
from typing import Any

from homeassistant.const import EVENT_CORE_CONFIG_UPDATE
from homeassistant.core import CALLBACK_TYPE, Event, HomeAssistant, callback
from homeassistant.helpers.event import async_track_point_in_utc_time, async_track_time_interval
from homeassistant.helpers.storage import Store
from homeassistant.util import dt as dt_util

from .const import CLOCK_CHECK_INTERVAL, LOGGER, STORE_SCHEDULE, store_key
from .engine.schedule import Plan, Window, next_plan, plausible
from .listeners import Listeners

STORAGE_VERSION = 1


class NightlyScheduler:
    """Runs ``job(window_end)`` once a night at the plan's instant, and persists the plan across restarts."""

    def __init__(
        self,
        hass: HomeAssistant,
        entry_id: str,
        window: Window,
        *,
        enabled: bool,
        is_busy: Callable[[], bool],
        start_job: Callable[[datetime], None],
    ) -> None:
        """Set up; call :meth:`async_start` to arm the timer."""
        self.hass = hass
        self.window = window
        self.enabled = enabled
        self.plan: Plan | None = None
        self._is_busy = is_busy
        self._start_job = start_job
        self._store: Store[dict[str, Any]] = Store(hass, STORAGE_VERSION, store_key(entry_id, STORE_SCHEDULE))
        self._rng = random.SystemRandom()
        self._unsub_timer: CALLBACK_TYPE | None = None
        self._unsub_config: CALLBACK_TYPE | None = None
        self._unsub_clock: CALLBACK_TYPE | None = None
        self._listeners = Listeners()

    @property
    def next_run(self) -> datetime | None:
        """When the next nightly backup runs (``None`` when nightly backups are off)."""
        if not self.enabled or self.plan is None or self.plan.done:
            return None
        return self.plan.run_at

    async def async_start(self) -> None:
        """Load the persisted plan and arm the timer."""
        data = await self._store.async_load()
        if data and "plan" in data:
            try:
                self.plan = Plan.from_dict(data["plan"])
            except ValueError:
                LOGGER.warning("Ignoring an unreadable stored plan: %s", data["plan"])
        self._unsub_config = self.hass.bus.async_listen(EVENT_CORE_CONFIG_UPDATE, self._on_config_update)
        # The clock may be set back while Home Assistant runs: a plan drawn while it was ahead is checked hourly
        # (the interval is counted on the monotonic clock, which such a change does not move).
        self._unsub_clock = async_track_time_interval(self.hass, self._check_clock, CLOCK_CHECK_INTERVAL)
        self._replan(dt_util.utcnow())

    async def async_flush(self) -> None:
        """Write the plan now (the entry unloads; a reload reads it at once)."""
        await self._store.async_save(self._data_to_save())

    @callback
    def async_stop(self) -> None:
        """Disarm the timer."""
        if self._unsub_timer is not None:
            self._unsub_timer()
            self._unsub_timer = None
        if self._unsub_config is not None:
            self._unsub_config()
            self._unsub_config = None
        if self._unsub_clock is not None:
            self._unsub_clock()
            self._unsub_clock = None

    @callback
    def async_add_listener(self, listener: CALLBACK_TYPE) -> CALLBACK_TYPE:
        """Call ``listener`` whenever the state changes; returns the function that stops it."""
        return self._listeners.add(listener)

    @callback
    def _on_config_update(self, event: Event[Any]) -> None:
        # The time zone may have changed: the plan of a day not yet run is drawn again in the new local window.
        self._replan(dt_util.utcnow())

    @callback
    def _check_clock(self, _now: datetime) -> None:
        if self.plan is not None and not plausible(
            self.plan, dt_util.utcnow(), dt_util.get_default_time_zone()
        ):
            self._replan(dt_util.utcnow())

    @callback
    def _replan(self, now: datetime) -> None:
        if self._unsub_timer is not None:
            self._unsub_timer()
            self._unsub_timer = None
        tz = dt_util.get_default_time_zone()
        if self.plan is not None and not plausible(self.plan, now, tz):
            LOGGER.warning(
                "Ignoring the planned backup of %s (%s): it is further ahead than the clock allows, so it was "
                "drawn while the clock was wrong; drawing tonight's again",
                self.plan.day,
                dt_util.as_local(self.plan.run_at),
            )
            self.plan = None
        plan = next_plan(now, self.window, tz, self.plan, self._rng)
        if plan != self.plan:
            self.plan = plan
            self._store.async_delay_save(self._data_to_save, 0)
        if self.enabled:
            LOGGER.debug("Next nightly backup at %s", dt_util.as_local(plan.run_at))
            self._unsub_timer = async_track_point_in_utc_time(self.hass, self._fire, plan.run_at)
        self._listeners.notify()

    def _data_to_save(self) -> dict[str, Any]:
        return {"plan": self.plan.as_dict() if self.plan else None}

    @callback
    def _fire(self, planned: datetime) -> None:
        self._unsub_timer = None
        now = dt_util.utcnow()  # the timer passes the planned instant; it may fire late (the host slept)
        plan = self.plan
        if plan is None:  # pragma: no cover - the timer is only armed with a plan
            return
        # Marked done before the job starts and saved at once: a restart during the job does not run it again.
        self.plan = plan.mark_done()
        self._store.async_delay_save(self._data_to_save, 0)
        _, window_end = self.window.bounds(plan.day, dt_util.get_default_time_zone())
        if now >= window_end:
            # The timer fired late (the host slept through the window): no backup outside the window.
            LOGGER.warning(
                "Missed the backup window of %s (the system was asleep); next window tomorrow", plan.day
            )
        elif self._is_busy():
            LOGGER.info("Tonight's backup is already running (started by hand); not starting another")
        else:
            self._start_job(window_end)
        self._replan(now)
