"""When the restore drill runs: after that night's backup, inside the window, as the "Restore drill" option says.

Driven by the freezer through real nights in Europe/Paris: the nightly timer, Home Assistant's backup manager, the
upload to the real gateway and moto, then the drill, as in a running Home Assistant.
"""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta
from unittest.mock import patch

import pytest
from freezegun.api import FrozenDateTimeFactory
from homeassistant.core import Event, HomeAssistant, callback
from homeassistant.helpers import issue_registry as ir
from homeassistant.util import dt as dt_util
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_capture_events,
    async_fire_time_changed,
)

from custom_components.offsite_backup.const import (
    CONF_RESTORE_DRILL,
    DOMAIN,
    EVENT_DRILL_FAILED,
    EVENT_DRILL_SUCCEEDED,
    EVENT_SUCCEEDED,
    ISSUE_DRILL_FAILED,
    DrillSchedule,
)
from custom_components.offsite_backup.drill_runner import RestoreDrill
from custom_components.offsite_backup.runner import BackupRunner
from custom_components.offsite_backup.settings import Settings
from tests.helpers.servers import S3Server
from tests.integration.common import objects, state
from tests.integration.drill_helpers import held_downloads

PARIS = "Europe/Paris"


@pytest.fixture
def backups(hass: HomeAssistant) -> list[Event]:
    return async_capture_events(hass, EVENT_SUCCEEDED)


@pytest.fixture
def drills(hass: HomeAssistant) -> list[Event]:
    """Every drill's event, succeeded or failed, in the order they were fired."""
    events: list[Event] = []

    @callback
    def record(event: Event) -> None:
        events.append(event)

    hass.bus.async_listen(EVENT_DRILL_SUCCEEDED, record)
    hass.bus.async_listen(EVENT_DRILL_FAILED, record)
    return events


async def start(
    hass: HomeAssistant, entry: MockConfigEntry, freezer: FrozenDateTimeFactory, option: str | None
) -> None:
    """Set the entry up in Paris on Monday 1 June 2026 at noon (UTC), with the default window (00:00-02:00)."""
    await hass.config.async_set_time_zone(PARIS)
    freezer.move_to(datetime(2026, 6, 1, 12, 0, tzinfo=dt_util.UTC))
    if option is not None:
        hass.config_entries.async_update_entry(entry, options={CONF_RESTORE_DRILL: option})
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()


async def night(hass: HomeAssistant, entry: MockConfigEntry, freezer: FrozenDateTimeFactory) -> date:
    """Tonight's backup (and whatever follows it); returns the local date of the night."""
    run_at = entry.runtime_data.scheduler.next_run
    assert run_at is not None
    freezer.move_to(run_at)
    async_fire_time_changed(hass, run_at)
    await hass.async_block_till_done(wait_background_tasks=True)
    return dt_util.as_local(run_at).date()


async def test_weekly_tests_the_newest_then_waits_a_week_and_one_week_in_four_an_older_one(
    hass: HomeAssistant,
    backup_manager: object,
    config_entry: MockConfigEntry,
    freezer: FrozenDateTimeFactory,
    backups: list[Event],
    drills: list[Event],
) -> None:
    await start(hass, config_entry, freezer, None)  # weekly is the default
    assert config_entry.runtime_data.drill.schedule is DrillSchedule.WEEKLY

    first = await night(hass, config_entry, freezer)
    assert first == date(2026, 6, 2)
    assert first.isocalendar().week % 4 != 0
    (backup,) = backups
    (drill,) = drills
    assert drill.data["backup_id"] == backup.data["backup_id"], "the newest: tonight's"
    assert drill.data["trigger"] == "schedule"
    assert drill.event_type == EVENT_DRILL_SUCCEEDED
    assert state(hass, config_entry, "status") == "verified", "the drill is the newest thing that happened"
    assert state(hass, config_entry, "last_verified") != "unknown"

    for _ in range(6):  # 3 to 8 June: the last drill is less than a week old
        await night(hass, config_entry, freezer)
        assert len(drills) == 1
        assert state(hass, config_entry, "status") == "succeeded", "the backup is the newest thing"

    ninth = await night(hass, config_entry, freezer)
    assert ninth == date(2026, 6, 9)
    assert ninth.isocalendar().week % 4 == 0, "one week in four"
    assert len(backups) == 8
    tested = drills[-1]
    assert tested.event_type == EVENT_DRILL_SUCCEEDED, tested.data
    newest = backups[-1].data["backup_id"]
    listed = {
        backup.metadata["backup_id"] for backup in await config_entry.runtime_data.client.list_backups()
    }
    assert tested.data["backup_id"] != newest, "an older one"
    assert tested.data["backup_id"] in listed - {newest}, "one the gateway still holds (it keeps 7)"


