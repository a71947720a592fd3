"""Moving Home Assistant's clock (the freezer) while real I/O runs: outages of minutes or hours in seconds.

Under the freezer, the event loop's time stands still: ``asyncio.sleep`` (the upload engine's retries) ends only
when the test moves the clock. These helpers wait in *real* time for the I/O in flight (a thread sleeps, the loop
keeps running), and move the clock to each next try of a waiting job.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import freezegun.api
from freezegun.api import FrozenDateTimeFactory
from homeassistant.core import HomeAssistant
from homeassistant.util import dt as dt_util
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_fire_time_changed

from custom_components.offsite_backup.runner import BackupRunner

REAL_STEP = 0.02


def real_time() -> float:
    """Real monotonic seconds, whatever the freezer says (read through freezegun's module: a name imported from
    it would be patched like any other reference to the clock)."""
    return float(freezegun.api.real_monotonic())


async def real_pause(hass: HomeAssistant, seconds: float = REAL_STEP) -> None:
    """Let real time pass (the loop runs meanwhile: I/O completes; the frozen clock does not move)."""
    await hass.async_add_executor_job(time.sleep, seconds)


async def until(hass: HomeAssistant, predicate: Callable[[], bool], *, seconds: float = 60.0) -> None:
    """Wait in real time until ``predicate()``."""
    end = real_time() + seconds
    while not predicate():
        if real_time() > end:
            raise TimeoutError(f"still not true after {seconds} s of real time; tasks:\n{_tasks()}")
        await real_pause(hass)


def _tasks() -> str:
    """Where each task waits (coroutine by coroutine): what a stalled test needs to be understood."""
    lines = []
    for task in asyncio.all_tasks():
        chain = []
        coro: Any = task.get_coro()
        while coro is not None:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
            if frame is not None:
                chain.append(
                    f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno} {frame.f_code.co_name}"
                )
            coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
        lines.append(f"{task.get_name()}: {' <- '.join(chain)}")
    return "\n".join(lines)


async def move_to(hass: HomeAssistant, freezer: FrozenDateTimeFactory, when: datetime) -> None:
    """Set the clock to ``when`` and fire what is due (timers, the engine's sleeps)."""
    freezer.move_to(when)
    async_fire_time_changed(hass, when)
    await real_pause(hass, 0)


async def ride_out(
    hass: HomeAssistant,
    freezer: FrozenDateTimeFactory,
    runner: BackupRunner,
    done: Callable[[], bool],
    *,
    quiet: Callable[[], bool] = lambda: True,
    real_seconds: float = 120.0,
) -> int:
    """Move the clock to each next try of the running job until ``done()``; returns how many moves it took.

    Between moves it waits, in real time, until the engine tried again (what the job waits for changed) or
    stopped waiting, until no request of the upload is under way and until ``quiet()`` (nothing else in flight):
    a move while a request is under way could run out its timeout, which no real outage does in an instant.
    """
    moves = 0
    end = real_time() + real_seconds
    while not done():
        if real_time() > end:
            raise TimeoutError(f"not done after {real_seconds} s of real time ({moves} moves)")
        wait = runner.waiting
        if wait is None or wait.requests or not quiet():  # a request of the upload is under way
            await real_pause(hass)
            continue
        await move_to(hass, freezer, max(dt_util.utcnow(), wait.next_try) + timedelta(seconds=1))
        moves += 1
        await until(hass, lambda seen=wait: done() or runner.waiting is not seen, seconds=real_seconds)
    return moves


async def tonight(
    hass: HomeAssistant, entry: MockConfigEntry, freezer: FrozenDateTimeFactory
) -> tuple[datetime, datetime]:
    """Move to tonight's planned instant: the nightly backup starts. Returns that instant and the window's end."""
    scheduler = entry.runtime_data.scheduler
    run_at = scheduler.next_run
    assert run_at is not None
    assert scheduler.plan is not None
    _, window_end = scheduler.window.bounds(scheduler.plan.day, dt_util.get_default_time_zone())
    await move_to(hass, freezer, run_at)
    await until(hass, lambda: entry.runtime_data.runner.busy)
    return run_at, window_end
