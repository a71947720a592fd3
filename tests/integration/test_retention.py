"""Home Assistant's retention and ours, in one story, against Home Assistant's own retention and schedule code.

The user followed the README: Home Assistant's "Set up backups" wizard with its recommended settings (daily
automatic backups to this system, 3 kept), then Offsite Backup's nightly. Ten days and nights later, Home
Assistant still keeps its 3 own local automatic backups, the off-site location keeps what the gateway's policy
keeps, and the copy a restart would resume from never counts against anything.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from freezegun.api import FrozenDateTimeFactory
from homeassistant.components.backup.config import AgentConfig, ScheduleRecurrence
from homeassistant.core import Event, HomeAssistant
from homeassistant.util import dt as dt_util
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_capture_events,
    async_fire_time_changed,
)

from custom_components.offsite_backup.backup import agent_id_for
from custom_components.offsite_backup.const import (
    CONF_KEEP_LOCAL,
    CONF_RESTORE_DRILL,
    EVENT_SUCCEEDED,
)
from custom_components.offsite_backup.own_retention import MARKER
from tests.helpers.gateway import RunningGateway, run_gateway
from tests.helpers.servers import S3Server
from tests.integration.common import entity_id, set_up_entry, state
from tests.integration.conftest import BACKUP_PASSWORD

PARIS = "Europe/Paris"
GATEWAY_KEEPS = 5  # the gateway's policy here: the newest 5


def _the_wizards_recommended_settings(manager: Any) -> None:
    """What Settings > System > Backups > Set up backups > Recommended saves."""
    manager.config.update(
        automatic_backups_configured=True,
        create_backup={
            "agent_ids": ["backup.local"],
            "include_addons": None,
            "include_all_addons": False,  # on Core; a Supervisor install has the wizard back up every add-on
            "include_database": True,
            "include_folders": None,
            "name": None,
            "password": BACKUP_PASSWORD,
        },
        retention={"copies": 3, "days": None},
        schedule={"recurrence": ScheduleRecurrence.DAILY, "time": None, "days": []},
    )


@pytest.fixture
async def wizard_then_entry(
    hass: HomeAssistant,
    backup_manager: Any,
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    freezer: FrozenDateTimeFactory,
) -> AsyncIterator[tuple[MockConfigEntry, RunningGateway]]:
    await hass.config.async_set_time_zone(PARIS)
    freezer.move_to(datetime(2026, 6, 1, 10, 0, tzinfo=dt_util.UTC))
    _the_wizards_recommended_settings(backup_manager)
    async with run_gateway(
        moto_server,
        moto_bucket,
        tmp_path / "gw",
        RETENTION=str(GATEWAY_KEEPS),
        PART_SIZE=str(5 * 1024 * 1024),
    ) as gateway:
        entry = await set_up_entry(hass, gateway)
        hass.config_entries.async_update_entry(entry, options={CONF_RESTORE_DRILL: "off"})
        await hass.async_block_till_done()
        yield entry, gateway
        await hass.config_entries.async_unload(entry.entry_id)
    backup_manager.config.update(schedule={"recurrence": ScheduleRecurrence.NEVER, "time": None, "days": []})


async def _days_and_nights(
    hass: HomeAssistant,
    freezer: FrozenDateTimeFactory,
    entry: MockConfigEntry,
    manager: Any,
    nights: int,
    ours: list[Event],
) -> int:
    """Run until ``nights`` more of our nightly backups succeeded; returns how many of Home Assistant's own ran."""
    target = len(ours) + nights
    theirs = 0
    while len(ours) < target:
        our_next = entry.runtime_data.scheduler.next_run
        their_next = manager.config.data.schedule.next_automatic_backup
        assert our_next is not None
        assert their_next is not None, "Home Assistant's own daily backups are on"
        when = min(our_next, dt_util.as_utc(their_next))
        before = manager.config.data.last_completed_automatic_backup
        freezer.move_to(when)
        async_fire_time_changed(hass, when)
        await hass.async_block_till_done(wait_background_tasks=True)
        if manager.config.data.last_completed_automatic_backup != before:
            theirs += 1
    return theirs


async def _on(manager: Any, agent_id: str) -> list[Any]:
    return await manager.backup_agents[agent_id].async_list_backups()


