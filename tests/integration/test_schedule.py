"""The nightly schedule in Home Assistant, with the freezer: 60 nights in Europe/Paris across both clock changes."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any

import pytest
from freezegun.api import FrozenDateTimeFactory
from homeassistant.components.backup import CreateBackupEvent, CreateBackupState, IdleEvent
from homeassistant.components.backup.const import DATA_MANAGER
from homeassistant.core import Event, HomeAssistant
from homeassistant.util import dt as dt_util
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_capture_events,
    async_fire_time_changed,
)

from custom_components.offsite_backup.const import CONF_WINDOW_END, CONF_WINDOW_START, DOMAIN, EVENT_SUCCEEDED
from tests.helpers.servers import S3Server
from tests.integration.common import entity_id, objects, sha256, state

PARIS = "Europe/Paris"


async def _set_up(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()


async def _restart(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    """Unload and set up again: what a restart of Home Assistant does to the entry (its stores persist)."""
    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()
    await _set_up(hass, entry)


async def _advance(
    hass: HomeAssistant, freezer: FrozenDateTimeFactory, to: datetime, *, wait_jobs: bool = True
) -> None:
    """Move the clock, fire the timers, and (unless a job is meant to keep waiting) let jobs finish."""
    freezer.move_to(to)
    async_fire_time_changed(hass, to)
    await hass.async_block_till_done(wait_background_tasks=wait_jobs)


@pytest.fixture
def succeeded(hass: HomeAssistant) -> list[Event]:
    """Every successful backup (the runner keeps only the last 30 in its history)."""
    return async_capture_events(hass, EVENT_SUCCEEDED)


@pytest.fixture
async def june_in_paris(
    hass: HomeAssistant, backup_manager: object, config_entry: MockConfigEntry, freezer: FrozenDateTimeFactory
) -> MockConfigEntry:
    """The entry set up in Paris on 1 June 2026 at noon (UTC), with the default window."""
    await hass.config.async_set_time_zone(PARIS)
    freezer.move_to(datetime(2026, 6, 1, 12, 0, tzinfo=dt_util.UTC))
    await _set_up(hass, config_entry)
    return config_entry


def _scheduled(events: list[Event]) -> list[datetime]:
    """When the nightly backups ran (the frozen clock does not move during a job)."""
    return [event.time_fired for event in events if event.data["trigger"] == "schedule"]


async def _nights(
    hass: HomeAssistant,
    entry: MockConfigEntry,
    freezer: FrozenDateTimeFactory,
    events: list[Event],
    count: int,
) -> None:
    scheduler = entry.runtime_data.scheduler
    for _ in range(count):
        next_run = scheduler.next_run
        assert next_run is not None
        assert dt_util.parse_datetime(state(hass, entry, "next_run")) == next_run.replace(microsecond=0)
        before = len(events)
        await _advance(hass, freezer, next_run - timedelta(seconds=1))
        assert len(events) == before, "not a second early"
        await _advance(hass, freezer, next_run)
        assert len(events) == before + 1, entry.runtime_data.runner.history[0].error


async def test_sixty_nights_in_paris_across_both_clock_changes(
    hass: HomeAssistant,
    backup_manager: object,
    config_entry: MockConfigEntry,
    freezer: FrozenDateTimeFactory,
    succeeded: list[Event],
) -> None:
    await hass.config.async_set_time_zone(PARIS)
    # A window that straddles the hour the clocks change, so both changes fall inside it.
    hass.config_entries.async_update_entry(
        config_entry, options={CONF_WINDOW_START: "01:30:00", CONF_WINDOW_END: "03:30:00"}
    )
    freezer.move_to(datetime(2026, 3, 14, 12, 0, tzinfo=dt_util.UTC))
    await _set_up(hass, config_entry)
    await _nights(
        hass, config_entry, freezer, succeeded, 30
    )  # 15 March .. 13 April: clocks go forward on 29 March

    # Home Assistant is off for the summer; it starts again on 10 October, at noon.
    assert await hass.config_entries.async_unload(config_entry.entry_id)
    freezer.move_to(datetime(2026, 10, 10, 10, 0, tzinfo=dt_util.UTC))
    await _set_up(hass, config_entry)
    async_fire_time_changed(hass)
    await hass.async_block_till_done(wait_background_tasks=True)
    assert len(succeeded) == 30, "no burst of missed runs at startup"
    await _nights(
        hass, config_entry, freezer, succeeded, 30
    )  # 11 October .. 9 November: clocks go back on 25 October

    runs = _scheduled(succeeded)
    assert len(runs) == 60
    tz = dt_util.get_default_time_zone()
    days = [run.astimezone(tz).date() for run in runs]
    expected = [date(2026, 3, 15) + timedelta(days=i) for i in range(30)] + [
        date(2026, 10, 11) + timedelta(days=i) for i in range(30)
    ]
    assert days == expected, "one run per local night, none skipped"
    assert date(2026, 3, 29) in days
    assert date(2026, 10, 25) in days
    for run in runs:
        local = run.astimezone(tz).time()
        # Inside the window on the wall clock; on 29 March 01:30-03:30 lasts one real hour (02:00-03:00 never is).
        assert time(1, 30) <= local < time(3, 30), run
    assert len({run.astimezone(tz).time().replace(microsecond=0) for run in runs}) >= 58, (
        "re-drawn each night"
    )


async def test_a_scheduled_run_end_to_end(
    hass: HomeAssistant,
    june_in_paris: MockConfigEntry,
    freezer: FrozenDateTimeFactory,
    succeeded: list[Event],
    moto_server: S3Server,
    moto_bucket: str,
) -> None:
    """Tonight's timer → Home Assistant's backup manager → our agent → storage; a download is byte-identical."""
    entry = june_in_paris
    tonight = entry.runtime_data.scheduler.next_run
    assert tonight is not None
    await _advance(hass, freezer, tonight)
    (event,) = succeeded
    assert event.data["trigger"] == "schedule"
    (stored,) = objects(moto_server, moto_bucket).values()
    assert len(stored) == event.data["size"]
    agent = hass.data[DATA_MANAGER].backup_agents[f"{DOMAIN}.{entry.unique_id}"]
    downloaded = b"".join(
        [chunk async for chunk in await agent.async_download_backup(event.data["backup_id"])]
    )
    assert sha256(downloaded) == sha256(stored)
    assert (await agent.async_get_backup(event.data["backup_id"])).protected


async def test_restart_inside_the_window_after_the_run_does_not_run_again(
    hass: HomeAssistant,
    june_in_paris: MockConfigEntry,
    freezer: FrozenDateTimeFactory,
    succeeded: list[Event],
) -> None:
    config_entry = june_in_paris
    scheduler = config_entry.runtime_data.scheduler
    tonight = scheduler.next_run
    assert tonight is not None
    await _advance(hass, freezer, tonight)
    assert len(_scheduled(succeeded)) == 1
    tomorrow = scheduler.next_run
    assert tomorrow is not None
    assert tomorrow.astimezone(dt_util.get_default_time_zone()).date() == date(2026, 6, 3)

    # Restart a minute later, still inside tonight's window: the plan is read back, not drawn again.
    await _advance(hass, freezer, tonight + timedelta(minutes=1))
    await _restart(hass, config_entry)
    assert config_entry.runtime_data.scheduler.next_run == tomorrow
    await _advance(hass, freezer, tonight + timedelta(minutes=30))
    assert len(_scheduled(succeeded)) == 1

    # A restart before tomorrow's run keeps tomorrow's instant too.
    await _advance(hass, freezer, tomorrow - timedelta(hours=3))
    await _restart(hass, config_entry)
    assert config_entry.runtime_data.scheduler.next_run == tomorrow
    await _advance(hass, freezer, tomorrow)
    assert len(_scheduled(succeeded)) == 2


async def test_off_during_the_window_no_catch_up_burst(
    hass: HomeAssistant,
    june_in_paris: MockConfigEntry,
    freezer: FrozenDateTimeFactory,
    succeeded: list[Event],
) -> None:
    config_entry = june_in_paris
    tonight = config_entry.runtime_data.scheduler.next_run
    assert tonight is not None
    assert await hass.config_entries.async_unload(config_entry.entry_id)
    # Off from before the window until three days later.
    freezer.move_to(tonight + timedelta(days=3, hours=6))
    await _set_up(hass, config_entry)
    async_fire_time_changed(hass)
    await hass.async_block_till_done(wait_background_tasks=True)
    assert _scheduled(succeeded) == []
    next_run = config_entry.runtime_data.scheduler.next_run
    assert next_run is not None
    assert next_run > dt_util.utcnow()
    await _advance(hass, freezer, next_run)
    assert len(_scheduled(succeeded)) == 1


async def test_a_late_timer_outside_the_window_does_not_run(
    hass: HomeAssistant,
    june_in_paris: MockConfigEntry,
    freezer: FrozenDateTimeFactory,
    succeeded: list[Event],
) -> None:
    """The host slept through the window: its timer fires late, after the window; no backup then."""
    config_entry = june_in_paris
    tonight = config_entry.runtime_data.scheduler.next_run
    assert tonight is not None
    await _advance(hass, freezer, tonight + timedelta(hours=5))
    assert _scheduled(succeeded) == []
    assert config_entry.runtime_data.scheduler.next_run > dt_util.utcnow()  # type: ignore[operator]


async def test_busy_manager_is_retried_inside_the_window(
    hass: HomeAssistant,
    june_in_paris: MockConfigEntry,
    backup_manager: object,
    freezer: FrozenDateTimeFactory,
) -> None:
    config_entry = june_in_paris  # default window, 00:00-02:00
    plan = config_entry.runtime_data.scheduler
    # Force tonight's instant early in the window, so that there is room for retries.
    run_at = datetime(2026, 6, 1, 22, 5, tzinfo=dt_util.UTC)  # 00:05 in Paris
    plan.plan = plan.plan.__class__(day=date(2026, 6, 2), run_at=run_at)  # type: ignore[union-attr]
    plan._replan(dt_util.utcnow())

    manager = backup_manager
    manager.async_on_backup_event(
        CreateBackupEvent(reason=None, stage=None, state=CreateBackupState.IN_PROGRESS)
    )  # type: ignore[attr-defined]
    await _advance(hass, freezer, run_at, wait_jobs=False)
    runner = config_entry.runtime_data.runner
    assert runner.busy, "waiting for the manager"
    assert runner.history == []
    await _advance(hass, freezer, run_at + timedelta(minutes=10), wait_jobs=False)
    assert runner.busy, "still busy: waits another 10 minutes"
    manager.async_on_backup_event(IdleEvent())  # type: ignore[attr-defined]
    await _advance(hass, freezer, run_at + timedelta(minutes=20))
    assert [job.status.value for job in runner.history] == ["succeeded"]


async def test_busy_manager_until_the_window_ends_fails_with_the_reason(
    hass: HomeAssistant,
    june_in_paris: MockConfigEntry,
    backup_manager: Any,
    freezer: FrozenDateTimeFactory,
    succeeded: list[Event],
) -> None:
    config_entry = june_in_paris
    plan = config_entry.runtime_data.scheduler
    run_at = datetime(2026, 6, 1, 23, 45, tzinfo=dt_util.UTC)  # 01:45 in Paris, 15 minutes before the end
    plan.plan = plan.plan.__class__(day=date(2026, 6, 2), run_at=run_at)  # type: ignore[union-attr]
    plan._replan(dt_util.utcnow())
    backup_manager.async_on_backup_event(
        CreateBackupEvent(reason=None, stage=None, state=CreateBackupState.IN_PROGRESS)
    )  # type: ignore[attr-defined]
    await _advance(hass, freezer, run_at, wait_jobs=False)
    await _advance(hass, freezer, run_at + timedelta(minutes=10))
    runner = config_entry.runtime_data.runner
    backup_manager.async_on_backup_event(IdleEvent())  # type: ignore[attr-defined]
    assert [job.status.value for job in runner.history] == ["failed"]
    assert "busy" in (runner.history[0].error or "")
    assert "window" in (runner.history[0].error or "")


async def _a_night_a_year_ahead(
    hass: HomeAssistant, entry: MockConfigEntry, freezer: FrozenDateTimeFactory, succeeded: list[Event]
) -> None:
    """The clock jumps a year ahead (a wrong real-time clock at boot, a bad time server): a night runs then."""
    await _advance(hass, freezer, datetime(2027, 6, 1, 12, 0, tzinfo=dt_util.UTC))
    ahead = entry.runtime_data.scheduler.next_run
    assert ahead is not None
    assert ahead.year == 2027
    await _advance(hass, freezer, ahead)
    assert len(_scheduled(succeeded)) == 1
    assert entry.runtime_data.runner.last_success is not None
    assert entry.runtime_data.runner.last_success.year == 2027


def _check_back_in_2026(
    hass: HomeAssistant, entry: MockConfigEntry, caplog: pytest.LogCaptureFixture
) -> None:
    """After the clock came back: tonight's backup is planned tonight, and staleness counts from now."""
    now = dt_util.utcnow()
    next_run = entry.runtime_data.scheduler.next_run
    assert next_run is not None
    assert now < next_run < now + timedelta(days=1), next_run
    assert state(hass, entry, "last_success") == "unknown", "the success a year ahead is set aside"
    stale = hass.states.get(entity_id(hass, entry, "stale"))
    assert stale is not None
    assert stale.state == "off"
    assert dt_util.parse_datetime(stale.attributes["stale_from"]) == now + timedelta(hours=36)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("further ahead than the clock allows" in message for message in warnings), warnings
    assert any("ahead of the clock" in message for message in warnings), warnings