async def test_after_every_backup(
    hass: HomeAssistant,
    backup_manager: object,
    config_entry: MockConfigEntry,
    freezer: FrozenDateTimeFactory,
    backups: list[Event],
    drills: list[Event],
) -> None:
    await start(hass, config_entry, freezer, "after_every_backup")
    for _ in range(3):
        await night(hass, config_entry, freezer)
    assert [event.data["backup_id"] for event in drills] == [event.data["backup_id"] for event in backups]
    assert len(backups) == 3


async def test_off(
    hass: HomeAssistant,
    backup_manager: object,
    config_entry: MockConfigEntry,
    freezer: FrozenDateTimeFactory,
    backups: list[Event],
    drills: list[Event],
) -> None:
    await start(hass, config_entry, freezer, "off")
    for _ in range(2):
        await night(hass, config_entry, freezer)
    assert len(backups) == 2
    assert drills == []
    assert state(hass, config_entry, "last_verified") == "unknown"


async def test_a_failed_drill_is_tried_again_the_next_night(
    hass: HomeAssistant,
    backup_manager: object,
    config_entry: MockConfigEntry,
    freezer: FrozenDateTimeFactory,
    moto_server: S3Server,
    moto_bucket: str,
    backups: list[Event],
    drills: list[Event],
) -> None:
    """Weekly, but the last drill failed: the next night's drill shows at once whether things are right again."""
    await start(hass, config_entry, freezer, "weekly")
    await night(hass, config_entry, freezer)
    (key, data), *_ = objects(moto_server, moto_bucket).items()
    moto_server.client().put_object(Bucket=moto_bucket, Key=key, Body=data[: len(data) // 2])
    response = await hass.services.async_call(
        DOMAIN,
        "verify_backup",
        {"config_entry_id": config_entry.entry_id},
        blocking=True,
        return_response=True,
    )
    assert response is not None
    assert response["ok"] is False
    issue_id = f"{ISSUE_DRILL_FAILED}_{config_entry.entry_id}"
    assert ir.async_get(hass).async_get_issue(DOMAIN, issue_id) is not None

    await night(hass, config_entry, freezer)
    last = drills[-1]
    assert last.event_type == EVENT_DRILL_SUCCEEDED
    assert last.data["backup_id"] == backups[-1].data["backup_id"]
    assert last.data["trigger"] == "schedule"
    assert ir.async_get(hass).async_get_issue(DOMAIN, issue_id) is None


async def test_no_drill_once_the_window_has_ended(
    hass: HomeAssistant, backup_manager: object, config_entry: MockConfigEntry, freezer: FrozenDateTimeFactory
) -> None:
    await start(hass, config_entry, freezer, "after_every_backup")
    drill = config_entry.runtime_data.drill
    assert await drill.async_after_nightly_backup(dt_util.utcnow() - timedelta(seconds=1)) is None
    assert drill.last is None


def test_the_option_is_read_robustly() -> None:
    assert Settings.from_options({}).restore_drill is DrillSchedule.WEEKLY
    assert Settings.from_options({CONF_RESTORE_DRILL: "off"}).restore_drill is DrillSchedule.OFF
    assert Settings.from_options({CONF_RESTORE_DRILL: "after_every_backup"}).restore_drill is (
        DrillSchedule.AFTER_EVERY_BACKUP
    )
    for junk in ("daily", None, 3, ["weekly"], {"a": 1}):
        assert Settings.from_options({CONF_RESTORE_DRILL: junk}).restore_drill is DrillSchedule.WEEKLY


async def test_a_nightly_drill_stopped_halfway_by_a_restart(
    hass: HomeAssistant,
    backup_manager: object,
    config_entry: MockConfigEntry,
    freezer: FrozenDateTimeFactory,
    backups: list[Event],
    drills: list[Event],
) -> None:
    await start(hass, config_entry, freezer, "after_every_backup")
    drill = config_entry.runtime_data.drill
    run_at = config_entry.runtime_data.scheduler.next_run
    assert run_at is not None
    with held_downloads():
        freezer.move_to(run_at)
        async_fire_time_changed(hass, run_at)
        for _ in range(1_000_000):  # the clock is frozen: turn the loop until the drill is under way
            if drill.current is not None:
                break
            await asyncio.sleep(0)
        assert drill.current is not None
        assert await hass.config_entries.async_unload(config_entry.entry_id)
        await hass.async_block_till_done()
    assert len(backups) == 1
    assert drills == [], "no outcome"
    assert drill.last is None


async def test_unexpected_errors_at_night_are_logged(
    hass: HomeAssistant,
    backup_manager: object,
    config_entry: MockConfigEntry,
    freezer: FrozenDateTimeFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await start(hass, config_entry, freezer, "after_every_backup")
    with patch.object(RestoreDrill, "async_after_nightly_backup", side_effect=RuntimeError("drill bug")):
        await night(hass, config_entry, freezer)
    assert "Unexpected error in the restore drill" in caplog.text
    with patch.object(BackupRunner, "async_run", side_effect=RuntimeError("job bug")):
        await night(hass, config_entry, freezer)
    assert "Unexpected error in the nightly backup" in caplog.text