async def _ten_nights(
    hass: HomeAssistant, entry: MockConfigEntry, manager: Any, freezer: FrozenDateTimeFactory
) -> tuple[int, list[Any], list[Any]]:
    """Ten days and nights; returns how many of Home Assistant's own automatic backups ran, and its automatic
    backups on this machine and ours, as its backup manager lists them there."""
    ours = async_capture_events(hass, EVENT_SUCCEEDED)
    theirs = await _days_and_nights(hass, freezer, entry, manager, 10, ours)
    assert theirs >= 9, "Home Assistant made its own daily backups meanwhile"
    backups, _ = await manager.async_get_backups()
    local = await _on(manager, "backup.local")
    automatic = [b for b in local if backups[b.backup_id].with_automatic_settings]
    mine = [b for b in local if b.extra_metadata.get(MARKER)]
    assert len(automatic) + len(mine) == len(local)
    return theirs, automatic, mine


async def test_ten_nights_with_home_assistants_own_automatic_backups_on(
    hass: HomeAssistant,
    wizard_then_entry: tuple[MockConfigEntry, RunningGateway],
    backup_manager: Any,
    freezer: FrozenDateTimeFactory,
) -> None:
    entry, _ = wizard_then_entry
    theirs, automatic, mine = await _ten_nights(hass, entry, backup_manager, freezer)
    offsite = await _on(backup_manager, agent_id_for(entry))
    print(
        f"\nafter 10 nights: Home Assistant's own automatic backups made {theirs}, kept on this machine "
        f"{len(automatic)}; ours left on this machine {len(mine)}; off-site {len(offsite)}"
    )
    assert len(automatic) == 3, "Home Assistant keeps its 3 own local automatic backups"
    assert mine == [], "no copy of ours is left on this machine (the resume copies went with each outcome)"
    assert len(offsite) == GATEWAY_KEEPS, "the off-site location keeps what the gateway's policy keeps"
    assert all(backup.extra_metadata[MARKER] == "schedule" for backup in offsite)
    assert state(hass, entry, "backups_stored") == str(GATEWAY_KEEPS)
    stored = hass.states.get(entity_id(hass, entry, "backups_stored"))
    assert stored is not None
    assert stored.attributes["retention"] == f"gateway: newest {GATEWAY_KEEPS}"
    # Home Assistant's Backups page counts them as its own manual backups, named for what they are.
    backups, _ = await backup_manager.async_get_backups()
    assert all(backups[b.backup_id].with_automatic_settings is False for b in offsite)
    assert all(b.name.startswith("Offsite nightly backup ") for b in offsite)


async def test_kept_local_copies_follow_what_home_assistant_keeps_here_and_never_count_against_its_own(
    hass: HomeAssistant,
    wizard_then_entry: tuple[MockConfigEntry, RunningGateway],
    backup_manager: Any,
    freezer: FrozenDateTimeFactory,
) -> None:
    entry, _ = wizard_then_entry
    hass.config_entries.async_update_entry(entry, options={CONF_RESTORE_DRILL: "off", CONF_KEEP_LOCAL: True})
    await hass.async_block_till_done()
    _, automatic, mine = await _ten_nights(hass, entry, backup_manager, freezer)
    assert len(automatic) == 3, "Home Assistant's own 3 are untouched by ours"
    assert len(mine) == 3, "ours kept here follow its 'Backups to keep' (3), counted apart"
    assert len(await _on(backup_manager, agent_id_for(entry))) == GATEWAY_KEEPS


@pytest.mark.skipif(
    "retention" not in getattr(AgentConfig, "__dataclass_fields__", {}),
    reason="this Home Assistant (2025.4) has no retention setting per location",
)
async def test_a_retention_set_for_this_location_in_home_assistant_wins_and_is_told(
    hass: HomeAssistant,
    wizard_then_entry: tuple[MockConfigEntry, RunningGateway],
    backup_manager: Any,
    freezer: FrozenDateTimeFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from homeassistant.components.backup.config import AgentRetentionConfig  # noqa: PLC0415

    entry, _ = wizard_then_entry
    backup_manager.config.update(
        agents={agent_id_for(entry): {"protected": True, "retention": {"copies": 2, "days": None}}}
    )
    assert backup_manager.config.data.agents[agent_id_for(entry)].retention == AgentRetentionConfig(copies=2)
    _, automatic, _ = await _ten_nights(hass, entry, backup_manager, freezer)
    offsite = await _on(backup_manager, agent_id_for(entry))
    assert len(offsite) == 2, "Home Assistant's setting for this location wins over the gateway's 5"
    assert len(automatic) == 3
    stored = hass.states.get(entity_id(hass, entry, "backups_stored"))
    assert stored is not None
    assert stored.attributes["retention"] == (
        f"Home Assistant: 2 backups (set for this location); gateway: newest {GATEWAY_KEEPS}"
    )
    assert any(
        "Home Assistant's retention for this location (2 backups) applies" in record.getMessage()
        for record in caplog.records
    )