async def test_a_night_with_the_clock_a_year_ahead_then_back_while_running(
    hass: HomeAssistant,
    june_in_paris: MockConfigEntry,
    freezer: FrozenDateTimeFactory,
    succeeded: list[Event],
    caplog: pytest.LogCaptureFixture,
) -> None:
    entry = june_in_paris
    await _a_night_a_year_ahead(hass, entry, freezer, succeeded)
    # Set right again while Home Assistant runs: the hourly check (on the monotonic clock, which such a change does
    # not move; here every timer is fired) sees the plan and the last success ahead of it.
    back = datetime(2026, 6, 2, 12, 0, tzinfo=dt_util.UTC)
    freezer.move_to(back)
    async_fire_time_changed(hass, back, fire_all=True)
    await hass.async_block_till_done()
    _check_back_in_2026(hass, entry, caplog)

    tonight = entry.runtime_data.scheduler.next_run
    assert tonight is not None
    await _advance(hass, freezer, tonight)
    assert len(_scheduled(succeeded)) == 2, "backups carry on tonight, not in a year"
    last_success = entry.runtime_data.runner.last_success
    assert last_success is not None
    assert last_success.year == 2026
    assert state(hass, entry, "stale") == "off"


async def test_a_night_with_the_clock_a_year_ahead_then_back_after_a_restart(
    hass: HomeAssistant,
    june_in_paris: MockConfigEntry,
    freezer: FrozenDateTimeFactory,
    succeeded: list[Event],
    caplog: pytest.LogCaptureFixture,
) -> None:
    entry = june_in_paris
    await _a_night_a_year_ahead(hass, entry, freezer, succeeded)
    assert await hass.config_entries.async_unload(entry.entry_id)
    freezer.move_to(
        datetime(2026, 6, 2, 12, 0, tzinfo=dt_util.UTC)
    )  # Home Assistant starts with the right time
    await _set_up(hass, entry)
    _check_back_in_2026(hass, entry, caplog)
    tonight = entry.runtime_data.scheduler.next_run
    assert tonight is not None
    await _advance(hass, freezer, tonight)
    assert len(_scheduled(succeeded)) == 2
    # Nothing drawn in 2027 remains: the next plan is tomorrow's.
    tomorrow = entry.runtime_data.scheduler.next_run
    assert tomorrow is not None
    assert tomorrow - tonight < timedelta(days=2)
